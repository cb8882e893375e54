"""Retrieval metrics: hand-worked rankings, edge cases, and agreement with reference code."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lookalike.evaluate import metrics as m

# One query, 6 ranked results, relevant at ranks 1, 3 and 6 (R = 3):
#   P@1 = 1/1, P@3 = 2/3, P@6 = 3/6
#   AP   = (1 + 2/3 + 1/2) / 3          = 13/18
#   AP@R = (1 + 2/3) / 3   (ranks <= 3) = 5/9
#   R-precision = 2 relevant in top 3   = 2/3
RANKING = np.array([[1, 0, 1, 0, 0, 1]], dtype=bool)


def test_average_precision_by_hand() -> None:
    assert m.average_precision(RANKING)[0] == pytest.approx(13 / 18)
    assert m.mean_average_precision(RANKING) == pytest.approx(13 / 18)


def test_average_precision_of_truncated_ranking_counts_missing_as_zero() -> None:
    # Only the top 3 are known but the gallery holds R = 3 relevant: (1 + 2/3) / 3.
    assert m.average_precision(RANKING[:, :3], num_relevant=[3])[0] == pytest.approx(5 / 9)
    # Without num_relevant the 2 found would be taken as all there is: (1 + 2/3) / 2.
    assert m.average_precision(RANKING[:, :3])[0] == pytest.approx(5 / 6)


def test_map_at_r_and_r_precision_by_hand() -> None:
    assert m.average_precision_at_r(RANKING)[0] == pytest.approx(5 / 9)
    assert m.mean_average_precision_at_r(RANKING) == pytest.approx(5 / 9)
    assert m.r_precision(RANKING) == pytest.approx(2 / 3)


def test_map_at_r_differs_from_map_when_late_hits_exist() -> None:
    # R = 1, hit at rank 2: AP = 1/2 but AP@R looks only at rank 1 -> 0.
    late = np.array([[0, 1, 0]], dtype=bool)
    assert m.mean_average_precision(late) == pytest.approx(0.5)
    assert m.mean_average_precision_at_r(late) == 0.0


def test_precision_at_k_by_hand() -> None:
    assert m.precision_at_k(RANKING, 1) == 1.0
    assert m.precision_at_k(RANKING, 3) == pytest.approx(2 / 3)
    assert m.precision_at_k(RANKING, 6) == pytest.approx(1 / 2)
    # Two queries: 1 of 2 and 2 of 2 in the top 2 -> (0.5 + 1) / 2.
    two = np.array([[1, 0, 1], [1, 1, 0]], dtype=bool)
    assert m.precision_at_k(two, 2) == pytest.approx(0.75)


def test_precision_at_k_rejects_k_outside_ranking() -> None:
    with pytest.raises(ValueError, match="k must be in"):
        m.precision_at_k(RANKING, 7)
    with pytest.raises(ValueError, match="k must be in"):
        m.precision_at_k(RANKING, 0)


# Three queries whose first hit is at rank 3, 1 and 2:
#   Recall@1 = 1/3 (only q2), Recall@2 = 2/3 (q2, q3), Recall@3 = 3/3.
FIRST_HITS = np.array(
    [
        [0, 0, 1, 1],
        [1, 0, 0, 0],
        [0, 1, 0, 1],
    ],
    dtype=bool,
)


def test_recall_at_k_is_fraction_of_queries_with_a_hit() -> None:
    assert m.recall_at_k(FIRST_HITS, 1) == pytest.approx(1 / 3)
    assert m.recall_at_k(FIRST_HITS, 2) == pytest.approx(2 / 3)
    assert m.recall_at_k(FIRST_HITS, 3) == 1.0
    # Not the IR recall: q1 found only 1 of its 2 relevant items in the top 3, still counts.
    assert m.recall_at_k(FIRST_HITS[:1], 3) == 1.0


def test_cmc_ranks_and_clamping() -> None:
    # k = 5, 10, 20 exceed the 4 ranks: clamped, every query has a hit somewhere.
    assert m.cmc(FIRST_HITS) == pytest.approx({1: 1 / 3, 5: 1.0, 10: 1.0, 20: 1.0})
    assert m.cmc(FIRST_HITS, ranks=(2,)) == pytest.approx({2: 2 / 3})


def test_ukbench_score_by_hand() -> None:
    # Query excluded (default): the query itself counts as one view, then the top 3.
    #   q1: 1 + 3 = 4; q2: 1 + 1 = 2 -> 3.0
    ranked = np.array([[1, 1, 1, 0], [0, 1, 0, 1]], dtype=bool)
    assert m.ukbench_score(ranked) == 3.0
    # Original protocol, query in its own ranking: count the top 4. q1: 3, q2: 2 -> 2.5
    assert m.ukbench_score(ranked, query_in_ranking=True) == 2.5


def test_queries_without_relevant_items_are_nan_and_skipped() -> None:
    rel = np.array([[1, 0, 1, 0], [0, 0, 0, 0]], dtype=bool)
    ap = m.average_precision(rel)
    assert ap[0] == pytest.approx(5 / 6)
    assert math.isnan(ap[1])
    assert m.mean_average_precision(rel) == pytest.approx(5 / 6)
    assert m.precision_at_k(rel, 2) == pytest.approx(0.5)  # only q1 counts
    assert m.recall_at_k(rel, 1) == 1.0
    assert math.isnan(m.mean_average_precision(np.zeros((2, 3), dtype=bool)))
    assert math.isnan(m.r_precision(np.zeros((1, 3), dtype=bool)))


def test_invalid_shapes_and_counts_raise() -> None:
    with pytest.raises(ValueError, match="2-D"):
        m.average_precision([1, 0, 1])
    with pytest.raises(ValueError, match="smaller"):
        m.average_precision(RANKING, num_relevant=[2])
    with pytest.raises(ValueError, match="shape"):
        m.rank_relevance(np.zeros((2, 3)), [0, 1], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        m.rank_relevance([[np.nan]], [0], [0])


def test_rank_relevance_orders_by_score_and_excludes_self() -> None:
    # Three items, labels a a b; the queries are the gallery, each must not find itself.
    scores = np.array(
        [
            [1.0, 0.2, 0.7],  # q0 (a): b(0.7) before a(0.2)
            [0.9, 1.0, 0.1],  # q1 (a): a(0.9) first
            [0.3, 0.4, 1.0],  # q2 (b): no other b
        ]
    )
    labels = ["a", "a", "b"]
    rel, n = m.rank_relevance(scores, labels, labels, exclude=np.eye(3, dtype=bool))
    assert rel.tolist() == [[False, True, False], [True, False, False], [False, False, False]]
    assert n.tolist() == [1, 1, 0]
    ap = m.average_precision(rel, n)
    assert ap[:2].tolist() == [0.5, 1.0]
    assert math.isnan(ap[2])


def test_rank_relevance_tie_rules() -> None:
    # All three scores equal; one relevant item, at gallery position 0.
    scores, query, gallery = [[0.5, 0.5, 0.5]], ["a"], ["a", "b", "b"]
    pessimistic, _ = m.rank_relevance(scores, query, gallery)
    optimistic, _ = m.rank_relevance(scores, query, gallery, ties="optimistic")
    stable, _ = m.rank_relevance(scores, query, gallery, ties="stable")
    assert pessimistic.tolist() == [[False, False, True]]  # AP = 1/3
    assert optimistic.tolist() == [[True, False, False]]  # AP = 1
    assert stable.tolist() == [[True, False, False]]
    assert m.mean_average_precision(pessimistic) == pytest.approx(1 / 3)


# Copy detection. Four queries: q1 -> r1, q2 -> r3, q4 -> r9 are positive (3 ground-truth pairs),
# q3 is negative. Predictions, all queries together, by score:
#   0.9 q1-r1 TP   P = 1/1   R = 1/3
#   0.8 q3-r2 FP   P = 1/2   R = 1/3   (the negative query: only a false positive)
#   0.5 q2-r3 TP   P = 2/3   R = 2/3
#   0.4 q1-r5 FP   P = 2/4   R = 2/3
# q4's reference is never predicted: recall stops at 2/3.
#   µAP = (1/3)(1) + 0 + (1/3)(2/3) + 0 = 5/9
CD_SCORES = np.array([0.4, 0.9, 0.5, 0.8])  # deliberately not sorted
CD_MATCH = np.array([False, True, True, False])


def test_micro_average_precision_by_hand() -> None:
    assert m.micro_average_precision(CD_SCORES, CD_MATCH, num_positives=3) == pytest.approx(5 / 9)


def test_precision_recall_curve_by_hand() -> None:
    curve = m.precision_recall_curve(CD_SCORES, CD_MATCH, num_positives=3)
    assert curve.precision == pytest.approx([1, 1 / 2, 2 / 3, 1 / 2])
    assert curve.recall == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert curve.thresholds.tolist() == [0.9, 0.8, 0.5, 0.4]


def test_recall_at_precision_by_hand() -> None:
    curve = m.precision_recall_curve(CD_SCORES, CD_MATCH, num_positives=3)
    # Precision >= 0.9 only at the first point: recall 1/3 when accepting scores >= 0.9.
    assert m.recall_at_precision(curve, 0.9) == pytest.approx((1 / 3, 0.9))
    # Precision >= 0.6: best is the third point (2/3 precision) at threshold 0.5.
    assert m.recall_at_precision(curve, 0.6) == pytest.approx((2 / 3, 0.5))
    # Never reached.
    empty = m.precision_recall_curve([0.3], [False], num_positives=1)
    assert m.recall_at_precision(empty, 0.9) == (0.0, None)


def test_micro_ap_ties_are_pessimistic() -> None:
    # One TP and one FP with the same score: the FP is ranked first -> P = 0, then 1/2 at R = 1.
    assert m.micro_average_precision([0.5, 0.5], [True, False], 1) == pytest.approx(0.5)
    # A constant score must not beat an honest ranking of the same predictions.
    honest = m.micro_average_precision([0.9, 0.8, 0.1], [True, True, False], 2)
    constant = m.micro_average_precision([0.5, 0.5, 0.5], [True, True, False], 2)
    assert honest == 1.0
    assert constant == pytest.approx(0.5 * 0 + 0.5 * 1 / 2 + 0.5 * 2 / 3)
    assert constant < honest


def test_micro_ap_edge_cases() -> None:
    assert math.isnan(m.micro_average_precision([0.2], [False], 0))
    assert m.micro_average_precision([], [], 4) == 0.0  # nothing predicted, nothing found
    with pytest.raises(ValueError, match="num_positives"):
        m.micro_average_precision([0.9, 0.8], [True, True], 1)


def test_flatten_predictions_keeps_top_k_but_counts_all_positives() -> None:
    scores = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.7], [0.6, 0.5, 0.4]])
    match = np.array([[False, True, False], [False, True, False], [False, False, False]])
    s, y, n = m.flatten_predictions(scores, match, k=1)
    assert s.tolist() == [0.9, 0.8, 0.6]
    assert y.tolist() == [False, True, False]
    assert n == 2  # q0's match was cut by the top-1 but still counts as missed
    assert m.micro_average_precision(s, y, n) == pytest.approx((1 / 2) * (1 / 2))


@pytest.mark.slow  # importing scikit-learn takes seconds; the check itself is instant
def test_micro_ap_matches_sklearn_without_ties() -> None:
    # With distinct scores and every positive predicted, µAP is sklearn's step-wise AP.
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    scores = rng.random(500)
    match = rng.random(500) < 0.2
    ours = m.micro_average_precision(scores, match, int(match.sum()))
    assert ours == pytest.approx(sklearn_metrics.average_precision_score(match, scores))


# ----------------------------------------------------------------------------------------------
# Agreement with pytorch-metric-learning's AccuracyCalculator (Musgrave et al.'s reference code).
# Importing it loads torch and scikit-learn (several seconds on a small machine), hence "slow";
# the comparison itself takes a fraction of a second.
# ----------------------------------------------------------------------------------------------

PML_METRICS = (
    "precision_at_1",
    "mean_average_precision",
    "mean_average_precision_at_r",
    "r_precision",
)


def _embeddings(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 15, size=n)
    labels[-1] = 99  # a class of one: a "lone" query that pml skips and we give nan
    # Class centres plus noise so that the metrics land away from 0 and 1.
    centres = rng.normal(size=(100, 8))
    emb = centres[labels] + rng.normal(scale=1.2, size=(n, 8))
    return emb.astype(np.float32), labels


def _neg_sq_l2(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    # pml's default FaissKNN uses squared L2; a higher score must mean closer.
    q, g = query.astype(np.float64), gallery.astype(np.float64)
    return -((q[:, None, :] - g[None, :, :]) ** 2).sum(axis=-1)


def _ours(rel: np.ndarray, n: np.ndarray) -> dict[str, float]:
    return {
        "precision_at_1": m.precision_at_k(rel, 1, n),
        "mean_average_precision": m.mean_average_precision(rel, n),
        "mean_average_precision_at_r": m.mean_average_precision_at_r(rel, n),
        "r_precision": m.r_precision(rel, n),
    }


@pytest.mark.slow
def test_agrees_with_pytorch_metric_learning_when_queries_are_the_gallery() -> None:
    pytest.importorskip("faiss")
    acc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    torch = pytest.importorskip("torch")
    emb, labels = _embeddings(240, seed=0)
    # k=None: pml retrieves the whole gallery, so its mean_average_precision is full-ranking mAP.
    calc = acc.AccuracyCalculator(include=PML_METRICS, k=None, device=torch.device("cpu"))
    theirs = calc.get_accuracy(emb, labels)
    rel, n = m.rank_relevance(
        _neg_sq_l2(emb, emb), labels, labels, exclude=np.eye(len(emb), dtype=bool)
    )
    assert _ours(rel, n) == pytest.approx(theirs, abs=1e-9)
    assert 0.05 < theirs["mean_average_precision"] < 0.95  # a test that can fail


@pytest.mark.slow
def test_agrees_with_pytorch_metric_learning_on_a_query_gallery_split() -> None:
    pytest.importorskip("faiss")
    acc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    torch = pytest.importorskip("torch")
    emb, labels = _embeddings(240, seed=1)
    q, ql, g, gl = emb[-60:], labels[-60:], emb[:-60], labels[:-60]
    calc = acc.AccuracyCalculator(include=PML_METRICS, k=None, device=torch.device("cpu"))
    theirs = calc.get_accuracy(q, ql, g, gl, ref_includes_query=False)
    rel, n = m.rank_relevance(_neg_sq_l2(q, g), ql, gl)
    assert _ours(rel, n) == pytest.approx(theirs, abs=1e-9)


@pytest.mark.slow
def test_pml_map_with_small_k_is_ap_of_the_truncated_ranking() -> None:
    # pml's "mean_average_precision" only sees its top k but divides by the full R: that is our
    # average_precision of the truncated ranking with num_relevant given, not full mAP.
    pytest.importorskip("faiss")
    acc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    torch = pytest.importorskip("torch")
    emb, labels = _embeddings(240, seed=2)
    calc = acc.AccuracyCalculator(
        include=("mean_average_precision",), k=10, device=torch.device("cpu")
    )
    theirs = calc.get_accuracy(emb, labels)["mean_average_precision"]
    rel, n = m.rank_relevance(
        _neg_sq_l2(emb, emb), labels, labels, exclude=np.eye(len(emb), dtype=bool)
    )
    assert m.mean_average_precision(rel[:, :10], n) == pytest.approx(theirs, abs=1e-9)
    assert m.mean_average_precision(rel, n) > theirs
