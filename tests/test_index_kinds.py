"""The same contract checks against every index kind, plus what is particular to the ANN kinds:
tombstones and rebuilds, training, tuning, memory-mapped loading, ``auto``'s choice, and a
collection built with ``index="hnsw"``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lookalike.descriptors import Whitening
from lookalike.index import auto as auto_module
from lookalike.index import create_index, kinds, load_index
from lookalike.index.ann import AnnIndex, exact_search, recall_at
from lookalike.index.projected import ProjectedIndex

DIM = 32
# Options that make the trainable kinds train on this small data set instead of staying exact.
OPTIONS = {
    "flat": {},
    "hnsw": {},
    "ivf-pq": {"min_train": 1000, "code_bytes": 8},
    "lsh": {"bits": 128},
    "auto": {},
}
KINDS = list(OPTIONS)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    """3000 stored vectors in 40 clusters, held-out queries near them, non-contiguous ids."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(40, DIM))
    labels = rng.integers(0, 40, size=3200)
    points = _unit(centres[labels] + 0.6 * rng.normal(size=(3200, DIM)))
    return {"vectors": points[:3000], "queries": points[3000:], "ids": 1000 + 7 * np.arange(3000)}


def _filled(kind: str, data: dict) -> object:
    index = create_index(kind, DIM, **OPTIONS[kind])
    for start in range(0, 3000, 1000):  # in chunks, as a collection adds them
        index.add(data["ids"][start : start + 1000], data["vectors"][start : start + 1000])
    return index


def _truth(data: dict, k: int = 10) -> np.ndarray:
    return data["ids"][exact_search(data["vectors"], data["queries"], k)[1]]


def test_every_kind_is_registered() -> None:
    assert set(KINDS) <= set(kinds())


@pytest.mark.parametrize("kind", KINDS)
def test_add_search_recall_and_scores(kind: str, data: dict) -> None:
    index = _filled(kind, data)
    assert len(index) == 3000 and index.kind == kind and index.dim == DIM
    scores, ids = index.search(data["queries"], k=10)
    assert scores.shape == ids.shape == (200, 10)
    assert set(ids.ravel().tolist()) <= set(data["ids"].tolist())  # the caller's ids, kept
    assert recall_at(ids, _truth(data)) >= 0.9
    # Scores are the exact inner products of the returned vectors, best first.
    rows = (ids - 1000) // 7
    exact = np.einsum("qkd,qd->qk", data["vectors"][rows], data["queries"])
    assert np.allclose(scores, exact, atol=1e-4)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    # A stored vector finds itself first.
    assert index.search(data["vectors"][:20], 1)[1][:, 0].tolist() == data["ids"][:20].tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_remove_readd_save_and_load(kind: str, data: dict, tmp_path: Path) -> None:
    index = _filled(kind, data)
    gone = data["ids"][:300]
    index.remove(gone)
    index.remove(np.array([5, 6]))  # unknown ids are ignored
    assert len(index) == 2700
    _, ids = index.search(data["vectors"][:300], k=5)
    assert not np.isin(ids, gone).any()

    # Re-adding an id replaces its vector: no duplicate, found under the new vector.
    moved = data["ids"][500:501]
    index.add(moved, data["queries"][:1])
    assert len(index) == 2700
    assert index.search(data["queries"][:1], 1)[1][0, 0] == moved[0]
    assert moved[0] not in index.search(data["vectors"][500:501], 1)[1]

    before = index.search(data["queries"], 10)
    index.save(tmp_path / "image.faiss")
    again = load_index(kind, tmp_path / "image.faiss")
    assert len(again) == 2700
    after = again.search(data["queries"], 10)
    assert np.array_equal(before[1], after[1]) and np.allclose(before[0], after[0], atol=1e-5)
    assert not list(tmp_path.glob("*.tmp*"))

    # A loaded index (memory-mapped for ivf-pq) still takes additions and removals.
    again.add(gone[:10], data["vectors"][:10])
    again.remove(data["ids"][1000:1010])
    assert len(again) == 2700
    assert again.search(data["vectors"][:1], 1)[1][0, 0] == gone[0]
    assert not np.isin(again.search(data["vectors"][1000:1010], 3)[1], data["ids"][1000:1010]).any()


@pytest.mark.parametrize("kind", KINDS)
def test_empty_and_small(kind: str, tmp_path: Path) -> None:
    index = create_index(kind, DIM, **OPTIONS[kind])
    queries = _unit(np.random.default_rng(2).normal(size=(3, DIM)))
    _, ids = index.search(queries, k=5)
    assert (ids == -1).all()
    index.add(np.array([42, 43]), queries[:2])
    _, ids = index.search(queries[:1], k=5)  # k larger than the index
    assert ids[0, 0] == 42 and set(ids[0][ids[0] >= 0].tolist()) == {42, 43}
    index.save(tmp_path / "small.faiss")
    assert load_index(kind, tmp_path / "small.faiss").search(queries[1:2], 1)[1][0, 0] == 43


@pytest.mark.parametrize("kind", ["hnsw", "ivf-pq", "lsh"])
def test_tombstones_are_compacted(kind: str, data: dict) -> None:
    index = _filled(kind, data)
    index.search(data["queries"][:1], 1)
    index.remove(data["ids"][::2])  # half dead: beyond the rebuild threshold
    _, ids = index.search(data["queries"], 10)
    assert isinstance(index, AnnIndex)
    assert index.live_ids().size == 1500 and index._ids.size == 1500  # compacted
    assert not np.isin(ids, data["ids"][::2]).any()
    truth = data["ids"][1::2][exact_search(data["vectors"][1::2], data["queries"], 10)[1]]
    assert recall_at(ids, truth) >= 0.9


def test_ivf_pq_trains_once_it_has_enough_and_is_memory_mapped(data: dict, tmp_path) -> None:
    import faiss

    index = create_index("ivf-pq", DIM, min_train=2000, code_bytes=8)
    index.add(data["ids"][:1500], data["vectors"][:1500])
    index.search(data["queries"][:1], 1)
    assert index.structure is None  # too few to train: exact
    index.add(data["ids"][1500:], data["vectors"][1500:])
    index.search(data["queries"][:1], 1)
    assert isinstance(index.structure, faiss.IndexIVFPQ)
    assert {"nprobe", "rerank", "tuned_recall"} <= set(index.params)
    index.save(tmp_path / "i.faiss")
    loaded = load_index("ivf-pq", tmp_path / "i.faiss")
    assert isinstance(loaded._store.data, np.memmap)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(loaded.structure).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)


def test_tuning_follows_the_target_recall(data: dict) -> None:
    weak_graph = {"links": 4, "ef_construction": 8}  # so that efSearch has to make up for it
    loose = create_index("hnsw", DIM, target_recall=0.5, **weak_graph)
    strict = create_index("hnsw", DIM, target_recall=0.99, **weak_graph)
    for index in (loose, strict):
        index.add(data["ids"], data["vectors"])
        index.search(data["queries"][:1], 1)
    assert loose.params["ef_search"] < strict.params["ef_search"]
    assert 0.5 <= loose.params["tuned_recall"] < strict.params["tuned_recall"]


@pytest.mark.parametrize("bits", [32, 128, 512])
def test_lsh_bit_counts_without_reranking(bits: int, data: dict) -> None:
    index = create_index("lsh", DIM, bits=bits, rerank=0)
    index.add(data["ids"], data["vectors"])
    scores, ids = index.search(data["queries"], 10)
    assert index.structure.code_size == bits // 8
    assert recall_at(ids, _truth(data)) > (0.3 if bits >= 128 else 0.05)
    assert np.all(np.abs(scores) <= 1.0)


def test_auto_chooses_by_size_and_budget(data: dict, monkeypatch, tmp_path) -> None:
    assert auto_module.choose_kind(1000, 256, memory_budget=2**30) == "flat"
    assert auto_module.choose_kind(200_000, 256, memory_budget=2**30) == "hnsw"
    assert auto_module.choose_kind(10_000_000, 256, memory_budget=2**30) == "ivf-pq"
    monkeypatch.setenv("LOOKALIKE_INDEX_MEMORY", "512M")
    assert auto_module.default_memory_budget() == 512 * 2**20

    monkeypatch.setattr(auto_module, "EXACT_MAX", 1200)
    index = create_index("auto", DIM)
    index.add(data["ids"][:1000], data["vectors"][:1000])
    index.search(data["queries"][:1], 1)
    assert index.params["kind"] == "flat"
    index.add(data["ids"][1000:], data["vectors"][1000:])  # grown past EXACT_MAX
    _, ids = index.search(data["queries"], 10)
    assert index.params["kind"] == "hnsw" and len(index) == 3000
    assert recall_at(ids, _truth(data)) >= 0.9
    index.save(tmp_path / "a.faiss")
    assert load_index("auto", tmp_path / "a.faiss").params["kind"] == "hnsw"


@pytest.mark.parametrize("kind", ["hnsw", "ivf-pq", "lsh", "auto"])
def test_kinds_work_inside_a_projected_index(kind: str, data: dict) -> None:
    rng = np.random.default_rng(3)
    wide = _unit(np.hstack([data["vectors"], 0.1 * rng.normal(size=(3000, 32))]))
    projection = Whitening.fit(wide, dim=DIM, power=0.0)
    index = ProjectedIndex(create_index(kind, DIM, **OPTIONS[kind]), projection, 3000)
    index.add(data["ids"], wide)
    assert index.kind == kind and index.search(wide[:5], 1)[1][:, 0].tolist() == (
        data["ids"][:5].tolist()
    )


def test_collection_with_an_hnsw_index(photo_dir: Path, tmp_path: Path, embedder) -> None:
    from lookalike import Collection
    from tests.conftest import PHOTOS

    with Collection.create(tmp_path / "col", index="hnsw", embedder=embedder) as col:
        report = col.sync([photo_dir])
        assert report.added == len(PHOTOS)
        hits = col.search(photo_dir / "coffee.jpg", k=3)
        assert hits[0].path.endswith("coffee.jpg") and hits[0].score > 0.99
        assert col.info()["index"]["kind"] == "hnsw"
    assert (tmp_path / "col" / "index" / "image.ann.npz").exists()
    with Collection.open(tmp_path / "col", embedder=embedder) as col:
        assert col.index().kind == "hnsw"
        assert col.search(photo_dir / "rocket.jpg", k=1)[0].path.endswith("rocket.jpg")
        col.remove([photo_dir / "rocket.jpg"])
        assert all(not h.path.endswith("rocket.jpg") for h in col.search(photo_dir / "rocket.jpg"))
