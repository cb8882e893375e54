"""Supervised learned whitening: a closed-form metric learning that starts the projection head.

Pure NumPy: whiten the within-class covariance of the training descriptors, then keep the
directions along which the class means spread (Radenović et al., 2018). :func:`make_head
<lookalike.train.network.make_head>` starts its linear map here. How much it gains: the
``train`` section of docs/benchmarks.md.

Example:
    >>> from lookalike.train.whitening import learned_whitening
    >>> mean, projection = learned_whitening(features, labels, dim=512)  # doctest: +SKIP
    >>> projected = (features - mean) @ projection  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["BLENDS", "WHITEN_SHRINK", "blend_name", "learned_whitening", "start_vectors"]


#: Shrinkage of the within-class covariance towards a multiple of the identity in
#: :func:`learned_whitening` (measured on Tiny ImageNet's unseen classes: 0.001-0.003 best).
WHITEN_SHRINK = 0.003


def learned_whitening(
    features: NDArray[np.float32],
    labels: Sequence[str] | NDArray,
    dim: int,
    shrink: float = WHITEN_SHRINK,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Supervised "learned whitening" (Radenović et al., 2018): ``(mean, projection)``.

    Whitens the within-class covariance (so that what varies inside a class counts less), then
    keeps the ``dim`` directions along which class means spread most: a closed-form metric
    learning, like LDA. ``(x - mean) @ projection`` is the projected descriptor.

    Example:
        >>> mean, proj = learned_whitening(x, labels, 512)  # doctest: +SKIP
        >>> proj.shape  # doctest: +SKIP
        (2280, 512)
    """
    x = np.asarray(features, dtype=np.float64)
    classes, codes = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    mean = x.mean(axis=0)
    class_means = np.zeros((len(classes), x.shape[1]))
    np.add.at(class_means, codes, x)
    class_means /= np.bincount(codes)[:, None]
    within = x - class_means[codes]
    d = x.shape[1]
    eigval, basis = _principal_axes(within)
    floor = max(shrink * float(eigval.sum()) / d, 1e-12)  # the shrinkage, on every direction
    scale = ((1 - shrink) * eigval + floor) ** -0.5 - floor**-0.5

    def whiten(z: NDArray[np.float64]) -> NDArray[np.float64]:
        # The symmetric whitening map of the shrunk covariance, without forming a d x d matrix.
        return ((z @ basis) * scale) @ basis.T + z * floor**-0.5

    # Then the directions along which the class means spread, and, when they are fewer than
    # ``dim``, random directions of the rest of the whitened space (a Johnson-Lindenstrauss
    # projection). Measured on Tiny ImageNet's unseen classes (mAP@R at 512-d): 0.36 this way,
    # 0.26 with the class-mean directions alone, 0.30 filling up with the whitened images'
    # principal axes (they favour strong within-class noise that shrinkage left in).
    spread = whiten(class_means - mean)
    _, singular, vt = np.linalg.svd(spread, full_matrices=False)
    axes = vt[singular > 1e-8 * max(float(singular.max()), 1e-30)][:dim]
    if len(axes) < dim:
        rest = np.random.default_rng(0).normal(size=(d, dim - len(axes)))
        rest -= axes.T @ (axes @ rest)
        axes = np.vstack([axes, np.linalg.qr(rest)[0].T])
    return mean, whiten(axes).T


#: The blends of descriptor and whitening a run's start is chosen from (:func:`start_vectors`),
#: in order of preference for the "seen" goal (the reverse for "unseen"): ties go first.
BLENDS: tuple[float, ...] = (math.inf, 2.0, 1.0, 0.5, 0.0)


def start_vectors(
    features: NDArray[np.float32], whitening: tuple[NDArray, NDArray], blend: float
) -> NDArray[np.float32]:
    """The start's embeddings of ``features``: the learned whitening (``blend = inf``), the
    descriptor itself (``0``) or both side by side, unit length each, the whitening weighted by
    ``blend`` (cosine = ``(cos_descriptor + blend^2 cos_whitened) / (1 + blend^2)``), unit length.

    Example:
        >>> x = np.eye(3, dtype=np.float32)
        >>> start_vectors(x, (np.zeros(3), np.eye(3)[:, :2]), 0.0).shape
        (3, 3)
        >>> start_vectors(x, (np.zeros(3), np.eye(3)[:, :2]), 1.0).shape
        (3, 5)
    """
    x = np.asarray(features, dtype=np.float32)
    if blend == 0:
        return _unit(x)
    z = _unit((x - whitening[0]) @ whitening[1])
    if math.isinf(blend):
        return z
    return _unit(np.concatenate([_unit(x), blend * z], axis=1))


def blend_name(blend: float) -> str:
    """How a blend reads in reports: "whitening", "descriptor" or "descriptor + 2 x whitening"."""
    if math.isinf(blend):
        return "whitening"
    return "descriptor" if blend == 0 else f"descriptor + {blend:g} x whitening"


def _unit(x: NDArray) -> NDArray[np.float32]:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _principal_axes(
    z: NDArray[np.float64], k: int | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Eigenvalues and eigenvectors (d x k, largest first) of ``z.T @ z / n``; through the n x n
    Gram matrix when there are fewer rows than columns (a 2280 x 2280 eigh takes tens of seconds
    on a busy 2-core CPU; the Gram matrix of 36 images, milliseconds)."""
    n, d = z.shape
    if n < d:
        eigval, vec = np.linalg.eigh(z @ z.T / n)
        keep = eigval > 1e-10 * max(float(eigval.max()), 1e-30)
        eigval, axes = eigval[keep], z.T @ vec[:, keep] / np.sqrt(eigval[keep] * n)
    else:
        eigval, axes = np.linalg.eigh((z.T @ z / n).astype(np.float32))
        eigval, axes = np.maximum(eigval.astype(np.float64), 0), axes.astype(np.float64)
    order = np.argsort(eigval)[::-1][:k]
    return eigval[order], axes[:, order]
