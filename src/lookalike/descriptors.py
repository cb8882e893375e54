"""Pure functions that turn network outputs into global descriptors, and re-rank results; and
the small numeric helpers every model shares (:func:`l2n`, :func:`softmax`,
:func:`blas_on_one_thread`), kept here once so that all of them compute the same numbers.

Kept apart from the models so that each choice can be measured on its own
(``benchmarks/descriptors.py``, results in docs/benchmarks.md, "Descriptor variants") and
checked by hand in tests.

Example:
    >>> import numpy as np
    >>> fmap = np.ones((1, 2, 3, 3), np.float32)
    >>> gem(fmap, 3.0).round(3).tolist()
    [[1.0, 1.0]]
    >>> l2n(np.array([[3.0, 4.0], [0.0, 0.0]]))
    array([[0.6, 0.8],
           [0. , 0. ]], dtype=float32)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np


def l2n(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rows (or slices along ``axis``) scaled to unit L2 norm, zero rows stay zero; float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def gem(fmap: np.ndarray, p: float = 3.0) -> np.ndarray:
    """Generalised-mean pooling of an (n, c, h, w) map over h and w; p=1 is average pooling."""
    if p == 1.0:
        return fmap.mean(axis=(2, 3))
    return np.power(np.clip(fmap, 1e-6, None), p).mean(axis=(2, 3)) ** (1.0 / p)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``, numerically stable.

    Computed in float64 when ``logits`` are float64, in float32 otherwise.

    Example:
        >>> softmax(np.array([[0.0, np.log(3.0)]], np.float32)).round(2)
        array([[0.25, 0.75]], dtype=float32)
    """
    z = np.asarray(logits)
    if z.dtype != np.float64:
        z = z.astype(np.float32)
    if temperature != 1.0:
        z = z / z.dtype.type(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def hellinger_probs(logits: np.ndarray) -> np.ndarray:
    """Class probabilities as a unit vector: sqrt(p), so cosine = Bhattacharyya coefficient."""
    return l2n(np.sqrt(softmax(np.asarray(logits, dtype=np.float64))))


def fuse(feature: np.ndarray, logits: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """Pooled feature and class probabilities side by side, then unit length.

    The cosine of two fused vectors is ``(cos_feature + weight^2 * cos_probs) / (1 + weight^2)``:
    what the image looks like and what the classifier thinks it shows, blended.
    """
    return l2n(np.concatenate([l2n(feature), weight * hellinger_probs(logits)], axis=-1))


@dataclass
class Whitening:
    """PCA-whitening learned on a collection's own descriptors (Jégou & Chum, 2012).

    Centres, projects on the top ``dim`` principal axes and divides each by its eigenvalue raised
    to ``power`` (0.5 = full whitening; smaller values shrink it, keeping more weight on the strong
    directions, which is more robust on small collections), then unit length.
    """

    mean: np.ndarray
    projection: np.ndarray  # (d_in, dim), already scaled

    @classmethod
    def fit(cls, x: np.ndarray, dim: int = 512, power: float = 0.5) -> Whitening:
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(axis=0)
        centred = x - mean
        n, d = centred.shape
        keep = min(dim, d, max(n - 1, 1))
        # One BLAS thread: on 2 busy cores a threaded 2280x2280 eigh took 23 s, one thread 2.7 s.
        with blas_on_one_thread():
            if n < d:  # the n x n Gram matrix has the same spectrum and is far smaller
                eigval, u = np.linalg.eigh(centred @ centred.T)
                order = np.argsort(eigval)[::-1][:keep]
                eigval = np.maximum(eigval[order], 1e-9)
                axes = centred.T @ u[:, order] / np.sqrt(eigval)[None, :]
                eigval = eigval / max(n - 1, 1)
            else:
                eigval, eigvec = np.linalg.eigh(centred.T @ centred / max(n - 1, 1))
                order = np.argsort(eigval)[::-1][:keep]
                eigval = np.maximum(eigval[order], 1e-9)
                axes = eigvec[:, order]
        projection = axes / np.power(eigval, power)[None, :]
        return cls(mean.astype(np.float32), projection.astype(np.float32))

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Whitened unit vectors of ``x``."""
        return l2n((np.asarray(x, dtype=np.float32) - self.mean) @ self.projection)

    def save(self, path: str) -> None:
        np.savez(path, mean=self.mean, projection=self.projection)

    @classmethod
    def load(cls, path: str) -> Whitening:
        data = np.load(path)
        return cls(data["mean"], data["projection"])


_THREADPOOLS: list[object] = []  # one ThreadpoolController, made on first use


def blas_on_one_thread(enabled: bool = True) -> contextlib.AbstractContextManager:
    """A context in which BLAS runs on one thread (``enabled=False``: unchanged).

    For small products (a few queries, a Gram matrix on busy cores), waking a BLAS thread pool
    costs more than the product, and busy-waiting workers starve other work on shared cores.
    The controller that finds the loaded BLAS libraries is made once, on first use.

    Example:
        >>> with blas_on_one_thread():
        ...     product = np.ones((1, 8)) @ np.ones((8, 4))
    """
    # Measured on 2 busy cores: 1x2280 @ 2280x256 took 3 ms with the pool, 0.1 ms on one thread.
    if not enabled:
        return contextlib.nullcontext()
    if not _THREADPOOLS:
        from threadpoolctl import ThreadpoolController

        _THREADPOOLS.append(ThreadpoolController())
    return _THREADPOOLS[0].limit(limits=1, user_api="blas")


def query_expansion(
    queries: np.ndarray,
    database: np.ndarray,
    sims: np.ndarray,
    top: int = 3,
    alpha: float = 3.0,
) -> np.ndarray:
    """α-query expansion (Radenović et al., 2018): each query plus its ``top`` nearest database
    vectors weighted by similarity^alpha, then unit length.

    ``sims`` are the (n_queries, n_database) similarities used to pick the neighbours; mask
    entries (e.g. a query's own row in the database) with ``-inf`` to keep them out.

    Example:
        >>> db = np.eye(3, dtype=np.float32)
        >>> q = np.array([[1.0, 0.1, 0.0]], np.float32)
        >>> [round(float(v), 2) for v in query_expansion(q, db, q @ db.T, top=1)[0]]
        [1.0, 0.05, 0.0]
    """
    top = min(top, sims.shape[1])
    if top == 0:
        return l2n(queries)
    nearest = np.argpartition(-sims, kth=top - 1, axis=1)[:, :top]
    weights = np.power(np.clip(np.take_along_axis(sims, nearest, axis=1), 0, None), alpha)
    expanded = np.asarray(queries, np.float32) + np.einsum("qk,qkd->qd", weights, database[nearest])
    return l2n(expanded)
