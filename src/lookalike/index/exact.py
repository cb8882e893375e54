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

import numpy as np

__all__ = ["exact_search", "recall_at", "top_k"]


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
