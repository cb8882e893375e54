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


def test_a_duplicate_hash_rolls_the_batch_back(catalogue) -> None:
    catalogue.add_images([_image("same", "/1.jpg", [1, 0])])
    with pytest.raises(Exception):  # noqa: B017 - each driver raises its own IntegrityError
        catalogue.add_images([_image("new", "/2.jpg", [0, 1]), _image("same", "/3.jpg", [1, 1])])
    assert catalogue.count()["images"] == 1 and catalogue.image_id_by_hash("new") is None
    assert catalogue.add_images([_image("new", "/2.jpg", [0, 1])])  # still usable


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
