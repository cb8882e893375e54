"""An index over vectors projected by a PCA learned on the collection itself.

The catalogue keeps the full vectors; the index holds them centred and projected on their top
principal axes (``descriptors.Whitening`` with power 0). On the default descriptor this both
shrinks the index (2280 -> 256 floats) and raises retrieval quality (docs/benchmarks.md, section
``descriptors``), because centring removes what every image shares. Callers add and query full
vectors.

Example:
    >>> from lookalike.index import create_index
    >>> full = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    >>> index = ProjectedIndex(create_index("flat", dim=4), Whitening.fit(full, 4, 0), 50)
    >>> index.add(np.arange(50), full)
    >>> index.search(full[3:4], k=1)[1].tolist()
    [[3]]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lookalike.descriptors import Whitening
from lookalike.fileio import atomic_save
from lookalike.index.base import VectorIndex, accepts_allowed
from lookalike.index.log import appended


class ProjectedIndex:
    """Wraps an index of projected vectors so that it takes and answers full vectors."""

    def __init__(self, inner: VectorIndex, projection: Whitening, fitted_on: int) -> None:
        self.inner = inner
        self.projection = projection
        self.fitted_on = fitted_on
        self.kind = inner.kind
        self.dim = int(projection.mean.shape[0])

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Full vectors to the unit vectors the inner index holds."""
        return self.projection.apply(np.asarray(vectors, np.float32).reshape(-1, self.dim))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.inner.add(ids, self.project(vectors))

    def remove(self, ids: np.ndarray) -> None:
        self.inner.remove(ids)

    @property
    def filters(self) -> bool:
        """Whether ``search`` takes ``allowed`` (as the inner index does)."""
        return accepts_allowed(self.inner)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if allowed is None:
            return self.inner.search(self.project(queries), k)
        return self.inner.search(self.project(queries), k, allowed=allowed)

    def vectors_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The inner index's ``vectors_of`` (projected vectors, as :meth:`project` makes the
        queries); None when it has none."""
        gather = getattr(self.inner, "vectors_of", None)
        return None if gather is None else gather(ids)

    def __len__(self) -> int:
        return len(self.inner)

    def save(self, path: Path) -> None:
        """The inner index, then the PCA beside it, unless the inner index only appended to
        the log of the base it was read from or written to (``lookalike.index.log``): the PCA
        file beside that base is this one, as a new PCA makes a new inner index."""
        self.inner.save(path)
        if appended(self.inner) and projection_file(path).exists():
            return
        atomic_save(
            projection_file(path),
            lambda tmp: np.savez(
                tmp,
                mean=self.projection.mean,
                projection=self.projection.projection,
                fitted_on=np.array(self.fitted_on),
            ),
            ".npz",
        )


def projection_file(index_file: Path) -> Path:
    """Where the projection of the index saved at ``index_file`` lives."""
    return index_file.with_suffix(".pca.npz")


def load_projection(index_file: Path) -> tuple[Whitening, int] | None:
    """The projection saved beside ``index_file`` and the collection size it was learned at."""
    file = projection_file(index_file)
    if not file.exists():
        return None
    data = np.load(file)
    return Whitening(data["mean"], data["projection"]), int(data["fitted_on"])
