"""Vector indexes: k-nearest-neighbour search over a collection's vectors."""

import os

# FAISS's OpenMP threads spin while they wait; on a machine shared with other work that
# collapses (measured here: IVF-PQ training 16x and a 2-thread binary search 50x slower).
# Passive waiting avoids it; set before FAISS loads the OpenMP runtime, and only as a default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lookalike.index.base import VectorIndex, VectorIndexError, create_index, kinds, load_index

__all__ = ["VectorIndex", "VectorIndexError", "create_index", "kinds", "load_index"]
