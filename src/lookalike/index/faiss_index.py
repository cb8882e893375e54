"""``flat``: exact inner-product search in a FAISS ``IndexFlatIP`` (the default kind), with the
catalogue's image ids kept by an id map. When it stops being fast enough, and what the
approximate kinds gain, is in docs/benchmarks.md, section ``ann``.

Example:
    >>> index = FaissIndex("flat", faiss.IndexIDMap2(faiss.IndexFlatIP(4)))
    >>> index.add(np.array([7, 9]), np.eye(4, dtype=np.float32)[:2])
    >>> index.search(np.eye(4, dtype=np.float32)[1:2], k=1)[1].tolist()
    [[9]]
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from lookalike.fileio import atomic_save
from lookalike.index.base import register


class FaissIndex:
    """A FAISS index wrapped with an id map, so ids are the catalogue's image ids."""

    def __init__(self, kind: str, index: faiss.Index) -> None:
        self.kind = kind
        self.index = index
        self.dim = index.d

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under their ids (an id already present is replaced)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        self.remove(ids)
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def remove(self, ids: np.ndarray) -> None:
        """Forget these ids."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids):
            self.index.remove_ids(faiss.IDSelectorBatch(ids))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = max(1, min(k, max(len(self), 1)))
        if len(queries) > 16:
            return self.index.search(queries, k)
        # A few queries: FAISS's OpenMP pool costs more to wake than the search itself
        # (1.2 ms against 0.03 ms for one query over 1000 vectors on 2 busy cores).
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self.index.search(queries, k)
        finally:
            faiss.omp_set_num_threads(threads)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def save(self, path: Path) -> None:
        """Atomic write: temp file then rename."""
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(path, lambda tmp: faiss.write_index(self.index, tmp))


def _flat(dim: int) -> FaissIndex:
    return FaissIndex("flat", faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))


def _load_flat(path: Path) -> FaissIndex:
    return FaissIndex("flat", faiss.read_index(str(path)))


register("flat", _flat, _load_flat)
