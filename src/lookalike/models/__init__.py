"""Embedders: turn images (and text, for some) into vectors. See ``base.py`` for the protocol."""

from lookalike.models.base import (
    Embedder,
    ModelError,
    TextEmbedder,
    available,
    l2_normalise,
    load_embedder,
    register,
)

__all__ = [
    "Embedder",
    "ModelError",
    "TextEmbedder",
    "available",
    "l2_normalise",
    "load_embedder",
    "register",
]
