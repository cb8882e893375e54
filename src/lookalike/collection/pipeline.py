"""One indexing run: decide what changed, load files in threads, embed and commit in batches.

Files are compared with the catalogue by (size, mtime) or the object's ETag; new and changed
ones are read, hashed and decoded by :mod:`lookalike.ingest.files` in a thread pool while the
model embeds the previous batch; each batch is one catalogue transaction, then added to the
indexes in memory, which are saved at the end (``kill -9`` at any point leaves a valid
collection: the next run rebuilds what is behind and skips what is committed).

Example:
    >>> indexer = Indexer(col, batch_size=32, workers=2)  # doctest: +SKIP
    >>> indexer.run(files, prune=set(), progress=None)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.collection.metadata import info_of_file
from lookalike.collection.results import IndexReport
from lookalike.errors import CollectionError, ImageError
from lookalike.ingest import files as ingest
from lookalike.ingest import sources
from lookalike.store import FileState, NewImage

Progress = Callable[[int, int], None]
#: Loads the files to index, (path, state) pairs, into items; ``lookalike.ingest.bulk`` gives
#: one that embeds them in Ray workers (items then carry their ``vectors``).
Loader = Callable[[list[tuple[str, FileState]]], Iterable[ingest.Loaded]]


class Indexer:
    """One indexing run: decide what changed, load in threads, embed and commit in batches."""

    def __init__(self, collection: Any, batch_size: int, workers: int) -> None:
        self.col = collection
        self.cat = collection.catalogue
        self.batch_size = max(1, batch_size)
        self.workers = workers
        self.report = IndexReport()
        self.metadata: dict[str, dict] = {}
        # States known without a stat (objects listed in S3, rows of embedding shards), and a
        # loader that yields loaded (or already-embedded) items for the files to do.
        self.states: dict[str, FileState] = {}
        self.loader: Loader | None = None
        # What each loaded file's header says (``ingest.exif``), read in the loading threads.
        self.infos: dict[str, dict] = {}

    def run(self, files: list[str], prune: set[str], progress: Progress | None) -> IndexReport:
        start = time.perf_counter()
        self.col.embedder  # noqa: B018 - load and check the model before any work
        self.indexes = {space: self.col.index(space) for space in self.col.spaces()}
        if prune:  # every file under the folders synced, to find those gone
            known, skips = self.cat.file_states(), self.cat.skipped_states()
        else:  # the files given only: an upload costs its files, not the catalogue's
            known = self.cat.file_states_of(files)
            skips = self.cat.skipped_states_of(p for p in files if p not in known)
        todo: list[tuple[str, FileState]] = []
        self.replaced: set[str] = set()
        for path in files:
            try:
                state = self.states.get(path) or ingest.file_state(path)
            except OSError as exc:
                self.report.skipped.append((path, f"cannot read file: {exc.strerror or exc}"))
                continue
            except ImageError as exc:  # a FIFO, a device, a folder, too large: never opened
                self.report.skipped.append((path, exc.reason))
                continue
            if path in known:
                if known[path][0] == state:
                    self.report.unchanged += 1
                    if path in self.metadata:
                        self.col.update_metadata(known[path][1], self.metadata[path])
                    continue
                self.replaced.add(path)
            elif path in skips and skips[path][0] == state:
                self.report.skipped.append((path, skips[path][1]))  # unchanged since it failed
                continue
            todo.append((path, state))
        if prune:
            listed = set(files)
            gone = [p for p in known if p.startswith(tuple(prune)) and p not in listed]
            self._drop(gone)
            self.report.removed = len(gone)
            self.cat.forget_skips(
                p for p in skips if p.startswith(tuple(prune)) and p not in listed
            )

        self.pending: list[ingest.Loaded] = []
        self.hashes_in_batch: dict[str, str] = {}
        self.deferred: list[ingest.Loaded] = []

        prepare = getattr(self.col.embedder, "prepare", None)

        def load(path: str, state: FileState) -> ingest.Loaded:
            item = ingest.load_file(
                path, state, min_side=self.col.decode_side, read=reader_of(path)
            )
            if prepare is not None and item.image is not None:
                item.prepared = prepare(item.image)  # resize here, beside the network's work
            if item.error is None:  # the file is in the page cache now: its header is cheap
                self.infos[path] = info_of_file(path, state.mtime_ns)
            return item

        total = len(todo)
        if progress:
            progress(0, total)
        try:
            loaded = (
                self.loader(todo)
                if self.loader is not None
                else ingest.load_files(todo, load, workers=self.workers, window=4 * self.batch_size)
            )
            for done, item in enumerate(loaded, 1):
                self._take(item)
                if len(self.pending) >= self.batch_size:
                    self._flush()
                if progress:
                    progress(done, total)
            self._flush()
        except KeyboardInterrupt:
            self.report.interrupted = True
        except BaseException:
            # The run failed (a full disk, a damaged catalogue): keep what is committed and
            # save the indexes if that still works, but report the first failure, not one of
            # saving after it (the index is a cache: the next open rebuilds it).
            with contextlib.suppress(Exception):
                self._save()
            raise
        self._save()
        self.report.seconds = time.perf_counter() - start
        return self.report

    def _save(self) -> None:
        """The indexes, in step with the committed batches, saved (with their PCA learned)."""
        self.col.mark_indexes_current()
        self.col.refit_projections()
        self.col.save_indexes()

    def _take(self, item: ingest.Loaded) -> None:
        if item.error is not None:
            self.cat.record_skip(item.path, item.state, item.error)
            self.report.skipped.append((item.path, item.error))
            return
        if item.content_hash in self.hashes_in_batch:
            self.deferred.append(item)  # same content as a file waiting in this batch
            return
        existing = self.cat.image_id_by_hash(item.content_hash)
        if existing is not None:
            self._link(item, existing)
            return
        if item.image is None and item.vectors is None:  # hash was known, its image has gone
            item = ingest.load_file(
                item.path, item.state, min_side=self.col.decode_side, read=reader_of(item.path)
            )
            if item.error is not None:
                self._take(item)
                return
        self.hashes_in_batch[item.content_hash] = item.path
        self.pending.append(item)

    def _link(self, item: ingest.Loaded, image_id: int) -> None:
        self.infos.pop(item.path, None)  # the image's header info came from its first file
        record = self.cat.images([image_id])[0]
        if item.path in self.replaced:
            self._drop([item.path])
            self.report.updated += 1
        if record is not None and item.path not in record.paths:
            others = [p for p in record.paths if p != item.path]
            if others:
                self.report.duplicates.append((item.path, others[0]))
        self.cat.link_file(item.path, image_id, item.state)
        if item.path in self.metadata:
            self.col.update_metadata(image_id, self.metadata[item.path])

    def _flush(self) -> None:
        if self.pending:
            batch, self.pending = self.pending, []
            prepared = [item.prepared for item in batch]
            if all(item.vectors is not None for item in batch):  # embedded elsewhere (bulk.py)
                vectors = self.col.complete_vectors([item.vectors for item in batch])
            else:
                vectors = self.col.embed_images(
                    [item.image for item in batch],
                    prepared=prepared if all(p is not None for p in prepared) else None,
                )
            replaced = [item.path for item in batch if item.path in self.replaced]
            self._drop(replaced)
            ids = self.cat.add_images(
                [
                    NewImage(
                        content_hash=item.content_hash,
                        path=item.path,
                        state=item.state,
                        width=item.width,
                        height=item.height,
                        vectors={space: v[i] for space, v in vectors.items()},
                        metadata=self.metadata.get(item.path, {}),
                        info=self.infos.pop(item.path, {}),
                    )
                    for i, item in enumerate(batch)
                ]
            )
            for space, index in self.indexes.items():
                index.add(np.asarray(ids, dtype=np.int64), vectors[space])
            self.report.updated += len(replaced)
            self.report.added += len(batch) - len(replaced)
        self.hashes_in_batch.clear()
        deferred, self.deferred = self.deferred, []
        for item in deferred:
            self._take(item)

    def _drop(self, paths: list[str]) -> None:
        orphans = self.cat.remove_files(paths)
        for index in self.indexes.values():
            index.remove(np.asarray(orphans, dtype=np.int64))


def resolve(path: str | Path) -> str:
    """``path`` absolute, with ``~`` expanded and links resolved."""
    return str(Path(path).expanduser().resolve())


def reader_of(path: str) -> Callable[[str], bytes] | None:
    """How to read ``path``: None for a local file, ``sources.read_bytes`` for a URI."""
    return sources.read_bytes if sources.is_remote(path) else None


def list_remote(uris: Iterable[str | Path]) -> dict[str, FileState]:
    """Image objects under remote prefixes (``s3://...``): URI -> state (size, ETag)."""
    states: dict[str, FileState] = {}
    for uri in uris:
        try:
            states.update(sources.list_images(str(uri)))
        except sources.SourceError as exc:
            raise CollectionError(str(exc)) from exc
    return states


def expand_paths(paths: Iterable[str | Path]) -> list[str]:
    """Files as given plus image files under folders, absolute, without repeats."""
    out: dict[str, None] = {}
    for p in paths:
        path = Path(p).expanduser().resolve()
        if path.is_dir():
            out.update(dict.fromkeys(ingest.walk(path)))
        else:
            out[str(path)] = None
    return list(out)
