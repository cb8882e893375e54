"""The ``lookalike`` command line: one thin function per command over the Collection API.

Human-readable output goes to the terminal, progress bars to stderr, and ``--json`` prints
machine-readable JSON on stdout (``search --json``: one object per query per line, a public
contract: ``{"query": ..., "results": [{"path", "score", "id", ...}]}``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from lookalike.collection import DEFAULT_INDEX, DEFAULT_MODEL, Collection, CollectionError
from lookalike.images import ImageError
from lookalike.index import VectorIndexError
from lookalike.models import ModelError

app = typer.Typer(
    help="lookalike: reverse image search. Index a folder, then find the images that look like "
    "a query.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts show "[default: ...]" literally
)
out = Console()
err = Console(stderr=True)


def default_collection() -> Path:
    """``$LOOKALIKE_COLLECTION``, else a per-user data folder."""
    env = os.environ.get("LOOKALIKE_COLLECTION")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("lookalike")) / "default"


CollectionOpt = Annotated[
    Path | None,
    typer.Option(
        "--collection",
        "-c",
        help="Collection folder [default: $LOOKALIKE_COLLECTION or a per-user data folder].",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


@contextmanager
def _errors() -> Iterator[None]:
    """Turn expected failures into a one-line message and exit code 1."""
    try:
        yield
    except (CollectionError, ModelError, ImageError, FileNotFoundError, VectorIndexError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@contextmanager
def _progress_bar(label: str) -> Iterator:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False, disable=not err.is_terminal) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@app.command()
def index(
    folders: Annotated[
        list[str],
        typer.Argument(help="Folders (recursively), image files, or s3://bucket/prefix URIs."),
    ],
    collection: CollectionOpt = None,
    model: Annotated[
        str | None, typer.Option(help=f"Model for a new collection [{DEFAULT_MODEL}].")
    ] = None,
    index_kind: Annotated[
        str,
        typer.Option(
            "--index",
            help="Index kind for a new collection: flat, hnsw, ivf, ivf-pq, lsh, auto, or milvus "
            "(Milvus Lite in the collection) / milvus:URI (a .db file or http://host:19530).",
        ),
    ] = DEFAULT_INDEX,
    batch_size: Annotated[int, typer.Option(help="Images per batch through the model.")] = 32,
    workers: Annotated[
        int | None, typer.Option(help="Decoding threads (with --ray: Ray workers, default 2).")
    ] = None,
    as_json: JsonOpt = False,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Decode and embed in Ray workers: local (a Ray here with --workers CPUs), "
            "auto (the running cluster) or ray://HOST:PORT. Needs lookalike[ray].",
        ),
    ] = None,
    shards: Annotated[
        Path | None, typer.Option(help="With --ray: keep the embedding shards in this folder.")
    ] = None,
    catalogue: Annotated[
        str | None, typer.Option(help="Catalogue of a new collection: postgresql://... URI.")
    ] = None,
    copy_space: Annotated[
        bool,
        typer.Option(
            "--copy",
            help="Also compute copy-detection vectors (for `search --mode copy` and "
            "`duplicates`); an existing collection gains them for its stored images.",
        ),
    ] = False,
    copy_model: Annotated[
        str, typer.Option(help="Copy-detection model with --copy: sscd-mobile or sscd.")
    ] = "sscd-mobile",
) -> None:
    """Index images: new and changed files are embedded, removed ones dropped."""
    path = collection or default_collection()
    copy = copy_model if copy_space else None
    with (
        _errors(),
        Collection.open(
            path,
            create=True,
            model=model,
            index=index_kind,
            catalogue=catalogue,
            copy_model=copy,
        ) as col,
    ):
        if copy is not None and "copy" not in col.spaces():  # an existing collection gains it
            with _progress_bar("copy vectors") as bar:
                added = col.add_copy_space(copy, progress=bar)
            for gone in added.missing:
                err.print(f"[yellow]missing[/yellow] {gone}: no copy vector (file is gone)")
        from lookalike.sources import is_remote

        local = [Path(f) for f in folders if not is_remote(f)]
        folders_ = [f for f in local if f.is_dir()] + [f for f in folders if is_remote(f)]
        files = [f for f in local if not f.is_dir()]
        loader = None
        if ray is not None:
            from lookalike.bulk import RayLoader

            loader = RayLoader(
                col, workers=workers or 2, address=ray, out_dir=shards, batch_size=batch_size
            )
        with _progress_bar("indexing") as bar:
            report = col.sync(
                folders_, progress=bar, batch_size=batch_size, workers=workers, loader=loader
            )
            if files:
                more = col.add(
                    files, progress=bar, batch_size=batch_size, workers=workers, loader=loader
                )
                _merge(report, more)
        total = len(col)
    if as_json:
        print(json.dumps({"collection": str(path), "images": total, **report.to_dict()}))
    else:
        _print_report(report, path, total)
    if report.interrupted:
        err.print("[yellow]interrupted[/yellow]: what was indexed is saved; run again to resume")
        raise typer.Exit(130)


def _merge(report, more) -> None:
    for name in ("added", "updated", "unchanged", "removed", "seconds"):
        setattr(report, name, getattr(report, name) + getattr(more, name))
    report.duplicates += more.duplicates
    report.skipped += more.skipped
    report.interrupted |= more.interrupted


def _print_report(report, path: Path, total: int) -> None:
    out.print(
        f"[bold]{path}[/bold]: {total} images. This run: added {report.added}, "
        f"updated {report.updated}, unchanged {report.unchanged}, removed {report.removed}, "
        f"duplicates {len(report.duplicates)}, skipped {len(report.skipped)} "
        f"in {report.seconds:.1f} s ({report.images_per_second:.1f} images/s)"
    )
    for dup, original in report.duplicates[:20]:
        out.print(f"  duplicate  {dup}  (same content as {original})")
    for skipped, reason in report.skipped:
        out.print(f"  [yellow]skipped[/yellow]    {skipped}: {reason}")


@app.command()
def search(
    images: Annotated[
        list[Path] | None, typer.Argument(help="Query images (each is its own query).")
    ] = None,
    collection: CollectionOpt = None,
    k: Annotated[int, typer.Option("-k", "--top", help="Results per query.")] = 10,
    text: Annotated[
        list[str] | None,
        typer.Option(
            "--text",
            "-t",
            help='Describe what to find ("a red bus"); repeat for several queries. '
            "With images, one combined query. TEXT:WEIGHT sets a weight.",
        ),
    ] = None,
    negative: Annotated[
        list[str] | None,
        typer.Option("--not", help="Text to steer away from (with --text); TEXT:WEIGHT too."),
    ] = None,
    expand: Annotated[
        int | None,
        typer.Option(help="Query expansion over the first N results (0: off; default: on)."),
    ] = None,
    as_json: JsonOpt = False,
    grid: Annotated[Path | None, typer.Option(help="Write a picture of the results (PNG).")] = None,
    mode: Annotated[
        str, typer.Option(help="image (looks alike) or copy (edited copies of the query).")
    ] = "image",
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Re-rank by keypoint matching (verified, inliers, region)."),
    ] = False,
    region: Annotated[
        str | None,
        typer.Option(help="Search only this box of each query: x0,y0,x1,y1 (upright pixels)."),
    ] = None,
) -> None:
    """Find the indexed images most similar to each query image, or matching a text."""
    images, text, negative = images or [], text or [], negative or []
    if not images and not text:
        err.print("[red]error:[/red] give query images, --text, or both")
        raise typer.Exit(2)
    path = collection or default_collection()
    box = None
    if region is not None:
        from lookalike.detect import parse_box

        try:
            box = parse_box(region)
        except ValueError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    failed = False
    shown = []

    def report(query: str, results: list | None, problem: str | None = None) -> None:
        nonlocal failed
        if problem is not None:
            failed = True
            if as_json:
                print(json.dumps({"query": query, "results": [], "error": problem}))
            else:
                err.print(f"[red]error:[/red] {query}: {problem}")
            return
        shown.append((query, results))
        if as_json:
            print(json.dumps({"query": query, "results": [r.to_dict() for r in results]}))
        else:
            _print_results(query, results)

    with _errors(), Collection.open(path) as col:
        if text and images:  # one query: images and texts together, minus the --not terms
            label = " + ".join([*map(str, images), *text]) + "".join(f" - {n}" for n in negative)
            report(label, col.search_text(text, k, negative=negative, images=images))
        elif text:
            for query in text:
                label = query + "".join(f" - {n}" for n in negative)
                report(label, col.search_text([query], k, negative=negative))
        else:
            col.index(mode)  # an unknown mode or a missing copy space fails once, clearly
            for image in images:
                try:
                    query = image
                    if box is not None:
                        from lookalike.detect import crop_region
                        from lookalike.images import decode

                        try:
                            query = crop_region(decode(image), box)
                        except ValueError as exc:
                            report(str(image), None, str(exc))
                            continue
                    vector = col.embed([query], mode)  # one failing must not sink the others
                    hits = col.search_vectors(vector, k, space=mode, expand=expand)[0]
                    if verify:
                        from lookalike.copies import verify_results

                        hits = verify_results(query, hits)
                except (ImageError, OSError) as exc:
                    report(str(image), None, getattr(exc, "reason", None) or str(exc))
                    continue
                report(str(image), hits)
        if grid is not None and shown:
            from lookalike.grid import search_grid

            err.print(f"grid written to {search_grid(shown, grid)}")
    if failed:
        raise typer.Exit(1)


def _print_results(query: str, results: list) -> None:
    table = Table(title=f"query: {query}", title_justify="left", show_edge=False)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("id", justify="right")
    table.add_column("path")
    for rank, r in enumerate(results, 1):
        table.add_row(str(rank), f"{r.score:.4f}", str(r.id), r.path)
    out.print(table)


@app.command()
def info(collection: CollectionOpt = None, as_json: JsonOpt = False) -> None:
    """Describe a collection: model, index, counts, size on disk."""
    path = collection or default_collection()
    with _errors(), Collection.open(path) as col:
        data = col.info()
    if as_json:
        print(json.dumps(data))
        return
    for key, value in data.items():
        out.print(f"[bold]{key:>15}[/bold]  {value}")


@app.command()
def remove(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to forget.")],
    collection: CollectionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove files (or everything under folders) from a collection; the files stay on disk."""
    path = collection or default_collection()
    with _errors(), Collection.open(path) as col:
        removed = col.remove(paths)
        total = len(col)
    if as_json:
        print(json.dumps({"removed": removed, "images": total}))
    else:
        out.print(f"removed {removed} files; {total} images left")


@app.command()
def models() -> None:
    """List the available models."""
    from lookalike.models import available

    for name in available():
        out.print(name)


@app.command("eval")
def eval_(
    dataset: Annotated[
        Path,
        typer.Argument(
            help="Evaluation set: class folders, query/ + gallery/, a flat UKBench folder, or a "
            "'query,reference' pairs CSV."
        ),
    ],
    collection: Annotated[
        Path | None,
        typer.Option(
            "--collection",
            "-c",
            help="Collection folder for the embeddings (created or extended); default: a cache "
            "collection per dataset and model.",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help=f"Model (default: the collection's, else {DEFAULT_MODEL}).")
    ] = None,
    layout: Annotated[
        str | None,
        typer.Option(help="folders, query-gallery, ukbench or pairs (default: detected)."),
    ] = None,
    as_json: JsonOpt = False,
    report: Annotated[
        Path | None, typer.Option(help="Write an HTML report (index.html + PNGs) to this folder.")
    ] = None,
    worst: Annotated[int, typer.Option(min=0, help="Worst queries to show in the report.")] = 25,
) -> None:
    """Measure retrieval quality on a labelled dataset: mAP, P@k, CMC, N-S, µAP, timings."""
    from lookalike.datasets import DatasetError
    from lookalike.evaluate import EvalError, evaluate

    with _errors():
        try:
            with _progress_bar("embedding") as bar:
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
        from lookalike.report import write_report

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


from lookalike.server.cli import serve  # noqa: E402 - the server's own module

app.command("serve")(serve)


from lookalike.cli_train import train_command  # noqa: E402

app.command("train")(train_command)


from lookalike.cli_geo import index_video, locate  # noqa: E402

app.command("index-video")(index_video)
app.command("locate")(locate)


from lookalike.cli_copies import duplicates_command  # noqa: E402

app.command("duplicates")(duplicates_command)


from lookalike.cli_detect import detect_command  # noqa: E402

app.command("detect")(detect_command)


def main() -> None:  # pragma: no cover - console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
