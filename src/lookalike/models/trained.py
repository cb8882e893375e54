"""Embedders trained with ``lookalike train``: a model folder loaded by its path.

A model folder holds ``config.json`` (base model, head, training options), the weights, and the
ONNX graph that inference runs:

- ``head`` mode: ``head.onnx`` maps the base embedder's descriptor to the learned embedding, so
  an image goes through the base embedder (e.g. int8 EfficientNet-Lite0), then the head;
- ``finetune`` mode: ``model.onnx`` maps the preprocessed image straight to the embedding.

The embedder's ``name`` is the folder's absolute path (what a collection records) and its
``version`` a hash of the ONNX weights and the base model's version, so a collection refuses to
open with a retrained model.

Example:
    >>> from lookalike.models import load_embedder
    >>> model = load_embedder("models/parts")  # doctest: +SKIP
    >>> model.embed_images([image]).shape  # doctest: +SKIP
    (1, 256)
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.descriptors import l2n
from lookalike.errors import ModelError
from lookalike.models.base import file_digest, load_embedder, register

MODEL_FORMAT = "lookalike-trained-model"


def read_config(path: str | Path) -> dict:
    """The ``config.json`` of a model folder, checked.

    Raises:
        ModelError: not a model folder, or written by a newer lookalike.
    """
    config_path = Path(path) / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is not a trained model folder (no readable config.json)") from exc
    if config.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path}: config.json is not a {MODEL_FORMAT}")
    if int(config.get("format_version", 0)) > 1:
        raise ModelError(f"{path} was written by a newer lookalike: upgrade lookalike")
    return config


class TrainedEmbedder:
    """A trained model folder used as an :class:`~lookalike.models.Embedder`.

    Example:
        >>> model = TrainedEmbedder("models/parts")  # doctest: +SKIP
        >>> model.dim, model.base.name  # doctest: +SKIP
        (256, 'efficientnet-lite0')
    """

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        self.path = Path(path).expanduser().resolve()
        self.config = read_config(self.path)
        self.mode = self.config["mode"]
        self.name = str(self.path)
        self.dim = int(self.config["dim"])
        self.input_size = int(self.config["input_size"])
        self.onnx_path = self.path / self.config["onnx"]
        if not self.onnx_path.exists():
            raise ModelError(f"{self.path}: {self.config['onnx']} is missing")
        base = self.config["base"]
        self.base = load_embedder(base["name"]) if self.mode == "head" else None
        if self.base is not None and self.base.version != base["version"]:
            raise ModelError(
                f"{self.path} was trained on {base['name']} {base['version']!r}, but this "
                f"lookalike computes {self.base.version!r}: train the model again"
            )
        self.version = f"trained/{self.mode}/{base['version']}/{file_digest(self.onnx_path)}"
        self._threads = threads
        self._session = None
        self._lock = threading.Lock()

    @property
    def session(self):
        """The ONNX Runtime session of the head (or whole model), created on first use."""
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = self._threads or (os.cpu_count() or 1)
                self._session = ort.InferenceSession(
                    str(self.onnx_path), options, providers=["CPUExecutionProvider"]
                )
        return self._session

    def embed_descriptors(self, descriptors: np.ndarray) -> np.ndarray:
        """Apply the head to base descriptors (``head`` mode): (n, base dim) -> (n, dim).

        Example:
            >>> model.embed_descriptors(base.embed_images(images))  # doctest: +SKIP
        """
        if self.mode != "head":
            raise ModelError(f"{self.path} is a fine-tuned network: it takes images, not vectors")
        x = np.ascontiguousarray(descriptors, dtype=np.float32)
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32)
        (out,) = self.session.run(None, {"descriptor": x})
        return l2n(out)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dim) L2-normalised embeddings."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        if self.mode == "head":
            return self.embed_descriptors(self.base.embed_images(images))
        from lookalike.models.efficientnet import preprocess

        (out,) = self.session.run(None, {"image": preprocess(images, self.input_size)})
        return l2n(out)

    def prepare(self, image: Image.Image) -> object:
        """The base model's input for one image, made in a decoding thread (see Collection)."""
        if self.base is not None and hasattr(self.base, "prepare"):
            return self.base.prepare(image)
        return image

    def embed_prepared(self, inputs: Sequence[object]) -> np.ndarray:
        """:meth:`embed_images` for inputs made by :meth:`prepare`."""
        if self.base is not None and hasattr(self.base, "embed_prepared"):
            return self.embed_descriptors(self.base.embed_prepared(inputs))
        return self.embed_images(inputs)  # type: ignore[arg-type]


@register("dir")
def _load_dir(path: str | Path, **options: object) -> TrainedEmbedder:
    return TrainedEmbedder(path, **options)
