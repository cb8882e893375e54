"""The same contract checks against every index kind, plus what is particular to the ANN kinds:
tombstones and rebuilds, training, tuning, memory-mapped loading, ``auto``'s choice, and a
collection built with ``index="hnsw"``."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Iterator
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
    "ivf": {"min_train": 1000},
    "ivf-pq": {"min_train": 1000, "code_bytes": 8},
    "lsh": {"bits": 128},
    "auto": {},
}
# Milvus Lite in a file of a temporary folder, when pymilvus and milvus-lite are installed (the
# dev extra); tests/test_milvus.py covers what is particular to it, a server URI included.
_MILVUS_DIR = Path(tempfile.mkdtemp(prefix="lookalike-milvus-"))
OPTIONS["milvus"] = {"uri": str(_MILVUS_DIR / "kinds.db")}
HAS_MILVUS = all(importlib.util.find_spec(name) for name in ("pymilvus", "milvus_lite"))
KINDS = list(OPTIONS)


@pytest.fixture(autouse=True)
def _milvus_installed(request: pytest.FixtureRequest) -> None:
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("kind") == "milvus" and not HAS_MILVUS:
        pytest.skip("pymilvus and milvus-lite are not installed: pip install 'lookalike[milvus]'")


@pytest.fixture(scope="module", autouse=True)
def _milvus_folder() -> Iterator[None]:
    yield
    shutil.rmtree(_MILVUS_DIR, ignore_errors=True)


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


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivf-pq", "lsh"])
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
    # mapped in place (IO_FLAG_MMAP_IFC), not copied in, nor behind OnDiskInvertedLists' locks
    assert loaded._source is not None and isinstance(lists, faiss.ArrayInvertedLists)


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
    assert auto_module.choose_kind(20_000, 256, memory_budget=2**30) == "ivf"
    assert auto_module.choose_kind(1_000_000, 256, memory_budget=2**30) == "ivf"
    assert auto_module.choose_kind(1_000_000, 256, memory_budget=2**27) == "ivf-pq"
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
    # Past EXACT_MAX: trained inverted lists (trained from there on), which tune themselves,
    # their vectors kept at half precision for re-ranking.
    assert index.params["kind"] == "ivf" and "nprobe" in index.params and len(index) == 3000
    assert index.inner._store.data.dtype == np.float16
    assert recall_at(ids, _truth(data)) >= 0.9
    index.save(tmp_path / "a.faiss")
    assert load_index("auto", tmp_path / "a.faiss").params["kind"] == "ivf"


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivf-pq", "lsh", "auto"])
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


@pytest.mark.parametrize("codec", ["sq8", "fp16", "flat"])
def test_ivf_codecs_and_memory_mapped_lists(codec: str, data: dict, tmp_path: Path) -> None:
    import faiss

    index = create_index("ivf", DIM, min_train=1000, codec=codec)
    index.add(data["ids"], data["vectors"])
    scores, ids = index.search(data["queries"], 10)
    assert index.structure.code_size == {"sq8": 1, "fp16": 2, "flat": 4}[codec] * DIM
    assert recall_at(ids, _truth(data)) >= 0.9
    rows = (ids - 1000) // 7  # scores are exact inner products whatever the codec
    assert np.allclose(scores, np.einsum("qkd,qd->qk", data["vectors"][rows], data["queries"]))
    index.save(tmp_path / "i.faiss")
    loaded = load_index("ivf", tmp_path / "i.faiss")
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(loaded.structure).invlists)
    # mapped in place (IO_FLAG_MMAP_IFC), not copied in, nor behind OnDiskInvertedLists' locks
    assert loaded._source is not None and isinstance(lists, faiss.ArrayInvertedLists)
    assert np.array_equal(loaded.search(data["queries"], 10)[1], ids)
    with pytest.raises(Exception, match="codec"):
        create_index("ivf", DIM, codec="pq4")


def _drifted(count: int, seed: int) -> np.ndarray:
    """Queries between two of the data's clusters, far from both: harder than the data."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(40, DIM))  # the clusters of the ``data`` fixture
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, 40, size=(count, 2))
    return _unit(centres[pairs[:, 0]] + centres[pairs[:, 1]] + 1.5 * rng.normal(size=(count, DIM)))


def _search(index: object, queries: np.ndarray) -> np.ndarray:
    """Search, then let a re-tuning the search started in the background finish."""
    ids = index.search(queries, 10)[1]
    index.wait_for_tuning()
    return ids


@pytest.mark.parametrize("kind", ["ivf", "ivf-pq", "lsh"])
def test_self_tuning_follows_the_queries(kind: str, data: dict, tmp_path: Path) -> None:
    index = create_index(kind, DIM, retune_queries=200, retune_budget=1e9, **OPTIONS[kind])
    index.add(data["ids"], data["vectors"])
    _search(index, data["queries"][:1])
    assert index.params["tuned_on"] == "300 held-out"
    built = dict(index.params)

    def recall(queries: np.ndarray) -> float:
        truth = data["ids"][exact_search(data["vectors"], queries, 10)[1]]
        return recall_at(_search(index, queries), truth)

    # A forced drift: the queries move away from the data; the build-time parameters miss
    # the target on them, and once 200 of them have come the index re-tunes on what it saw,
    # in a background thread.
    assert recall(_drifted(100, seed=10)) < index.target_recall
    before = index.search(_drifted(100, seed=11), 10)
    assert index._tuner is not None  # started by that search, which did not wait for it
    index.wait_for_tuning()
    assert index.params["tuned_on"] == "201 queries"  # re-tuned on the reservoir
    drifted = dict(index.params)
    assert drifted != built and _cost(drifted) > _cost(built)
    assert recall(_drifted(200, seed=12)) >= index.target_recall - 0.02
    truth = data["ids"][exact_search(data["vectors"], _drifted(100, seed=11), 10)[1]]
    assert recall(_drifted(100, seed=11)) > recall_at(before[1], truth)

    # Back to easy queries (the stored vectors themselves): cheaper parameters again.
    for start in range(0, 1200, 100):  # enough to wash the drifted ones out of the reservoir
        _search(index, data["vectors"][start : start + 100])
    assert _cost(index.params) < _cost(drifted)

    # The reservoir and the parameters survive saving and loading.
    index.save(tmp_path / "i.faiss")
    again = load_index(kind, tmp_path / "i.faiss")
    assert again.params == index.params
    assert np.array_equal(again.reservoir(), index.reservoir())


def _cost(params: dict) -> tuple:
    return (params.get("nprobe", 0), params.get("rerank", 0), params.get("ef_search", 0))


def test_self_tuning_is_bounded_by_its_time_budget(data: dict) -> None:
    index = create_index("ivf", DIM, min_train=1000, retune_queries=10, retune_budget=1e-9)
    index.add(data["ids"], data["vectors"])
    _search(index, data["queries"][:1])
    assert index.params["tuned_on"] == "300 held-out"
    # The first tuning on real queries comes early, whatever it costs ...
    _search(index, _drifted(100, seed=13))
    assert index.params["tuned_on"] == "101 queries"
    tuned = dict(index.params)
    # ... later ones only once searching has taken 1 / retune_budget times what it cost.
    for start in range(0, 1000, 50):  # easy queries, but far too little search time
        _search(index, data["vectors"][start : start + 50])
    assert index.params == tuned
    assert len(index.reservoir()) == 256  # a uniform sample of the last queries, at most 256
    index.retune_budget = 1e9
    _search(index, data["vectors"][:1])
    assert index.params["tuned_on"] == "256 queries" and _cost(index.params) < _cost(tuned)


def test_a_tuning_overtaken_by_changes_is_dropped(data: dict) -> None:
    index = create_index("ivf", DIM, min_train=1000)
    index.add(data["ids"], data["vectors"])
    _search(index, data["queries"][:1])
    built = dict(index.params)
    index._tune(_drifted(100, seed=15), version=index._version - 1)  # stale
    assert index.params == built
    index._tune(_drifted(100, seed=15), version=index._version)
    assert index.params != built
