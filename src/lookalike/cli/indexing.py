"""``lookalike index``: add new and changed images to a collection, drop removed ones.

Inputs are checked in :mod:`lookalike.cli.validate`; exit codes follow docs/cli.md.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

from lookalike.cli import validate
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


# -- index -------------------------------------------------------------------------------------
def index(
    folders: Annotated[
        list[str],
        typer.Argument(
            metavar="FOLDER...",
            help="Folders (recursively, following links to folders), image files, or "
            "s3://bucket/prefix URIs.",
        ),
    ],
    collection: CollectionOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            metavar="MODEL",
            callback=validate.model_name,
            help="Model of a new collection: a name `lookalike models` lists, clip:DIR, or a "
            f"folder written by `lookalike train` [{DEFAULT_MODEL}].",
        ),
    ] = None,
    index_kind: Annotated[
        str | None,
        typer.Option(
            "--index",
            metavar="KIND",
            callback=validate.index_kind,
            help="Index kind of a new collection: flat, hnsw, ivf, ivf-pq, lsh, auto, or milvus "
            "(Milvus Lite in the collection) / milvus:URI (a .db file or http://host:19530) "
            f"[{DEFAULT_INDEX}]. An existing collection keeps its kind.",
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            metavar="GLOB",
            help="Leave out files matching GLOB (repeatable): a name (*.tmp.jpg, thumbnails) "
            "matches a file or any folder below the indexed folder, a path (raw/*, "
            "/photos/private) the path. Remembered by the collection: later runs leave them "
            "out too, and drop ones indexed before.",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, metavar="N", help="Images per batch through the model.")
    ] = 32,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, metavar="N", help="Decoding threads (with --ray: Ray workers) [4; with --ray 2]."
        ),
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
        Path | None,
        typer.Option(metavar="DIR", help="With --ray: keep the embedding shards in this folder."),
    ] = None,
    catalogue: Annotated[
        str | None,
        typer.Option(
            metavar="URI", help="Catalogue of a new collection: a postgresql://... URI [SQLite]."
        ),
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
        str | None,
        typer.Option(
            metavar="MODEL",
            callback=validate.choice("sscd-mobile", "sscd", what="copy-detection model"),
            help="Copy-detection model of --copy: sscd (better on hard copies) or sscd-mobile "
            "(1.6x faster) [sscd].",
        ),
    ] = None,
    regions: Annotated[
        bool,
        typer.Option(
            "--regions",
            help="With --copy: also describe 5 windows of each image (the corners and the "
            "centre) so that a copy keeping a quarter of a picture is found; 5x the copy work "
            "and vectors.",
        ),
    ] = False,
    words: Annotated[
        bool,
        typer.Option(
            "--words",
            help="Also read the words in the images (for `search --words`); an existing "
            "collection gains them for its stored images, and later runs read new ones.",
        ),
    ] = False,
) -> None:
    """Index images: new and changed files are embedded, removed ones dropped. Exit code 1 when
    an input is missing or unusable, or no image was found."""
    from lookalike.ingest.sources import is_remote

    path = collection or default_collection()
    if shards is not None and ray is None:
        validate.refuse("--shards keeps the embedding shards of --ray: add --ray local (or auto)")
    if regions and not copy_space:
        validate.refuse("--regions describes windows of each image for the copy space: add --copy")
    if copy_model is not None and not copy_space:
        validate.refuse("--copy-model chooses the model of --copy: add --copy")
    missing = [f for f in folders if not is_remote(f) and not Path(f).expanduser().exists()]
    for gone in missing:
        err.print(f"[red]error:[/red] no such file or folder: {gone}", highlight=False)
    inputs = [f for f in folders if f not in missing]
    if not inputs:
        raise typer.Exit(1)  # nothing to index: no collection is created
    new = not (path / "manifest.json").exists()
    existed = path.exists()
    if not new and index_kind is not None:
        _refuse_other_index(path, index_kind)
    chosen = copy_model  # None: the collection's copy model, or the default for a new one
    if copy_space and copy_model is None:
        from lookalike.copies.space import DEFAULT_COPY_MODEL

        copy_model = DEFAULT_COPY_MODEL
    copy = copy_model if copy_space else None
    with (
        errors(),
        Collection.open(
            path,
            create=True,
            model=model,
            index=index_kind or DEFAULT_INDEX,
            catalogue=catalogue,
            copy_model=copy,
        ) as col,
    ):
        if exclude:
            col.set_excludes([*col.excludes, *exclude])
        if regions:
            from lookalike.copies.scoring import region_spaces_of
        gains_regions = regions and not region_spaces_of(col)
        if copy is not None and ("copy" not in col.spaces() or gains_regions):
            with progress_bar("copy vectors") as bar:  # an existing collection gains them
                model_ = chosen or col.spaces().get("copy", {}).get("model", copy)
                added = col.add_copy_space(model_, progress=bar, regions=regions)
            for gone in added.missing:
                err.print(f"[yellow]missing[/yellow] {gone}: no copy vector (file is gone)")
        local = [Path(f) for f in inputs if not is_remote(f)]
        folders_ = [f for f in local if f.is_dir()] + [f for f in inputs if is_remote(f)]
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
        if not report.interrupted:
            from lookalike.words.cli import index_words

            index_words(col, words)  # with --words, or when the collection has words
        total = len(col)
        excludes = col.excludes
    found = report.added + report.updated + report.unchanged
    found += len(report.duplicates) + len(report.skipped)
    if as_json:
        data = {"collection": str(path), "images": total, **report.to_dict()}
        if excludes:
            data["excludes"] = excludes
        if missing:
            data["missing"] = missing
        print(json.dumps(data))
    elif found or not new:
        _print_report(report, path, total)
    if report.interrupted:
        err.print("[yellow]interrupted[/yellow]: what was indexed is saved; run again to resume")
        raise typer.Exit(130)
    if found == 0:
        if new and total == 0 and catalogue is None:
            _discard(path, existed)
        from lookalike.images import IMAGE_SUFFIXES

        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        validate.fail(
            f"no images found in {', '.join(inputs)} (image files end in {kinds}; hidden "
            "files and --exclude'd ones are left out)"
            + ("" if new else "; the collection is unchanged but for files that are gone")
        )
    given = {str(Path(f).expanduser().resolve()) for f in files}
    if missing or any(p in given for p, _ in report.skipped):
        raise typer.Exit(1)


def _refuse_other_index(path: Path, kind: str) -> None:
    """``--index`` names the kind of a new collection; an existing one of another kind is
    refused (exit 1) with how to rebuild it."""
    from lookalike.collection.manifest import read_manifest

    with errors():
        manifest = read_manifest(path)
    current = manifest.get("spaces", {}).get("image", {}).get("index") or manifest["index"]["kind"]
    if current != kind:
        validate.fail(
            f"{path} already has a {current!r} index; --index sets the kind of a new collection. "
            f"To rebuild it as {kind!r}: `lookalike index FOLDER... --collection NEW_DIR --index "
            f"{kind}` (or see docs/cli.md, 'Changing the index kind', to convert it in place)"
        )


def _discard(path: Path, existed: bool) -> None:
    """Remove the empty collection this run created (nothing was found to put in it)."""
    if not existed:
        shutil.rmtree(path, ignore_errors=True)
        return
    for name in (
        "manifest.json",
        "catalogue.sqlite",
        "catalogue.sqlite-wal",
        "catalogue.sqlite-shm",
        ".lock",
    ):
        with contextlib.suppress(OSError):
            (path / name).unlink()
    shutil.rmtree(path / "index", ignore_errors=True)


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
        f"in {report.seconds:.1f} s ({report.images_per_second:.1f} images/s)",
        soft_wrap=True,
    )
    for dup, original in report.duplicates[:20]:
        out.print(f"  duplicate  {dup}  (same content as {original})", soft_wrap=True)
    for skipped, reason in report.skipped:
        out.print(f"  [yellow]skipped[/yellow]    {skipped}: {reason}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command()(index)
