"""Reading the words in a collection's images: :func:`add_words`, and what a collection has.

Every stored image is read once (``ocr.Reader``: the detector on every image, the recogniser on
the boxes it finds), from the first of its files that still holds its content; its lines go to
the collection's words store (``store.py``) with a *done* row, also when it has no text, one
transaction per batch of images. A run killed at any point (``kill -9``) keeps every committed
batch, and the next run reads only the images not done: no image is half-read and nothing is
re-embedded. Images added later are read by the next :func:`add_words` (``lookalike index``
does it for a collection that has words, ``lookalike words`` on its own).

Example:
    >>> from lookalike import Collection
    >>> with Collection.open("photos.lookalike") as col:  # doctest: +SKIP
    ...     add_words(col).to_dict()
    {'read': 1000, 'with_text': 57, 'lines': 130, 'missing': [], 'seconds': 98.1, ...}
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lookalike.errors import CollectionError
from lookalike.ingest import files as ingest
from lookalike.ingest import sources
from lookalike.store import FileState, ImageRecord
from lookalike.words.ocr import Reader
from lookalike.words.store import ImageWords, WordsStore, open_store

if TYPE_CHECKING:
    from lookalike.collection import Collection

__all__ = ["WordsReport", "add_words", "has_words", "how_to_add", "words_info", "words_store"]

Progress = Callable[[int, int], None]


def how_to_add(path: object) -> str:
    """The one-line message for a collection whose images' words were never read."""
    return (
        f"{path} has no words read from its images; add them with `lookalike words "
        f"--collection {path}` (or `lookalike index FOLDER --collection {path} --words`, or "
        "lookalike.words.add_words(col)): only the stored images are read, nothing is re-embedded"
    )


def words_store(col: Collection, *, create: bool = False) -> WordsStore | None:
    """The collection's words store; None when its words were never read (and not
    ``create``)."""
    return open_store(col.path, col.manifest.get("catalogue"), create=create)


def has_words(col: Collection) -> bool:
    """True when words were read from the collection's images (all or some)."""
    store = words_store(col)
    if store is None:
        return False
    store.close()
    return True


def words_info(col: Collection) -> dict | None:
    """What the collection knows of the words in its images (for ``lookalike info``):
    images, images read, images with text, lines, images still to read; None without words.

    Example:
        >>> words_info(col)  # doctest: +SKIP
        {'images': 1000, 'images_read': 1000, 'images_with_text': 57, 'lines': 130, 'to_read': 0}
    """
    store = words_store(col)
    if store is None:
        return None
    try:
        counts = store.counts()
        done = store.done()
        where = store.where
    finally:
        store.close()
    ids = col.image_ids()
    return {"images": len(ids), **counts, "to_read": len(set(ids) - set(done)), "where": where}


@dataclass
class WordsReport:
    """What :func:`add_words` did: images read, how many had text, lines found, images none of
    whose files could be read (their paths), stale entries dropped, seconds, interrupted."""

    read: int = 0
    with_text: int = 0
    lines: int = 0
    missing: list[str] = field(default_factory=list)
    dropped: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    engine: str = ""

    @property
    def images_per_second(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "read": self.read,
            "with_text": self.with_text,
            "lines": self.lines,
            "missing": self.missing,
            "dropped": self.dropped,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "interrupted": self.interrupted,
            "engine": self.engine,
        }


def add_words(
    col: Collection,
    *,
    progress: Progress | None = None,
    batch_size: int = 16,
    workers: int = 2,
    reader: Reader | None = None,
) -> WordsReport:
    """Read the words in every image of ``col`` not read yet (see the module's docstring).
    Takes the collection's write lock. Ctrl-C stops after the batch in hand, with
    ``interrupted`` set; what was committed stays.

    Raises:
        ModelError: the OCR engine is not installed.
        BusyError: another process writes the collection.
    """
    start = time.perf_counter()
    reader = reader or Reader()
    report = WordsReport(engine=reader.version)
    with col.writing():
        store = words_store(col, create=True)
        assert store is not None
        try:
            _add(col, store, reader, report, progress, max(1, batch_size), workers)
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            store.close()
    report.seconds = time.perf_counter() - start
    return report


def _add(
    col: Collection,
    store: WordsStore,
    reader: Reader,
    report: WordsReport,
    progress: Progress | None,
    batch_size: int,
    workers: int,
) -> None:
    done = store.done()
    records = list(col.records())
    live = {r.id: r.content_hash for r in records}
    stale = [i for i, h in done.items() if live.get(i) != h]
    store.forget(stale)
    report.dropped = len(stale)
    todo = [r for r in records if done.get(r.id) != r.content_hash]
    if progress:
        progress(0, len(todo))
    side = reader.settings.det_side
    batches = [todo[b : b + batch_size] for b in range(0, len(todo), batch_size)]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: collections.deque = collections.deque()
        for batch in batches[:2]:  # decoding runs one batch ahead of reading
            pending.append([pool.submit(_load, r, side) for r in batch])
        for number in range(len(batches)):
            loaded = [future.result() for future in pending.popleft()]
            if number + 2 < len(batches):
                pending.append([pool.submit(_load, r, side) for r in batches[number + 2]])
            usable = [(r, item) for r, item in loaded if item is not None]
            for record, item in loaded:
                if item is None:
                    report.missing.extend(record.paths)
            sizes = [(r.width or item.width, r.height or item.height) for r, item in usable]
            found = reader.read([item.image for _, item in usable], sizes)
            store.put(
                [
                    ImageWords(record.id, record.content_hash, lines)
                    for (record, _), lines in zip(usable, found, strict=True)
                ],
                reader.version,
            )
            report.read += len(usable)
            report.with_text += sum(1 for lines in found if lines)
            report.lines += sum(len(lines) for lines in found)
            if progress:
                progress(min((number + 1) * batch_size, len(todo)), len(todo))


def _load(record: ImageRecord, side: int) -> tuple[ImageRecord, ingest.Loaded | None]:
    """The record's image decoded from the first of its files that still holds its content
    (JPEGs at a reduced scale whose shorter side is at least ``side``); None when none does."""
    for path in record.paths:
        remote = sources.is_remote(path)
        try:
            state = FileState(0, 0) if remote else ingest.file_state(path)
        except (OSError, CollectionError, ValueError):
            continue
        read = sources.read_bytes if remote else None
        item = ingest.load_file(path, state, min_side=side, read=read)
        if item.error is None and item.content_hash == record.content_hash:
            return record, item
    return record, None
