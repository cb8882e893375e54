"""The catalogue contract, run against every store: SQLite, and PostgreSQL on a real server
started here in a temporary directory (skipped when PostgreSQL is not installed).

The server listens on a unix socket only (no TCP port), runs as the ``postgres`` user when the
tests run as root (initdb refuses root), and is stopped when the session ends.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lookalike.store import CatalogueError, FileState, NewImage, open_catalogue

_schemas = itertools.count()


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _version_key(path: str) -> int:
    part = Path(path).parts[4]
    return int(part) if part.isdigit() else 0


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server on a unix socket in a temporary directory; yields a base URI."""
    pytest.importorskip("psycopg")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install -y postgresql)")
    root = Path(tempfile.mkdtemp(prefix="lookalike-pg-"))
    data, sockets = root / "data", root / "run"
    sockets.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no postgres user to run the server")
        for folder in (root, sockets):
            os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = str(20000 + os.getpid() % 20000)
    log = root / "server.log"

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=60)

    init = run(
        str(bin_dir / "initdb"), "-D", str(data), "-U", "lookalike", "--auth=trust",
        "-E", "UTF8", "--no-sync",
    )  # fmt: skip
    options = f"-k {sockets} -c listen_addresses='' -p {port} -c fsync=off"
    start = init.returncode == 0 and run(
        str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"
    )
    if not start or start.returncode != 0:
        message = (init.stderr or "") + (start.stderr if start else "")
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot start PostgreSQL: {message.strip()[-300:]}")
    try:
        yield f"postgresql://lookalike@/postgres?host={sockets}&port={port}"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def fresh_postgres_uri(base: str) -> str:
    """A URI to an empty catalogue: its own schema in the test server's database."""
    return f"{base}&schema=t{os.getpid()}_{next(_schemas)}"


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path: Path) -> str:
    """Where a fresh, empty catalogue lives, for each store."""
    if request.param == "sqlite":
        return str(tmp_path / "catalogue.sqlite")
    return fresh_postgres_uri(request.getfixturevalue("postgres_server"))


@pytest.fixture
def catalogue(location: str):
    cat = open_catalogue(location)
    yield cat
    cat.close()


def _image(h: str, path: str, vector, **metadata) -> NewImage:
    return NewImage(
        h, path, FileState(10, 1), 4, 3, {"image": np.asarray(vector, np.float32)}, metadata
    )


def test_round_trip_and_generation(catalogue) -> None:
    assert catalogue.schema_version() == 1
    g0 = catalogue.generation()
    ids = catalogue.add_images(
        [_image("h1", "/a.jpg", [1, 0], sku="A-1"), _image("h2", "/b.jpg", [0, 1])]
    )
    assert catalogue.generation() == g0 + 1
    catalogue.link_file("/a_copy.jpg", ids[0], FileState(10, 2))
    record = catalogue.images([ids[0]])[0]
    assert record.paths == ("/a.jpg", "/a_copy.jpg") and record.path == "/a.jpg"
    assert (record.width, record.height, record.bytes) == (4, 3, 10)
    assert record.metadata == {"sku": "A-1"}
    assert catalogue.images([ids[1], 999_999, ids[0]])[1] is None
    assert catalogue.image_id_by_hash("h2") == ids[1]
    assert catalogue.image_id_by_hash("nope") is None
    assert np.allclose(catalogue.vectors("image", ids), [[1, 0], [0, 1]])
    with pytest.raises(KeyError):
        catalogue.vectors("image", [999_999])
    assert catalogue.count() == {"images": 2, "files": 3, "skipped": 0}
    assert catalogue.file_states()["/a_copy.jpg"] == (FileState(10, 2), ids[0])

    # Removing one of two files keeps the image; removing the last drops image and vectors.
    assert catalogue.remove_files(["/a.jpg"]) == []
    assert catalogue.remove_files(["/a_copy.jpg", "/b.jpg"]) == ids
    assert catalogue.count()["images"] == 0
    assert list(catalogue.iter_vectors("image")) == []
    assert catalogue.generation() == g0 + 2


def test_skips_missing_vectors_and_updates(catalogue) -> None:
    catalogue.record_skip("/bad.jpg", FileState(3, 4), "truncated")
    catalogue.record_skip("/bad.jpg", FileState(3, 5), "still truncated")
    assert catalogue.skipped_states() == {"/bad.jpg": (FileState(3, 5), "still truncated")}
    (image_id,) = catalogue.add_images([_image("h", "/bad.jpg", [1, 0])])  # fixed since
    assert catalogue.skipped_states() == {}
    assert catalogue.ids_missing("copy") == [image_id]
    generation = catalogue.generation()
    catalogue.put_vectors("copy", [image_id], np.ones((1, 3), np.float32))
    catalogue.put_vectors("copy", [image_id], np.full((1, 3), 2, np.float32))  # replaces
    assert catalogue.generation() == generation + 2
    assert catalogue.ids_missing("copy") == []
    assert catalogue.vectors("copy", [image_id]).tolist() == [[2, 2, 2]]
    catalogue.touch_file("/bad.jpg", FileState(11, 9))
    assert catalogue.file_states()["/bad.jpg"] == (FileState(11, 9), image_id)
    catalogue.set_metadata(image_id, {"tag": "x"})
    assert catalogue.images([image_id])[0].metadata == {"tag": "x"}
    catalogue.record_skip("/other.jpg", FileState(1, 1), "empty")
    catalogue.forget_skips(["/other.jpg"])
    assert catalogue.skipped_states() == {}


def test_iter_vectors_in_batches_and_id_order(catalogue) -> None:
    vectors = np.random.default_rng(0).normal(size=(25, 8)).astype(np.float32)
    ids = catalogue.add_images([_image(f"h{i}", f"/{i}.jpg", v) for i, v in enumerate(vectors)])
    chunks = list(catalogue.iter_vectors("image", batch=10))
    assert [len(c[0]) for c in chunks] == [10, 10, 5]
    assert np.concatenate([c[0] for c in chunks]).tolist() == sorted(ids)
    assert np.array_equal(np.concatenate([c[1] for c in chunks]), vectors)


def test_vectors_are_stored_in_each_space_encoding(catalogue) -> None:
    """Compact vectors (issue #19): every store writes a space in its encoding, reads blobs of
    several encodings alike, re-encodes format 1's float32 in place and counts them."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(12, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    old = catalogue.add_images([_image(f"o{i}", f"/o{i}.jpg", v) for i, v in enumerate(vectors)])
    catalogue.set_encoding("image", "int8")
    new = catalogue.add_images([_image(f"n{i}", f"/n{i}.jpg", v) for i, v in enumerate(vectors)])
    stats = catalogue.vector_stats()["image"]
    assert stats["float32"] == {"vectors": 12, "bytes": 12 * 64 * 4}
    assert stats["int8"]["vectors"] == 12 and stats["int8"]["bytes"] < 12 * 80
    assert np.abs(catalogue.vectors("image", new + old) - np.vstack([vectors] * 2)).max() < 1e-2
    generation = catalogue.generation()
    assert catalogue.reencode("image", batch=5) == 12
    assert catalogue.generation() == generation
    assert set(catalogue.vector_stats()["image"]) == {"int8"}
    catalogue.set_encoding("text", "sparse:4")
    catalogue.put_vectors("text", old[:1], np.array([[0.0, 0.5, 0.1, 0.7, 0.2, 0.05, 0.3]]))
    assert np.flatnonzero(catalogue.vectors("text", old[:1])[0]).tolist() == [1, 3, 4, 6]
    catalogue.compact()
    assert np.allclose(
        np.concatenate([v for _, v in catalogue.iter_vectors("image")]),
        np.vstack([vectors] * 2),
        atol=1e-2,
    )
    with pytest.raises(ValueError, match="unknown vector encoding"):
        catalogue.set_encoding("image", "int3")


def test_a_duplicate_hash_rolls_the_batch_back(catalogue) -> None:
    catalogue.add_images([_image("same", "/1.jpg", [1, 0])])
    with pytest.raises(Exception):  # noqa: B017 - each driver raises its own IntegrityError
        catalogue.add_images([_image("new", "/2.jpg", [0, 1]), _image("same", "/3.jpg", [1, 1])])
    assert catalogue.count()["images"] == 1 and catalogue.image_id_by_hash("new") is None
    assert catalogue.add_images([_image("new", "/2.jpg", [0, 1])])  # still usable


def test_paths_that_are_not_utf8_round_trip(catalogue) -> None:
    """A file name that is not UTF-8 (os.fsdecode gives lone surrogates) is stored losslessly
    and given back as the same str, so the file opens again (issue #15)."""
    odd = "/photos/caf\udce9-\udcff.jpg"
    marked = "\x01looks-like-a-stored-form.jpg"  # a real path starting with the marker
    (image_id,) = catalogue.add_images([_image("h1", odd, [1, 0])])
    catalogue.link_file(marked, image_id, FileState(1, 2))
    assert set(catalogue.file_states()) == {odd, marked}
    assert set(catalogue.images([image_id])[0].paths) == {odd, marked}
    catalogue.touch_file(odd, FileState(5, 6))
    assert catalogue.file_states()[odd] == (FileState(5, 6), image_id)
    catalogue.record_skip("/bad-\udcfe.jpg", FileState(1, 1), "cannot decode \udcfe")
    assert list(catalogue.skipped_states()) == ["/bad-\udcfe.jpg"]
    catalogue.forget_skips(["/bad-\udcfe.jpg"])
    assert catalogue.skipped_states() == {}
    assert catalogue.remove_files([odd]) == []
    assert catalogue.remove_files([marked]) == [image_id]
    assert catalogue.file_states() == {}


def test_states_and_missing_vectors_of_a_few_files_read_only_those(catalogue) -> None:
    """What an upload reads (issue #15 item 14): the states of the files given, the images
    added since an id without some vector; the same answers as the whole-catalogue reads."""
    odd = "/photos/caf\udce9.jpg"  # not UTF-8: found under the name it was given
    paths = [f"/{i}.jpg" for i in range(1200)] + [odd]  # more than one chunk of a query
    ids = catalogue.add_images([_image(f"h{i}", p, [1, 0]) for i, p in enumerate(paths)])
    catalogue.record_skip("/bad.jpg", FileState(3, 4), "truncated")
    catalogue.record_skip("/bad-\udcfe.jpg", FileState(5, 6), "empty")
    every, skipped = catalogue.file_states(), catalogue.skipped_states()
    asked = [odd, "/7.jpg", "/1100.jpg", "/nowhere.jpg", "/7.jpg"]
    assert catalogue.file_states_of(asked) == {p: every[p] for p in (odd, "/7.jpg", "/1100.jpg")}
    assert catalogue.file_states_of(paths) == every
    assert catalogue.file_states_of([]) == {}
    assert catalogue.skipped_states_of(["/bad-\udcfe.jpg", "/7.jpg"]) == {
        "/bad-\udcfe.jpg": skipped["/bad-\udcfe.jpg"]
    }
    assert catalogue.skipped_states_of(iter(["/bad.jpg"])) == {
        "/bad.jpg": (FileState(3, 4), "truncated")
    }

    catalogue.put_vectors("text", ids[:-2], np.ones((len(ids) - 2, 2), np.float32))
    assert catalogue.ids_missing_after("text", 0) == (ids[-2:], ids[-1])
    assert catalogue.ids_missing_after("text", ids[-2]) == (ids[-1:], ids[-1])
    assert catalogue.ids_missing_after("text", ids[-1]) == ([], ids[-1])  # nothing since
    assert catalogue.ids_missing_after("copy", ids[10]) == (ids[11:], ids[-1])
    (later,) = catalogue.add_images([_image("later", "/later.jpg", [0, 1])])
    assert catalogue.ids_missing_after("text", ids[-1]) == ([later], later)


def test_meta_values_leave_the_generation_alone(catalogue) -> None:
    generation = catalogue.generation()
    assert catalogue.get_meta("manifest") is None
    catalogue.set_meta("manifest", '{"a": 1}')
    catalogue.set_meta("manifest", '{"a": 2}')
    assert catalogue.get_meta("manifest") == '{"a": 2}'
    assert catalogue.generation() == generation
    with pytest.raises(ValueError):
        catalogue.set_meta("generation", "0")


def test_a_catalogue_that_must_exist_is_never_created_empty(location: str) -> None:
    with pytest.raises(CatalogueError, match="check --repair"):
        open_catalogue(location, create=False)
    if not location.startswith("postgresql"):
        assert not Path(location).exists()
        Path(location).write_bytes(b"")  # a 0-byte file is not an empty catalogue either
        with pytest.raises(CatalogueError, match="empty"):
            open_catalogue(location, create=False)
        assert Path(location).stat().st_size == 0
    open_catalogue(location).close()
    open_catalogue(location, create=False).close()


def test_reopening_keeps_everything(location: str) -> None:
    first = open_catalogue(location)
    ids = first.add_images([_image("h", "/a.jpg", [1, 2])])
    first.close()
    again = open_catalogue(location)
    assert again.schema_version() == 1 and again.images(ids)[0].path == "/a.jpg"
    again.close()


def test_a_newer_schema_is_refused(postgres_server: str) -> None:
    import psycopg

    from lookalike.store.postgres import split_uri

    uri = fresh_postgres_uri(postgres_server)
    open_catalogue(uri).close()
    conninfo, schema = split_uri(uri)
    with psycopg.connect(conninfo, autocommit=True) as db:
        db.execute(f"UPDATE {schema}.meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(CatalogueError, match="newer"):
        open_catalogue(uri)


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(CatalogueError, match="cannot connect"):
        open_catalogue(f"postgresql://nobody@/db?host={tmp_path}&port=1&connect_timeout=2")


def test_collection_with_a_postgres_catalogue(
    postgres_server: str, photo_dir: Path, tmp_path: Path, embedder
) -> None:
    from lookalike import Collection, CollectionError

    uri = fresh_postgres_uri(postgres_server)
    with Collection.create(tmp_path / "col", embedder=embedder, catalogue=uri) as col:
        assert col.sync([photo_dir]).added == 6
        assert col.search(photo_dir / "chelsea.jpg", k=1)[0].path.endswith("chelsea.jpg")
    assert not (tmp_path / "col" / "catalogue.sqlite").exists()
    with Collection.open(tmp_path / "col", embedder=embedder) as col:
        assert len(col) == 6
        assert col.sync([photo_dir]).unchanged == 6
    with pytest.raises(CollectionError, match="catalogue"):
        Collection.open(tmp_path / "col", embedder=embedder, catalogue="other.sqlite")


def test_cli_index_with_catalogue_and_index_kind(
    postgres_server: str, photo_dir: Path, tmp_path: Path
) -> None:
    import json
    import sys

    col, uri = str(tmp_path / "col"), fresh_postgres_uri(postgres_server)
    command = [sys.executable, "-m", "lookalike"]
    options = ["-c", col, "--catalogue", uri, "--index", "hnsw", "--json"]
    result = subprocess.run(
        [*command, "index", str(photo_dir), *options],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["added"] == 6
    manifest = json.loads((tmp_path / "col" / "manifest.json").read_text())
    assert manifest["catalogue"] == uri and manifest["index"]["kind"] == "hnsw"
    found = subprocess.run(
        [*command, "search", str(photo_dir / "coffee.jpg"), "-c", col, "-k", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert json.loads(found.stdout)["results"][0]["path"].endswith("coffee.jpg")
    unreachable = f"postgresql://x@/db?host={tmp_path}&port=1"
    other = tmp_path / "other"
    bad = subprocess.run(
        [*command, "index", str(photo_dir), "-c", str(other), "--catalogue", unreachable],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and "cannot connect" in bad.stderr
    assert not (other / "manifest.json").exists()


# -- SQLite only: creation races, damage, salvage --------------------------------------------
class _StaleFirstRead:
    """A connection whose first ``PRAGMA user_version`` answers 0: as if it was read just
    before another process created the tables."""

    def __init__(self, db) -> None:
        self.db, self.stale = db, True

    def execute(self, sql: str, *args):
        if self.stale and sql.strip() == "PRAGMA user_version":
            self.stale = False
            return self.db.execute("SELECT 0")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.db, name)


def test_two_creators_of_one_sqlite_catalogue_do_not_race(tmp_path: Path, monkeypatch) -> None:
    import sqlite3

    path = tmp_path / "catalogue.sqlite"
    open_catalogue(path).close()  # the other process won
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: _StaleFirstRead(connect(*a, **k)))
    late = open_catalogue(path)  # decided inside the write transaction: nothing to create
    assert late.generation() == 0 and late.schema_version() == 1
    late.close()


def _damage(path: Path, table: str) -> None:
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    db.close()
    with open(path, "r+b") as f:
        f.seek((root[0] - 1) * size)
        f.write(b"\xee" * size)


def test_a_damaged_sqlite_catalogue_is_one_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 300)
    with pytest.raises(CatalogueError, match=r"damaged .*lookalike check --repair"):
        open_catalogue(garbage)
    path = tmp_path / "catalogue.sqlite"
    cat = open_catalogue(path)
    ids = cat.add_images([_image(f"h{i}", f"/{i}.jpg", [i, 1]) for i in range(50)])
    cat.close()
    _damage(path, "files_by_image")
    cat = open_catalogue(path, create=False)
    with pytest.raises(CatalogueError, match="lookalike check --repair"):
        cat.images(ids)
    cat.close()


def test_salvage_copies_every_readable_row(tmp_path: Path) -> None:
    from lookalike.store.sqlite import salvage, verify

    path = tmp_path / "catalogue.sqlite"
    cat = open_catalogue(path)
    vectors = np.random.default_rng(0).normal(size=(300, 600)).astype(np.float32)
    ids = cat.add_images([_image(f"h{i}", f"/{i}.jpg", v) for i, v in enumerate(vectors)])
    cat.record_skip("/bad.jpg", FileState(1, 1), "empty")
    cat.set_meta("manifest", "{}")
    generation = cat.generation()
    cat.close()
    assert verify(path) == []
    _damage(path, "files_by_image")  # an index: every row is still readable
    assert verify(path)
    saved = salvage(path, tmp_path / "new.sqlite")
    assert saved.complete and saved.copied["images"] == saved.copied["files"] == 300
    new = open_catalogue(tmp_path / "new.sqlite", create=False)
    assert verify(tmp_path / "new.sqlite") == []
    assert new.generation() == generation + 1 and new.get_meta("manifest") == "{}"
    assert np.array_equal(new.vectors("image", ids), vectors)
    assert new.images(ids)[7].paths == ("/7.jpg",) and "/bad.jpg" in new.skipped_states()
    new.close()
    _damage(path, "images")  # the images themselves: their files and vectors go with them
    lost = salvage(path, tmp_path / "newer.sqlite")
    assert not lost.complete and lost.copied["images"] < 300
    assert len(lost.orphan_files) == 300 - lost.copied["images"]
    assert verify(tmp_path / "newer.sqlite") == []
