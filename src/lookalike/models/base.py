"""The Embedder protocol and the registry of embedders by name.

An embedder turns decoded images (and, for some, text) into L2-normalised float32 vectors.
Every embedder registers a factory under a short name (``efficientnet-lite0``); a collection
records that name, the embedder's ``version`` and ``dim`` in its manifest and refuses to open
with another.

The built-in embedders are listed in :data:`BUILTIN` (name -> module) and their module is
imported only when one of its names is first loaded: this module never imports a plugin, the
plugins import it (for :func:`register`), so there is no import cycle and loading one model
does not import the others. Speed and quality of each model: docs/benchmarks.md.

Example:
    >>> from lookalike.models import available, load_embedder
    >>> "efficientnet-lite0" in available()
    True
    >>> embedder = load_embedder("efficientnet-lite0")  # doctest: +SKIP
    >>> vectors = embedder.embed_images([pil_image])  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from lookalike.errors import ModelError

__all__ = [
    "BUILTIN",
    "Embedder",
    "EmbedderFactory",
    "ModelError",
    "TextEmbedder",
    "available",
    "file_digest",
    "load_embedder",
    "register",
]

#: Built-in embedder names -> the module that registers them, imported on first use. ``"clip"``
#: also serves ``clip:<directory or hub id>``; ``"dir"`` loads a folder written by
#: ``lookalike train`` (any existing directory given as a model name).
BUILTIN: dict[str, str] = {
    "efficientnet-lite0": "lookalike.models.efficientnet",
    "efficientnet-lite1": "lookalike.models.efficientnet",
    "efficientnet-lite2": "lookalike.models.efficientnet",
    "sscd": "lookalike.models.sscd",
    "sscd-mobile": "lookalike.models.sscd",
    "clip": "lookalike.models.clip",
    "dir": "lookalike.models.trained",
}

#: Embedders that are parts of another (the region windows of the copy space,
#: ``lookalike.models.sscd.Window``): loaded by name like the others, never listed as models.
PARTS: dict[str, str] = {
    f"{m}-window{j}": "lookalike.models.sscd" for m in ("sscd", "sscd-mobile") for j in range(5)
}


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
    """The registered embedder names (built-in and registered at run time), sorted."""
    return sorted((set(BUILTIN) | set(_REGISTRY)) - set(PARTS))


def _factory(name: str) -> EmbedderFactory | None:
    """The factory registered as ``name``, importing its built-in module first if needed."""
    module = BUILTIN.get(name) or PARTS.get(name)
    if name not in _REGISTRY and module is not None:
        try:
            importlib.import_module(module)  # runs the module's register() calls
        except ImportError as exc:
            raise ModelError(f"model {name!r} cannot be imported: {exc}") from exc
        if name not in _REGISTRY:  # pragma: no cover - a wrong BUILTIN entry
            raise ModelError(f"{module} does not register {name!r}")
    return _REGISTRY.get(name)


def load_embedder(name: str, **options: object) -> Embedder:
    """Build the embedder registered as ``name``.

    ``name`` may also be ``family:argument`` (``clip:/models/clip-b32``: the family's factory
    gets ``path=argument``), or a directory holding a trained model (see ``lookalike train``)
    when an embedder family has registered a loader for directories under the name ``"dir"``.
    """
    factory = _factory(name)
    family, colon, argument = name.partition(":")
    if factory is None and colon and family in available():  # "clip:/models/clip-b32"
        factory = _factory(family)
        options = {"path": argument, **options}
    if factory is None and Path(name).is_dir() and "dir" in available():
        factory = _factory("dir")
        options = {"path": name, **options}
    if factory is None:
        raise ModelError(f"unknown model {name!r}; available: {', '.join(available())}")
    return factory(**options)


def file_digest(path: str | os.PathLike) -> str:
    """A short content hash of a weights file (BLAKE2b, 64 bits), for model versions."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
