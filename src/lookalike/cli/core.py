"""The core commands: ``index``, ``search``, ``info``, ``remove`` and ``models``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lookalike.cli.common import (
    CollectionOpt,
    JsonOpt,
    default_collection,
    err,
    errors,
    out,
    progress_bar,
)
from lookalike.collection import DEFAULT_INDEX, DEFAULT_MODEL, Collection
from lookalike.images import ImageError


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
        errors(),
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
            with progress_bar("copy vectors") as bar:
                added = col.add_copy_space(copy, progress=bar)
            for gone in added.missing:
                err.print(f"[yellow]missing[/yellow] {gone}: no copy vector (file is gone)")
        from lookalike.ingest.sources import is_remote

        local = [Path(f) for f in folders if not is_remote(f)]
        folders_ = [f for f in local if f.is_dir()] + [f for f in folders if is_remote(f)]
        files = [f for f in local if not f.is_dir()]
        loader = None
        if ray is not None:
            from lookalike.ingest.bulk import RayLoader

            loader = RayLoader(
                col, workers=workers or 2, address=ray, out_dir=shards, batch_size=batch_size
            )
        with progress_bar("indexing") as bar:
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
        from lookalike.detect.boxes import parse_box

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

    with errors(), Collection.open(path) as col:
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
                        from lookalike.detect.boxes import crop_region
                        from lookalike.images import decode

                        try:
                            query = crop_region(decode(image), box)
                        except ValueError as exc:
                            report(str(image), None, str(exc))
                            continue
                    vector = col.embed([query], mode)  # one failing must not sink the others
                    hits = col.search_vectors(vector, k, space=mode, expand=expand)[0]
                    if verify:
                        from lookalike.keypoints.rerank import verify_results

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


def info(collection: CollectionOpt = None, as_json: JsonOpt = False) -> None:
    """Describe a collection: model, index, counts, size on disk."""
    path = collection or default_collection()
    with errors(), Collection.open(path) as col:
        data = col.info()
    if as_json:
        print(json.dumps(data))
        return
    for key, value in data.items():
        out.print(f"[bold]{key:>15}[/bold]  {value}")


def remove(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to forget.")],
    collection: CollectionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove files (or everything under folders) from a collection; the files stay on disk."""
    path = collection or default_collection()
    with errors(), Collection.open(path) as col:
        removed = col.remove(paths)
        total = len(col)
    if as_json:
        print(json.dumps({"removed": removed, "images": total}))
    else:
        out.print(f"removed {removed} files; {total} images left")


def models() -> None:
    """List the available models."""
    from lookalike.models import available

    for name in available():
        out.print(name)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command()(index)
    app.command()(search)
    app.command()(info)
    app.command()(remove)
    app.command()(models)
