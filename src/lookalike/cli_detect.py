"""``lookalike detect``: which catalogue items are in a photo, and where.

Example::

    lookalike detect shelf.jpg --collection shop.lookalike --json
    lookalike detect a.jpg b.jpg -c shop.lookalike --grid boxes.png   # boxes_a.png, boxes_b.png
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lookalike.cli import CollectionOpt, JsonOpt, _errors, default_collection, err, out
from lookalike.collection import Collection


def detect_command(
    images: Annotated[list[Path], typer.Argument(help="Photos to look into.")],
    collection: CollectionOpt = None,
    k: Annotated[int, typer.Option("-k", "--top", help="Catalogue matches per found item.")] = 3,
    proposals: Annotated[
        list[str] | None,
        typer.Option(
            "--proposals",
            help="Where boxes come from: keypoints (default), grid, selective; repeat to combine.",
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option(
            help="Score a grid/selective box needs to be kept [lookalike.detect.MIN_SCORE]."
        ),
    ] = None,
    as_json: JsonOpt = False,
    grid: Annotated[
        Path | None,
        typer.Option(help="Write the photo with boxes and labels (PNG); one file per photo."),
    ] = None,
) -> None:
    """Find catalogue items inside photos: a box, the best matches and keypoint confirmation per
    item. Boxes that match nothing in the catalogue are not reported."""
    from lookalike.detect import DEFAULT_PROPOSALS, MIN_SCORE, detect_many, draw_detections

    path = collection or default_collection()
    options = {
        "k": k,
        "proposals": proposals or DEFAULT_PROPOSALS,
        "min_score": MIN_SCORE if min_score is None else min_score,
    }
    failed = False
    with _errors(), Collection.open(path) as col:
        try:
            answers = detect_many(col, images, **options)
        except (ValueError, RuntimeError) as exc:  # an unknown source, no opencv-contrib
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    for photo, found, problem, seconds in answers:
        if found is None:
            failed = True
            if as_json:
                print(json.dumps({"image": photo, "detections": [], "error": problem}))
            else:
                err.print(f"[red]error:[/red] {photo}: {problem}")
            continue
        if as_json:
            data = {"image": photo, "detections": [d.to_dict() for d in found]}
            print(json.dumps({**data, "seconds": round(seconds, 3)}))
        else:
            _print_detections(photo, found, seconds)
        if grid is not None:
            target = grid if len(images) == 1 else grid.with_stem(f"{grid.stem}_{Path(photo).stem}")
            err.print(f"boxes drawn in {draw_detections(photo, found, target)}")
    if failed:
        raise typer.Exit(1)


def _print_detections(photo: str, found: list, seconds: float) -> None:
    table = Table(
        title=f"{photo}: {len(found)} items ({seconds:.1f} s)",
        title_justify="left",
        show_edge=False,
    )
    for column in ("box", "score", "keypoints", "match", "others"):
        table.add_column(column)
    for d in found:
        confirmed = f"{d.inliers} inliers" if d.verified else "no"
        others = ", ".join(f"{Path(m.path).name} {m.score:.2f}" for m in d.matches[1:])
        table.add_row(",".join(map(str, d.box)), f"{d.score:.3f}", confirmed, d.best.path, others)
    out.print(table)
