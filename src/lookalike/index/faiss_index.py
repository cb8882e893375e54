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

from lookalike.index.base import register
from lookalike.index.exact import PositionMap, exact_search
from lookalike.index.log import Journal, read_saved


class FaissIndex:
    """A FAISS index wrapped with an id map, so ids are the catalogue's image ids."""

    #: ``search`` takes ``allowed`` (a filtered search: ``lookalike.index.base``).
    filters = True
    #: A filtered search gathers and scans the allowed vectors when they are at most this
    #: fraction of the index (else FAISS scans everything with an id selector).
    GATHER_FRACTION = 0.08

    def __init__(self, kind: str, index: faiss.Index) -> None:
        self.kind = kind
        self.index = index
        self.dim = index.d
        self._version = 0  # bumped by every change (the cached id order below follows it)
        self._ids: tuple[int, np.ndarray] | None = None  # (version, ids by position)
        self._positions = PositionMap()  # allowed ids -> positions (filtered search)
        # the changes since the last save, appended to the saved file's log (index/log.py)
        self.journal = Journal(self.dim)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under their ids (an id already present is replaced)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        present = self._present(ids)
        if len(present):
            self.index.remove_ids(faiss.IDSelectorBatch(present))
        self.index.add_with_ids(vectors, ids)
        self._version += 1
        self.journal.added(ids, vectors)

    def _present(self, ids: np.ndarray) -> np.ndarray:
        """Those of ``ids`` the index may hold: a few are looked up in the id map's hash map
        (an upload then costs no scan of the index), more are all scanned for at once."""
        if len(ids) > 32 or not isinstance(self.index, faiss.IndexIDMap2):
            return ids
        found = []
        for key in ids.tolist():
            try:
                self.index.reconstruct(key)
            except RuntimeError:  # not held
                continue
            found.append(key)
        return np.asarray(found, dtype=np.int64)

    def remove(self, ids: np.ndarray) -> None:
        """Forget these ids."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids):
            self.index.remove_ids(faiss.IDSelectorBatch(ids))
            self._version += 1
            self.journal.removed(ids)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product; with ``allowed`` (sorted int64 ids), among those only: their
        vectors gathered and scanned when few, else every vector scanned with an id selector.
        Exact either way."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = max(1, min(k, max(len(self), 1)))
        params = None
        if allowed is not None:
            positions = self.positions_of(allowed)
            k = max(1, min(k, len(positions)))
            if len(positions) == 0 or len(positions) <= self.GATHER_FRACTION * len(self):
                return self._scan(queries, k, positions)
            params = faiss.SearchParameters()  # the flat storage searched by position
            params.sel = self._positions.bitmap(len(self), positions)
        if len(queries) > 16:
            return self._search(queries, k, params)
        # A few queries: FAISS's OpenMP pool costs more to wake than the search itself
        # (1.2 ms against 0.03 ms for one query over 1000 vectors on 2 busy cores).
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self._search(queries, k, params)
        finally:
            faiss.omp_set_num_threads(threads)

    def _search(self, queries: np.ndarray, k: int, params: object) -> tuple[np.ndarray, np.ndarray]:
        if params is None:
            return self.index.search(queries, k)
        # Positions selected by a bitmap (cheaper than the id map's translated id lookups).
        scores, rows = faiss.downcast_index(self.index.index).search(queries, k, params=params)
        stored = self._stored()
        return scores, np.where(rows >= 0, stored[np.maximum(rows, 0)], -1)

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """The storage positions of ``ids`` (unknown ids left out), ascending."""
        if len(ids) == 0 or len(self) == 0:
            return np.zeros(0, np.int64)
        return self._positions.positions(self._stored(), ids, state=(self._version, len(self)))

    def vectors_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors): those of ``ids`` (sorted int64) the index holds and their vectors,
        gathered (``collection.filters`` keeps them for a filter's next queries)."""
        positions = self.positions_of(np.asarray(ids, np.int64))
        if len(positions) == 0:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        flat = faiss.downcast_index(self.index.index)
        matrix = faiss.rev_swig_ptr(flat.get_xb(), len(self) * self.dim).reshape(-1, self.dim)
        return self._stored()[positions], np.array(matrix[positions], np.float32)

    def _stored(self) -> np.ndarray:
        """The ids by storage position (the id map's, copied once per change)."""
        cached = self._ids
        if cached is None or cached[0] != self._version:
            cached = (self._version, faiss.vector_to_array(self.index.id_map).astype(np.int64))
            self._ids = cached
        return cached[1]

    def _scan(
        self, queries: np.ndarray, k: int, positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k among the vectors at ``positions`` (ids, not positions, returned)."""
        if len(positions) == 0:
            return (
                np.full((len(queries), k), -np.inf, np.float32),
                np.full((len(queries), k), -1, np.int64),
            )
        flat = faiss.downcast_index(self.index.index)
        matrix = faiss.rev_swig_ptr(flat.get_xb(), len(self) * self.dim).reshape(-1, self.dim)
        scores, rows = exact_search(matrix, queries, k, rows=positions)
        stored = self._stored()
        return scores, np.where(rows >= 0, stored[np.maximum(rows, 0)], -1)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def save(self, path: Path, generation: int | None = None) -> None:
        """With a generation (the catalogue's: ``generation`` or ``log.save_index``'s), the
        changes since the last save or load at ``path`` appended to its log
        (``lookalike.index.log``); else, or once the log has grown past a fraction of the
        index, the index written whole (atomically: temp file then rename), the log emptied."""
        self.journal.save(Path(path), generation, lambda tmp, _: faiss.write_index(self.index, tmp))


def _flat(dim: int) -> FaissIndex:
    return FaissIndex("flat", faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))


def load_flat(path: Path, generation: int | None = None) -> FaissIndex:
    """The ``flat`` index saved at ``path``: its base and its log's changes up to
    ``generation`` (the stamp's; None: ``log.load_saved``'s, else all of them)."""
    base, change, binding = read_saved(
        Path(path), lambda name, _: faiss.read_index(name), lambda index: index.d, generation
    )
    index = FaissIndex("flat", base)
    if len(change.touched):
        index.index.remove_ids(faiss.IDSelectorBatch(change.touched))
    if len(change.ids):
        index.index.add_with_ids(change.vectors, change.ids)
    index.journal.binding = binding
    return index


register("flat", _flat, load_flat)
