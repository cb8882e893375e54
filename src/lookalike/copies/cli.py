"""``lookalike duplicates``: groups of exact and near-duplicate images in a collection.

Example::

    lookalike duplicates --collection photos.lookalike --json
    lookalike duplicates -c photos.lookalike --move-to ~/dupes          # dry run: lists moves
    lookalike duplicates -c photos.lookalike --move-to ~/dupes --apply  # moves, never deletes
    lookalike duplicates --decide distinct a.jpg a-crop.jpg   # this pair is not a duplicate
    lookalike duplicates --decide keep big.jpg                 # the original of its group
    lookalike duplicates --export csv > duplicates.csv         # groups and decisions
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
            help="Copy score P(copy) from which two images are near duplicates [calibrated "
            "per model: 90% precision on the hard benchmark].",
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
        bool | None,
        typer.Option(
            "--verify/--no-verify",
            help="Keep a near duplicate only when keypoint matching confirms it; the table "
            "says which were verified. [on with --move-to: files are only moved for "
            "confirmed copies]",
        ),
    ] = None,
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
    decide: Annotated[
        str | None,
        typer.Option(
            metavar="ACTION",
            callback=validate.choice("distinct", "keep", "forget", what="decision"),
            help="Record a decision about the FILES given, kept in the collection and respected "
            "by later runs: distinct (two files: not duplicates; one file: its whole group), "
            "keep (this file is the original of its group), forget (drop their decisions).",
        ),
    ] = None,
    export: Annotated[
        str | None,
        typer.Option(
            metavar="FORMAT",
            callback=validate.choice("csv", "json", what="export format"),
            help="Print the groups and the decisions as csv or json (instead of the table).",
        ),
    ] = None,
    files: Annotated[
        list[Path] | None,
        typer.Argument(metavar="[FILES]...", help="The files a --decide decision is about."),
    ] = None,
) -> None:
    """Find exact copies and near-duplicates (edited copies) in a collection; each group names a
    suggested original (most pixels, then oldest file, or the one you chose to keep). Decisions
    ("not duplicates", "keep this one") stick. Nothing is ever deleted."""
    from lookalike.copies.duplicates import (
        Decisions,
        DuplicateGroup,
        duplicate_grids,
        move_duplicates,
    )
    from lookalike.copies.duplicates import decide as record_decision
    from lookalike.copies.duplicates import export as export_groups
    from lookalike.copies.space import COPY_SPACE, how_to_add

    k = validate.pick(neighbours, neighbours_old, "-k", "--neighbours", 10)
    if apply and move_to is None:
        validate.refuse("--apply moves the files --move-to names: add --move-to DIR")
    if files and decide is None:
        validate.refuse("FILES are what a --decide decision is about: add --decide ACTION")
    if decide is not None and not files:
        validate.refuse(f"--decide {decide}: name the files it is about")
    if decide == "keep" and len(files or []) != 1:
        validate.refuse("--decide keep: name the one file to keep")
    if decide == "distinct" and len(files or []) > 2:
        validate.refuse("--decide distinct: name two files (a pair) or one (its whole group)")
    if export is not None and (as_json or move_to is not None):
        validate.refuse("--export prints the groups itself: drop --json and --move-to")
    path = collection or default_collection()
    with errors(), Collection.open(path) as col:
        if decide is not None:
            record_decision(col, decide, files or [], threshold=threshold, k=k)
            err.print(f"decision recorded: {decide} {' '.join(str(f) for f in files or [])}")
        near = COPY_SPACE in col.spaces()
        if not near:
            err.print(f"[yellow]exact copies only:[/yellow] {how_to_add(path)}", soft_wrap=True)
            if verify or threshold is not None:
                validate.fail(
                    "--verify and --threshold judge near duplicates, which need copy vectors: "
                    + how_to_add(path)
                )
        if verify is None:  # files are moved only for copies keypoints confirm
            verify = near and move_to is not None
        groups = col.duplicates(threshold=threshold, k=k, verify=verify)
        if verify:  # every near duplicate kept was confirmed by keypoints
            for group in groups:
                for other in group.others:
                    if other["kind"] == "near":
                        other["verified"] = True
        moves = move_duplicates(col, groups, move_to, apply=apply) if move_to is not None else []
        decisions = Decisions.load(col).to_list(col) if export is not None or as_json else []
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
    if export is not None:
        print(export_groups(groups, decisions, export), end="" if export == "csv" else "\n")
    elif as_json:
        data = {"collection": str(path), "groups": [g.to_dict() for g in groups]}
        data["decisions"] = decisions
        if move_to is not None:
            data["moves"] = [m.to_dict() for m in moves]
            data["applied"] = apply
        print(json.dumps(data))
    else:
        _print_groups(groups, verify)
        _print_moves(moves, apply)
    for written in grids:
        err.print(f"grid written to {written}", highlight=False)
    if any(m.status == "failed" for m in moves):
        raise typer.Exit(1)


def _print_moves(moves: list, apply: bool) -> None:
    """What happened to each file (or, in a dry run, what --apply will do), then a count."""
    said = {"planned": "would move", "moved": "moved"}
    for move in moves:
        if move.status in said:
            out.print(f"{said[move.status]} {move.source} -> {move.target}", soft_wrap=True)
        elif move.status == "failed":
            err.print(f"[red]not moved:[/red] {move.source}: {move.reason}", soft_wrap=True)
        elif move.status == "missing":
            err.print(f"missing (not moved): {move.source}", soft_wrap=True, highlight=False)
    if not moves:
        return
    counts: dict[str, int] = {}
    for move in moves:
        counts[move.status] = counts.get(move.status, 0) + 1
    words = {
        "planned": "to move",
        "moved": "moved",
        "here": "already in the destination",
        "missing": "missing",
        "remote": "in an object store (not moved)",
        "failed": "failed",
    }
    err.print(", ".join(f"{n} {words[status]}" for status, n in counts.items()), highlight=False)
    if not apply and counts.get("planned"):
        err.print("dry run: add --apply to move the files (the collection follows them)")


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
