"""``lookalike detect``: which catalogue items are in a photo, and where.

Example::

    lookalike detect shelf.jpg --collection shop.lookalike --json
    lookalike detect a.jpg b.jpg -c shop.lookalike --grid boxes.png   # boxes_a.png, boxes_b.png
    lookalike detect shelf.jpg -c shop.lookalike --detector best.onnx --labels classes.txt
    lookalike detect --video aisle.mp4 --every 5 -c shop.lookalike --json   # a line per frame
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lookalike.cli.common import CollectionOpt, JsonOpt, default_collection, err, errors, out
from lookalike.collection import Collection


def detect_command(
    images: Annotated[list[Path] | None, typer.Argument(help="Photos to look into.")] = None,
    collection: CollectionOpt = None,
    k: Annotated[int, typer.Option("-k", "--top", help="Catalogue matches per found item.")] = 3,
    proposals: Annotated[
        list[str] | None,
        typer.Option(
            "--proposals",
            help="Where boxes come from: keypoints (default), grid, selective, ssd (the bundled "
            "Open Images detector), yolo (your --detector); repeat to combine.",
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option(
            help="Score a proposal box (grid, selective, ssd, yolo) needs to be kept "
            "[lookalike.detect.photo.MIN_SCORE]."
        ),
    ] = None,
    as_json: JsonOpt = False,
    grid: Annotated[
        Path | None,
        typer.Option(help="Write the photo with boxes and labels (PNG); one file per photo."),
    ] = None,
    detector: Annotated[
        Path | None,
        typer.Option(
            help="Your object detector: a YOLOv5/v8/11 model exported to ONNX (source 'yolo'; "
            "used alone unless --proposals says otherwise).",
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="Class names of --detector, one per line [the model's metadata]."),
    ] = None,
    detector_threshold: Annotated[
        float | None,
        typer.Option(help="Lowest detector score of an ssd/yolo box [0.1 ssd, 0.25 yolo]."),
    ] = None,
    video: Annotated[
        Path | None,
        typer.Option(
            help="Look into a video instead: items per sampled frame, then when each item was "
            "first and last seen and the frames per second (keypoint source only).",
        ),
    ] = None,
    every: Annotated[int, typer.Option(min=1, help="With --video: look at one frame in N.")] = 5,
    min_inliers: Annotated[
        int | None,
        typer.Option(
            help="Keypoint inliers an item needs to be reported [detect.matcher.MIN_INLIERS "
            "when the whole catalogue is matched at once, 15 through a shortlist]."
        ),
    ] = None,
) -> None:
    """Find catalogue items inside photos: a box, the best matches and keypoint confirmation per
    item. Boxes that match nothing in the catalogue are not reported."""
    from lookalike.detect.photo import (
        DEFAULT_PROPOSALS,
        MIN_SCORE,
        detect_many,
        draw_detections,
    )

    path = collection or default_collection()
    if video is not None:
        if images or grid is not None or (proposals and proposals != ["keypoints"]):
            err.print("[red]error:[/red] --video takes no photos, --grid or other proposals")
            raise typer.Exit(2)
        _detect_video(path, video, every, k, min_inliers, as_json)
        return
    if not images:
        err.print("[red]error:[/red] give photos to look into, or --video CLIP")
        raise typer.Exit(2)
    options = {
        "k": k,
        "proposals": proposals or (["yolo"] if detector is not None else DEFAULT_PROPOSALS),
        "min_score": MIN_SCORE if min_score is None else min_score,
        "detector": detector,
        "labels": labels,
        "detector_threshold": detector_threshold,
        "min_inliers": min_inliers,
    }
    failed = False
    with errors(), Collection.open(path) as col:
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


def _detect_video(
    path: Path, video: Path, every: int, k: int, min_inliers: int | None, as_json: bool
) -> None:
    """``detect --video``: a JSON line (or a text line) per sampled frame, then the summary."""
    from lookalike.detect.video import detect_video
    from lookalike.videos import VideoError

    with errors(), Collection.open(path) as col:
        run = detect_video(col, video, every=every, k=k, min_inliers=min_inliers)
        try:
            for frame in run:
                if as_json:
                    print(json.dumps(frame.to_dict()), flush=True)
                elif frame.detections:
                    names = ", ".join(
                        f"{Path(d.best.path).name} {','.join(map(str, d.box))} ({d.inliers})"
                        for d in frame.detections
                    )
                    out.print(f"{frame.time:8.2f} s  frame {frame.index}: {names}")
        except (FileNotFoundError, VideoError, ValueError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
    summary = run.summary
    if as_json:
        print(json.dumps({"summary": summary.to_dict()}))
        return
    table = Table(
        title=f"{video}: {len(summary.items)} items in {summary.frames_sampled} frames "
        f"(one in {every}: {summary.fps:.1f} frames/s looked at, "
        f"{summary.decoded_fps:.0f} decoded)",
        title_justify="left",
        show_edge=False,
    )
    for column in ("item", "first seen (s)", "last seen (s)", "frames", "copies", "inliers"):
        table.add_column(column)
    for item in summary.items:
        table.add_row(
            item.path,
            f"{item.first_seen:.2f}",
            f"{item.last_seen:.2f}",
            str(item.frames),
            str(item.copies),
            str(item.max_inliers),
        )
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add ``detect`` to ``app``."""
    app.command("detect")(detect_command)
