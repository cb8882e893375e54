"""The server's own small database: API keys (hashed), the catalogue registry and upload jobs.

One SQLite file in the data folder, in WAL mode, so several worker processes share it. Keys are
stored as SHA-256 digests: they are 256-bit random tokens, so a fast hash is enough (no
password stretching is needed for secrets that cannot be guessed).

Example:
    >>> db = ServerDB(":memory:")
    >>> key, info = db.create_key("shop", {"c1": "write"}, create=False)
    >>> db.key_info(key).rights
    {'c1': 'write'}
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY, digest TEXT UNIQUE NOT NULL, name TEXT NOT NULL,
    rights TEXT NOT NULL, can_create INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS catalogs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, model TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, catalog TEXT NOT NULL, state TEXT NOT NULL, total INTEGER NOT NULL,
    done INTEGER NOT NULL, result TEXT, created REAL NOT NULL, updated REAL NOT NULL)
"""

READ, WRITE = "read", "write"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class KeyInfo:
    """Who is calling: an admin, or a key with rights on some catalogues."""

    id: str
    name: str
    admin: bool = False
    can_create: bool = False
    rights: dict[str, str] = field(default_factory=dict)

    def can_read(self, catalog_id: str) -> bool:
        return self.admin or catalog_id in self.rights

    def can_write(self, catalog_id: str) -> bool:
        return self.admin or self.rights.get(catalog_id) == WRITE

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "admin": self.admin,
            "create": self.can_create,
            "catalogs": self.rights,
        }


class ServerDB:
    """Keys, catalogues and jobs in ``server.sqlite`` (safe to share between processes)."""

    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30
        )
        if str(path) != ":memory:":
            self._db.execute("PRAGMA journal_mode = WAL")
        self._db.executescript(_SCHEMA)

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- keys ---------------------------------------------------------------------------------
    def create_key(
        self, name: str, rights: dict[str, str], *, create: bool = False
    ) -> tuple[str, KeyInfo]:
        """A new key (returned once, in clear) with ``rights`` {catalog id: "read"|"write"}."""
        key = "lk_" + secrets.token_urlsafe(32)
        key_id = "k_" + secrets.token_hex(6)
        self._run(
            "INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?)",
            (key_id, digest(key), name, json.dumps(rights), int(create), time.time()),
        )
        return key, KeyInfo(key_id, name, can_create=create, rights=dict(rights))

    def key_info(self, key: str) -> KeyInfo | None:
        rows = self._run(
            "SELECT id, name, rights, can_create FROM keys WHERE digest = ?", (digest(key),)
        )
        if not rows:
            return None
        key_id, name, rights, can_create = rows[0]
        return KeyInfo(key_id, name, can_create=bool(can_create), rights=json.loads(rights))

    def all_keys(self) -> list[KeyInfo]:
        rows = self._run("SELECT id, name, rights, can_create FROM keys ORDER BY created")
        return [KeyInfo(i, n, can_create=bool(c), rights=json.loads(r)) for i, n, r, c in rows]

    def delete_key(self, key_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM keys WHERE id = ?", (key_id,)).rowcount > 0

    def grant(self, key_id: str, catalog_id: str, right: str) -> None:
        """Give a key ``right`` on a catalogue (the creator of a catalogue gets write)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT rights FROM keys WHERE id = ?", (key_id,)).fetchone()
                if row is not None:
                    rights = {**json.loads(row[0]), catalog_id: right}
                    self._db.execute(
                        "UPDATE keys SET rights = ? WHERE id = ?", (json.dumps(rights), key_id)
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- catalogues ---------------------------------------------------------------------------
    def add_catalog(self, catalog_id: str, name: str, model: str) -> dict:
        created = time.time()
        self._run("INSERT INTO catalogs VALUES (?, ?, ?, ?)", (catalog_id, name, model, created))
        return {"id": catalog_id, "name": name, "model": model, "created": created}

    def catalog(self, catalog_id: str) -> dict | None:
        rows = self._run(
            "SELECT id, name, model, created FROM catalogs WHERE id = ?", (catalog_id,)
        )
        return _catalog(rows[0]) if rows else None

    def catalogs(self) -> list[dict]:
        rows = self._run("SELECT id, name, model, created FROM catalogs ORDER BY created")
        return [_catalog(r) for r in rows]

    def delete_catalog(self, catalog_id: str) -> None:
        self._run("DELETE FROM catalogs WHERE id = ?", (catalog_id,))
        self._run("DELETE FROM jobs WHERE catalog = ?", (catalog_id,))

    # -- jobs ---------------------------------------------------------------------------------
    def add_job(self, catalog_id: str, total: int) -> str:
        job_id = "j_" + secrets.token_hex(8)
        now = time.time()
        self._run(
            "INSERT INTO jobs VALUES (?, ?, 'queued', ?, 0, NULL, ?, ?)",
            (job_id, catalog_id, total, now, now),
        )
        return job_id

    def update_job(
        self, job_id: str, *, state: str, done: int = 0, result: dict | None = None
    ) -> None:
        self._run(
            "UPDATE jobs SET state = ?, done = ?, result = ?, updated = ? WHERE id = ?",
            (state, done, json.dumps(result) if result is not None else None, time.time(), job_id),
        )

    def job(self, job_id: str) -> dict | None:
        rows = self._run(
            "SELECT id, catalog, state, total, done, result FROM jobs WHERE id = ?", (job_id,)
        )
        if not rows:
            return None
        job_id, catalog, state, total, done, result = rows[0]
        return {
            "id": job_id,
            "catalog": catalog,
            "state": state,
            "total": total,
            "done": done,
            "result": json.loads(result) if result else None,
        }

    def close(self) -> None:
        self._db.close()


def _catalog(row: tuple) -> dict:
    return dict(zip(("id", "name", "model", "created"), row, strict=True))
