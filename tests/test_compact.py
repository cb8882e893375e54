"""Compact collections (issue #19): vector encodings, the sparse text index, ``auto`` for every
space, the format-1 -> 2 upgrade (in place, resumable, known to ``check``), ``sizes()``."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from lookalike import Collection, CollectionError
from lookalike.collection.check import check_collection
from lookalike.collection.manifest import FORMAT_VERSION
from lookalike.index import create_index, load_index
from lookalike.index.inverted import InvertedIndex
from lookalike.store import SQLiteCatalogue
from lookalike.store.encoding import (
    decode_vector,
    decode_vectors,
    encode_vector,
    encoding_of,
)
from lookalike.store.sqlite import PAGE_SIZE


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


# -- encodings -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("encoding", "size", "error"),
    [("float32", 4 * 300, 0.0), ("float16", 603, 1e-3), ("int8", 307, 8e-3), ("int8z", None, 8e-3)],
)
def test_encodings_round_trip_within_their_precision(encoding, size, error) -> None:
    v = _unit(np.random.default_rng(0).standard_normal(300))
    blob = encode_vector(v, encoding)
    assert encoding_of(blob) == encoding
    assert size is None or len(blob) == size
    back = decode_vector(blob)
    assert back.dtype == np.float32 and back.shape == (300,)
    assert np.abs(back - v).max() <= error
    assert abs(np.linalg.norm(back) - 1.0) < (1e-4 if encoding == "float16" else 1e-5)
    assert (len(blob) % 4 == 0) == (encoding == "float32")  # how a blob says what it is


def test_sparse_keeps_the_largest_entries_and_mixed_rows_decode_together() -> None:
    v = np.zeros(1000, np.float32)
    v[[3, 500, 999, 7]] = [0.5, -0.9, 0.1, 0.0001]
    blob = encode_vector(v, "sparse:3")
    back = decode_vector(blob)
    assert np.flatnonzero(back).tolist() == [3, 500, 999]  # 7 is the smallest: dropped
    assert len(blob) <= 3 + 2 + 3 * 4 + 1
    rows = [encode_vector(v, e) for e in ("float32", "int8", "int8z", "sparse:4", "float16")]
    assert np.abs(decode_vectors(rows) - v).max() < 5e-3
    same = [encode_vector(_unit(np.ones(8) + i), "int8z") for i in range(3)]
    assert np.allclose(decode_vectors(same), [decode_vector(b) for b in same])
    with pytest.raises(ValueError, match="unknown vector encoding"):
        encode_vector(v, "int4")


def test_catalogue_writes_each_space_in_its_encoding_and_reencodes_old_rows(tmp_path) -> None:
    from lookalike.store import FileState, NewImage

    vectors = _unit(np.random.default_rng(1).random((50, 64)))
    cat = SQLiteCatalogue(tmp_path / "c.sqlite")
    ids = cat.add_images(
        [
            NewImage(f"{i:032x}", f"/p/{i}.jpg", FileState(1, i), 8, 8, {"image": v})
            for i, v in enumerate(vectors)
        ]
    )
    assert cat.vector_stats()["image"] == {"float32": {"vectors": 50, "bytes": 50 * 256}}
    generation = cat.generation()
    cat.set_encoding("image", "int8")
    calls = []
    assert cat.reencode("image", batch=20, progress=lambda d, t: calls.append((d, t))) == 50
    assert calls == [(20, 50), (40, 50), (50, 50)]
    assert cat.generation() == generation  # the same vectors: no index is made stale
    assert set(cat.vector_stats()["image"]) == {"int8"}
    assert np.abs(cat.vectors("image", ids) - vectors).max() < 1e-2
    assert cat.reencode("image") == 0  # nothing left: a resumed run is a no-op
    cat.put_vectors("image", ids[:1], vectors[:1])
    assert cat.vector_stats()["image"]["int8"]["vectors"] == 50
    cat.compact()
    assert cat._db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
    cat.close()


# -- the inverted index (text space) -------------------------------------------------------
def _sparse_data(n: int, dim: int = 200, nnz: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((n, dim), np.float32)
    for row in x:
        row[rng.choice(dim, nnz, replace=False)] = rng.random(nnz)
    return _unit(x)


def test_inverted_index_is_exact_on_what_it_keeps(tmp_path) -> None:
    data = _sparse_data(3000)
    ids = np.arange(3000, dtype=np.int64) * 3 + 5
    index = InvertedIndex(200, top=12)
    index.add(ids[:2000], data[:2000])
    index.add(ids[2000:], data[2000:])  # pending until merged: searched all the same
    queries = _sparse_data(20, seed=9)
    queries[0, :] = 0.0
    queries[0, [1, 2]] = [1.0, -0.5]  # negative weights too
    expected = (queries @ data.astype(np.float16).astype(np.float32).T).argsort(1)[:, ::-1]
    scores, found = index.search(queries, 10)
    assert (found[:, :3] == ids[expected[:, :3]]).mean() > 0.98  # float16 values: ties aside
    assert np.all(np.diff(scores, axis=1) <= 1e-6)

    index.remove(ids[expected[1, :1]])
    assert len(index) == 2999 and index.search(queries[1:2], 1)[1][0, 0] != ids[expected[1, 0]]
    index.add(ids[expected[1, :1]], data[expected[1, :1]])  # back (at a new position)
    assert index.search(queries[1:2], 1)[1][0, 0] == ids[expected[1, 0]]

    allowed = np.sort(ids[::7])
    _, only = index.search(queries, 5, allowed=allowed)
    assert np.isin(only, allowed).all()

    index.save(tmp_path / "t.faiss")
    loaded = load_index("inverted", tmp_path / "t.faiss")
    memory = loaded.memory()  # the lists stay in the file, read as queries need them
    assert memory["resident"] < 2 * 3000 and memory["mapped"] > 6 * 3000 * 12
    assert len(loaded) == len(index)
    assert np.array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])
    stamp = (tmp_path / "t.faiss").stat().st_mtime_ns
    loaded.save(tmp_path / "t.faiss")  # unchanged: the file already holds it
    assert (tmp_path / "t.faiss").stat().st_mtime_ns == stamp
    loaded.remove(ids[:10])  # an index read from its file can still change
    assert len(loaded) == len(index) - 10
    loaded.save(tmp_path / "t.faiss")  # while its lists are read from the file it replaces
    again = load_index("inverted", tmp_path / "t.faiss")
    assert len(again) == len(index) - 10
    assert np.array_equal(again.search(queries, 5)[1], loaded.search(queries, 5)[1])


def test_inverted_top_k_over_many_scores_is_exact() -> None:
    """The top k of a million scores, found from a bound taken on a slice, equals a full sort
    (ties by position, -inf never returned), including a slice that is all zeros or -inf."""
    from lookalike.index.inverted import _top as top

    rng = np.random.default_rng(3)
    for case in range(6):
        scores = np.round(rng.random(1_000_000), 3)  # many ties
        if case == 1:
            scores[:20_000] = 0.0  # a slice of zeros: the bound is 0
        if case == 2:
            scores[rng.random(len(scores)) < 0.5] = -np.inf  # dead positions
        if case == 3:
            scores[:] = -np.inf
            scores[[5, 999_999]] = [0.2, 0.9]
        want = np.lexsort((np.arange(len(scores)), -scores))[:10]
        want = want[np.isfinite(scores[want])]
        assert top(scores, 10).tolist() == want.tolist(), case


def test_auto_over_a_sparse_space_is_inverted(tmp_path) -> None:
    index = create_index("auto", 200, sparse=12)
    index.add(np.arange(100), _sparse_data(100))
    assert index.params["kind"] == "inverted"
    index.save(tmp_path / "t.faiss")
    assert load_index("auto", tmp_path / "t.faiss").params["kind"] == "inverted"


# -- collections ---------------------------------------------------------------------------
@pytest.fixture
def new_col(tmp_path, photo_dir, embedder):
    with Collection.create(tmp_path / "col", embedder=embedder) as col:
        col.sync([photo_dir])
        yield col


def test_a_new_collection_is_compact(new_col) -> None:
    manifest = new_col.manifest
    assert manifest["format_version"] == FORMAT_VERSION == 2
    spaces = manifest["spaces"]
    assert (spaces["image"]["encoding"], spaces["text"]["encoding"]) == ("int8z", "sparse:96")
    assert spaces["image"]["index"] == spaces["text"]["index"] == "auto"
    stats = new_col.catalogue.vector_stats()
    assert set(stats["image"]) == {"int8z"} and set(stats["text"]) == {"sparse"}
    assert stats["image"]["int8z"]["bytes"] / 6 < 1800  # 2280-d: 9120 bytes as float32
    assert stats["text"]["sparse"]["bytes"] / 6 <= 96 * 4 + 8
    assert new_col.index("text").params["kind"] == "inverted"
    sizes = new_col.sizes()
    for space in ("image", "text"):
        entry = sizes["spaces"][space]
        assert entry["disk"]["per_image"] > 0 and entry["ram"]["per_image"] >= 0
    assert sizes["disk_per_image"] > 0 and "other_per_image" in sizes["catalogue"]
    assert Path(new_col.search_text("a cat", k=1)[0].path).stem == "chelsea"


def write_format_1(col: Collection) -> None:
    """Turn a collection into what lookalike wrote before issue #19: float32 blobs in a
    4 KB-page catalogue, flat indexes, a format-1 manifest without encodings."""
    path = col.path
    manifest = json.loads((path / "manifest.json").read_text())
    col.close()
    db = sqlite3.connect(path / "catalogue.sqlite", isolation_level=None)
    rows = db.execute("SELECT rowid, data FROM vectors").fetchall()
    db.execute("BEGIN")
    for rowid, blob in rows:
        db.execute(
            "UPDATE vectors SET data = ? WHERE rowid = ?",
            (decode_vector(blob).astype(np.float32).tobytes(), rowid),
        )
    db.execute("COMMIT")
    db.execute("PRAGMA journal_mode = DELETE")
    db.execute("PRAGMA page_size = 4096")
    db.execute("VACUUM")
    db.execute("PRAGMA journal_mode = WAL")
    db.close()
    manifest["format_version"] = 1
    manifest["index"]["kind"] = "flat"
    for spec in manifest["spaces"].values():
        spec.pop("encoding", None)
        spec["index"] = "flat"
    (path / "manifest.json").write_text(json.dumps(manifest))
    for file in (path / "index").glob("*"):
        if not file.name.endswith(".pca.npz"):
            file.unlink()
    with Collection.open(path) as old:  # as format 1 built them: flat, from float32
        for space in old.spaces():
            old.rebuild_index(space)
        assert old.index("text").kind == "flat"


def test_a_format_1_collection_opens_searches_and_upgrades_in_place(new_col, photo_dir) -> None:
    path = new_col.path
    query = photo_dir / "coffee.jpg"
    write_format_1(new_col)
    with Collection.open(path) as old:
        assert old.manifest["format_version"] == 1
        assert set(old.catalogue.vector_stats()["image"]) == {"float32"}
        before = old.sizes()["catalogue"]["vectors"]
        found = [r.id for r in old.search(query, k=6)]
        text = [r.id for r in old.search_text("a cat", k=3)]
        report = check_collection(path)
        assert report.healthy and [f.part for f in report.findings] == ["format"]
        assert report.findings[0].note and "upgrades it to format 2" in report.findings[0].problem
        with old.writing():  # the next writer upgrades it first
            pass
        assert old.manifest["format_version"] == 2
        assert json.loads((path / "manifest.json").read_text())["format_version"] == 2
        stats = old.catalogue.vector_stats()
        assert set(stats["image"]) == {"int8z"} and set(stats["text"]) == {"sparse"}
        assert old.index("text").params["kind"] == "inverted"
        assert [r.id for r in old.search(query, k=6)][:3] == found[:3]
        assert old.search_text("a cat", k=3)[0].id == text[0]
        assert old.sizes()["catalogue"]["vectors"] < before / 6  # 13 KB an image before
    assert check_collection(path).findings == []


def test_a_killed_upgrade_resumes_and_check_knows(new_col, monkeypatch) -> None:
    path = new_col.path
    write_format_1(new_col)
    real = SQLiteCatalogue.reencode

    def killed(self, space, batch=2000, progress=None):
        def stop(done, total):
            raise KeyboardInterrupt  # killed once the first batch is committed

        return real(self, space, batch=2, progress=stop)

    monkeypatch.setattr(SQLiteCatalogue, "reencode", killed)
    with Collection.open(path) as col, pytest.raises(KeyboardInterrupt), col.writing():
        pass
    monkeypatch.setattr(SQLiteCatalogue, "reencode", real)
    with Collection.open(path) as col:
        assert col.manifest["format_version"] == 1  # the manifest is written last
        assert Path(col.search_text("a cat", k=1)[0].path).stem == "chelsea"  # mixed rows read
    report = check_collection(path)
    assert not report.healthy and "was interrupted" in report.problems[0].problem
    repaired = check_collection(path, repair=True)
    assert repaired.healthy and repaired.findings[0].repaired
    with Collection.open(path) as col:
        assert col.manifest["format_version"] == 2
        assert "float32" not in {e for by in col.catalogue.vector_stats().values() for e in by}
    assert check_collection(path).findings == []


def test_a_newer_format_is_refused(new_col) -> None:
    path = new_col.path
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CollectionError, match="upgrade lookalike"):
        Collection.open(path)
