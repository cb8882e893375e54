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
from rich.table import Table

from lookalike.cli import validate
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
        typer.Option(
            metavar="SCORE",
            callback=validate.score,
            help="Copy-space similarity for near duplicates [calibrated per model].",
        ),
    ] = None,
    neighbours: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="Neighbours looked at per image [10]."),
    ] = None,
    neighbours_old: Annotated[
        int | None, typer.Option("-k", min=1, hidden=True, help="Old --neighbours.")
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Keep a near duplicate only when keypoint matching confirms it; the table "
            "says which were verified.",
        ),
    ] = False,
    as_json: JsonOpt = False,
    grid: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            callback=validate.picture_folder,
            help="Write pictures of the groups (PNG, 20 groups each) into this folder.",
        ),
    ] = None,
    move_to: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR", help="Move every non-original file here (a dry run without --apply)."
        ),
    ] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Really move (with --move-to).")] = False,
) -> None:
    """Find exact copies and near-duplicates (edited copies) in a collection; each group names a
    suggested original (most pixels, then oldest file). Nothing is ever deleted."""
    from lookalike.copies.duplicates import DuplicateGroup, duplicate_grids, move_duplicates
    from lookalike.copies.space import COPY_SPACE, how_to_add

    k = validate.pick(neighbours, neighbours_old, "-k", "--neighbours", 10)
    if apply and move_to is None:
        validate.refuse("--apply moves the files --move-to names: add --move-to DIR")
    path = collection or default_collection()
    with errors(), Collection.open(path) as col:
        near = COPY_SPACE in col.spaces()
        if not near:
            err.print(f"[yellow]exact copies only:[/yellow] {how_to_add(path)}", soft_wrap=True)
            if verify or threshold is not None:
                validate.fail(
                    "--verify and --threshold judge near duplicates, which need copy vectors: "
                    + how_to_add(path)
                )
        groups = col.duplicates(threshold=threshold, k=k, verify=verify)
        if verify:  # every near duplicate kept was confirmed by keypoints
            for group in groups:
                for other in group.others:
                    if other["kind"] == "near":
                        other["verified"] = True
        moves = move_duplicates(groups, move_to, apply=apply) if move_to is not None else []
        shown = groups
        if verify:  # the pictures say it too
            shown = [
                DuplicateGroup(
                    g.original,
                    g.original_id,
                    [{**o, "kind": "verified"} if o.get("verified") else o for o in g.others],
                )
                for g in groups
            ]
        grids = duplicate_grids(shown, grid) if grid is not None and groups else []
    if as_json:
        data = {"collection": str(path), "groups": [g.to_dict() for g in groups]}
        if move_to is not None:
            data["moves"] = [{"from": a, "to": b} for a, b in moves]
            data["applied"] = apply
        print(json.dumps(data))
    else:
        _print_groups(groups, verify)
        for source, target in moves:
            out.print(f"{'moved' if apply else 'would move'} {source} -> {target}", soft_wrap=True)
        if moves and not apply:
            err.print("dry run: add --apply to move the files")
    for written in grids:
        err.print(f"grid written to {written}", highlight=False)


def _print_groups(groups: list, verify: bool) -> None:
    """One table per run: each group's original, then its copies with kind, score and (with
    --verify) whether keypoints confirmed them."""
    table = Table(show_edge=False, title_justify="left")
    table.add_column("group", justify="right")
    table.add_column("kind")
    table.add_column("score", justify="right")
    if verify:
        table.add_column("verified")
    table.add_column("path", overflow="fold")
    for n, group in enumerate(groups, 1):
        table.add_row(str(n), "original", "", *([""] if verify else []), group.original)
        for other in group.others:
            checked = [
                "keypoints"
                if other.get("verified")
                else "identical"
                if other["kind"] == "exact"
                else "no"
            ]
            table.add_row(
                "",
                other["kind"],
                f"{other['score']:.3f}",
                *(checked if verify else []),
                other["path"],
            )
    if groups:
        out.print(table)
    out.print(f"{len(groups)} groups, {sum(len(g.others) for g in groups)} duplicates")


def register(app: typer.Typer) -> None:
    """Add ``duplicates`` to ``app``."""
    app.command("duplicates")(duplicates_command)
