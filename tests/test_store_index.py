"""The SQLite catalogue and the FAISS flat index, each on its own."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from lookalike.index import VectorIndexError, create_index, load_index
from lookalike.store import CatalogueError, FileState, NewImage, SQLiteCatalogue


def _image(h: str, path: str, vector) -> NewImage:
    return NewImage(h, path, FileState(10, 1), 4, 3, {"image": np.asarray(vector, np.float32)})


def test_catalogue_round_trip_and_generation(tmp_path) -> None:
    cat = SQLiteCatalogue(tmp_path / "c.sqlite")
    assert cat.schema_version() == 1
    g0 = cat.generation()
    ids = cat.add_images([_image("h1", "/a.jpg", [1, 0]), _image("h2", "/b.jpg", [0, 1])])
    assert cat.generation() == g0 + 1
    cat.link_file("/a_copy.jpg", ids[0], FileState(10, 2))
    record = cat.images([ids[0]])[0]
    assert record.paths == ("/a.jpg", "/a_copy.jpg") and record.path == "/a.jpg"
    assert cat.image_id_by_hash("h2") == ids[1]
    assert np.allclose(cat.vectors("image", ids), [[1, 0], [0, 1]])
    assert cat.count() == {"images": 2, "files": 3, "skipped": 0}

    # Removing one of two files keeps the image; removing the last drops image and vectors.
    assert cat.remove_files(["/a.jpg"]) == []
    assert cat.remove_files(["/a_copy.jpg", "/b.jpg"]) == ids
    assert cat.count()["images"] == 0
    assert list(cat.iter_vectors("image")) == []


def test_catalogue_skips_and_missing_vectors(tmp_path) -> None:
    cat = SQLiteCatalogue(tmp_path / "c.sqlite")
    cat.record_skip("/bad.jpg", FileState(3, 4), "truncated")
    assert cat.skipped_states() == {"/bad.jpg": (FileState(3, 4), "truncated")}
    (image_id,) = cat.add_images([_image("h", "/bad.jpg", [1, 0])])  # fixed since
    assert cat.skipped_states() == {}
    assert cat.ids_missing("copy") == [image_id]
    cat.put_vectors("copy", [image_id], np.ones((1, 3), np.float32))
    assert cat.ids_missing("copy") == []


def test_catalogue_rejects_a_newer_schema(tmp_path) -> None:
    path = tmp_path / "c.sqlite"
    SQLiteCatalogue(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(CatalogueError, match="newer"):
        SQLiteCatalogue(path)


@pytest.mark.parametrize("kind", ["flat", "milvus"])
def test_flat_index_exact_search_remove_and_save(kind: str, tmp_path) -> None:
    options = {}
    if kind == "milvus":  # Milvus Lite's exact FLAT index: the same answers as FAISS's
        pytest.importorskip("pymilvus")
        pytest.importorskip("milvus_lite")
        options = {"uri": str(tmp_path / "vectors.db"), "index_type": "FLAT"}
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1000, 1200)
    index = create_index(kind, 16, **options)
    index.add(ids, vectors)
    scores, found = index.search(vectors[:5], k=3)
    assert found[:, 0].tolist() == ids[:5].tolist()
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)
    exact = vectors @ vectors[7]
    assert found.shape == (5, 3)
    assert np.isclose(index.search(vectors[7:8], 2)[0][0, 1], np.sort(exact)[-2], atol=1e-5)

    index.remove(ids[:5])
    assert len(index) == 195
    assert ids[0] not in index.search(vectors[:1], k=3)[1]
    index.add(ids[10:11], vectors[10:11])  # re-adding an id replaces it, no duplicate
    assert len(index) == 195

    index.save(tmp_path / "i.faiss")
    again = load_index(kind, tmp_path / "i.faiss")
    assert len(again) == 195
    assert again.search(vectors[9:10], 1)[1][0, 0] == ids[9]
    assert not list(tmp_path.glob("*.tmp"))


def test_unknown_index_kind() -> None:
    with pytest.raises(VectorIndexError, match="available"):
        create_index("nope", 4)
