"""Embedders: turn images (and text, for some) into L2-normalised vectors.

``base.py`` holds the :class:`Embedder` protocol and the registry; each built-in family lives in
its own module (``efficientnet``, ``sscd``, ``clip``, ``trained``; ``text`` is the offline
text side of the default model), imported only when one of its models is loaded. How fast and
how good each one is: docs/benchmarks.md.

Example:
    >>> from lookalike.models import available, load_embedder
    >>> "sscd" in available()
    True
    >>> embedder = load_embedder("efficientnet-lite0")  # doctest: +SKIP
    >>> embedder.embed_images([image]).shape  # doctest: +SKIP
    (1, 2280)
"""

from lookalike.models.base import (
    Embedder,
    ModelError,
    TextEmbedder,
    available,
    load_embedder,
    register,
)

__all__ = [
    "Embedder",
    "ModelError",
    "TextEmbedder",
    "available",
    "load_embedder",
    "register",
]
