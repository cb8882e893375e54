"""``hnsw``: a FAISS HNSW graph by inner product, the approximate kind for collections that are
still small (it needs no training). Tombstones, tuning and saving come from
:class:`lookalike.index.ann.AnnIndex`; how it compares with the other kinds is in
docs/benchmarks.md, section ``ann``.

Example:
    >>> index = HnswIndex(dim=8)
    >>> index.add(np.array([7, 9]), np.eye(8, dtype=np.float32)[:2])
    >>> index.search(np.eye(8, dtype=np.float32)[1:2], k=1)[1].tolist()
    [[9]]
"""

from __future__ import annotations

import faiss
import numpy as np

from lookalike.index.ann import REBUILD_DEAD, REGROW, TARGET_RECALL, TUNE_MIN, AnnIndex
from lookalike.index.base import register

__all__ = ["HnswIndex"]


class HnswIndex(AnnIndex):
    """``hnsw``: FAISS HNSWFlat by inner product. ~1.3 KB per 256-d vector.

    The graph holds the vectors itself, so there is no second copy; deletion is by tombstones.
    Needs no training, so it is the approximate kind for collections that are still small.
    """

    kind = "hnsw"
    keeps_vectors = False

    def __init__(self, dim: int, target_recall: float = TARGET_RECALL, **options: object) -> None:
        super().__init__(dim, target_recall, **options)
        self.links = int(options.get("links", 32))
        self.ef_construction = int(options.get("ef_construction", 40))
        self.structure = self._build(np.zeros((0, self.dim), np.float32))
        self.params = {"ef_search": 64}

    def _build(self, vectors: np.ndarray) -> faiss.Index:
        graph = faiss.IndexHNSWFlat(self.dim, self.links, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = self.ef_construction
        if len(vectors):
            graph.add(vectors)
        return graph

    def _append(self, vectors: np.ndarray) -> None:
        self.structure.add(vectors)

    def _matrix(self) -> np.ndarray:
        storage = faiss.downcast_index(self.structure.storage)
        flat = faiss.rev_swig_ptr(storage.get_xb(), self.structure.ntotal * self.dim)
        return flat.reshape(-1, self.dim)

    def _search(
        self, queries: np.ndarray, k: int, params: dict | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        ef = max(int((params or self.params)["ef_search"]), k)
        search = self._search_parameters(faiss.SearchParametersHNSW, efSearch=ef)
        return self.structure.search(queries, k, params=search)

    def _touched(self) -> float:
        return float(self.params["ef_search"]) * self.links

    def _widened(self, selectivity: float) -> dict:
        """A graph searched with a selector keeps only the allowed nodes it visits: visit about
        ``1 / selectivity`` times as many."""
        ef = int(self.params["ef_search"]) / max(selectivity, 1e-6)
        return {**self.params, "ef_search": int(min(ef, max(len(self), 1)))}

    def _candidates(self) -> list[dict]:
        efs = (10, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
        return [{"ef_search": ef} for ef in efs]

    def maintain(self) -> None:
        """A graph grows without re-training: compact when too many tombstones, re-tune when
        the collection has doubled."""
        live = len(self)
        if live and self._dead > REBUILD_DEAD * self._ids.size:
            self._rebuild()
        elif live >= TUNE_MIN and live >= REGROW * max(self._tuned_at, TUNE_MIN / REGROW):
            self._tune()


register("hnsw", HnswIndex, HnswIndex.load)
