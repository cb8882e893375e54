"""Exact top-k search by inner product, and recall against it: the ground truth that the
approximate kinds (``lookalike.index.ann``) tune against, and their answer while they are too
small to build a structure.

Example:
    >>> vectors = np.eye(3, dtype=np.float32)
    >>> scores, rows = exact_search(vectors, vectors[1:2], k=1)
    >>> rows.tolist(), recall_at(rows, np.array([[1]]))
    ([[1]], 1.0)
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

__all__ = ["PositionMap", "exact_search", "find_sorted", "recall_at", "top_k"]


def exact_search(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    block: int = 65_536,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows of ``vectors`` by inner product with each query: (scores, rows).

    Works through ``vectors`` in blocks, so a memory-mapped matrix is read once. ``rows``
    restricts the search to those rows (and is gathered block by block, never copied whole).

    Example:
        >>> exact_search(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)[:1], 1)[1]
        array([[0]])
    """
    queries = np.ascontiguousarray(queries, np.float32)
    total = len(vectors) if rows is None else len(rows)
    k = min(k, total)
    best_scores = np.full((len(queries), k), -np.inf, np.float32)
    best_rows = np.full((len(queries), k), -1, np.int64)
    for start in range(0, total, block):
        if rows is None:
            chunk = np.asarray(vectors[start : start + block], np.float32)
            numbers = np.arange(start, start + len(chunk))
        else:
            numbers = rows[start : start + block]
            chunk = np.asarray(vectors[numbers], np.float32)
        scores = queries @ chunk.T
        found = np.broadcast_to(numbers, scores.shape)
        scores = np.concatenate([best_scores, scores], axis=1)
        found = np.concatenate([best_rows, found], axis=1)
        top = top_k(scores, k)
        best_scores = np.take_along_axis(scores, top, 1)
        best_rows = np.take_along_axis(found, top, 1)
    return best_scores, best_rows


def find_sorted(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """Where each of ``needles`` found in the sorted ``haystack`` is (those absent left out).

    Example:
        >>> find_sorted(np.array([2, 5, 9]), np.array([5, 7, 9])).tolist()
        [1, 2]
    """
    at = np.searchsorted(haystack, needles)
    inside = at < len(haystack)
    inside[inside] = haystack[at[inside]] == needles[inside]
    return at[inside]


#: Filters whose positions (and bitmap) a :class:`PositionMap` keeps ...
POSITIONS_KEPT = 8
#: ... and the bytes they may take in all (positions: 8 a selected id; bitmap: 1 bit an id).
POSITIONS_BYTES = 32 << 20


class PositionMap:
    """Where ids sit in an index (position -> id given), for filtered searches: the allowed ids'
    positions and their bitmap, remembered for the last few filters (:data:`POSITIONS_KEPT`,
    within :data:`POSITIONS_BYTES`; the collection hands the same array again for the same
    filter, so the next query with it costs nothing here, even with other filters in between:
    several users of a server, docs/benchmarks.md section ``filters``).

    Example:
        >>> PositionMap().positions(np.array([5, 9, 7]), np.array([7, 9]), state=(0,)).tolist()
        [1, 2]
    """

    def __init__(self, kept: int = POSITIONS_KEPT, budget: int = POSITIONS_BYTES) -> None:
        self.kept, self.budget = kept, budget
        self._order: tuple[tuple, np.ndarray | None, np.ndarray] | None = None
        # id(allowed) -> [allowed, state, positions, (bits, selector) or None], oldest first
        self._kept: OrderedDict[int, list] = OrderedDict()
        self._lock = threading.Lock()

    def positions(
        self,
        stored: np.ndarray,
        allowed: np.ndarray,
        *,
        state: tuple,
        alive: np.ndarray | None = None,
    ) -> np.ndarray:
        """Ascending positions of ``allowed`` ids in ``stored`` (ids by position), live ones
        only when ``alive`` is given. ``state`` changes whenever ``stored`` or ``alive`` do."""
        with self._lock:
            entry = self._kept.get(id(allowed))
            if entry is not None and entry[0] is allowed and entry[1] == state:
                self._kept.move_to_end(id(allowed))
                return entry[2]
        order = self._order
        if order is None or order[0] != state[:1]:
            if len(stored) < 2 or bool(np.all(stored[1:] > stored[:-1])):
                order = (state[:1], None, stored)  # ids grow with positions: no sort needed
            else:
                arg = np.argsort(stored, kind="stable")
                order = (state[:1], arg, stored[arg])
            self._order = order
        _, arg, sorted_ids = order
        found = find_sorted(sorted_ids, np.asarray(allowed, np.int64))
        positions = found if arg is None else np.sort(arg[found])
        if alive is not None:
            positions = positions[alive[positions]]
        with self._lock:
            self._kept[id(allowed)] = [allowed, state, positions, None]
            self._kept.move_to_end(id(allowed))
            self._trim()
        return positions

    def bitmap(self, size: int, positions: np.ndarray) -> object:
        """A FAISS ``IDSelectorBitmap`` of ``positions`` (of a recent :meth:`positions`)."""
        import faiss

        with self._lock:
            entry = next((e for e in reversed(self._kept.values()) if e[2] is positions), None)
            if entry is not None and entry[3] is not None:
                return entry[3][1]
        bits = np.zeros(size, np.bool_)
        bits[positions] = True
        packed = np.packbits(bits, bitorder="little")
        selector = faiss.IDSelectorBitmap(size, faiss.swig_ptr(packed))
        selector.referenced = packed  # keep the bits alive with the selector
        if entry is not None:
            with self._lock:
                entry[3] = (packed, selector)
                self._trim()
        return selector

    def _trim(self) -> None:
        """Forget the oldest filters while more are kept than allowed (the lock held)."""
        used = sum(e[2].nbytes + (e[3][0].nbytes if e[3] else 0) for e in self._kept.values())
        while len(self._kept) > 1 and (len(self._kept) > self.kept or used > self.budget):
            _, entry = self._kept.popitem(last=False)
            used -= entry[2].nbytes + (entry[3][0].nbytes if entry[3] else 0)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest scores of each row, best first.

    Example:
        >>> top_k(np.array([[0.1, 0.9, 0.5]]), 2)
        array([[1, 2]])
    """
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` present in the same row of ``found``.

    Example:
        >>> recall_at(np.array([[1, 2]]), np.array([[2, 3]]))
        0.5
    """
    hits = sum(
        len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist()))
        for f, t in zip(found, truth, strict=True)
    )
    return hits / max(int((truth >= 0).sum()), 1)
