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
            "'query,reference' pairs CSV; for --task words, a folder with words.csv.",
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
    task: Annotated[
        str,
        typer.Option(
            metavar="TASK",
            callback=validate.choice("images", "words", what="task"),
            help="images: find look-alikes (the layouts); words: find images by the words "
            "written in them (DATASET holds words.csv: 'path,words').",
        ),
    ] = "images",
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
    """Measure retrieval quality on a labelled dataset: mAP, P@k, CMC, N-S, µAP, timings.
    With --task words: finding images by the words in them (mAP, P@1, Recall@10, ms/query)."""
    from lookalike.evaluate.datasets import DatasetError
    from lookalike.evaluate.run import EvalError, evaluate

    if task == "words" and layout is not None:
        err.print("[red]error:[/red] --layout is for --task images; a words set is its words.csv")
        raise typer.Exit(2)
    with errors():
        try:
            with progress_bar("embedding" if task == "images" else "indexing") as bar:
                if task == "words":
                    from lookalike.evaluate.words import evaluate_words

                    result = evaluate_words(
                        dataset, collection=collection, model=model, progress=bar
                    )
                else:
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
        unit = "word" if result.layout == "words" else "class"
        classes = Table(
            title=f"per {unit}"
            + ("" if shown is worst_first else f" (10 worst of {len(worst_first)})"),
            title_justify="left",
            show_edge=False,
        )
        columns = list(shown[0][1])
        classes.add_column(unit)
        for column in columns:
            classes.add_column(column, justify="right")
        for label, row in shown:
            cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()]
            classes.add_row(label, *cells)
        out.print(classes)
    lat = result.latency
    out.print(f"indexing: {result.indexing['note']}")
    if "mean_ms" in lat:  # the words task: no embedding in a query
        out.print(
            f"{lat['queries']} {lat['note']}: {lat['mean_ms']} ms per query, "
            f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms"
        )
    else:
        out.print(
            f"query latency ({lat['queries']} searches, embedding included): "
            f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms on {result.device}"
        )
    for path, reason in result.skipped[:10]:
        out.print(f"  [yellow]unreadable, left out[/yellow] {path}: {reason}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("eval")(eval_)
