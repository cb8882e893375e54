"""Vector indexes: k-nearest-neighbour search over a collection's vectors.

``create_index(kind, dim)`` makes an empty index of a kind (``flat``, ``hnsw``, ``ivf``,
``ivf-pq``, ``lsh``, ``auto``, ``milvus``: :func:`kinds`), ``load_index(kind, path)`` reads one
its ``save(path)`` wrote. Each kind lives in its own module and registers itself there
(``lookalike.index.base``); which to use at what size is in docs/benchmarks.md, section ``ann``.

Example:
    >>> import numpy as np
    >>> from lookalike.index import create_index
    >>> index = create_index("hnsw", dim=4)
    >>> index.add(np.array([7, 9]), np.eye(4, dtype=np.float32)[:2])
    >>> index.search(np.eye(4, dtype=np.float32)[1:2], k=1)[1].tolist()
    [[9]]
"""

import os

# FAISS's OpenMP threads spin while they wait; on a machine shared with other work that
# collapses (measured here: IVF-PQ training 16x and a 2-thread binary search 50x slower).
# Passive waiting avoids it; set before FAISS loads the OpenMP runtime, and only as a default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lookalike.index.base import VectorIndex, VectorIndexError, create_index, kinds, load_index

__all__ = ["VectorIndex", "VectorIndexError", "create_index", "kinds", "load_index"]
