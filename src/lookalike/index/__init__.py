"""Vector indexes: k-nearest-neighbour search over a collection's vectors."""

from lookalike.index.base import VectorIndex, VectorIndexError, create_index, kinds, load_index

__all__ = ["VectorIndex", "VectorIndexError", "create_index", "kinds", "load_index"]
