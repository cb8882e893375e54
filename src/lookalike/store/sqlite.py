"""The SQLite catalogue: one file, a versioned schema with explicit migrations, WAL journaling.

Each batch of added images is one transaction, so a run killed at any moment leaves every
committed batch intact and nothing half-written; the next run skips what is already stored.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from lookalike.store.base import CatalogueError, FileState, ImageRecord, NewImage

SCHEMA_VERSION = 1

_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    content_hash TEXT NOT NULL UNIQUE,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    added_at REAL NOT NULL
);
CREATE TABLE files (
    path TEXT PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL
);
CREATE INDEX files_by_image ON files(image_id);
CREATE TABLE vectors (
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    space TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (space, image_id)
);
CREATE TABLE skipped (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    reason TEXT NOT NULL
);
INSERT INTO meta VALUES ('generation', '0');
"""

# version -> SQL that upgrades the schema from version-1 to version.
_MIGRATIONS: dict[int, str] = {}


class SQLiteCatalogue:
    """A catalogue in one SQLite file.

    Example:
        >>> cat = SQLiteCatalogue(":memory:")
        >>> cat.count()
        {'images': 0, 'files': 0, 'skipped': 0}
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA foreign_keys = ON")
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
        self._migrate()

    # -- schema ---------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise CatalogueError(
                    f"catalogue {self.path} has schema version {version}, newer than this "
                    f"lookalike understands ({SCHEMA_VERSION}): upgrade lookalike"
                )
            if version == SCHEMA_VERSION:
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
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
                self._db.execute(f"PRAGMA user_version = {version}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

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

    def file_states(self) -> dict[str, tuple[FileState, int]]:
        with self._lock:
            rows = self._db.execute("SELECT path, size, mtime_ns, image_id FROM files").fetchall()
        return {p: (FileState(s, m), i) for p, s, m, i in rows}

    def skipped_states(self) -> dict[str, tuple[FileState, str]]:
        with self._lock:
            rows = self._db.execute("SELECT path, size, mtime_ns, reason FROM skipped").fetchall()
        return {p: (FileState(s, m), r) for p, s, m, r in rows}

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
                "SELECT id, content_hash, width, height, bytes, metadata FROM images "
                f"WHERE id IN ({marks})",
                ids,
            ).fetchall()
            paths: dict[int, list[str]] = {}
            for image_id, path in self._db.execute(
                f"SELECT image_id, path FROM files WHERE image_id IN ({marks}) ORDER BY path", ids
            ):
                paths.setdefault(image_id, []).append(path)
        by_id = {
            r[0]: ImageRecord(
                id=r[0],
                content_hash=r[1],
                paths=tuple(paths.get(r[0], ())),
                width=r[2],
                height=r[3],
                bytes=r[4],
                metadata=json.loads(r[5]),
            )
            for r in rows
        }
        return [by_id.get(i) for i in ids]

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
        return np.stack([np.frombuffer(rows[i], dtype=np.float32) for i in ids])

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
            vectors = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
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

    def count(self) -> dict[str, int]:
        with self._lock:
            return {
                table: self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("images", "files", "skipped")
            }

    # -- writes ---------------------------------------------------------------------------
    def add_images(self, images: Sequence[NewImage]) -> list[int]:
        ids = []
        now = time.time()
        with self._transaction() as db:
            for image in images:
                cursor = db.execute(
                    "INSERT INTO images (content_hash, width, height, bytes, metadata, added_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        image.content_hash,
                        image.width,
                        image.height,
                        image.state.size,
                        json.dumps(image.metadata),
                        now,
                    ),
                )
                image_id = int(cursor.lastrowid)
                ids.append(image_id)
                db.execute(
                    "INSERT OR REPLACE INTO files (path, image_id, size, mtime_ns) "
                    "VALUES (?, ?, ?, ?)",
                    (image.path, image_id, image.state.size, image.state.mtime_ns),
                )
                db.execute("DELETE FROM skipped WHERE path = ?", (image.path,))
                db.executemany(
                    "INSERT INTO vectors (image_id, space, data) VALUES (?, ?, ?)",
                    [
                        (image_id, space, np.ascontiguousarray(v, dtype=np.float32).tobytes())
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
                    (int(i), space, np.ascontiguousarray(v, dtype=np.float32).tobytes())
                    for i, v in zip(ids, vectors, strict=True)
                ],
            )
            self._bump()

    def link_file(self, path: str, image_id: int, state: FileState) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO files (path, image_id, size, mtime_ns) VALUES (?, ?, ?, ?)",
                (path, image_id, state.size, state.mtime_ns),
            )
            db.execute("DELETE FROM skipped WHERE path = ?", (path,))

    def touch_file(self, path: str, state: FileState) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE files SET size = ?, mtime_ns = ? WHERE path = ?",
                (state.size, state.mtime_ns, path),
            )

    def remove_files(self, paths: Iterable[str]) -> list[int]:
        paths = list(paths)
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
                (path, state.size, state.mtime_ns, reason),
            )

    def forget_skips(self, paths: Iterable[str]) -> None:
        with self._transaction() as db:
            db.executemany("DELETE FROM skipped WHERE path = ?", [(p,) for p in paths])

    def set_metadata(self, image_id: int, metadata: dict) -> None:
        """Replace the metadata of one image."""
        with self._transaction() as db:
            db.execute(
                "UPDATE images SET metadata = ? WHERE id = ?", (json.dumps(metadata), image_id)
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Transaction:
    """``with`` block running one IMMEDIATE transaction under the catalogue's lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
        self.db, self.lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
