"""The VectorIndex protocol and the registry of index kinds.

Each kind registers itself (:func:`register`) in its own module; the built-in ones are named in
``BUILTIN`` and imported the first time they are asked for, so this module imports none of them.

An index maps int64 ids (the catalogue's image ids) to L2-normalised vectors and answers
k-nearest-neighbour queries by inner product (= cosine similarity). It is a cache: the catalogue
holds every vector, so any index can be rebuilt from it.

Example:
    >>> index = create_index("flat", dim=4)
    >>> index.add(np.array([7]), np.eye(4, dtype=np.float32)[:1])
    >>> index.search(np.eye(4, dtype=np.float32)[:1], k=1)[1].tolist()
    [[7]]
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from lookalike.errors import VectorIndexError


@runtime_checkable
class VectorIndex(Protocol):
    """What every index kind provides."""

    kind: str
    dim: int

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (n,) int64 ids with their (n, dim) float32 vectors."""
        ...

    def remove(self, ids: np.ndarray) -> None:
        """Forget these ids (unknown ids are ignored)."""
        ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n, k), best first; missing slots have id -1.

        A kind that can filter (:func:`accepts_allowed`) also takes ``allowed``: a sorted int64
        array of the only ids results may have; it then returns ``min(k, matches)`` results
        for every query, never fewer (``lookalike.collection.search`` picks the plan).
        """
        ...

    def __len__(self) -> int: ...

    def save(self, path: Path) -> None:
        """Write to ``path`` atomically (a reader never sees half a file)."""
        ...


def accepts_allowed(index: object) -> bool:
    """Whether ``index.search`` takes ``allowed`` (a filtered search), which a kind says with
    a true ``filters`` attribute (``flat``, ``hnsw``, ``ivf``, ``ivf-pq``, ``lsh``; ``auto`` and
    a PCA-projected index as the index they hold). Others are filtered by the collection
    (``collection.search``: an exact scan of the allowed stored vectors)."""
    return bool(getattr(index, "filters", False))


#: The built-in kinds and the module that registers each (imported when first needed; milvus
#: imports pymilvus only when a milvus index is used).
BUILTIN: dict[str, str] = {
    "flat": "lookalike.index.faiss_index",
    "hnsw": "lookalike.index.hnsw",
    "ivf": "lookalike.index.ivf",
    "ivf-pq": "lookalike.index.ivf",
    "lsh": "lookalike.index.lsh",
    "inverted": "lookalike.index.inverted",
    "auto": "lookalike.index.auto",
    "milvus": "lookalike.index.milvus",
}

IndexFactory = Callable[..., VectorIndex]
IndexLoader = Callable[[Path], VectorIndex]
_FACTORIES: dict[str, IndexFactory] = {}
_LOADERS: dict[str, IndexLoader] = {}


def register(kind: str, factory: IndexFactory, loader: IndexLoader) -> None:
    """Make an index kind available by name."""
    _FACTORIES[kind] = factory
    _LOADERS[kind] = loader


def kinds() -> list[str]:
    """The registered index kinds, sorted."""
    _import_builtin()
    return sorted(_FACTORIES)


def create_index(kind: str, dim: int, **options: object) -> VectorIndex:
    """A new, empty index of ``kind`` (``"milvus:URI"``: the kind ``milvus`` at ``URI``)."""
    kind, options = _split_target(kind, options)
    _import_builtin(kind)
    if kind not in _FACTORIES:
        raise VectorIndexError(f"unknown index kind {kind!r}; available: {', '.join(kinds())}")
    return _FACTORIES[kind](dim=dim, **options)


def load_index(kind: str, path: Path) -> VectorIndex:
    """Read an index of ``kind`` written by its ``save``."""
    kind = _split_target(kind, {})[0]  # where it lives is in what ``save`` wrote
    _import_builtin(kind)
    if kind not in _LOADERS:
        raise VectorIndexError(f"unknown index kind {kind!r}; available: {', '.join(kinds())}")
    return _LOADERS[kind](path)


def _split_target(kind: str, options: dict) -> tuple[str, dict]:
    """``"milvus:http://host:19530"`` -> ``("milvus", {"uri": "http://host:19530"})``: a kind
    that lives outside the collection folder names where after a colon."""
    name, colon, target = kind.partition(":")
    if colon and name in _TARGETED:
        return name, {**options, "uri": target}
    return kind, options


#: Kinds written ``kind:URI``; they take ``uri`` (and ``path``, where they will be saved).
_TARGETED = {"milvus"}


def _import_builtin(kind: str | None = None) -> None:
    """Import the module of a built-in ``kind`` (every built-in one when None) unless the kind
    is registered already."""
    for name, module in BUILTIN.items():
        if (kind is None or name == kind) and name not in _FACTORIES:
            importlib.import_module(module)
