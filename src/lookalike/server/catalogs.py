"""Catalogues as the server sees them: a registry entry, a Collection folder, stored blobs.

Everything here goes through :class:`lookalike.Collection`; there is no index or SQL code. Each
worker process keeps two open Collections per catalogue: a *reader* that searches (its index
reloads itself when the catalogue's generation moves, so uploads made by other workers appear
at the next search) and a *writer* used under the catalogue's write lock, so a long upload
never blocks searches.

Example:
    >>> cats = Catalogs(config, db, storage, load_embedder)  # doctest: +SKIP
    >>> cat = cats.create("shoes", "efficientnet-lite0")  # doctest: +SKIP
    >>> cats.add_uploads(cat["id"], [Upload(data=open("a.jpg", "rb").read())])  # doctest: +SKIP
"""

from __future__ import annotations

import fcntl
import io
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

from lookalike.collection import Collection, CollectionError, SearchResult
from lookalike.images import ImageError, decode, thumbnail
from lookalike.ingest import content_hash
from lookalike.models import Embedder
from lookalike.server.config import ServerConfig
from lookalike.server.db import ServerDB
from lookalike.server.storage import Storage

CATALOG_ID = re.compile(r"^c_[0-9a-f]{12}$")
MIME = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
#: How many times more results a filtered search asks the index for.
OVERFETCH = 10
BATCH = 32


class NotFoundError(LookupError):
    """No such catalogue, image or job (or not visible to the caller)."""


class BadRequestError(ValueError):
    """The request cannot be served as asked (the message says why)."""


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


class Catalogs:
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
        self._guard = threading.Lock()

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
        self.get(catalog_id)
        with self.write_lock(catalog_id):
            self.db.delete_catalog(catalog_id)
            self._forget(catalog_id)
            shutil.rmtree(self.folder(catalog_id), ignore_errors=True)
            self.storage.delete_prefix(catalog_id)

    def _forget(self, catalog_id: str) -> None:
        with self._guard:
            for cache in (self._readers, self._writers):
                col = cache.pop(catalog_id, None)
                if col is not None:
                    col.close()

    def _open(self, catalog_id: str, cache: dict[str, Collection]) -> Collection:
        entry = self.get(catalog_id)
        with self._guard:
            col = cache.get(catalog_id)
            if col is None or not (col.path / "manifest.json").exists():
                try:
                    col = Collection.open(
                        self.folder(catalog_id), embedder=self._embedder_unlocked(entry["model"])
                    )
                except CollectionError:
                    raise NotFoundError("no such catalogue") from None
                cache[catalog_id] = col
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
        """One writer per catalogue across threads (a lock) and processes (a blocking flock)."""
        with self._guard:
            lock = self._locks.setdefault(catalog_id, threading.Lock())
        with lock:
            folder = self.folder(catalog_id)
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "server-write.lock", "a+") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    # -- images -------------------------------------------------------------------------------
    def add_uploads(
        self,
        catalog_id: str,
        uploads: Sequence[Upload],
        progress: Callable[[int, int], None] | None = None,
    ) -> list[dict]:
        """Validate, store and index images; one result per upload (``id`` or ``error``)."""
        self.get(catalog_id)
        results: list[dict] = [{} for _ in uploads]
        done = 0
        for start in range(0, len(uploads), BATCH):
            staged = []
            for i in range(start, min(start + BATCH, len(uploads))):
                try:
                    staged.append(self._stage(catalog_id, i, uploads[i]))
                except ImageError as exc:
                    results[i] = {"index": i, "error": exc.reason}
            try:
                self._index(catalog_id, staged, results)
            finally:
                for item in staged:
                    item.path.unlink(missing_ok=True)
            done = min(start + BATCH, len(uploads))
            if progress:
                progress(done, len(uploads))
        return results

    def _stage(self, catalog_id: str, index: int, upload: Upload) -> _Staged:
        """Check the bytes are an image, store original and thumbnail, write a staging file."""
        if len(upload.data) > self.config.max_upload_bytes:
            raise ImageError(f"file larger than {self.config.max_upload_bytes:,} bytes")
        side = self.config.thumbnail_side
        image = decode(upload.data, min_side=side, max_pixels=self.config.max_pixels)
        digest = content_hash(upload.data)
        buffer = io.BytesIO()
        thumbnail(image, side).save(buffer, "JPEG", quality=85)
        self.storage.put(_thumb_key(catalog_id, digest), buffer.getvalue())
        self.storage.put(_original_key(catalog_id, digest), upload.data)
        incoming = self.folder(catalog_id) / "incoming"
        incoming.mkdir(exist_ok=True)
        path = incoming / f"{uuid.uuid4().hex}.upload"  # our name: nothing from the request
        path.write_bytes(upload.data)
        return _Staged(index, path, digest, dict(upload.metadata))

    def _index(self, catalog_id: str, staged: list[_Staged], results: list[dict]) -> None:
        if not staged:
            return
        paths = [str(item.path.resolve()) for item in staged]
        metadata = {p: item.metadata for p, item in zip(paths, staged, strict=True)}
        with self.write_lock(catalog_id):
            col = self.writer(catalog_id)
            report = self._retry_busy(lambda: col.add(paths, metadata=metadata))
            skipped = dict(report.skipped)
            for path, item in zip(paths, staged, strict=True):
                image_id = col.image_id_of(item.content_hash)
                if image_id is None:
                    reason = skipped.get(path, "not indexed")
                    results[item.index] = {"index": item.index, "error": reason}
                else:
                    results[item.index] = {"index": item.index, "id": image_id}

    def _retry_busy(self, write: Callable[[], object]):
        """Run a collection write, waiting while another process (e.g. the CLI) holds it."""
        deadline = time.monotonic() + self.config.write_wait_seconds
        delay = 0.05
        while True:
            try:
                return write()
            except CollectionError as exc:
                if "another lookalike process" not in str(exc) or time.monotonic() > deadline:
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

    # -- search -------------------------------------------------------------------------------
    def search(
        self,
        catalog_id: str,
        *,
        image: bytes | None = None,
        text: str | None = None,
        k: int = 10,
        filters: dict | None = None,
        region: Sequence[float] | None = None,
    ) -> list[dict]:
        """Best matches for an image (optionally a region of it) or a text, filtered."""
        col = self.reader(catalog_id)
        fetch = min(k * OVERFETCH, 1000) if filters else k
        if image is not None:
            query = decode(image, max_pixels=self.config.max_pixels)
            if region is not None:
                query = crop(query, region)
            hits = col.search(query, k=fetch)
        elif text is not None:
            hits = self._text_search(col, text, fetch)
        else:
            raise BadRequestError("give an image, an image URL or a text")
        if filters:
            hits = [h for h in hits if matches(h.metadata, filters)]
        return [hit_json(catalog_id, h) for h in hits[:k]]

    def _text_search(self, col: Collection, text: str, k: int) -> list[SearchResult]:
        if not col.has_text():
            raise BadRequestError("this catalogue's model has no text side: search it by image")
        return col.search_text(text, k)


def crop(image: Image.Image, region: Sequence[float]) -> Image.Image:
    """The part of ``image`` inside ``region`` = (x, y, width, height) as fractions of its size."""
    if len(region) != 4:
        raise BadRequestError("region is x,y,width,height as fractions of the image (0..1)")
    x, y, w, h = (float(v) for v in region)
    if not all(0 <= v <= 1 for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise BadRequestError("region values must be fractions of the image in 0..1")
    width, height = image.size
    box = (
        round(x * width),
        round(y * height),
        round(min(1.0, x + w) * width),
        round(min(1.0, y + h) * height),
    )
    if box[2] - box[0] < 8 or box[3] - box[1] < 8:
        raise BadRequestError("region is too small (under 8 pixels)")
    return image.crop(box)


def matches(metadata: dict, filters: dict) -> bool:
    """Every filter key equals the metadata value (or is one of them when it is a list)."""
    for key, wanted in filters.items():
        value = metadata.get(key)
        if isinstance(value, list) and not isinstance(wanted, list):
            if wanted not in value:
                return False
        elif value != wanted:
            return False
    return True


def image_json(catalog_id: str, image_id: int, width: int, height: int, metadata: dict) -> dict:
    base = f"/catalogs/{catalog_id}/images/{image_id}"
    return {
        "id": image_id,
        "width": width,
        "height": height,
        "metadata": metadata,
        "thumbnail": f"{base}/thumbnail",
        "original": f"{base}/original",
    }


def hit_json(catalog_id: str, hit: SearchResult) -> dict:
    return {
        "score": round(float(hit.score), 6),
        **image_json(catalog_id, hit.id, hit.width, hit.height, hit.metadata),
    }


def _original_key(catalog_id: str, digest: str) -> str:
    return f"{catalog_id}/originals/{digest}"


def _thumb_key(catalog_id: str, digest: str) -> str:
    return f"{catalog_id}/thumbs/{digest}.jpg"
