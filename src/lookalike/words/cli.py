"""``lookalike words`` and ``lookalike ocr``, and the words parts of ``index`` and ``search``.

Example::

    lookalike words --collection photos.lookalike          # read the words in every image
    lookalike search --words "lisboa" -c photos.lookalike --json
    lookalike search bus.jpg --words "express"             # one ranking: words + looks
    lookalike ocr sign.jpg --json                          # the text in any picture
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import typer

from lookalike.cli.common import (
    CollectionOpt,
    JsonOpt,
    default_collection,
    err,
    errors,
    out,
    progress_bar,
)
from lookalike.collection import Collection
from lookalike.errors import ImageError


def words_command(
    collection: CollectionOpt = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Images per batch (one transaction each).")
    ] = 16,
    as_json: JsonOpt = False,
) -> None:
    """Read the words in a collection's images (only those not read yet), for
    `search --words`. Resumable: a stopped run keeps what it read."""
    from lookalike.words.add import add_words, words_info

    path = collection or default_collection()
    with errors(), Collection.open(path) as col:
        with progress_bar("words") as bar:
            report = add_words(col, progress=bar, batch_size=batch_size)
        info = words_info(col)
    if as_json:
        print(json.dumps({"collection": str(path), **report.to_dict(), "words": info}))
    else:
        _print_report(report, info)
    if report.interrupted:
        err.print("[yellow]interrupted[/yellow]: what was read is saved; run again to resume")
        raise typer.Exit(130)


def _print_report(report, info: dict | None) -> None:
    out.print(
        f"read {report.read} images ({report.with_text} with text, {report.lines} lines) in "
        f"{report.seconds:.1f} s ({report.images_per_second:.1f} images/s)"
        + (f"; {info['images_with_text']} of {info['images']} images have text" if info else "")
    )
    for gone in report.missing:
        err.print(f"[yellow]missing[/yellow] {gone}: not read (the file is gone or changed)")


def ocr_command(
    images: Annotated[list[Path], typer.Argument(help="Image files to read.")],
    as_json: JsonOpt = False,
) -> None:
    """Read the text in image files (no collection needed): each line, its confidence and
    its box in pixels."""
    from lookalike.words.ocr import Reader

    failed = False
    with errors():
        reader = Reader()
        for image in images:
            try:
                lines = reader.read_one(image)
            except (ImageError, OSError) as exc:
                failed = True
                reason = getattr(exc, "reason", None) or str(exc)
                if as_json:
                    print(json.dumps({"image": str(image), "lines": [], "error": reason}))
                else:
                    err.print(f"[red]error:[/red] {image}: {reason}")
                continue
            if as_json:
                print(json.dumps({"image": str(image), "lines": [ln.to_dict() for ln in lines]}))
                continue
            out.print(f"[bold]{image}[/bold]: {len(lines)} lines")
            for line in lines:
                x0, y0, x1, y1 = line.bbox
                out.print(f"  {line.confidence:.2f}  {x0},{y0},{x1},{y1}  {line.text}")
    if failed:
        raise typer.Exit(1)


# -- for lookalike.cli.core: `index --words` and `search --words` ----------------------------
def index_words(col: Collection, requested: bool) -> None:
    """After an indexing run: read the words of the new images when ``requested`` or when
    the collection already has words (a line on stderr says what was done)."""
    from lookalike.words.add import add_words, has_words
    from lookalike.words.ocr import available, install_hint

    if not requested and not has_words(col):
        return
    if not requested and not available():
        err.print(f"[yellow]words not read[/yellow]: {install_hint()}")
        return
    with progress_bar("words") as bar:
        report = add_words(col, progress=bar)
    err.print(
        f"words: read {report.read} images ({report.with_text} with text) in {report.seconds:.1f} s"
    )


Report = Callable[..., None]


def answer_words(
    col: Collection,
    words: Sequence[str],
    k: int,
    *,
    images: Sequence[Path] = (),
    text: Sequence[str] = (),
    report: Report,
) -> None:
    """Answer ``search --words``: each words query alone, or with each query image and/or the
    ``--text`` (one ranking each, see ``lookalike.words.search``); ``report(label, results)``
    or ``report(label, None, problem)`` for an image that cannot be read."""
    from lookalike.words.search import search_words

    texts = list(text) or None
    described = "".join(f"{t} + " for t in text)
    for query in words:
        if not images:
            report(f"{described}words: {query}", search_words(col, query, k, text=texts))
            continue
        for image in images:
            label = f"{image} + {described}words: {query}"
            try:
                hits = search_words(col, query, k, image=image, text=texts)
            except (ImageError, OSError) as exc:
                report(label, None, getattr(exc, "reason", None) or str(exc))
                continue
            report(label, hits)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("words")(words_command)
    app.command("ocr")(ocr_command)
