"""The SQLite catalogue: one file, a versioned schema with explicit migrations, WAL journaling.

Each batch of added images is one transaction, so a run killed at any moment leaves every
committed batch intact and nothing half-written; the next run skips what is already stored.

Failures of the database become :class:`CatalogueError` with one line that says what to do: a
damaged file ("database disk image is malformed", "file is not a database", tables gone) names
``lookalike check --repair``, a full disk says so. :func:`verify` checks a file and
:func:`salvage` copies what is readable of a damaged one into a new one (``lookalike check``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.store.base import (
    INFO_COLUMNS,
    CatalogueError,
    FileState,
    ImageRecord,
    NewImage,
    info_of,
    info_row,
    path_from_store,
    path_to_store,
    text_to_store,
)
from lookalike.store.encoding import check_encoding, decode_vectors, encode_vector, stats_of
from lookalike.store.query import SQLITE, Condition, refine, selection_sql

SCHEMA_VERSION = 1
#: Page size of new catalogue files. Rows of compact vectors (about 1-2.5 KB) waste a third of
#: a 4 KB page when two do not fit in it; 16 KB pages hold them with a few % left over.
PAGE_SIZE = 16384
#: A stored blob in format 1's float32 (its length a multiple of 4; ``store.encoding``).
_FLOAT32 = "length(data) % 4 = 0"

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    content_hash TEXT NOT NULL UNIQUE,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_image ON files(image_id);
CREATE TABLE IF NOT EXISTS vectors (
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    space TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (space, image_id)
);
CREATE TABLE IF NOT EXISTS skipped (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    reason TEXT NOT NULL
);
INSERT OR IGNORE INTO meta VALUES ('generation', '0');
"""

# version -> SQL that upgrades the schema from version-1 to version.
_MIGRATIONS: dict[int, str] = {}
#: Columns added to the schema without a version (what a file's header says of its image:
#: ``ingest.exif``), with their indexes. Added to an older file when it is opened, inside one
#: transaction; an older lookalike ignores them. Images whose ``taken_source`` is NULL have
#: not had their header read yet (``ids_without_info``: the one-off pass of older collections).
ADDED_COLUMNS = (
    ("images", "taken_at", "REAL"),
    ("images", "taken_offset", "INTEGER"),
    ("images", "taken_source", "TEXT"),
    ("images", "lat", "REAL"),
    ("images", "lon", "REAL"),
    ("images", "camera_make", "TEXT"),
    ("images", "camera_model", "TEXT"),
    ("images", "lens", "TEXT"),
)


def index_name(statement: str) -> str:
    """The name of the index a ``CREATE INDEX IF NOT EXISTS name ON ...`` statement makes."""
    return statement.split()[5]


ADDED_INDEXES = (
    "CREATE INDEX IF NOT EXISTS images_by_taken ON images(taken_at)",
    "CREATE INDEX IF NOT EXISTS images_by_lat ON images(lat)",
    "CREATE INDEX IF NOT EXISTS images_by_camera_model ON images(LOWER(camera_model))",
    # The header pass after each indexing run finds the few new images without header info
    # (a partial index: without it, a scan of every image per upload).
    "CREATE INDEX IF NOT EXISTS images_without_info ON images(id) WHERE taken_source IS NULL",
)
#: The tables of the schema, in the order :func:`salvage` copies them.
TABLES = ("meta", "images", "files", "vectors", "skipped")


def _failure(path: str, exc: sqlite3.Error) -> CatalogueError | None:
    """The CatalogueError a database failure means, or None for a programming error."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    message = str(exc)
    folder = Path(path).parent
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or message.startswith(
        ("no such table", "database disk image is malformed", "file is not a database")
    ):
        return CatalogueError(
            f"the catalogue {path} is damaged ({message}): run `lookalike check --repair "
            f"--collection {folder}`"
        )
    if name == "SQLITE_FULL" or "disk is full" in message:
        return CatalogueError(
            f"the disk holding {path} is full: nothing was half-written; free some space and "
            "run again"
        )
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM")):
        return CatalogueError(f"cannot use the catalogue {path}: {message}")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return CatalogueError(
            f"the catalogue {path} is busy (another process holds it): try again later"
        )
    return None


def _guarded(method: Callable) -> Callable:
    """``method`` with database failures turned into CatalogueError (see :func:`_failure`)."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator(self: SQLiteCatalogue, *args: Any, **kwargs: Any) -> Iterator:
            try:
                yield from method(self, *args, **kwargs)
            except sqlite3.Error as exc:
                raise (_failure(self.path, exc) or exc) from exc

        return generator

    @functools.wraps(method)
    def wrapper(self: SQLiteCatalogue, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise (_failure(self.path, exc) or exc) from exc

    return wrapper


class SQLiteCatalogue:
    """A catalogue in one SQLite file.

    Example:
        >>> cat = SQLiteCatalogue(":memory:")
        >>> cat.count()
        {'images': 0, 'files': 0, 'skipped': 0}
    """

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        #: space -> encoding of the vectors written (``store.encoding``); float32 by default.
        self.encodings: dict[str, str] = {}
        if not create and self.path != ":memory:":
            size = os.stat(self.path).st_size if os.path.exists(self.path) else None
            if not size:
                raise CatalogueError(
                    f"the catalogue {self.path} is "
                    f"{'missing' if size is None else 'empty (0 bytes)'}: the collection's "
                    f"images are gone from it; run `lookalike check --repair --collection "
                    f"{Path(self.path).parent}`"
                )
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise (_failure(self.path, exc) or exc) from exc
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            if self.path != ":memory:":
                self._db.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # new files only
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = NORMAL")
            self._migrate(create)
            self._add_columns()
        except sqlite3.Error as exc:
            self._db.close()
            raise (_failure(self.path, exc) or exc) from exc
        except BaseException:
            self._db.close()
            raise

    # -- schema ---------------------------------------------------------------------------
    @_guarded
    def _migrate(self, create: bool = True) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:
                return
            # Another process may be creating the same file now: decide inside the write
            # transaction, which waits for it, so two creators never both create the tables.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise CatalogueError(
                        f"catalogue {self.path} has schema version {version}, newer than this "
                        f"lookalike understands ({SCHEMA_VERSION}): upgrade lookalike"
                    )
                if version == 0 and not create:
                    raise CatalogueError(
                        f"the catalogue {self.path} holds no lookalike tables: the collection's "
                        f"images are gone from it; run `lookalike check --repair --collection "
                        f"{Path(self.path).parent}`"
                    )
                if version == 0:
                    for statement in _SCHEMA_V1.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    version = 1
                while version < SCHEMA_VERSION:
                    version += 1
                    for statement in _MIGRATIONS[version].split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                if version != self._db.execute("PRAGMA user_version").fetchone()[0]:
                    self._db.execute(f"PRAGMA user_version = {version}")
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise

    def _add_columns(self) -> None:
        """Add the :data:`ADDED_COLUMNS` (and indexes) an older file lacks, in one transaction
        that looks again, so two processes opening it do not both add them."""
        with self._lock:
            if not self._schema_behind():
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                present = self._present_columns()
                for table, name, kind in ADDED_COLUMNS:
                    if name not in present[table]:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
                for statement in ADDED_INDEXES:
                    self._db.execute(statement)
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise

    def _present_columns(self) -> dict[str, set[str]]:
        return {
            table: {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for table in {t for t, _, _ in ADDED_COLUMNS}
        }

    def _schema_behind(self) -> bool:
        present = self._present_columns()
        if any(name not in present[table] for table, name, _ in ADDED_COLUMNS):
            return True
        names = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        return not all(index_name(statement) in names for statement in ADDED_INDEXES)

    def schema_version(self) -> int:
        """The schema version of the open file."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    def _bump(self) -> None:
        self._db.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'"
        )

    # -- reads ----------------------------------------------------------------------------
    def generation(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0])

    def change_stamp(self) -> tuple[int, int]:
        """A value that changes whenever the file is written, by this connection or any other
        (``PRAGMA data_version`` and the connection's change count): what a cache of query
        results is checked against (``collection.search``'s selections)."""
        with self._lock:
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            return int(version), int(self._db.total_changes)

    def file_states(self) -> dict[str, tuple[FileState, int]]:
        with self._lock:
            rows = self._db.execute("SELECT path, size, mtime_ns, image_id FROM files").fetchall()
        return {path_from_store(p): (FileState(s, m), i) for p, s, m, i in rows}

    def skipped_states(self) -> dict[str, tuple[FileState, str]]:
        with self._lock:
            rows = self._db.execute("SELECT path, size, mtime_ns, reason FROM skipped").fetchall()
        return {path_from_store(p): (FileState(s, m), r) for p, s, m, r in rows}

    def file_states_of(self, paths: Iterable[str]) -> dict[str, tuple[FileState, int]]:
        """:meth:`file_states` of ``paths`` only (those known): O(len(paths)), where
        :meth:`file_states` reads every file of the catalogue (an upload of one image)."""
        return self._states_of("SELECT path, size, mtime_ns, image_id FROM files", paths)

    def skipped_states_of(self, paths: Iterable[str]) -> dict[str, tuple[FileState, str]]:
        """:meth:`skipped_states` of ``paths`` only (those skipped before)."""
        return self._states_of("SELECT path, size, mtime_ns, reason FROM skipped", paths)

    def _states_of(self, select: str, paths: Iterable[str]) -> dict[str, tuple[FileState, Any]]:
        stored = list(dict.fromkeys(path_to_store(p) for p in paths))
        out = {}
        with self._lock:
            for chunk in _chunks(stored, 500):
                marks = ",".join("?" * len(chunk))
                for p, s, m, value in self._db.execute(f"{select} WHERE path IN ({marks})", chunk):
                    out[path_from_store(p)] = (FileState(s, m), value)
        return out

    def image_id_by_hash(self, content_hash: str) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM images WHERE content_hash = ?", (content_hash,)
            ).fetchone()
        return None if row is None else int(row[0])

    def images(self, ids: Sequence[int]) -> list[ImageRecord | None]:
        ids = [int(i) for i in ids]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(
                "SELECT id, content_hash, width, height, bytes, metadata, "
                f"{', '.join(INFO_COLUMNS)} FROM images WHERE id IN ({marks})",
                ids,
            ).fetchall()
            paths: dict[int, list[str]] = {}
            for image_id, path in self._db.execute(
                f"SELECT image_id, path FROM files WHERE image_id IN ({marks}) ORDER BY path", ids
            ):
                paths.setdefault(image_id, []).append(path_from_store(path))
        by_id = {
            r[0]: ImageRecord(
                id=r[0],
                content_hash=r[1],
                paths=tuple(paths.get(r[0], ())),
                width=r[2],
                height=r[3],
                bytes=r[4],
                metadata=json.loads(r[5]),
                info=info_of(r[6:]),
            )
            for r in rows
        }
        return [by_id.get(i) for i in ids]

    def select_ids(self, conditions: Sequence[Condition]) -> np.ndarray:
        sql, params, near = selection_sql(conditions, SQLITE)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        ids = refine(rows, near) if near else [r[0] for r in rows]
        return np.unique(np.asarray(ids, dtype=np.int64))

    def ids_without_info(self, limit: int, after: int = 0) -> list[tuple[int, str, int]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT images.id, MIN(files.path), files.mtime_ns FROM images JOIN files "
                "ON files.image_id = images.id WHERE images.taken_source IS NULL AND images.id > ? "
                "GROUP BY images.id ORDER BY images.id LIMIT ?",
                (int(after), int(limit)),
            ).fetchall()
        return [(int(i), path_from_store(p), int(m)) for i, p, m in rows]

    def vectors(self, space: str, ids: Sequence[int]) -> np.ndarray:
        ids = [int(i) for i in ids]
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = dict(
                self._db.execute(
                    f"SELECT image_id, data FROM vectors WHERE space = ? AND image_id IN ({marks})",
                    [space, *ids],
                ).fetchall()
            )
        missing = [i for i in ids if i not in rows]
        if missing:
            raise KeyError(f"no {space!r} vector for images {missing[:5]}")
        return decode_vectors([rows[i] for i in ids])

    def iter_vectors(
        self, space: str, batch: int = 10_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        last = -1
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT image_id, data FROM vectors WHERE space = ? AND image_id > ? "
                    "ORDER BY image_id LIMIT ?",
                    (space, last, batch),
                ).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vectors = decode_vectors([r[1] for r in rows])
            last = int(ids[-1])
            yield ids, vectors

    def ids_missing(self, space: str) -> list[int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM images WHERE id NOT IN "
                "(SELECT image_id FROM vectors WHERE space = ?) ORDER BY id",
                (space,),
            ).fetchall()
        return [r[0] for r in rows]

    def ids_missing_after(self, space: str, after: int) -> tuple[list[int], int]:
        """:meth:`ids_missing` among the images whose id is above ``after``, and the largest
        image id (``after`` when there is none above it): O(images above ``after``), so that
        a caller remembering the last id it checked checks only the images added since."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, EXISTS (SELECT 1 FROM vectors WHERE space = ? AND "
                "image_id = images.id) FROM images WHERE id > ? ORDER BY id",
                (space, int(after)),
            ).fetchall()
        return [int(i) for i, has in rows if not has], int(rows[-1][0]) if rows else int(after)

    def count(self) -> dict[str, int]:
        with self._lock:
            return {
                table: self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("images", "files", "skipped")
            }

    def vector_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT space, COUNT(*) FROM vectors GROUP BY space").fetchall()
        return {str(space): int(n) for space, n in rows}

    # -- how vectors are stored (``store.encoding``) ----------------------------------------
    def set_encoding(self, space: str, encoding: str) -> None:
        """Write the vectors of ``space`` in ``encoding`` from now on (stored ones stay as they
        are until :meth:`reencode`; every blob says how it was written)."""
        self.encodings[space] = check_encoding(encoding)

    def _encode(self, space: str, vector: np.ndarray) -> bytes:
        return encode_vector(vector, self.encodings.get(space, "float32"))

    def vector_stats(self) -> dict[str, dict[str, dict[str, int]]]:
        """space -> encoding -> ``{"vectors", "bytes"}``: how the stored vectors are written
        and how many bytes their blobs take (``float32``: format 1's)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT space, CASE WHEN {_FLOAT32} THEN 'float32' ELSE hex(substr(data, 1, 1)) "
                "END, COUNT(*), SUM(length(data)) FROM vectors GROUP BY 1, 2"
            ).fetchall()
        return stats_of(rows)

    def reencode(
        self,
        space: str,
        batch: int = 2000,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Rewrite the float32 vectors of format 1 in ``space`` in the space's encoding
        (:meth:`set_encoding`), ``batch`` rows a transaction; returns how many were rewritten.
        The vectors stay the same to the encoding's precision, so the generation stays: a
        killed run leaves each row in one form or the other, and the next run goes on."""
        encoding = self.encodings.get(space, "float32")
        if encoding == "float32":
            return 0
        with self._lock:
            total = self._db.execute(
                f"SELECT COUNT(*) FROM vectors WHERE space = ? AND {_FLOAT32}", (space,)
            ).fetchone()[0]
        done, last = 0, -1
        while done < total:
            with self._transaction() as db:
                rows = db.execute(
                    f"SELECT image_id, data FROM vectors WHERE space = ? AND image_id > ? AND "
                    f"{_FLOAT32} ORDER BY image_id LIMIT ?",
                    (space, last, batch),
                ).fetchall()
                if not rows:
                    break
                vectors = decode_vectors([r[1] for r in rows])
                db.executemany(
                    "UPDATE vectors SET data = ? WHERE space = ? AND image_id = ?",
                    [
                        (encode_vector(v, encoding), space, r[0])
                        for r, v in zip(rows, vectors, strict=True)
                    ],
                )
            done += len(rows)
            last = int(rows[-1][0])
            if progress:
                progress(min(done, total), total)
        return done

    def compact(self) -> None:
        """Give the space of rewritten rows back to the file system (``VACUUM``), with the
        page size of new files (:data:`PAGE_SIZE`) when no other process has the file open."""
        with self._lock:
            if self.path == ":memory:":
                return
            page = self._db.execute("PRAGMA page_size").fetchone()[0]
            resized = False
            if page < PAGE_SIZE:
                mode = self._db.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
                if str(mode).lower() == "delete":  # no other connection: the size can change
                    try:
                        self._db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
                        self._db.execute("VACUUM")
                        resized = True
                    finally:
                        self._db.execute("PRAGMA journal_mode = WAL")
            if not resized:
                self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- writes ---------------------------------------------------------------------------
    def add_images(self, images: Sequence[NewImage]) -> list[int]:
        ids = []
        now = time.time()
        with self._transaction() as db:
            for image in images:
                cursor = db.execute(
                    "INSERT INTO images (content_hash, width, height, bytes, metadata, added_at, "
                    f"{', '.join(INFO_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, "
                    f"{', '.join('?' * len(INFO_COLUMNS))})",
                    (
                        image.content_hash,
                        image.width,
                        image.height,
                        image.state.size,
                        json.dumps(image.metadata),
                        now,
                        *info_row(image.info),
                    ),
                )
                image_id = int(cursor.lastrowid)
                ids.append(image_id)
                db.execute(
                    "INSERT OR REPLACE INTO files (path, image_id, size, mtime_ns) "
                    "VALUES (?, ?, ?, ?)",
                    (path_to_store(image.path), image_id, image.state.size, image.state.mtime_ns),
                )
                db.execute("DELETE FROM skipped WHERE path = ?", (path_to_store(image.path),))
                db.executemany(
                    "INSERT INTO vectors (image_id, space, data) VALUES (?, ?, ?)",
                    [
                        (image_id, space, self._encode(space, v))
                        for space, v in image.vectors.items()
                    ],
                )
            self._bump()
        return ids

    def put_vectors(self, space: str, ids: Sequence[int], vectors: np.ndarray) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO vectors (image_id, space, data) VALUES (?, ?, ?)",
                [
                    (int(i), space, self._encode(space, v))
                    for i, v in zip(ids, vectors, strict=True)
                ],
            )
            self._bump()

    def link_file(self, path: str, image_id: int, state: FileState) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO files (path, image_id, size, mtime_ns) VALUES (?, ?, ?, ?)",
                (path_to_store(path), image_id, state.size, state.mtime_ns),
            )
            db.execute("DELETE FROM skipped WHERE path = ?", (path_to_store(path),))

    def touch_file(self, path: str, state: FileState) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE files SET size = ?, mtime_ns = ? WHERE path = ?",
                (state.size, state.mtime_ns, path_to_store(path)),
            )

    def remove_files(self, paths: Iterable[str]) -> list[int]:
        paths = [path_to_store(p) for p in paths]
        if not paths:
            return []
        with self._transaction() as db:
            affected: set[int] = set()
            for chunk in _chunks(paths, 500):
                marks = ",".join("?" * len(chunk))
                affected.update(
                    r[0]
                    for r in db.execute(
                        f"SELECT image_id FROM files WHERE path IN ({marks})", chunk
                    )
                )
                db.execute(f"DELETE FROM files WHERE path IN ({marks})", chunk)
                db.execute(f"DELETE FROM skipped WHERE path IN ({marks})", chunk)
            orphans = [
                i
                for i in sorted(affected)
                if db.execute("SELECT 1 FROM files WHERE image_id = ? LIMIT 1", (i,)).fetchone()
                is None
            ]
            for chunk in _chunks(orphans, 500):
                db.execute(f"DELETE FROM images WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            if orphans:
                self._bump()
        return orphans

    def record_skip(self, path: str, state: FileState, reason: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO skipped (path, size, mtime_ns, reason) VALUES (?, ?, ?, ?)",
                (path_to_store(path), state.size, state.mtime_ns, text_to_store(reason)),
            )

    def forget_skips(self, paths: Iterable[str]) -> None:
        with self._transaction() as db:
            db.executemany(
                "DELETE FROM skipped WHERE path = ?", [(path_to_store(p),) for p in paths]
            )

    def set_metadata(self, image_id: int, metadata: dict) -> None:
        """Replace the metadata of one image."""
        with self._transaction() as db:
            db.execute(
                "UPDATE images SET metadata = ? WHERE id = ?", (json.dumps(metadata), image_id)
            )

    def set_info(self, rows: Sequence[tuple[int, dict]]) -> None:
        sets = ", ".join(f"{name} = ?" for name in INFO_COLUMNS)
        with self._transaction() as db:
            db.executemany(
                f"UPDATE images SET {sets} WHERE id = ?",
                [(*info_row(info), int(image_id)) for image_id, info in rows],
            )

    def rename_files(self, moves: Sequence[tuple[str, str, FileState]]) -> None:
        with self._transaction() as db:
            for old, new, state in moves:
                db.execute(
                    "UPDATE files SET path = ?, size = ?, mtime_ns = ? WHERE path = ?",
                    (path_to_store(new), state.size, state.mtime_ns, path_to_store(old)),
                )

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        if key == "generation":
            raise ValueError("the generation is the catalogue's own")
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        with self._lock:
            self._db.close()


for _name, _method in list(vars(SQLiteCatalogue).items()):
    if callable(_method) and not _name.startswith("_") and _name != "close":
        setattr(SQLiteCatalogue, _name, _guarded(_method))


class _Transaction:
    """``with`` block running one IMMEDIATE transaction under the catalogue's lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
        self.db, self.lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.db

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            if exc_type is None:
                try:
                    self.db.execute("COMMIT")
                except sqlite3.Error:  # e.g. the disk is full: leave no transaction open
                    with contextlib.suppress(sqlite3.Error):
                        self.db.execute("ROLLBACK")
                    raise
            else:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
        finally:
            self.lock.release()


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- checking and salvaging a file (``lookalike check``) ---------------------------------------
def verify(path: str | Path, limit: int = 20) -> list[str]:
    """What is wrong with the SQLite catalogue file ``path`` (empty when it is sound): a missing
    or empty file, a file that is not a lookalike catalogue, ``PRAGMA integrity_check``'s
    findings, rows pointing at images that do not exist (``foreign_key_check``)."""
    path = str(path)
    if not os.path.exists(path):
        return [f"{path} is missing"]
    if os.stat(path).st_size == 0:
        return [f"{path} is empty (0 bytes)"]
    try:
        db = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        return [f"{path} cannot be opened: {exc}"]
    try:
        db.execute("PRAGMA query_only = ON")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            return [f"{path} holds no lookalike tables"]
        found = [r[0] for r in db.execute("PRAGMA integrity_check").fetchmany(limit)]
        problems = [f"{path}: {line}" for line in found if line != "ok"]
        if not problems:
            orphans = db.execute("PRAGMA foreign_key_check").fetchall()
            by_table: dict[str, int] = {}
            for table, *_ in orphans:
                by_table[table] = by_table.get(table, 0) + 1
            problems += [
                f"{path}: {n} {table} rows point at images that do not exist"
                for table, n in sorted(by_table.items())
            ]
        return problems
    except sqlite3.Error as exc:
        return [f"{path}: {exc}"]
    finally:
        db.close()


@dataclass
class Salvaged:
    """What :func:`salvage` saved: rows copied and rows lost, by table; the files whose image
    was lost (they are indexed again by the next ``index`` of their folder)."""

    copied: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    orphan_files: list[str] = field(default_factory=list)
    generation: int = 0

    @property
    def complete(self) -> bool:
        return not any(self.lost.values()) and not self.orphan_files

    def to_dict(self) -> dict:
        return {
            "copied": self.copied,
            "lost": self.lost,
            "orphan_files": self.orphan_files,
        }


_COLUMNS = {
    "meta": ("key", "value"),
    "images": ("id", "content_hash", "width", "height", "bytes", "metadata", "added_at"),
    "files": ("path", "image_id", "size", "mtime_ns"),
    "vectors": ("image_id", "space", "data"),
    "skipped": ("path", "size", "mtime_ns", "reason"),
}


def _readable_rows(
    db: sqlite3.Connection, table: str, chunk: int = 512, budget: int = 20_000
) -> tuple[list[tuple], int]:
    """Every row of ``table`` that can still be read, by rowid ranges; a range that fails is
    split until single rows, and rows that fail alone are counted lost (-1: the table's root is
    unreadable, so all of it). Gaps in the numbering are not losses. At most ``budget`` single
    rows are tried; a damaged right edge (no readable maximum rowid) is searched up to 2**20."""
    columns = ", ".join(_COLUMNS[table])
    first = top = None
    with contextlib.suppress(sqlite3.Error):
        row = db.execute(f"SELECT rowid FROM {table} ORDER BY rowid LIMIT 1").fetchone()
        first = row[0] if row else 0
    with contextlib.suppress(sqlite3.Error):
        top = db.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
    if first is None and top is None:
        return [], -1
    top = (1 << 20) if top is None else top
    rows: list[tuple] = []
    lost = 0
    pending = [(lo, min(lo + chunk - 1, top)) for lo in range(max(first or 1, 1), top + 1, chunk)]
    pending.reverse()
    while pending:
        lo, hi = pending.pop()
        try:
            rows += db.execute(
                f"SELECT {columns} FROM {table} WHERE rowid BETWEEN ? AND ? ORDER BY rowid",
                (lo, hi),
            ).fetchall()
        except sqlite3.Error:
            if lo == hi or budget <= 0:
                lost += 1  # a row, or (out of budget) at least one in the range
                budget -= 1
            else:
                mid = (lo + hi) // 2
                pending += [(mid + 1, hi), (lo, mid)]
    return rows, lost


def salvage(source: str | Path, target: str | Path) -> Salvaged:
    """Copy every readable row of the damaged catalogue ``source`` into a new catalogue
    ``target`` (which must not exist), keeping what holds together: files and vectors of images
    that were saved, images that still have a file. ``source`` is only read."""
    report = Salvaged()
    SQLiteCatalogue(target).close()
    out = sqlite3.connect(str(target), isolation_level=None)
    try:
        src = sqlite3.connect(str(source), isolation_level=None)
        src.execute("PRAGMA query_only = ON")
    except sqlite3.Error:
        src = None
    try:
        rows: dict[str, list[tuple]] = {}
        for table in TABLES:
            try:
                if src is None:
                    raise sqlite3.DatabaseError("cannot be opened")
                rows[table], report.lost[table] = _readable_rows(src, table)
            except sqlite3.Error:
                rows[table], report.lost[table] = [], -1  # -1: the whole table is unreadable
        image_ids = {r[0] for r in rows["images"]}
        files = []
        for row in rows["files"]:
            (files if row[1] in image_ids else report.orphan_files).append(row)
        report.orphan_files = [path_from_store(str(r[0])) for r in report.orphan_files]
        with_files = {r[1] for r in files}
        images = [r for r in rows["images"] if r[0] in with_files]
        report.lost["images"] = report.lost["images"] + len(rows["images"]) - len(images)
        vectors = [r for r in rows["vectors"] if r[0] in with_files]
        meta = dict(r for r in rows["meta"] if isinstance(r[0], str))
        with contextlib.suppress(TypeError, ValueError):
            report.generation = int(meta.get("generation", 0))
        report.generation += 1  # never equal to a stamp of an index of the damaged file
        meta["generation"] = str(report.generation)
        out.execute("BEGIN IMMEDIATE")
        for table, kept in (
            ("meta", list(meta.items())),
            ("images", images),
            ("files", files),
            ("vectors", vectors),
            ("skipped", rows["skipped"]),
        ):
            columns = _COLUMNS[table]
            marks = ", ".join("?" * len(columns))
            cursor = out.executemany(
                f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) VALUES ({marks})", kept
            )
            report.copied[table] = max(cursor.rowcount, 0) if table != "meta" else len(kept)
        out.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(report.generation),))
        out.execute("COMMIT")
    finally:
        out.close()
        if src is not None:
            src.close()
    return report
