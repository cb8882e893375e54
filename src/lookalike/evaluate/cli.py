"""``lookalike eval``: retrieval quality on a labelled data set (see :mod:`.run`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lookalike.cli import validate
from lookalike.cli.common import JsonOpt, err, errors, out, progress_bar
from lookalike.collection import DEFAULT_MODEL
from lookalike.evaluate.datasets import LAYOUTS


def eval_(
    dataset: Annotated[
        Path,
        typer.Argument(
            metavar="DATASET",
            callback=validate.existing_path,
            help="Evaluation set: class folders, query/ + gallery/, a flat UKBench folder, or a "
            "'query,reference' pairs CSV.",
        ),
    ],
    collection: Annotated[
        Path | None,
        typer.Option(
            "--collection",
            "-c",
            metavar="DIR",
            help="Collection folder for the embeddings (created or extended); default: a cache "
            "collection per dataset and model.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            metavar="MODEL",
            callback=validate.model_name,
            help=f"Model (default: the collection's, else {DEFAULT_MODEL}).",
        ),
    ] = None,
    layout: Annotated[
        str | None,
        typer.Option(
            metavar="LAYOUT",
            callback=validate.choice(*LAYOUTS, what="layout"),
            help=f"One of {', '.join(LAYOUTS)} [detected].",
        ),
    ] = None,
    as_json: JsonOpt = False,
    report: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR", help="Write an HTML report (index.html + PNGs) to this folder."
        ),
    ] = None,
    worst: Annotated[
        int, typer.Option(min=0, metavar="N", help="Worst queries to show in the report.")
    ] = 25,
) -> None:
    """Measure retrieval quality on a labelled dataset: mAP, P@k, CMC, N-S, µAP, timings."""
    from lookalike.evaluate.datasets import DatasetError
    from lookalike.evaluate.run import EvalError, evaluate

    with errors():
        try:
            with progress_bar("embedding") as bar:
                result = evaluate(
                    dataset,
                    collection=collection,
                    model=model,
                    layout=layout,
                    progress=bar,
                    worst=worst,
                )
        except (DatasetError, EvalError) as exc:
            # Dataset messages end with the list of layouts; the first line says what is wrong.
            first = str(exc).splitlines()[0]
            hint = (
                " (`lookalike eval --help` lists the layouts)" if "use one of" not in first else ""
            )
            err.print(f"[red]error:[/red] {first}{hint}", soft_wrap=True, highlight=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print(
                "[yellow]interrupted[/yellow]: what was embedded is saved; run again to resume"
            )
            raise typer.Exit(130) from None
    written = None
    if report is not None:
        from lookalike.evaluate.report import write_report

        written = write_report(
            report,
            result.summary(),
            result.per_class,
            result.pr_curve,
            result.worst,
            title=f"lookalike eval: {Path(result.dataset).name} ({result.model})",
            max_queries=worst,
        )
    if as_json:
        data = result.to_dict()
        if written is not None:
            data["report"] = str(written)
        print(json.dumps(data))
        return
    _print_eval(result)
    if written is not None:
        err.print(f"report written to {written}")


def _print_eval(result) -> None:
    out.print(
        f"[bold]{result.dataset}[/bold] ({result.layout}, {result.queries} queries x "
        f"{result.gallery} gallery) with {result.model}"
    )
    table = Table(show_edge=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, "—" if value != value else f"{value:.4f}")  # nan != nan
    out.print(table)
    if result.per_class:
        # Worst mAP first; a class without a defined mAP (nan != nan) goes last.
        worst_first = sorted(
            result.per_class.items(), key=lambda kv: (kv[1]["mAP"] != kv[1]["mAP"], kv[1]["mAP"])
        )
        shown = worst_first if len(worst_first) <= 20 else worst_first[:10]
        classes = Table(
            title="per class"
            + ("" if shown is worst_first else f" (10 worst of {len(worst_first)})"),
            title_justify="left",
            show_edge=False,
        )
        columns = list(shown[0][1])
        classes.add_column("class")
        for column in columns:
            classes.add_column(column, justify="right")
        for label, row in shown:
            cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()]
            classes.add_row(label, *cells)
        out.print(classes)
    lat = result.latency
    out.print(f"indexing: {result.indexing['note']}")
    out.print(
        f"query latency ({lat['queries']} searches, embedding included): "
        f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms on {result.device}"
    )
    for path, reason in result.skipped[:10]:
        out.print(f"  [yellow]unreadable, left out[/yellow] {path}: {reason}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("eval")(eval_)
