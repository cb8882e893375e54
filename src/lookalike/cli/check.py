"""``lookalike check``: verify a collection, and with ``--repair`` repair what can be repaired.

Example::

    lookalike check --collection photos.lookalike
    lookalike check -c photos.lookalike --repair --json

Exit code 0 when the collection is healthy (or was repaired), 1 when problems remain.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.text import Text

from lookalike.cli.common import (
    CollectionOpt,
    JsonOpt,
    default_collection,
    err,
    errors,
    out,
    progress_bar,
)


def check(
    collection: CollectionOpt = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Rebuild what is derivable (index files, missing vectors), salvage the "
            "readable rows of a damaged catalogue (the damaged file is kept beside it), "
            "restore a damaged manifest from the catalogue's copy.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify a collection: manifest, catalogue, every space's vectors, the index files."""
    from lookalike.collection.check import check_collection

    path = collection or default_collection()
    with errors():
        if repair:
            with progress_bar("missing vectors") as bar:
                report = check_collection(path, repair=True, progress=bar)
        else:
            report = check_collection(path)
    if as_json:
        print(json.dumps(report.to_dict()))
    else:
        for finding in report.findings:
            if finding.repaired:
                label, style = "repaired", "green"
            elif finding.note:
                label, style = "note", "cyan"
            else:
                label, style = "problem", "red"
            line = Text.assemble((f"{label:>8}", style), f"  {finding.part}: {finding.problem}")
            out.print(line, soft_wrap=True)
        for lost in report.lost:
            out.print(Text.assemble(("    lost", "yellow"), f"  {lost}"), soft_wrap=True)
        if report.healthy:
            state = "repaired" if any(f.repaired for f in report.findings) else "healthy"
            out.print(Text.assemble((str(path), "bold"), f": {state}"), soft_wrap=True)
        else:
            hint = "" if repair else "; run `lookalike check --repair`"
            err.print(
                Text.assemble(
                    (str(path), "bold"), f": {len(report.problems)} problems remain{hint}"
                ),
                soft_wrap=True,
            )
    if not report.healthy:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``check`` to ``app``."""
    app.command("check")(check)
