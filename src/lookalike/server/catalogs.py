"""Catalogues as the server sees them: a registry entry, a Collection folder, stored blobs.

Everything here goes through :class:`lookalike.Collection`; there is no index or SQL code. Each
worker process keeps two open Collections per catalogue: a *reader* that searches (its index
reloads itself when the catalogue's generation moves, so uploads made by other workers appear
at the next search) and a *writer* used under the catalogue's write lock, so a long upload
never blocks searches. Both are reopened when the collection's manifest changes (another worker
added the copy space, say).

Each catalogue keeps a local copy of every original (``files/<content hash>``): it is the file
the Collection indexes, and keypoint verification (``detect``) and the copy space
(``duplicates``) read it again later.

Memory: every decode is admitted under the worker's decode budget (``budget``, a
:class:`~lookalike.server.limits.Gate` of bytes, each decode's cost estimated from its header by
:func:`lookalike.images.decode_cost`) and bounded by ``max_decode_bytes``; an upload batch is
handed to the Collection (which decodes each file again) in groups whose decodes fit that bound.

A deleted catalogue leaves nothing behind: its registry row is its existence, checked under the
write lock before every commit; an upload that finds its catalogue gone (deleted while it was
storing files) removes everything stored under the catalogue's id, and nothing recreates a
deleted catalogue's folder.

Example:
    >>> cats = Catalogs(config, db, storage, load_embedder)  # doctest: +SKIP
    >>> cat = cats.create("shoes", "efficientnet-lite0")  # doctest: +SKIP
    >>> cats.add_uploads(cat["id"], [Upload(data=open("a.jpg", "rb").read())])  # doctest: +SKIP
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import re
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from lookalike.collection import Collection
from lookalike.errors import (
    BadRequestError,
    BusyError,
    CollectionError,
    NotFoundError,
)
from lookalike.images import DECODE_OVERHEAD, ImageError, decode, decode_cost, thumbnail
from lookalike.ingest.files import content_hash
from lookalike.models import Embedder
from lookalike.server.config import ServerConfig
from lookalike.server.db import ServerDB
from lookalike.server.limits import Gate
from lookalike.server.queries import CatalogQueries
from lookalike.server.shapes import image_json
from lookalike.server.storage import Storage

log = logging.getLogger("lookalike.server")
CATALOG_ID = re.compile(r"^c_[0-9a-f]{12}$")
MIME = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
BATCH = 32


@dataclass
class Upload:
    """One image to add: its bytes and the metadata to store with it."""

    data: bytes
    metadata: dict = field(default_factory=dict)


@dataclass
class _Staged:
    index: int
    path: Path
    content_hash: str
    metadata: dict
    #: What the Collection's own decode of the file holds at its peak (pixels and result).
    cost: int = 0


class Catalogs(CatalogQueries):
    """The catalogues under ``config.data_dir/catalogs`` with their collections and blobs."""

    def __init__(
        self,
        config: ServerConfig,
        db: ServerDB,
        storage: Storage,
        embedder_factory: Callable[[str], Embedder],
        models: Sequence[str],
    ) -> None:
        self.config = config
        self.db = db
        self.storage = storage
        self.embedder_factory = embedder_factory
        self.models = list(models)
        self.root = config.data_dir / "catalogs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._embedders: dict[str, Embedder] = {}
        self._readers: dict[str, Collection] = {}
        self._writers: dict[str, Collection] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._stamps: dict[tuple[int, str], tuple[int, int] | None] = {}
        self._files_checked: set[str] = set()
        self._guard = threading.Lock()
        #: Bytes of decode memory in flight in this worker.
        self.budget = Gate(config.decode_budget_bytes, "the memory for decoding images")
        #: URL fetches in flight in this worker.
        self.fetches = Gate(config.max_fetches, "every URL fetch slot")

    # -- catalogues ---------------------------------------------------------------------------
    def folder(self, catalog_id: str) -> Path:
        if not CATALOG_ID.match(catalog_id):  # ids are ours; anything else is not one
            raise NotFoundError("no such catalogue")
        return self.root / catalog_id

    def embedder(self, model: str) -> Embedder:
        with self._guard:
            if model not in self._embedders:
                self._embedders[model] = self.embedder_factory(model)
            return self._embedders[model]

    def create(self, name: str, model: str) -> dict:
        """A new empty catalogue built with ``model`` (one of the server's models)."""
        if model not in self.models:
            raise BadRequestError(f"unknown model {model!r}; available: {', '.join(self.models)}")
        catalog_id = "c_" + secrets.token_hex(6)
        Collection.create(self.folder(catalog_id), embedder=self.embedder(model)).close()
        return self.db.add_catalog(catalog_id, name, model)

    def get(self, catalog_id: str) -> dict:
        entry = self.db.catalog(catalog_id) if CATALOG_ID.match(catalog_id) else None
        if entry is None:
            self._forget(catalog_id)
            raise NotFoundError("no such catalogue")
        return entry

    def describe(self, catalog_id: str) -> dict:
        entry = self.get(catalog_id)
        col = self.reader(catalog_id)
        return {**entry, "images": len(col), "spaces": sorted(col.spaces())}

    def delete(self, catalog_id: str) -> None:
        """Remove the catalogue: its registry row first (from then on every write of it stops,
        see :meth:`write_lock`), then its folder and every stored blob."""
        self.get(catalog_id)
        with self.write_lock(catalog_id):
            self.db.delete_catalog(catalog_id)
            self._purge(catalog_id)

    def alive(self, catalog_id: str) -> bool:
        """Whether the catalogue is in the registry (a deleted one never comes back)."""
        return self.db.catalog(catalog_id) is not None

    def _purge(self, catalog_id: str) -> None:
        """Everything stored under a deleted catalogue's id: its folder and its blobs."""
        self._forget(catalog_id)
        shutil.rmtree(self.folder(catalog_id), ignore_errors=True)
        self.storage.delete_prefix(catalog_id)

    def _forget(self, catalog_id: str) -> None:
        with self._guard:
            self._files_checked.discard(catalog_id)
            for cache in (self._readers, self._writers):
                col = cache.pop(catalog_id, None)
                self._stamps.pop((id(cache), catalog_id), None)
                if col is not None:
                    col.close()

    def _open(self, catalog_id: str, cache: dict[str, Collection]) -> Collection:
        entry = self.get(catalog_id)
        folder = self.folder(catalog_id)
        with self._guard:
            col = cache.get(catalog_id)
            stamp = _stamp(folder / "manifest.json")
            key = (id(cache), catalog_id)
            if col is None or stamp is None or self._stamps.get(key) != stamp:
                # A reader may be searching in another thread: it is dropped, not closed.
                if col is not None and cache is self._writers:
                    col.close()
                try:
                    col = Collection.open(folder, embedder=self._embedder_unlocked(entry["model"]))
                except CollectionError:
                    cache.pop(catalog_id, None)
                    gone = not (folder / "manifest.json").exists() or not self.db.catalog(
                        catalog_id
                    )
                    if gone:  # deleted meanwhile
                        raise NotFoundError("no such catalogue") from None
                    raise  # there, but unusable as stored (damaged, a newer format...)
                cache[catalog_id] = col
                self._stamps[key] = stamp  # a change during the open reopens next time
            return col

    def _embedder_unlocked(self, model: str) -> Embedder:
        if model not in self._embedders:
            self._embedders[model] = self.embedder_factory(model)
        return self._embedders[model]

    def reader(self, catalog_id: str) -> Collection:
        """The Collection that searches and reads (sees other workers' writes)."""
        return self._open(catalog_id, self._readers)

    def writer(self, catalog_id: str) -> Collection:
        return self._open(catalog_id, self._writers)

    @contextmanager
    def write_lock(self, catalog_id: str) -> Iterator[None]:
        """One writer per catalogue across threads (a lock) and processes (a blocking flock);
        NotFoundError once the catalogue is deleted (checked after the lock is taken, so a
        write that waited for a delete never recreates what it removed)."""
        with self._guard:
            lock = self._locks.setdefault(catalog_id, threading.Lock())
        with lock:
            folder = self.folder(catalog_id)
            try:
                handle = open(folder / "server-write.lock", "a+")  # noqa: SIM115
            except FileNotFoundError:  # the folder is gone: deleted
                raise NotFoundError("no such catalogue") from None
            with handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    if not self.alive(catalog_id):
                        raise NotFoundError("no such catalogue")
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    # -- images -------------------------------------------------------------------------------
    def add_uploads(
        self,
        catalog_id: str,
        uploads: Sequence[Upload],
        progress: Callable[[int, int], None] | None = None,
        wait: float | None = None,
    ) -> list[dict]:
        """Validate, store and index images; one result per upload (``id`` or ``error``).

        Each decode waits up to ``wait`` seconds (default ``queue_wait_seconds``; jobs pass
        ``job_wait_seconds``) for decode memory, then :class:`OverloadedError` (503); the
        batches committed before stay (sending the same upload again is safe: the same content
        is one image), and what the failed batch stored is removed. When the catalogue is
        deleted meanwhile, what this upload stored is removed with the rest of it and
        NotFoundError goes up.
        """
        self.get(catalog_id)
        wait = self.config.queue_wait_seconds if wait is None else wait
        results: list[dict] = [{} for _ in uploads]
        done = 0
        pending: list[_Staged] = []  # stored, not yet committed
        try:
            for start in range(0, len(uploads), BATCH):
                for i in range(start, min(start + BATCH, len(uploads))):
                    try:
                        pending.append(self._stage(catalog_id, i, uploads[i], wait))
                    except ImageError as exc:
                        results[i] = {"index": i, "error": exc.reason}
                self._index(catalog_id, pending, results, wait)
                done = min(start + BATCH, len(uploads))
                if progress:
                    progress(done, len(uploads))
        except Exception:
            if not self.alive(catalog_id):  # deleted under us: what we stored goes too
                self._purge(catalog_id)
                raise NotFoundError(
                    "no such catalogue (it was deleted during the upload)"
                ) from None
            self._discard(catalog_id, pending)
            raise
        return results

    def _discard(self, catalog_id: str, staged: list[_Staged]) -> None:
        """Remove what a failed upload stored for files it did not commit (unless an image of
        the catalogue holds the same content)."""
        if not staged:
            return
        try:
            with self.write_lock(catalog_id):
                col = self.writer(catalog_id)
                for item in staged:
                    if col.image_id_of(item.content_hash) is None:
                        self.storage.delete(_original_key(catalog_id, item.content_hash))
                        self.storage.delete(_thumb_key(catalog_id, item.content_hash))
                        item.path.unlink(missing_ok=True)
        except Exception:  # the failure that brought us here is the one to report
            log.warning("could not discard the files of a failed upload", exc_info=True)

    def _stage(self, catalog_id: str, index: int, upload: Upload, wait: float) -> _Staged:
        """Check the bytes are an image, store original and thumbnail, keep the local copy."""
        config = self.config
        if len(upload.data) > config.max_upload_bytes:
            raise ImageError(f"file larger than {config.max_upload_bytes:,} bytes")
        if not self.alive(catalog_id):
            raise NotFoundError("no such catalogue")
        # What the Collection's decode of this file will hold (it decodes with the library's
        # bound): refused here when that is more than one decode may take on this server.
        cost = decode_cost(
            upload.data, min_side=self.reader(catalog_id).decode_side, max_pixels=config.max_pixels
        )
        if cost > config.max_decode_bytes:
            raise ImageError(
                f"decoding this image takes about {cost / 2**20:,.0f} MB, more than the "
                f"{config.max_decode_bytes / 2**20:,.0f} MB this server allows; "
                "send a smaller image"
            )
        side = config.thumbnail_side
        options = dict(
            min_side=side, max_pixels=config.max_pixels, max_bytes=config.max_decode_bytes
        )
        with self.budget.hold(decode_cost(upload.data, **options), wait):
            image = decode(upload.data, **options)
            buffer = io.BytesIO()
            thumbnail(image, side).save(buffer, "JPEG", quality=85)
            del image
        digest = content_hash(upload.data)
        self.storage.put(_thumb_key(catalog_id, digest), buffer.getvalue())
        self.storage.put(_original_key(catalog_id, digest), upload.data)
        path = self._keep_file(catalog_id, digest, upload.data)
        return _Staged(index, path, digest, dict(upload.metadata), cost)

    def _local_file(self, catalog_id: str, digest: str) -> Path:
        """Where the catalogue keeps its copy of an original (named by the content hash)."""
        return self.folder(catalog_id) / "files" / digest

    def _keep_file(self, catalog_id: str, digest: str, data: bytes) -> Path:
        """Write the local copy of an original unless it is there (atomically: temp + rename;
        an existing file keeps its mtime, so the Collection sees it unchanged)."""
        path = self._local_file(catalog_id, digest)
        if path.exists():
            return path
        incoming = self.folder(catalog_id) / "incoming"
        try:  # never the catalogue's own folder: one that is gone was deleted
            incoming.mkdir(exist_ok=True)
            path.parent.mkdir(exist_ok=True)
        except FileNotFoundError:
            raise NotFoundError("no such catalogue") from None
        temp = incoming / f"{uuid.uuid4().hex}.upload"  # our name: nothing from the request
        temp.write_bytes(data)
        os.replace(temp, path)
        return path

    def _ensure_files(self, catalog_id: str, col: Collection) -> None:
        """Catalogues made before the server kept local copies: write back, from storage, the
        originals whose indexed file is gone (once per process and catalogue)."""
        if catalog_id in self._files_checked:
            return
        folder = self.folder(catalog_id).resolve()
        for record in col.records():
            if any(os.path.exists(p) for p in record.paths):
                continue
            target = Path(record.paths[0]) if record.paths else None
            if target is None or folder not in target.parents:
                continue  # not a file of ours: never written
            try:
                data = self.storage.get(_original_key(catalog_id, record.content_hash))
            except KeyError:
                continue
            try:  # never the catalogue's own folder: one that is gone was deleted
                target.parent.mkdir(exist_ok=True)
            except FileNotFoundError:
                raise NotFoundError("no such catalogue") from None
            temp = target.with_name(f".{uuid.uuid4().hex}.tmp")
            temp.write_bytes(data)
            os.replace(temp, target)
        self._files_checked.add(catalog_id)

    def _index(
        self, catalog_id: str, staged: list[_Staged], results: list[dict], wait: float
    ) -> None:
        """Add the staged files to the Collection, in groups whose decodes fit one decode's
        bound, each holding its share of the decode budget while the Collection decodes it;
        each group is taken off ``staged`` once committed."""
        for group, cost in list(_groups(staged, self.config.max_decode_bytes)):
            with self.budget.hold(cost, wait):
                self._add(catalog_id, group, results)
            del staged[: len(group)]

    def _add(self, catalog_id: str, staged: list[_Staged], results: list[dict]) -> None:
        paths = [str(item.path.resolve()) for item in staged]
        metadata: dict[str, dict] = {}
        for path, item in zip(paths, staged, strict=True):  # one content twice: metadata merged
            metadata[path] = {**metadata.get(path, {}), **item.metadata}
        with self.write_lock(catalog_id):
            col = self.writer(catalog_id)
            report = self._retry_busy(lambda: col.add(list(metadata), metadata=metadata))
            self._read_new_words(col)
            skipped = dict(report.skipped)
            for path, item in zip(paths, staged, strict=True):
                image_id = col.image_id_of(item.content_hash)
                if image_id is None:
                    reason = skipped.get(path, "not indexed")
                    results[item.index] = {"index": item.index, "error": reason}
                    item.path.unlink(missing_ok=True)  # no image holds this content
                else:
                    results[item.index] = {"index": item.index, "id": image_id}

    def _retry_busy(self, write: Callable[[], object]):
        """Run a collection write, waiting while another process (e.g. the CLI) holds it; after
        ``write_wait_seconds`` the :class:`BusyError` goes up (the API answers 409)."""
        deadline = time.monotonic() + self.config.write_wait_seconds
        delay = 0.05
        while True:
            try:
                return write()
            except BusyError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def image(self, catalog_id: str, image_id: int) -> dict:
        record = self.reader(catalog_id).get(image_id)
        if record is None:
            raise NotFoundError(f"no image {image_id} in this catalogue")
        return image_json(catalog_id, record.id, record.width, record.height, record.metadata) | {
            "bytes": record.bytes,
            "copies": len(record.paths),
        }

    def list_images(self, catalog_id: str, offset: int, limit: int) -> dict:
        col = self.reader(catalog_id)
        ids = col.image_ids()
        page = ids[offset : offset + limit]
        records = [col.get(i) for i in page]
        return {
            "total": len(ids),
            "offset": offset,
            "limit": limit,
            "images": [
                image_json(catalog_id, r.id, r.width, r.height, r.metadata)
                for r in records
                if r is not None
            ],
        }

    def delete_image(self, catalog_id: str, image_id: int) -> None:
        self.get(catalog_id)
        with self.write_lock(catalog_id):
            col = self.writer(catalog_id)
            record = col.get(image_id)
            if record is None:
                raise NotFoundError(f"no image {image_id} in this catalogue")
            self._retry_busy(lambda: col.remove_images([image_id]))
            if col.image_id_of(record.content_hash) is None:
                self.storage.delete(_original_key(catalog_id, record.content_hash))
                self.storage.delete(_thumb_key(catalog_id, record.content_hash))
                self._local_file(catalog_id, record.content_hash).unlink(missing_ok=True)

    def blob(self, catalog_id: str, image_id: int, kind: str) -> tuple[bytes, str]:
        """The thumbnail (``kind="thumbnail"``) or original of an image, with its MIME type."""
        record = self.reader(catalog_id).get(image_id)
        if record is None:
            raise NotFoundError(f"no image {image_id} in this catalogue")
        if kind == "thumbnail":
            key, mime = _thumb_key(catalog_id, record.content_hash), "image/jpeg"
        else:
            key, mime = _original_key(catalog_id, record.content_hash), ""
        try:
            data = self.storage.get(key)
        except KeyError:
            raise NotFoundError("the stored file of this image is missing") from None
        if not mime:
            with Image.open(io.BytesIO(data)) as header:
                mime = MIME.get(header.format or "", "application/octet-stream")
        return data, mime


#: Files the Collection decodes at once while it adds (its loader's threads).
LOADER_THREADS = 2


def _groups(staged: list[_Staged], bound: int) -> Iterator[tuple[list[_Staged], int]]:
    """``staged`` in order, cut into groups whose decodes fit ``bound`` bytes, with each
    group's cost: the pixels of every decoded file (the Collection keeps them until they are
    embedded) plus the decoders' own overhead, once per loader thread."""
    group: list[_Staged] = []
    pixels = 0
    for item in staged:
        own = max(0, item.cost - DECODE_OVERHEAD)
        if group and pixels + own + LOADER_THREADS * DECODE_OVERHEAD > bound:
            yield group, pixels + LOADER_THREADS * DECODE_OVERHEAD
            group, pixels = [], 0
        group.append(item)
        pixels += own
    if group:
        yield group, pixels + LOADER_THREADS * DECODE_OVERHEAD


def _stamp(path: Path) -> tuple[int, int] | None:
    """What changes when a file is rewritten (atomic rename: a new inode), or None if absent."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_ino


def _original_key(catalog_id: str, digest: str) -> str:
    return f"{catalog_id}/originals/{digest}"


def _thumb_key(catalog_id: str, digest: str) -> str:
    return f"{catalog_id}/thumbs/{digest}.jpg"
