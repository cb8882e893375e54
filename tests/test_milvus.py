"""The ``milvus`` index kind on a real Milvus: Milvus Lite (embedded, a local file) and Milvus
Lite's gRPC server started here as a separate process, reached by URI as a cluster would be.

The VectorIndex contract itself runs against ``milvus`` in tests/test_index_kinds.py; here: the
pointer ``save`` writes and what loading it checks, rebuilds reusing their Milvus collection, a
collection and the command line with ``--index milvus``, and clear errors.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from pymilvus import MilvusClient

from lookalike.index import VectorIndexError, create_index, load_index
from lookalike.index.milvus import MilvusIndex

DIM = 16


def _unit(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_pointer_reconnect_and_rebuild_into_the_same_collection(tmp_path: Path) -> None:
    folder = tmp_path / "col" / "index"
    pointer = folder / "image.faiss"
    vectors = _unit(300)
    index = create_index("milvus", DIM, path=pointer)  # Lite beside the pointer by default
    index.add(np.arange(300), vectors)
    index.save(pointer)
    saved = json.loads(pointer.read_text())
    assert saved["uri"] == "milvus.db" and saved["metric"] == "IP" and saved["count"] == 300
    assert saved["collection"].startswith("lookalike_image_") and saved["dim"] == DIM
    assert (folder / "milvus.db").is_dir()

    again = load_index("milvus", pointer)
    assert len(again) == 300 and again.name == saved["collection"]
    assert again.search(vectors[:5], 1)[1][:, 0].tolist() == [0, 1, 2, 3, 4]

    # A rebuild (new index at the same path, another dimension after a PCA refit) empties and
    # reuses the recorded Milvus collection instead of leaving the old one behind.
    rebuilt = create_index("milvus", 8, path=pointer)
    rebuilt.add(np.array([5]), _unit(1, dim=8))
    assert rebuilt.name == saved["collection"] and len(rebuilt) == 1
    client = MilvusClient(str(folder / "milvus.db"))
    assert client.list_collections() == [saved["collection"]]
    # A pointer that no longer matches its collection is refused, so the caller rebuilds.
    with pytest.raises(VectorIndexError, match="dimension"):
        load_index("milvus", pointer)
    create_index("milvus", DIM, path=pointer).add(np.array([5]), vectors[:1])
    with pytest.raises(VectorIndexError, match="saved with 300"):
        load_index("milvus", pointer)
    client.drop_collection(saved["collection"])
    with pytest.raises(VectorIndexError, match="no collection"):
        load_index("milvus", pointer)


def test_two_indexes_in_one_file_stay_apart(tmp_path: Path) -> None:
    uri = str(tmp_path / "shared.db")
    first, second = (create_index(f"milvus:{uri}", DIM) for _ in range(2))
    first.add(np.array([1, 2]), _unit(2, seed=1))
    second.add(np.array([3]), _unit(1, seed=2))
    assert first.name != second.name and (len(first), len(second)) == (2, 1)
    assert set(first.search(_unit(1, seed=2), 5)[1][0].tolist()) == {1, 2, -1}


def test_exact_flat_and_ivf_index_types(tmp_path: Path) -> None:
    vectors = _unit(500, seed=3)
    truth = np.argsort(-(vectors[:20] @ vectors.T), axis=1)[:, :10]
    for index_type in ("FLAT", "IVF_FLAT"):
        index = create_index(
            f"milvus:{tmp_path / 'v.db'}", DIM, index_type=index_type, nlist=8, nprobe=8
        )
        index.add(np.arange(500), vectors)
        scores, ids = index.search(vectors[:20], 10)
        assert np.array_equal(ids, truth), index_type  # every list probed: exact
        assert np.allclose(
            scores, np.take_along_axis(vectors[:20] @ vectors.T, truth, 1), atol=1e-5
        )
        index.save(tmp_path / f"{index_type}.json")
        assert load_index("milvus", tmp_path / f"{index_type}.json").index_type == index_type


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(VectorIndexError, match=r"\.db"):
        create_index(f"milvus:{tmp_path / 'folder'}", DIM)
    with pytest.raises(VectorIndexError, match="index_type"):
        create_index(f"milvus:{tmp_path / 'v.db'}", DIM, index_type="DISKANN")
    with pytest.raises(VectorIndexError, match="needs a URI"):
        len(create_index("milvus", DIM))  # neither a URI nor a collection folder
    unreachable = create_index("milvus:http://127.0.0.1:9", DIM)  # connecting is lazy
    start = time.monotonic()
    with pytest.raises(VectorIndexError, match=r"127\.0\.0\.1:9"):
        unreachable.add(np.array([1]), _unit(1))
    assert time.monotonic() - start < 30
    (tmp_path / "x.faiss").write_text("{}")
    with pytest.raises(VectorIndexError, match="not a milvus index pointer"):
        load_index("milvus", tmp_path / "x.faiss")


def test_a_lite_file_serves_one_process_at_a_time(tmp_path: Path) -> None:
    uri = tmp_path / "v.db"
    create_index(f"milvus:{uri}", DIM).add(np.array([1]), _unit(1))  # served by this process
    code = f"from lookalike.index import create_index; create_index('milvus:{uri}', 4).client()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "one process at a time" in out.stderr


def test_pymilvus_is_imported_only_when_milvus_is_used() -> None:
    code = (
        "import sys; from lookalike.index import create_index, kinds; "
        "assert 'milvus' in kinds(); create_index('flat', 4); create_index('milvus', 4); "
        "print('pymilvus' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- a server reached by URI, as a Milvus cluster is ----------------------------------------
@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory) -> Iterator[str]:
    """Milvus Lite's gRPC server in its own process on a free local port; yields its URI."""
    data = tmp_path_factory.mktemp("milvus-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "milvus_lite", "server",
        "--data-dir", str(data), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.skip(f"milvus-lite server did not start: {server.stderr.read()[-300:]}")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_server_uri_add_search_save_and_reload(milvus_server: str, tmp_path: Path) -> None:
    vectors = _unit(400, seed=5)
    index = create_index(f"milvus:{milvus_server}", DIM)
    assert not index.lite
    index.add(100 + np.arange(400), vectors)
    index.remove(np.array([100, 101]))
    assert len(index) == 398
    _, ids = index.search(vectors[:4], 3)
    assert ids[2:, 0].tolist() == [102, 103] and 100 not in ids and 101 not in ids
    index.save(tmp_path / "image.faiss")
    assert json.loads((tmp_path / "image.faiss").read_text())["uri"] == milvus_server
    loaded = load_index(f"milvus:{milvus_server}", tmp_path / "image.faiss")
    assert len(loaded) == 398 and loaded.search(vectors[5:6], 1)[1][0, 0] == 105


def test_collection_on_a_server(milvus_server: str, photo_dir: Path, tmp_path, embedder) -> None:
    from lookalike import Collection

    kind = f"milvus:{milvus_server}"
    with Collection.create(tmp_path / "col", index=kind, embedder=embedder) as col:
        col.sync([photo_dir])
        assert col.search(photo_dir / "chelsea.jpg", k=1)[0].path.endswith("chelsea.jpg")
    assert not (tmp_path / "col" / "index" / "milvus.db").exists()  # nothing local
    with Collection.open(tmp_path / "col", embedder=embedder) as col:
        assert col.info()["index"] == {"kind": kind, "vectors": 6}


# -- a collection and the command line with --index milvus ----------------------------------
def test_collection_with_a_milvus_index(photo_dir: Path, tmp_path: Path, embedder) -> None:
    from lookalike import Collection

    path = tmp_path / "col"
    with Collection.create(path, index="milvus", embedder=embedder) as col:
        assert col.sync([photo_dir]).added == 6
        hits = col.search(photo_dir / "coffee.jpg", k=3)
        assert hits[0].path.endswith("coffee.jpg") and hits[0].score > 0.99 and len(hits) == 3
    pointer = json.loads((path / "index" / "image.faiss").read_text())
    assert pointer["uri"] == "milvus.db" and pointer["count"] == 6

    with Collection.open(path, embedder=embedder) as col:
        index = col.index()
        assert isinstance(index, MilvusIndex) and index.name == pointer["collection"]
        assert not index._fresh  # reconnected, not rebuilt
        col.remove([photo_dir / "rocket.jpg"])
        assert all(not h.path.endswith("rocket.jpg") for h in col.search(photo_dir / "rocket.jpg"))
        assert len(col.index()) == 5

    # Its Milvus data lost behind its back: the pointer is refused and the index rebuilt.
    MilvusClient(str(path / "index" / "milvus.db")).drop_collection(pointer["collection"])
    with Collection.open(path, embedder=embedder) as col:
        assert len(col.index()) == 5
        assert col.search(photo_dir / "astronaut.jpg", k=1)[0].path.endswith("astronaut.jpg")


def test_an_existing_collection_moves_to_milvus(photo_dir: Path, tmp_path, embedder) -> None:
    """As docs/architecture.md says: set the kind in the manifest, delete the index's state
    file, and the next open rebuilds the index into Milvus from the catalogue (no embedding)."""
    from lookalike import Collection

    path = tmp_path / "col"
    with Collection.create(path, embedder=embedder) as col:
        col.sync([photo_dir])
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["index"]["kind"] = manifest["spaces"]["image"]["index"] = "milvus"
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "index" / "image.json").unlink()
    with Collection.open(path, embedder=embedder) as col:
        assert isinstance(col.index(), MilvusIndex) and len(col.index()) == 6
        assert col.search(photo_dir / "coffee.jpg", k=1)[0].path.endswith("coffee.jpg")


@pytest.mark.slow
def test_cli_index_and_search_with_milvus(photo_dir: Path, tmp_path: Path) -> None:
    def run(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "lookalike", *args], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    col = str(tmp_path / "col")
    indexed = json.loads(run("index", str(photo_dir), "-c", col, "--index", "milvus", "--json"))
    assert indexed["added"] == 6
    assert (tmp_path / "col" / "index" / "milvus.db").is_dir()
    lines = run("search", str(photo_dir / "rocket.jpg"), "-c", col, "-k", "2", "--json")
    result = json.loads(lines.splitlines()[0])
    assert Path(result["results"][0]["path"]).name == "rocket.jpg" and len(result["results"]) == 2
