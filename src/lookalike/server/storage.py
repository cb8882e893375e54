"""Where the server keeps originals and thumbnails: a local folder or any fsspec store (S3).

Keys are made by the server only (``<catalog id>/originals/<content hash>``), never from a
request, and are checked against :data:`KEY_PATTERN` before they touch any file system.

Example:
    >>> store = open_storage("/tmp/lookalike-blobs")  # doctest: +SKIP
    >>> store.put("c1/thumbs/ab12.jpg", b"...")  # doctest: +SKIP
    >>> store.get("c1/thumbs/ab12.jpg")  # doctest: +SKIP
    b'...'
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Protocol

from lookalike.errors import StorageError

#: Keys are lower-case words separated by "/" with no "." segments: they cannot climb out.
KEY_PATTERN = re.compile(r"^[a-z0-9_-]+(/[a-z0-9_-]+)*(\.[a-z0-9]+)?$")


class Storage(Protocol):
    """A flat key -> bytes store."""

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes:
        """The blob's bytes; raises KeyError when it does not exist."""
        ...

    def delete(self, key: str) -> None:
        """Remove a blob (no error when it is already gone)."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Remove every blob under ``prefix/``."""
        ...


def check_key(key: str) -> str:
    """``key`` if it is a safe storage key, else StorageError."""
    if not KEY_PATTERN.match(key) or len(key) > 300:
        raise StorageError(f"invalid storage key {key!r}")
    return key


class LocalStorage:
    """Blobs as files under one folder, written atomically (temp file + rename)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)


class FsspecStorage:
    """Blobs in any fsspec file system, e.g. ``s3://bucket/prefix`` through s3fs.

    ``options`` go to the file system (for S3: ``key``, ``secret``,
    ``client_kwargs={"endpoint_url": ...}``); credentials may also come from the usual AWS
    environment variables.
    """

    def __init__(self, url: str, **options: object) -> None:
        import fsspec

        self.fs, root = fsspec.core.url_to_fs(url, **options)
        self.root = root.rstrip("/")

    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def put(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(key), data)

    def get(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            raise KeyError(key) from None

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

    def delete_prefix(self, prefix: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._path(prefix), recursive=True)
        self.fs.invalidate_cache()


def open_storage(url: str | Path, **options: object) -> Storage:
    """A local folder for a plain path or ``file://`` URL, else an fsspec store."""
    text = str(url)
    if "://" not in text or text.startswith("file://"):
        return LocalStorage(text.removeprefix("file://"))
    return FsspecStorage(text, **options)
