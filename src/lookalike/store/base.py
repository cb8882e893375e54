"""The Catalogue protocol: what a collection keeps about its images, vectors included.

The catalogue is the source of truth. An *image* is one distinct content (by hash) with its
dimensions, metadata and one vector per *space* (``"image"`` for the semantic descriptor; other
features add their own, e.g. ``"copy"``). A *file* is a location (a path, later a URL or an S3
key) that holds an image's content; identical files share one image. Every write bumps a
*generation* number, so an index saved at another generation is known to be stale and rebuilt.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from lookalike.errors import CatalogueError  # noqa: F401 - re-exported
from lookalike.store.query import Condition

#: Starts the stored form of a path that is not valid UTF-8 (see :func:`path_to_store`). Stored
#: paths are absolute or URIs, so none starts with this control character on its own; a path
#: that does is escaped too, so the mapping stays one-to-one.
RAW_PATH_MARK = "\x01"


def path_to_store(path: str) -> str:
    r"""The text a catalogue stores for ``path``.

    A file name that is not valid UTF-8 reaches Python with lone surrogates (``os.fsdecode``:
    byte 0xE9 becomes U+DCE9), which no database's text column takes. Such a path is stored as
    :data:`RAW_PATH_MARK` plus its JSON string (ASCII, with ``\udce9`` escapes), which
    :func:`path_from_store` turns back into the same str, so the file opens again. Every other
    path is stored as it is.

    Example:
        >>> path_to_store("/photos/caf\udce9.jpg")
        '\x01"/photos/caf\\udce9.jpg"'
        >>> path_from_store(path_to_store("/photos/caf\udce9.jpg")) == "/photos/caf\udce9.jpg"
        True
        >>> path_to_store("/photos/café.jpg")
        '/photos/café.jpg'
    """
    if not path.startswith(RAW_PATH_MARK):
        try:
            path.encode("utf-8")
            return path
        except UnicodeEncodeError:
            pass
    return RAW_PATH_MARK + json.dumps(path)


def path_from_store(text: str) -> str:
    """The path stored as ``text`` (the inverse of :func:`path_to_store`)."""
    return json.loads(text[1:]) if text.startswith(RAW_PATH_MARK) else text


def text_to_store(text: str) -> str:
    """Free text (a skip reason) made storable: unencodable characters backslash-escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


#: The header columns of the images table (``lookalike.ingest.exif``), in stored order.
INFO_COLUMNS = (
    "taken_at",
    "taken_offset",
    "taken_source",
    "lat",
    "lon",
    "camera_make",
    "camera_model",
    "lens",
)


def info_row(info: dict) -> tuple:
    """The header columns' values of an info dict (None where unknown; all None when the
    header was not read, which leaves ``taken_source`` NULL: to be read)."""
    return tuple(info.get(name) for name in INFO_COLUMNS)


def info_of(row: Sequence) -> dict:
    """The info dict of the header columns' values (unknown ones left out)."""
    return {name: value for name, value in zip(INFO_COLUMNS, row, strict=True) if value is not None}


@dataclass(frozen=True)
class FileState:
    """What was seen of a file when it was last indexed (to detect changes cheaply)."""

    size: int
    mtime_ns: int


@dataclass
class NewImage:
    """An image to add: its content hash, its first file, its vectors by space."""

    content_hash: str
    path: str
    state: FileState
    width: int
    height: int
    vectors: dict[str, np.ndarray]
    metadata: dict = field(default_factory=dict)
    #: What the file's header says (``lookalike.ingest.exif.read_info``: taken time and its
    #: source, GPS position, camera, lens); empty: not read yet (the header pass reads it).
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ImageRecord:
    """One image as stored: its id, every file that holds it, its metadata."""

    id: int
    content_hash: str
    paths: tuple[str, ...]
    width: int
    height: int
    bytes: int
    metadata: dict
    #: The header info stored for it (keys of ``ingest.exif.INFO_COLUMNS`` that are known).
    info: dict = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The first file (by name) that holds this image."""
        return self.paths[0] if self.paths else ""


class Catalogue(Protocol):
    """Storage for images, files, vectors and skipped files. Implementations: sqlite, postgres.

    Paths may be any str ``os.fsdecode`` gives, lone surrogates included (file names that are
    not UTF-8): implementations store them through :func:`path_to_store` and give them back
    unchanged. Opened with ``create=False``, a catalogue that does not exist or is empty is an
    error (its collection's images would silently be gone).
    """

    def generation(self) -> int:
        """A number that grows with every change to images or vectors."""
        ...

    def file_states(self) -> dict[str, tuple[FileState, int]]:
        """Every known file: path -> (state when indexed, image id)."""
        ...

    def skipped_states(self) -> dict[str, tuple[FileState, str]]:
        """Every file skipped before: path -> (state then, reason)."""
        ...

    def file_states_of(self, paths: Iterable[str]) -> dict[str, tuple[FileState, int]]:
        """:meth:`file_states` of ``paths`` only (those known): O(len(paths))."""
        ...

    def skipped_states_of(self, paths: Iterable[str]) -> dict[str, tuple[FileState, str]]:
        """:meth:`skipped_states` of ``paths`` only (those skipped before)."""
        ...

    def image_id_by_hash(self, content_hash: str) -> int | None: ...

    def add_images(self, images: Sequence[NewImage]) -> list[int]:
        """Insert images, their first file and vectors, in one transaction; return the ids."""
        ...

    def link_file(self, path: str, image_id: int, state: FileState) -> None:
        """Record that ``path`` holds the content of ``image_id`` (a duplicate or a move)."""
        ...

    def touch_file(self, path: str, state: FileState) -> None:
        """Update the state of a file whose content did not change."""
        ...

    def remove_files(self, paths: Iterable[str]) -> list[int]:
        """Forget files; return the ids of images left with no file (they are deleted)."""
        ...

    def record_skip(self, path: str, state: FileState, reason: str) -> None: ...

    def forget_skips(self, paths: Iterable[str]) -> None: ...

    def images(self, ids: Sequence[int]) -> list[ImageRecord | None]:
        """Records for ``ids``, in order (None for unknown ids)."""
        ...

    def vectors(self, space: str, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of ``ids`` in ``space``, in order."""
        ...

    def iter_vectors(
        self, space: str, batch: int = 10_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All (ids, vectors) of a space, in chunks."""
        ...

    def put_vectors(self, space: str, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Add or replace the vectors of existing images in ``space``."""
        ...

    def ids_missing(self, space: str) -> list[int]:
        """Images that have no vector in ``space`` yet."""
        ...

    def ids_missing_after(self, space: str, after: int) -> tuple[list[int], int]:
        """:meth:`ids_missing` among images with ids above ``after``, and the largest image id
        (``after`` when none is above it): O(images added since ``after``)."""
        ...

    def count(self) -> dict[str, int]:
        """Numbers of images, files and skipped files."""
        ...

    def vector_counts(self) -> dict[str, int]:
        """How many vectors each space holds (a space is complete when it has one per image)."""
        ...

    def set_encoding(self, space: str, encoding: str) -> None:
        """Write the vectors of ``space`` in ``encoding`` from now on (``store.encoding``; the
        default is format 1's float32). Stored blobs say how they were written."""
        ...

    def vector_stats(self) -> dict[str, dict[str, dict[str, int]]]:
        """space -> encoding -> ``{"vectors", "bytes"}`` of the stored vectors."""
        ...

    def reencode(
        self, space: str, batch: int = 2000, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Rewrite the float32 vectors of ``space`` in its encoding, ``batch`` rows a
        transaction (the generation stays); returns how many were rewritten."""
        ...

    def compact(self) -> None:
        """Give the space of rewritten rows back (SQLite: ``VACUUM``)."""
        ...

    def set_info(self, rows: Sequence[tuple[int, dict]]) -> None:
        """Store the header info of images (``(image id, info)``), one transaction; not a change
        of images (the generation stays, no index is made stale)."""
        ...

    def ids_without_info(self, limit: int, after: int = 0) -> list[tuple[int, str, int]]:
        """Up to ``limit`` images (ids above ``after``, ascending) whose header was never read:
        (id, first path, its mtime_ns)."""
        ...

    def select_ids(self, conditions: Sequence[Condition]) -> np.ndarray:
        """The ids of the images meeting every condition (``store.query``), sorted int64."""
        ...

    def rename_files(self, moves: Sequence[tuple[str, str, FileState]]) -> None:
        """Record that files moved: ``(old path, new path, new state)``, one transaction."""
        ...

    def get_meta(self, key: str) -> str | None:
        """A value kept beside the data (e.g. a copy of the collection's manifest), or None."""
        ...

    def set_meta(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key`` (not a change of images: the generation stays)."""
        ...

    def close(self) -> None: ...
