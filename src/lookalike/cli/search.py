"""``lookalike search``: the indexed images most like query images, a text, words, or a
stored image (``--like``), with filters; tables, ``--json``, ``--csv`` and grids.

Inputs are checked in :mod:`lookalike.cli.validate`; exit codes follow docs/cli.md.
"""

from __future__ import annotations

import json
import os
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
        bool | None,
        typer.Option(
            "--verify/--no-verify",
            help="Check results by keypoint matching; the table and grid show verified and "
            "inliers (--mode image: re-ranked; --mode copy: the first 3, folded into the copy "
            "score). [on with --mode copy]",
        ),
    ] = None,
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
    if mode == "copy" and expand:
        validate.refuse("--mode copy compares the query itself: query expansion does not apply")
    if verify is None:  # a copy search checks its first hits: within 400 ms, a better score
        verify = mode == "copy" and bool(images)
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
                    if mode == "copy":  # scored by P(copy), verification folded in
                        from lookalike.copies.scoring import search_copies

                        hits = search_copies(
                            col,
                            query,
                            k,
                            vector=vector,
                            verify=verify,
                            where=allowed,
                            exclude=sorted(self_ids),
                        )
                        report(str(image), hits)
                        continue
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
            err.print(f"grid written to {_write_grid(shown, grid, box)}", highlight=False)
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


def _write_grid(shown: list, target: Path, box: validate.Region | None = None) -> Path:
    """One row per query; with --verify each result is framed green (verified) or red, a
    verified result's matched region is boxed (amber) on its tile, and the row ends with the
    query beside its first verified result, lines between their matched keypoints."""
    from lookalike.grid import BAD, GOOD, QUERY, Tile, render, search_grid

    if not any(r.verified is not None for _, results in shown for r in results):
        return search_grid(shown, target)
    rows = []
    for query, results in shown:
        row = [Tile(query, "query", Path(query).name, frame=QUERY)]
        for i, r in enumerate(results, 1):
            checked = f"verified {r.inliers}" if r.verified else "not verified"
            # The region is in the result's original pixels (its recorded size).
            region = r.region if r.verified else None
            row.append(
                Tile(
                    r.path,
                    f"#{i} {r.score:.3f} {checked}",
                    Path(r.path).name,
                    frame=GOOD if r.verified else BAD,
                    box=region,
                    box_size=(r.width, r.height) if region is not None and r.width else None,
                )
            )
        panel = _pair_tile(query, results, box)
        if panel is not None:
            row.append(panel)
        rows.append(row)
    return render(rows, target)


def _pair_tile(query: str, results: list, box: validate.Region | None):
    """A grid tile two cells wide: the query (its region, with --region) beside its first
    verified result, a line between each pair of matched keypoints, the region boxed; None
    when no result is verified or the query cannot be read again."""
    from lookalike.grid import GOOD, Tile, pair_panel
    from lookalike.images import decode
    from lookalike.keypoints.rerank import VERIFY_SIDE, decode_any
    from lookalike.keypoints.verify import verify

    first = next((r for r in results if r.verified), None)
    if first is None:
        return None
    picture, problem = _query_of(Path(query), box)
    candidate = decode_any(first.paths or (first.path,), VERIFY_SIDE)
    if problem is not None or candidate is None:
        return None
    try:
        picture = decode(picture, min_side=VERIFY_SIDE)
    except (ImageError, OSError):
        return None
    outcome = verify(picture, candidate)
    if not outcome.verified or outcome.pairs is None:
        return None
    rank = results.index(first) + 1
    return Tile(
        pair_panel(
            picture, candidate, outcome.pairs[:: max(1, len(outcome.pairs) // 150)], outcome.region
        ),
        f"keypoints: query and #{rank}",
        f"{outcome.inliers} matches agree",
        frame=GOOD,
        span=2,
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command()(search)
