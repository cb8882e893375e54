"""The descriptor maths, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.descriptors import Whitening, fuse, gem, hellinger_probs, l2n, query_expansion


def test_gem_between_average_and_max() -> None:
    fmap = np.array([[[[1.0, 3.0]]]], np.float32)  # one image, one channel, values 1 and 3
    assert gem(fmap, 1.0)[0, 0] == pytest.approx(2.0)
    assert gem(fmap, 3.0)[0, 0] == pytest.approx(((1 + 27) / 2) ** (1 / 3), rel=1e-5)
    assert gem(fmap, 50.0)[0, 0] == pytest.approx(3.0 * 0.5 ** (1 / 50), rel=1e-4)


def test_hellinger_probs_cosine_is_bhattacharyya() -> None:
    logits = np.log(np.array([[0.5, 0.5, 1e-12], [0.5, 1e-12, 0.5]]))
    v = hellinger_probs(logits)
    assert np.linalg.norm(v, axis=1) == pytest.approx([1, 1])
    assert float(v[0] @ v[1]) == pytest.approx(0.5, abs=1e-5)  # sqrt(.5*.5) for the shared class


def test_fuse_blends_the_two_cosines() -> None:
    rng = np.random.default_rng(0)
    feats, logits = rng.normal(size=(2, 8)), rng.normal(size=(2, 5))
    w = 0.7
    fused = fuse(feats, logits, w)
    cos_f = float(l2n(feats)[0] @ l2n(feats)[1])
    cos_p = float(hellinger_probs(logits)[0] @ hellinger_probs(logits)[1])
    assert float(fused[0] @ fused[1]) == pytest.approx(
        (cos_f + w * w * cos_p) / (1 + w * w), rel=1e-5
    )


def test_whitening_decorrelates_and_reduces() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))  # correlated
    w = Whitening.fit(x, dim=4, power=0.5)
    assert w.dim == 4
    projected = (x - w.mean) @ w.projection
    cov = np.cov(projected.T)
    assert np.allclose(cov, np.eye(4), atol=1e-3)
    assert np.linalg.norm(w.apply(x), axis=1) == pytest.approx(np.ones(500), rel=1e-5)


def test_whitening_round_trip(tmp_path) -> None:
    x = np.random.default_rng(2).normal(size=(50, 5))
    w = Whitening.fit(x, dim=3)
    w.save(str(tmp_path / "w.npz"))
    again = Whitening.load(str(tmp_path / "w.npz"))
    assert np.allclose(again.apply(x), w.apply(x))


def test_query_expansion_pulls_towards_neighbours() -> None:
    db = np.eye(3, dtype=np.float32)
    q = l2n(np.array([[1.0, 0.8, 0.0]]))
    sims = q @ db.T
    one = query_expansion(q, db, sims, top=1, alpha=1.0)
    expected = l2n(q + sims[0, 0] * db[0])  # nearest is db[0] with weight sim^1
    assert np.allclose(one, expected)
    masked = sims.copy()
    masked[0, 0] = -np.inf  # e.g. the query's own entry: never its own neighbour
    assert np.allclose(
        query_expansion(q, db, masked, top=1, alpha=1.0), l2n(q + sims[0, 1] * db[1])
    )


def test_whitening_from_few_samples_equals_the_covariance_route() -> None:
    # Fewer samples than dimensions take the Gram-matrix route; the axes must be the same.
    rng = np.random.default_rng(3)
    few = rng.normal(size=(40, 50))
    w = Whitening.fit(few, dim=10, power=0.5)
    centred = few - few.mean(axis=0)
    eigval, eigvec = np.linalg.eigh(centred.T @ centred / 39)
    top = np.argsort(eigval)[::-1][:10]
    expected = eigvec[:, top] / np.sqrt(eigval[top])
    assert np.allclose(np.abs(w.projection), np.abs(expected), atol=1e-4)
