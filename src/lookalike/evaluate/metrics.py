"""Retrieval metrics, computed the way the literature computes them.

Two families, with two kinds of input:

* **Per-query ranking metrics** (class or instance retrieval: Corel, UKBench, CUB, SOP...) take a
  *ranked relevance matrix* ``relevance`` of shape ``(n_queries, n_ranked)``: row ``i`` says, for
  query ``i``'s results in rank order, which are relevant. :func:`rank_relevance` builds it from a
  score matrix and labels. ``num_relevant`` (optional) is how many relevant items each query has in
  the whole gallery; it defaults to ``relevance.sum(axis=1)``, which is right when every row ranks
  the whole gallery, and must be given when rows are truncated to the top ``k``.
* **Copy detection** (ISC2021 / DISC21) ranks *all* (query, reference, score) predictions of all
  queries together: :func:`micro_average_precision`, :func:`precision_recall_curve` and
  :func:`recall_at_precision` take flat ``scores`` and ``is_match`` arrays plus the number of
  ground-truth pairs. :func:`flatten_predictions` builds them from a score matrix.

Conventions, stated once:

* Scores are similarities: higher means more alike. Pass ``-distance`` for distances.
* The query's own image must not be among its results: the caller excludes it (``exclude=`` in
  :func:`rank_relevance` does it for a query set that is also the gallery).
* Ties are broken pessimistically by default (irrelevant results first among equal scores), as
  the ISC2021 reference code does, so that a constant score cannot look good.
* A query with no relevant item in the gallery has no defined AP, precision or recall: per-query
  values are ``nan`` and every ``mean_*`` / averaged metric skips such queries, as
  pytorch-metric-learning does with "lone" queries. When every query is skipped the result is
  ``nan``.

Example:
    >>> import numpy as np
    >>> rel = np.array([[True, False, True, False]])   # ranks 1 and 3 are relevant
    >>> round(mean_average_precision(rel), 4)          # (1/1 + 2/3) / 2
    0.8333
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "CMC_RANKS",
    "PrecisionRecallCurve",
    "average_precision",
    "average_precision_at_r",
    "cmc",
    "flatten_predictions",
    "mean_average_precision",
    "mean_average_precision_at_r",
    "micro_average_precision",
    "precision_at_k",
    "precision_recall_curve",
    "r_precision",
    "rank_relevance",
    "recall_at_k",
    "recall_at_precision",
    "ukbench_score",
]

#: The ranks at which CMC curves are usually reported (re-identification papers).
CMC_RANKS: tuple[int, ...] = (1, 5, 10, 20)

Ties = Literal["pessimistic", "optimistic", "stable"]


# --------------------------------------------------------------------------------------------
# Building the ranked relevance matrix
# --------------------------------------------------------------------------------------------


def rank_relevance(
    scores: ArrayLike,
    query_labels: ArrayLike,
    gallery_labels: ArrayLike,
    *,
    exclude: ArrayLike | None = None,
    ties: Ties = "pessimistic",
) -> tuple[NDArray[np.bool_], NDArray[np.int64]]:
    """Rank each query's gallery by score and say which results share the query's label.

    Args:
        scores: ``(n_queries, n_gallery)`` similarities (higher = more alike).
        query_labels: ``(n_queries,)`` label of each query.
        gallery_labels: ``(n_gallery,)`` label of each gallery item.
        exclude: optional ``(n_queries, n_gallery)`` boolean mask of pairs that must not count,
            typically ``np.eye(n, dtype=bool)`` when the queries are the gallery (the query itself).
            Excluded pairs are moved to the end of the ranking, marked irrelevant, and not counted
            in ``num_relevant``, so AP, mAP@R and R-precision ignore them entirely.
        ties: order among equal scores: ``"pessimistic"`` puts irrelevant results first (the
            ISC2021 rule; the default), ``"optimistic"`` relevant first, ``"stable"`` keeps gallery
            order.

    Returns:
        ``(relevance, num_relevant)``: the ``(n_queries, n_gallery)`` ranked relevance matrix and
        the number of relevant, non-excluded gallery items of each query.

    Rows are independent, so a large set can be ranked in chunks of queries and the results
    concatenated (10k x 10k scores take 800 MB as float64).

    Example:
        >>> rel, n = rank_relevance([[0.9, 0.1, 0.5]], ["a"], ["a", "b", "a"])
        >>> rel.astype(int).tolist(), n.tolist()
        ([[1, 1, 0]], [2])
    """
    s = np.asarray(scores, dtype=np.float64)
    q = np.asarray(query_labels)
    g = np.asarray(gallery_labels)
    if s.ndim != 2 or s.shape != (len(q), len(g)):
        raise ValueError(f"scores must have shape ({len(q)}, {len(g)}), got {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    relevant = q[:, None] == g[None, :]
    excluded = np.zeros_like(relevant) if exclude is None else np.asarray(exclude, dtype=bool)
    if excluded.shape != relevant.shape:
        raise ValueError(f"exclude must have shape {relevant.shape}, got {excluded.shape}")
    relevant &= ~excluded
    tie_key = {
        "pessimistic": relevant,  # False (irrelevant) sorts first
        "optimistic": ~relevant,
        "stable": np.zeros_like(relevant),
    }[ties]
    # np.lexsort sorts by the last key first and is stable: excluded last, then by decreasing
    # score, then by the tie rule, then by gallery position.
    order = np.lexsort((tie_key, -s, excluded), axis=1)
    ranked = np.take_along_axis(relevant, order, axis=1)
    return ranked, relevant.sum(axis=1).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Per-query ranking metrics
# --------------------------------------------------------------------------------------------


def _prepare(
    relevance: ArrayLike, num_relevant: ArrayLike | None
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    rel = np.asarray(relevance, dtype=bool)
    if rel.ndim != 2:
        raise ValueError(f"relevance must be 2-D (queries x ranks), got shape {rel.shape}")
    counted = rel.sum(axis=1)
    if num_relevant is None:
        n = counted.astype(np.float64)
    else:
        n = np.asarray(num_relevant, dtype=np.float64).reshape(-1)
        if n.shape != (rel.shape[0],):
            raise ValueError(f"num_relevant must have shape ({rel.shape[0]},), got {n.shape}")
        if (n < counted).any():
            raise ValueError("num_relevant is smaller than the relevant results in a row")
    return rel, n


def _per_query(values: NDArray[np.float64], n: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mark queries without any relevant item as nan (their metric is undefined)."""
    return np.where(n > 0, values, np.nan)


def _mean(values: NDArray[np.float64]) -> float:
    """Mean over the queries that have a defined value; nan when none has."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def _precision_at_ranks(rel: NDArray[np.bool_]) -> NDArray[np.float64]:
    """P@k for every rank k (1-based) of every row."""
    return np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)


def average_precision(
    relevance: ArrayLike, num_relevant: ArrayLike | None = None
) -> NDArray[np.float64]:
    """Average precision of each query: the mean of P@k over the ranks k of relevant results.

    ``AP = (1 / R) * sum_k P@k * rel_k`` with ``R`` = ``num_relevant``: relevant items missing
    from a truncated ranking count as found at infinity (they add 0). This is the usual
    non-interpolated AP (TREC, scikit-learn's ``average_precision_score`` on a strict ranking).

    Returns:
        ``(n_queries,)`` AP per query; ``nan`` for queries with no relevant item.

    Example:
        >>> average_precision([[1, 0, 1, 0], [0, 0, 0, 0]]).round(4).tolist()
        [0.8333, nan]
    """
    rel, n = _prepare(relevance, num_relevant)
    summed = (_precision_at_ranks(rel) * rel).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _per_query(summed / n, n)


def mean_average_precision(relevance: ArrayLike, num_relevant: ArrayLike | None = None) -> float:
    """mAP: :func:`average_precision` averaged over queries that have a relevant item.

    Example:
        >>> mean_average_precision([[1, 0, 1, 0], [0, 1, 0, 0]])  # (5/6 + 1/2) / 2
        0.6666666666666666
    """
    return _mean(average_precision(relevance, num_relevant))


def average_precision_at_r(
    relevance: ArrayLike, num_relevant: ArrayLike | None = None
) -> NDArray[np.float64]:
    """AP@R per query (Musgrave et al., "A Metric Learning Reality Check", 2020).

    ``AP@R = (1 / R) * sum_{k <= R} P@k * rel_k`` where ``R`` is the query's number of relevant
    items: like AP, but only the top ``R`` ranks count, and missing ones count as 0. It equals
    pytorch-metric-learning's per-query ``mean_average_precision_at_r``.

    Example:
        >>> average_precision_at_r([[1, 0, 1, 0]]).tolist()  # R = 2: (1/1 + 0) / 2
        [0.5]
    """
    rel, n = _prepare(relevance, num_relevant)
    within_r = np.arange(1, rel.shape[1] + 1)[None, :] <= n[:, None]
    summed = (_precision_at_ranks(rel) * (rel & within_r)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _per_query(summed / n, n)


def mean_average_precision_at_r(
    relevance: ArrayLike, num_relevant: ArrayLike | None = None
) -> float:
    """MAP@R: :func:`average_precision_at_r` averaged over queries that have a relevant item.

    Example:
        >>> mean_average_precision_at_r([[1, 1, 0], [0, 1, 0]])  # R=2: 1.0; R=1: 0.0
        0.5
    """
    return _mean(average_precision_at_r(relevance, num_relevant))


def r_precision(relevance: ArrayLike, num_relevant: ArrayLike | None = None) -> float:
    """R-precision: the fraction of the top ``R`` results that are relevant, averaged over queries.

    Example:
        >>> r_precision([[1, 0, 1, 0]])  # R = 2, one relevant in the top 2
        0.5
    """
    rel, n = _prepare(relevance, num_relevant)
    within_r = np.arange(1, rel.shape[1] + 1)[None, :] <= n[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return _mean(_per_query((rel & within_r).sum(axis=1) / n, n))


def precision_at_k(relevance: ArrayLike, k: int, num_relevant: ArrayLike | None = None) -> float:
    """P@k: the fraction of the top ``k`` results that are relevant, averaged over queries.

    The denominator is always ``k``, even for a query with fewer than ``k`` relevant items (the
    convention of the CBIR literature, e.g. Corel-1k P@10, and of pytorch-metric-learning).

    Raises:
        ValueError: if ``k`` is not in ``1..n_ranked``.

    Example:
        >>> precision_at_k([[1, 0, 1, 0], [0, 1, 1, 1]], k=2)  # (1/2 + 1/2) / 2
        0.5
    """
    rel, n = _prepare(relevance, num_relevant)
    if not 1 <= k <= rel.shape[1]:
        raise ValueError(f"k must be in 1..{rel.shape[1]}, got {k}")
    return _mean(_per_query(rel[:, :k].sum(axis=1) / k, n))


def recall_at_k(relevance: ArrayLike, k: int, num_relevant: ArrayLike | None = None) -> float:
    """Recall@k as the metric-learning literature uses it: the fraction of queries that have at
    least one relevant result in their top ``k``.

    This is *not* the IR recall (relevant found / relevant existing): it is the "Recall@K" of
    Song et al. 2016 (CUB-200, Cars196, SOP) and, for one query, CMC at rank ``k``. A ``k``
    larger than the ranking is clamped to the ranking's length.

    Example:
        >>> recall_at_k([[0, 1, 0], [0, 0, 1]], k=2)  # first query hits at rank 2, second at 3
        0.5
    """
    rel, n = _prepare(relevance, num_relevant)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return _mean(_per_query(rel[:, :k].any(axis=1).astype(np.float64), n))


def cmc(
    relevance: ArrayLike,
    ranks: Iterable[int] = CMC_RANKS,
    num_relevant: ArrayLike | None = None,
) -> dict[int, float]:
    """CMC Rank-k (cumulative matching characteristic): :func:`recall_at_k` at each rank.

    Example:
        >>> cmc([[0, 1, 0], [1, 0, 0]], ranks=(1, 2))
        {1: 0.5, 2: 1.0}
    """
    return {k: recall_at_k(relevance, k, num_relevant) for k in ranks}


def ukbench_score(relevance: ArrayLike, *, query_in_ranking: bool = False) -> float:
    """UKBench N-S score (Nistér & Stewénius 2006): mean number of the 4 true views in the top 4.

    The original protocol ranks the whole database, the query included, so a perfect score is 4.0.
    With this module's convention (query excluded, ``query_in_ranking=False``) the query is
    counted as found at rank 1 and the next 3 results are checked: the same number whenever the
    query would rank itself first, as any similarity with ``s(x, x) = max`` does.

    Example:
        >>> ukbench_score([[1, 1, 0, 1], [0, 0, 0, 0]])  # (1 + 2) and (1 + 0)
        2.0
    """
    rel = np.asarray(relevance, dtype=bool)
    if rel.ndim != 2 or rel.shape[0] == 0:
        raise ValueError(f"relevance must be 2-D with at least one query, got {rel.shape}")
    if query_in_ranking:
        return float(rel[:, :4].sum(axis=1).mean())
    return float(1 + rel[:, :3].sum(axis=1).mean())


# --------------------------------------------------------------------------------------------
# Copy detection: micro-AP over all queries' predictions (ISC2021 / DISC21)
# --------------------------------------------------------------------------------------------


class PrecisionRecallCurve(NamedTuple):
    """Points of a precision-recall curve, one per prediction, by decreasing score."""

    precision: NDArray[np.float64]
    recall: NDArray[np.float64]
    thresholds: NDArray[np.float64]


def flatten_predictions(
    scores: ArrayLike, is_match: ArrayLike, k: int | None = None
) -> tuple[NDArray[np.float64], NDArray[np.bool_], int]:
    """Turn a query x reference score matrix into the flat predictions that µAP ranks.

    Args:
        scores: ``(n_queries, n_references)`` similarities.
        is_match: same shape, True for ground-truth (query, reference) pairs. A row of all
            False is a negative query: its predictions can only be false positives.
        k: keep only each query's ``k`` best-scored references (a search engine returns a
            top-k); None keeps every pair.

    Returns:
        ``(scores, is_match, num_positives)``: 1-D arrays of the kept predictions and the number
        of ground-truth pairs in the *whole* matrix (the recall denominator, so that pairs the
        top-k missed still count as missed).

    Example:
        >>> s, m, n = flatten_predictions([[0.9, 0.2], [0.8, 0.7]], [[0, 1], [0, 0]], k=1)
        >>> s.tolist(), m.tolist(), n
        ([0.9, 0.8], [False, False], 1)
    """
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(is_match, dtype=bool)
    if s.shape != m.shape or s.ndim != 2:
        raise ValueError(f"scores and is_match must be 2-D of one shape: {s.shape}, {m.shape}")
    num_positives = int(m.sum())
    if k is not None and k < s.shape[1]:
        # Stable sort so that equal scores keep reference order: which tied pair survives the
        # cut must not depend on the ground truth.
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        s = np.take_along_axis(s, top, axis=1)
        m = np.take_along_axis(m, top, axis=1)
    return s.reshape(-1), m.reshape(-1), num_positives


def precision_recall_curve(
    scores: ArrayLike, is_match: ArrayLike, num_positives: int
) -> PrecisionRecallCurve:
    """Precision and recall after each prediction, all queries' predictions ranked together.

    As in the ISC2021 reference code (``isc/metrics.py``): predictions are sorted by decreasing
    score, and among equal scores the false ones come first (the worst case, so that giving every
    pair the same score cannot earn a good AP). Recall is over ``num_positives``, the number of
    ground-truth pairs (= the queries that have a reference, in DISC21).

    Example:
        >>> c = precision_recall_curve([0.9, 0.8, 0.7], [True, False, True], num_positives=4)
        >>> c.precision.round(3).tolist(), c.recall.tolist()
        ([1.0, 0.5, 0.667], [0.25, 0.25, 0.5])
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    m = np.asarray(is_match, dtype=bool).reshape(-1)
    if s.shape != m.shape:
        raise ValueError(f"scores and is_match differ in length: {s.size} != {m.size}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if num_positives < int(m.sum()):
        raise ValueError("num_positives is smaller than the number of true predictions")
    order = np.lexsort((m, -s))  # by decreasing score, then False before True
    true_positives = np.cumsum(m[order])
    precision = true_positives / np.arange(1, s.size + 1)
    recall = true_positives / num_positives if num_positives else np.full(s.size, np.nan)
    return PrecisionRecallCurve(precision, recall.astype(np.float64), s[order])


def micro_average_precision(scores: ArrayLike, is_match: ArrayLike, num_positives: int) -> float:
    """µAP of copy detection (ISC2021 / DISC21): AP over all queries' predictions ranked globally.

    ``µAP = sum_i (r_i - r_{i-1}) * p_i`` over the points of :func:`precision_recall_curve`, as in
    the ISC2021 reference code. Negative queries (no reference) add only false positives, which
    lower precision; ground-truth pairs never predicted lower the reachable recall.

    Returns:
        µAP in [0, 1]; ``nan`` when ``num_positives`` is 0.

    Example:
        >>> micro_average_precision([0.9, 0.8, 0.7], [True, False, True], num_positives=2)
        0.8333333333333333
    """
    if num_positives == 0:
        return float("nan")
    curve = precision_recall_curve(scores, is_match, num_positives)
    steps = np.diff(curve.recall, prepend=0.0)
    return float((steps * curve.precision).sum())


def recall_at_precision(
    curve: PrecisionRecallCurve, min_precision: float = 0.9
) -> tuple[float, float | None]:
    """The highest recall reached with precision at least ``min_precision``, and its threshold.

    Accepting every prediction with ``score >= threshold`` gives that operating point (the
    ISC2021 "recall at 90% precision"; ties are counted pessimistically, as in the curve).

    Returns:
        ``(recall, threshold)``; ``(0.0, None)`` when no point reaches ``min_precision``.

    Example:
        >>> c = precision_recall_curve([0.9, 0.8, 0.7], [True, True, False], num_positives=2)
        >>> recall_at_precision(c, 0.9)
        (1.0, 0.8)
    """
    ok = curve.precision >= min_precision
    if not ok.any():
        return 0.0, None
    best = int(np.argmax(np.where(ok, curve.recall, -np.inf)))
    return float(curve.recall[best]), float(curve.thresholds[best])
