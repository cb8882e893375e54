"""The plans of a filtered search (``collection.filters.search_selected``): few allowed images
scored exactly from their gathered vectors (kept for the next query with the same filter),
most of an approximate index searched deeper and filtered, the index's own filtered search in
between; each against brute force, for every index kind and selectivities from 0.1% to 100%,
alone and through a collection (with and without query expansion)."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.collection import filters
from lookalike.collection.filters import Selection, Selections, search_selected
from lookalike.index import create_index
from lookalike.index.exact import exact_search
from tests.test_filters import KIND_OPTIONS, _overlap, synthetic_collection, unit

DIM = 32
SELECTIVITIES = (0.001, 0.01, 0.1, 0.25, 0.5, 1.0)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((30, DIM))
    base = unit(centres[rng.integers(0, 30, 3000)] + 0.6 * rng.standard_normal((3000, DIM)))
    queries = unit(base[rng.integers(0, 3000, 20)] + 0.2 * rng.standard_normal((20, DIM)))
    return {"base": base, "ids": np.arange(3000, dtype=np.int64) * 5 + 2, "queries": queries}


def _index(kind: str, data: dict) -> tuple[object, np.ndarray]:
    """An index of ``kind`` over the data, some ids removed again; its live ids."""
    index = create_index(kind, DIM, **KIND_OPTIONS[kind])
    index.add(data["ids"], data["base"])
    index.remove(data["ids"][::40])
    return index, np.setdiff1d(data["ids"], data["ids"][::40])


def _truth(data: dict, allowed_live: np.ndarray, k: int = 10) -> np.ndarray:
    rows = np.flatnonzero(np.isin(data["ids"], allowed_live))
    return data["ids"][exact_search(data["base"], data["queries"], k, rows=rows)[1]]


@pytest.mark.parametrize("scan_bytes", [filters.SCAN_BYTES, 0], ids=["scan", "no-scan"])
@pytest.mark.parametrize("kind", list(KIND_OPTIONS))
def test_every_plan_matches_brute_force(kind, scan_bytes, data, monkeypatch) -> None:
    """With the scan (every selectivity here fits in it: exact at all of them) and without it
    (the index's own filtered search, or the deeper unfiltered search then filtered)."""
    monkeypatch.setattr(filters, "SCAN_BYTES", scan_bytes)
    index, live = _index(kind, data)
    plain = index.search(data["queries"], 10)[1]
    plain_recall = _overlap(plain, _truth(data, live))
    rng = np.random.default_rng(12)
    for selectivity in SELECTIVITIES:
        count = max(1, int(selectivity * len(data["ids"])))
        allowed = np.sort(rng.choice(data["ids"], count, replace=False))
        scores, found = search_selected(index, data["queries"], 10, Selection(allowed))
        allowed_live = np.intersect1d(allowed, live)
        for got, row in zip(found, scores, strict=True):
            kept = got >= 0
            assert kept.sum() == min(10, len(allowed_live)), (kind, selectivity)
            assert np.isin(got[kept], allowed_live).all(), (kind, selectivity)
            assert np.all(np.diff(row[kept]) <= 1e-6), (kind, selectivity)  # best first
        recall = _overlap(found, _truth(data, allowed_live))
        if scan_bytes or kind in ("flat", "auto") or selectivity <= 0.1:
            assert recall == 1.0, (kind, selectivity, recall)
        else:  # an approximate kind's own search: its recall
            assert recall >= 0.9 * plain_recall, (kind, selectivity, recall, plain_recall)


def test_deeper_search_falls_back_when_the_filter_shuns_the_neighbours(data, monkeypatch):
    """Most images allowed, but none of each query's nearest: the deeper unfiltered search
    finds too few, so those rows are searched again with the filter."""
    monkeypatch.setattr(filters, "SCAN_BYTES", 0)
    index, live = _index("hnsw", data)
    near = exact_search(data["base"], data["queries"], 60)[1]
    allowed = np.setdiff1d(data["ids"], data["ids"][near])
    depth = filters.POST_DEPTH * 10 * len(index) / len(allowed)
    assert len(allowed) >= filters.POST_FILTER_FROM * len(index) and depth < 60
    calls = []
    search = index.search

    def spy(queries, k, allowed=None):
        calls.append((len(queries), allowed is not None))
        return search(queries, k, allowed=allowed)

    index.search = spy
    _, found = search_selected(index, data["queries"], 10, Selection(allowed))
    assert calls[0] == (20, False) and calls[1][1] and len(calls) == 2  # deeper, then again
    assert ((found >= 0).sum(axis=1) == 10).all()
    assert np.isin(found, allowed).all()
    assert _overlap(found, _truth(data, np.intersect1d(allowed, live))) >= 0.8


def test_gathered_vectors_are_kept_per_index_within_a_budget(data) -> None:
    index = create_index("flat", DIM)
    index.add(data["ids"], data["base"])
    gathered = []
    gather = index.vectors_of

    def counting(ids):
        gathered.append(len(ids))
        return gather(ids)

    index.vectors_of = counting
    kept = Selections(budget=3 * 100 * (DIM * 4 + 8))  # three selections of 100 images
    picks = [
        kept.select(f"f{i}", 0, lambda i=i: data["ids"][i * 100 : i * 100 + 100]) for i in range(5)
    ]
    for selection in picks:
        search_selected(index, data["queries"], 5, selection, kept)
        search_selected(index, data["queries"], 5, selection, kept)  # kept: not gathered again
    assert gathered == [100] * 5
    assert [bool(s.gathered) for s in picks] == [False, False, True, True, True]
    index.add(np.array([10**6]), data["base"][:1])  # the index changed: gathered again
    search_selected(index, data["queries"], 5, picks[-1], kept)
    assert gathered == [100] * 6


def test_a_repeated_filter_costs_no_query_and_no_gathering(tmp_path, data) -> None:
    base = data["base"][:1500]
    with synthetic_collection(tmp_path / "col", base, index="hnsw") as col:
        queries = data["queries"][:3]
        selected = []
        select = col.catalogue.select_ids
        col.catalogue.select_ids = lambda found: selected.append(found) or select(found)
        inner = col.index().inner  # the PCA's inner index
        gathered = []
        gather = inner.vectors_of
        inner.vectors_of = lambda ids: gathered.append(len(ids)) or gather(ids)
        first = col.search_vectors(queries, 10, where={"camera_model": "cam 3"})
        again = col.search_vectors(queries, 10, where={"camera_model": "cam 3"})
        assert first == again
        assert len(selected) == 1 and gathered == [len(range(3, 1500, 7))]
        allowed = col.ids_where({"camera_model": "cam 3"})  # the same ids, handed back
        assert col.search_vectors(queries, 10, where=allowed) == first
        assert len(selected) == 1 and len(gathered) == 1
        col.update_metadata(int(allowed[0]), {"note": "changed"})  # the catalogue changed
        col.search_vectors(queries, 10, where={"camera_model": "cam 3"})
        assert len(selected) == 2 and len(gathered) == 2


@pytest.mark.parametrize("kind", ["hnsw", "flat"])
def test_collection_search_is_exact_at_every_selectivity_up_to_the_scan(tmp_path, data, kind):
    """Through a collection (PCA-projected index, query expansion on and off): exactly the
    brute-force top-k among the allowed images, from 0.1% to 100% (1500 images all fit in
    the scan)."""
    base = data["base"][:1500]
    with synthetic_collection(tmp_path / "col", base, index=kind) as col:
        ids = np.asarray(sorted(r.id for r in col.records()), np.int64)
        projected = col.project(col.catalogue.vectors("image", ids.tolist()))
        queries = data["queries"]
        for where, matching in (
            ({"bucket": 7}, [7, 1007]),  # 0.13%
            (["bucket<15"], [i for i in range(1500) if i % 1000 < 15]),  # 1.3%
            (["bucket<150"], [i for i in range(1500) if i % 1000 < 150]),  # 13%
            ({"even": True}, list(range(0, 1500, 2))),  # 50%
            ({"folder": "/photos"}, list(range(1500))),  # 100%
        ):
            hits = col.search_vectors(queries, 10, where=where, expand=0)
            truth = exact_search(projected, col.project(queries), 10, rows=np.asarray(matching))
            for row, want in zip(hits, truth[1], strict=True):
                assert [h.id for h in row] == ids[want].tolist(), (kind, where)
            for row in col.search_vectors(queries, 10, where=where):  # expanded
                assert len(row) == min(10, len(matching))
                assert {h.id for h in row} <= set(ids[matching].tolist())
