"""``lookalike duplicates``: groups of exact and near-duplicate images in a collection.

Example::

    lookalike duplicates --collection photos.lookalike --json
    lookalike duplicates -c photos.lookalike --move-to ~/dupes          # dry run: lists moves
    lookalike duplicates -c photos.lookalike --move-to ~/dupes --apply  # moves, never deletes
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lookalike.cli.common import (
    CollectionOpt,
    JsonOpt,
    default_collection,
    err,
    errors,
    out,
)
from lookalike.collection import Collection


def duplicates_command(
    collection: CollectionOpt = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Copy-space similarity for near duplicates [calibrated per model]."),
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Neighbours looked at per image.")] = 10,
    verify: Annotated[
        bool, typer.Option("--verify", help="Confirm near duplicates by keypoint matching.")
    ] = False,
    as_json: JsonOpt = False,
    grid: Annotated[
        Path | None, typer.Option(help="Write pictures of the groups (PNG) into this folder.")
    ] = None,
    move_to: Annotated[
        Path | None,
        typer.Option(help="Move every non-original file here (a dry run without --apply)."),
    ] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Really move (with --move-to).")] = False,
) -> None:
    """Find exact copies and near-duplicates (edited copies) in a collection; each group names a
    suggested original (most pixels, then oldest file). Nothing is ever deleted."""
    from lookalike.copies.duplicates import duplicate_grids, move_duplicates
    from lookalike.copies.space import COPY_SPACE, how_to_add

    path = collection or default_collection()
    with errors(), Collection.open(path) as col:
        if COPY_SPACE not in col.spaces():
            err.print(f"[yellow]exact copies only:[/yellow] {how_to_add(path)}", soft_wrap=True)
        groups = col.duplicates(threshold=threshold, k=k, verify=verify)
        moves = move_duplicates(groups, move_to, apply=apply) if move_to is not None else []
        grids = duplicate_grids(groups, grid) if grid is not None and groups else []
    if as_json:
        data = {"collection": str(path), "groups": [g.to_dict() for g in groups]}
        if move_to is not None:
            data["moves"] = [{"from": a, "to": b} for a, b in moves]
            data["applied"] = apply
        print(json.dumps(data))
    else:
        for group in groups:
            out.print(f"[bold]{group.original}[/bold]")
            for other in group.others:
                out.print(f"  {other['kind']:>5} {other['score']:.3f}  {other['path']}")
        out.print(f"{len(groups)} groups, {sum(len(g.others) for g in groups)} duplicates")
        for source, target in moves:
            out.print(f"{'moved' if apply else 'would move'} {source} -> {target}")
        if moves and not apply:
            err.print("dry run: add --apply to move the files")
    for written in grids:
        err.print(f"grid written to {written}")


def register(app: typer.Typer) -> None:
    """Add ``duplicates`` to ``app``."""
    app.command("duplicates")(duplicates_command)
