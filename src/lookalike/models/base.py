"""The Embedder protocol and the registry of embedders by name.

An embedder turns decoded images (and, for some, text) into L2-normalised float32 vectors.
Every embedder registers a factory under a short name (``efficientnet-lite0``); a collection
records that name, the embedder's ``version`` and ``dim`` in its manifest and refuses to open
with another.

Example:
    >>> from lookalike.models import load_embedder
    >>> embedder = load_embedder("efficientnet-lite0")  # doctest: +SKIP
    >>> vectors = embedder.embed_images([pil_image])  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from lookalike.errors import ModelError


@runtime_checkable
class Embedder(Protocol):
    """What every image embedder provides.

    Attributes:
        name: the registry name, stored in a collection's manifest.
        version: changes whenever the vectors it produces change (weights, preprocessing,
            pooling); a collection built with another version must be re-indexed.
        dim: the length of one vector.
        input_size: the side, in pixels, the model looks at; decoders use it to decode large
            JPEGs at reduced size.
    """

    name: str
    version: str
    dim: int
    input_size: int

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Return an (n, dim) float32 array of L2-normalised descriptors, one row per image."""
        ...


@runtime_checkable
class TextEmbedder(Protocol):
    """An embedder that also maps text into its image space (CLIP, ConSE)."""

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Return an (n, dim) float32 array of L2-normalised vectors, one row per text."""
        ...


EmbedderFactory = Callable[..., Embedder]
_REGISTRY: dict[str, EmbedderFactory] = {}


def register(name: str) -> Callable[[EmbedderFactory], EmbedderFactory]:
    """Class or function decorator: make an embedder loadable by ``name``."""

    def decorate(factory: EmbedderFactory) -> EmbedderFactory:
        _REGISTRY[name] = factory
        return factory

    return decorate


def available() -> list[str]:
    """The registered embedder names, sorted."""
    _import_builtin()
    return sorted(_REGISTRY)


def load_embedder(name: str, **options: object) -> Embedder:
    """Build the embedder registered as ``name``.

    ``name`` may also be ``family:argument`` (``clip:/models/clip-b32``: the family's factory
    gets ``path=argument``), or a directory holding a trained model (see ``lookalike train``)
    when an embedder family has registered a loader for directories under the name ``"dir"``.
    """
    _import_builtin()
    factory = _REGISTRY.get(name)
    family, colon, argument = name.partition(":")
    if factory is None and colon and family in _REGISTRY:  # "clip:/models/clip-b32"
        factory = _REGISTRY[family]
        options = {"path": argument, **options}
    if factory is None and "dir" in _REGISTRY:
        from pathlib import Path

        if Path(name).is_dir():
            factory = _REGISTRY["dir"]
            options = {"path": name, **options}
    if factory is None:
        raise ModelError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return factory(**options)


def file_digest(path: str | os.PathLike) -> str:
    """A short content hash of a weights file (BLAKE2b, 64 bits), for model versions."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Scale rows to unit L2 norm (zero rows stay zero); returns float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _import_builtin() -> None:
    # Importing the modules runs their @register decorators.
    from lookalike.models import (  # noqa: F401
        clip,
        efficientnet,
        sscd,
        trained,
    )
