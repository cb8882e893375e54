"""CLIP: images and text in one space, through Hugging Face ``transformers`` (no torchvision).

No CLIP weights ship in a package registry, so this backend loads them from a local directory
(``save_pretrained`` layout: ``config.json``, ``model.safetensors``, tokenizer files) or, when
the machine is online, from the hub. A collection built with CLIP records the model as
``clip:<directory or hub id>`` and reopens with the same weights.

Images are preprocessed with Pillow/NumPy the way CLIP was trained: the shorter side resized to
the model's input size (bicubic), centre crop, CLIP's mean and std.

Example:
    >>> from lookalike import Collection
    >>> clip = "clip:/models/clip-vit-b-32"
    >>> col = Collection.create("photos.lookalike", model=clip)  # doctest: +SKIP
    >>> col.search_text("a red bus")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.descriptors import l2n
from lookalike.errors import ModelError
from lookalike.models.base import register

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIP:
    """A CLIP model as an image and text embedder.

    Args:
        path: a local ``save_pretrained`` directory or a hub id (default ``$LOOKALIKE_CLIP``,
            else ``openai/clip-vit-base-patch32``, which needs the network the first time).
    """

    def __init__(self, path: str | None = None, *, threads: int | None = None) -> None:
        self.source = path or os.environ.get("LOOKALIKE_CLIP") or DEFAULT_CLIP
        local = Path(self.source).expanduser()
        if local.is_dir():
            self.source = str(local.resolve())
        self.name = f"clip:{self.source}"
        self._threads = threads
        self._lock = threading.Lock()
        try:
            import torch  # noqa: F401
            from transformers import AutoTokenizer, CLIPModel
        except ImportError as exc:
            raise ModelError("CLIP needs transformers and torch: pip install transformers") from exc
        try:
            self.model = CLIPModel.from_pretrained(self.source).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(self.source)
        except OSError as exc:
            raise ModelError(
                f"cannot load CLIP weights from {self.source!r}: give a local directory saved "
                "with save_pretrained (config.json, model.safetensors, tokenizer files), or be "
                f"online for a hub id ({exc})"
            ) from exc
        config = self.model.config
        self.dim = int(config.projection_dim)
        self.input_size = int(config.vision_config.image_size)
        self.mean, self.std = _normalisation(local if local.is_dir() else None)
        self.version = f"clip/{_fingerprint(self.source, config.to_dict())}/v1"

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, 3, s, s) float32: bicubic resize of the shorter side, centre crop, normalised."""
        size = self.input_size
        out = np.empty((len(images), 3, size, size), np.float32)
        for i, image in enumerate(images):
            image = image.convert("RGB")
            scale = size / min(image.size)
            w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
            image = image.resize((w, h), Image.Resampling.BICUBIC)
            left, top = (w - size) // 2, (h - size) // 2
            pixels = np.asarray(image.crop((left, top, left + size, top + size)), np.float32)
            out[i] = ((pixels / 255.0 - self.mean) / self.std).transpose(2, 0, 1)
        return out

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dim) L2-normalised image embeddings."""
        import torch

        if not images:
            return np.zeros((0, self.dim), np.float32)
        with self._lock, torch.inference_mode():
            pixels = torch.from_numpy(self.preprocess(images))
            features = _tensor(self.model.get_image_features(pixel_values=pixels))
        return l2n(features.float().numpy())

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) L2-normalised text embeddings, in the same space as the images."""
        import torch

        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not one string")
        limit = int(self.model.config.text_config.max_position_embeddings)
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt"
        )
        with self._lock, torch.inference_mode():
            features = _tensor(
                self.model.get_text_features(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                )
            )
        return l2n(features.float().numpy())


def _tensor(output):
    """transformers < 5 returns the projected features; 5 wraps them in ``pooler_output``."""
    return getattr(output, "pooler_output", output)


def _normalisation(directory: Path | None) -> tuple[np.ndarray, np.ndarray]:
    mean, std = CLIP_MEAN, CLIP_STD
    config = directory / "preprocessor_config.json" if directory else None
    if config is not None and config.exists():
        data = json.loads(config.read_text())
        mean, std = data.get("image_mean", mean), data.get("image_std", std)
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def _fingerprint(source: str, config: dict) -> str:
    h = hashlib.blake2b(json.dumps(config, sort_keys=True, default=str).encode(), digest_size=6)
    weights = Path(source) / "model.safetensors"
    if weights.exists():  # the weights themselves change the vectors: size and head bytes
        h.update(str(weights.stat().st_size).encode())
        with open(weights, "rb") as f:
            h.update(f.read(1 << 20))
    return f"{Path(source).name or source}-{h.hexdigest()}"


register("clip")(lambda path=None, **kw: CLIP(path, **kw))
