"""The bundled object detector: MediaPipe Objectron's SSD (proposal source ``"ssd"``).

:class:`ObjectronSSD` is SSD-MobileNetV2 trained on Open Images (OIDv4), 23 classes
(:data:`OBJECTRON_LABELS`: person, footwear, boot, high heels, mug, coffee cup, bottle, chair,
table, desk, laptop, computer monitor and mouse, box, book, camera, bicycle, car, vehicle, cat,
dog, cattle...). No general detector's weights ship on PyPI; this one ships, Apache-2.0, inside
the npm package ``@mediapipe/objectron`` (the first 184 bytes of
``objectron_solution_packed_assets.data`` are the label map, the rest the ``.tflite``).
:func:`fetch_objectron` downloads that package once from registry.npmjs.org (``make install``
runs it; ``python -m lookalike.detect.detectors fetch`` does the same), checks the SHA-256 of
both parts and keeps them in the user cache (``$LOOKALIKE_CACHE/objectron``). It runs on LiteRT
(``ai-edge-litert``, the TensorFlow Lite runtime on PyPI). Decoding follows MediaPipe's
Objectron graph: the photo stretched to 300x300 in [-1, 1], 1917 anchors (:func:`ssd_anchors`,
six layers, strides 16-512, scales 0.2-0.95), box coder scales 10/10/5/5 (:func:`decode_ssd`),
sigmoid class scores (class 0 is the background), then class-agnostic non-maximum suppression.

Example:
    >>> from PIL import Image
    >>> ssd = ObjectronSSD()  # doctest: +SKIP
    >>> ssd.detect(Image.open("chelsea.png"))  # doctest: +SKIP
    [ObjectBox(box=(2, 1, 424, 300), label='Cat', score=0.846)]
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.detect.objects import DETECTOR_NMS_IOU, MAX_BOXES, ObjectBox, to_boxes
from lookalike.errors import DetectorError

#: The npm package that carries the SSD, pinned to one version (its tarball and checksums).
OBJECTRON_PACKAGE = "@mediapipe/objectron"
OBJECTRON_VERSION = "0.4.1675468480"
OBJECTRON_URL = "https://registry.npmjs.org/@mediapipe/objectron/-/objectron-0.4.1675468480.tgz"
OBJECTRON_MEMBER = "package/objectron_solution_packed_assets.data"
#: Bytes of the label map at the start of the packed assets (from the package's loader).
LABELS_BYTES = 184
SSD_MODEL_FILE = "object_detection_ssd_mobilenetv2_oidv4_fp16.tflite"
SSD_LABELS_FILE = "object_detection_oidv4_labelmap.txt"
SSD_MODEL_SHA256 = "d0a5255bf8c4f5a0bc4240741a76c41d5e939f7655078f945f50ab53a9375da6"
SSD_LABELS_SHA256 = "c148336a65f673013609a923fdcbdeec0f49df935045029c3746a3828a0e80e0"
#: The SSD's classes (index 0, "???", is the background and never reported).
OBJECTRON_LABELS = (
    "???", "Bicycle", "Boot", "Laptop", "Person", "Chair", "Cattle", "Desk", "Cat",
    "Computer mouse", "Computer monitor", "Box", "Mug", "Coffee cup", "Stationary bicycle",
    "Table", "Bottle", "High heels", "Vehicle", "Footwear", "Dog", "Book", "Camera", "Car",
)  # fmt: skip

#: Lowest class score an SSD box needs. The model's sigmoid scores are low: on scikit-image's
#: photos the obvious objects score 0.56 (coffee cup), 0.59 (astronaut), 0.85 (cat), on Corel
#: photos 0.25-0.47 (people, horses as "Cattle", cars); MediaPipe keeps >= 0.6 for its single
#: best box. As a *proposal* source recall matters more (the catalogue search then drops boxes
#: that match nothing): on benchmarks/detect.py's 50 Corel scenes, source "ssd" alone at
#: min_score 0.75 gives precision/recall 0.55/0.36 with 0.1, 0.44/0.20 with 0.2, 0.56/0.08
#: with 0.35; on the real box_in_scene.png only 0.1 boxes the box (IoU 0.82).
SSD_THRESHOLD = 0.1


# -- the SSD ---------------------------------------------------------------------------------
def ssd_anchors(
    input_size: int = 300,
    strides: Sequence[int] = (16, 32, 64, 128, 256, 512),
    min_scale: float = 0.2,
    max_scale: float = 0.95,
    aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5, 3.0, 0.3333),
    reduce_boxes_in_lowest_layer: bool = True,
    interpolated_scale_aspect_ratio: float = 1.0,
) -> np.ndarray:
    """SSD anchors as (N, 4) ``x_center, y_center, w, h`` in [0, 1], in the model's order.

    The defaults are MediaPipe's ``SsdAnchorsCalculator`` options of the Objectron detector
    (``object_detection_oid_v4_cpu.pbtxt``), which give its 1917 anchors: per layer a square
    feature map of ceil(input / stride) cells, each with the aspect ratios at the layer's scale
    plus one square anchor at the geometric mean of this scale and the next; the lowest layer
    has three (a 0.1 square, then ratios 2 and 0.5 at its scale).

    Example:
        >>> ssd_anchors().shape
        (1917, 4)
    """
    layers = len(strides)

    def scale(i: int) -> float:
        if layers == 1:
            return (min_scale + max_scale) / 2
        return min_scale + (max_scale - min_scale) * i / (layers - 1)

    rows: list[np.ndarray] = []
    for layer, stride in enumerate(strides):
        if layer == 0 and reduce_boxes_in_lowest_layer:
            shapes = [(1.0, 0.1), (2.0, scale(0)), (0.5, scale(0))]
        else:
            shapes = [(ratio, scale(layer)) for ratio in aspect_ratios]
            if interpolated_scale_aspect_ratio > 0:
                following = 1.0 if layer == layers - 1 else scale(layer + 1)
                shapes.append(
                    (interpolated_scale_aspect_ratio, math.sqrt(scale(layer) * following))
                )
        sizes = np.array([(s * math.sqrt(r), s / math.sqrt(r)) for r, s in shapes], np.float32)
        cells = math.ceil(input_size / stride)
        centres = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        ys, xs = np.meshgrid(centres, centres, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)  # row by row, x fastest
        layer_rows = np.concatenate(
            [np.repeat(grid, len(sizes), axis=0), np.tile(sizes, (len(grid), 1))], axis=1
        )
        rows.append(layer_rows)
    return np.concatenate(rows).astype(np.float32)


def decode_ssd(
    raw: np.ndarray, anchors: np.ndarray, scales: Sequence[float] = (10.0, 10.0, 5.0, 5.0)
) -> np.ndarray:
    """The SSD box coder undone: raw (N, 4) ``dy, dx, dh, dw`` against anchors (N, 4)
    ``x_center, y_center, w, h`` -> (N, 4) ``x0, y0, x1, y1`` in [0, 1] units (MediaPipe's
    ``TfLiteTensorsToDetectionsCalculator`` with ``apply_exponential_on_box_size``).

    Example:
        >>> decode_ssd(np.zeros((1, 4)), np.array([[0.5, 0.5, 0.2, 0.4]])).round(3).tolist()
        [[0.4, 0.3, 0.6, 0.7]]
    """
    y_scale, x_scale, h_scale, w_scale = scales
    xc = raw[:, 1] / x_scale * anchors[:, 2] + anchors[:, 0]
    yc = raw[:, 0] / y_scale * anchors[:, 3] + anchors[:, 1]
    w = np.exp(raw[:, 3] / w_scale) * anchors[:, 2]
    h = np.exp(raw[:, 2] / h_scale) * anchors[:, 3]
    return np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)


class ObjectronSSD:
    """MediaPipe Objectron's SSD-MobileNetV2 (Open Images, 23 classes) on LiteRT.

    Args:
        model: the ``.tflite``; default: the one :func:`fetch_objectron` put in the cache.
        threshold: lowest class score kept (:data:`SSD_THRESHOLD`).
        nms_iou: class-agnostic suppression overlap (:data:`DETECTOR_NMS_IOU`).
        max_boxes: boxes per photo at most.
        classes: report only these labels (case-insensitive), e.g. ``("Person", "Car")``.
        threads: LiteRT threads (default 1: a 300x300 MobileNet takes ~30 ms on one core).

    Raises:
        DetectorError: the model is not installed (the message says how) or LiteRT is missing.
    """

    name = "ssd"
    input_size = 300

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        threshold: float = SSD_THRESHOLD,
        nms_iou: float = DETECTOR_NMS_IOU,
        max_boxes: int = MAX_BOXES,
        classes: Sequence[str] | None = None,
        threads: int = 1,
    ) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise DetectorError("the SSD needs LiteRT: pip install ai-edge-litert") from exc
        path = Path(model) if model is not None else objectron_model()
        if not path.is_file():
            raise DetectorError(f"no SSD model at {path}")
        self.labels = OBJECTRON_LABELS
        self.threshold, self.nms_iou, self.max_boxes = threshold, nms_iou, max_boxes
        wanted = {c.lower() for c in classes} if classes else None
        unknown = wanted - {label.lower() for label in self.labels[1:]} if wanted else set()
        if unknown:
            raise DetectorError(
                f"unknown SSD classes {sorted(unknown)}; it knows {', '.join(self.labels[1:])}"
            )
        self._mask = np.array(
            [wanted is None or label.lower() in wanted for label in self.labels[1:]]
        )
        self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        outputs = self._interpreter.get_output_details()
        shapes = [tuple(o["shape"]) for o in outputs]
        if tuple(self._input["shape"]) != (1, 300, 300, 3) or shapes != [
            (1, 1917, 4),
            (1, 1917, len(self.labels)),
        ]:
            raise DetectorError(
                f"{path} is not Objectron's SSD (input {tuple(self._input['shape'])}, "
                f"outputs {shapes})"
            )
        self._boxes, self._scores = outputs[0]["index"], outputs[1]["index"]
        self.anchors = ssd_anchors(self.input_size)
        self._lock = threading.Lock()  # one interpreter, its tensors shared: one call at a time

    def raw(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) normalised ``x0, y0, x1, y1`` and (N, 23) class probabilities of every
        anchor, background left out."""
        small = image.convert("RGB").resize(
            (self.input_size, self.input_size), Image.Resampling.BILINEAR
        )
        tensor = np.asarray(small, np.float32)[None] / 127.5 - 1.0
        with self._lock:
            self._interpreter.set_tensor(self._input["index"], tensor)
            self._interpreter.invoke()
            raw = self._interpreter.get_tensor(self._boxes)[0].copy()
            logits = self._interpreter.get_tensor(self._scores)[0][:, 1:].copy()
        probabilities = 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))
        return decode_ssd(raw, self.anchors), probabilities

    def detect(self, image: Image.Image) -> list[ObjectBox]:
        """The objects in ``image``, best first (boxes in its pixels)."""
        corners, probabilities = self.raw(image)
        probabilities = np.where(self._mask[None], probabilities, 0.0)
        classes = probabilities.argmax(axis=1)
        scores = probabilities[np.arange(len(classes)), classes]
        corners = corners * np.array([image.width, image.height] * 2, np.float32)
        return to_boxes(
            corners, scores, classes, self.labels[1:], image.size,
            self.threshold, self.nms_iou, self.max_boxes,
        )  # fmt: skip


# -- fetching the SSD ------------------------------------------------------------------------
def objectron_dir() -> Path:
    """Where the SSD is kept: ``$LOOKALIKE_CACHE/objectron`` or the user cache's."""
    from lookalike.models.efficientnet import cache_dir

    return cache_dir() / "objectron"


def objectron_model() -> Path:
    """The installed SSD ``.tflite``.

    Raises:
        DetectorError: not fetched yet; the message gives the command that fetches it.
    """
    path = objectron_dir() / SSD_MODEL_FILE
    if not path.is_file():
        raise DetectorError(
            f"the SSD detector is not installed ({path} is missing): run "
            "`python -m lookalike.detect.detectors fetch` once (downloads the npm package "
            f"{OBJECTRON_PACKAGE}@{OBJECTRON_VERSION}, 33 MB, from registry.npmjs.org), or "
            "`make install`; offline, copy its .tgz here and run "
            "`python -m lookalike.detect.detectors fetch --tarball FILE.tgz`"
        )
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download(target: Path) -> None:
    """The package tarball from the npm registry (HTTPS), else through ``npm pack``."""
    import urllib.request

    try:
        with urllib.request.urlopen(OBJECTRON_URL, timeout=60) as answer, target.open("wb") as f:
            shutil.copyfileobj(answer, f, 1 << 20)
        return
    except OSError as exc:
        problem = exc
    npm = shutil.which("npm")
    if npm is None:
        raise DetectorError(f"could not download {OBJECTRON_URL}: {problem}") from None
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run(
            [npm, "pack", f"{OBJECTRON_PACKAGE}@{OBJECTRON_VERSION}", "--pack-destination", folder],
            capture_output=True,
            text=True,
            check=False,
        )
        packed = list(Path(folder).glob("*.tgz"))
        if done.returncode != 0 or not packed:
            raise DetectorError(
                f"could not download {OBJECTRON_URL} ({problem}) nor `npm pack` it: "
                f"{done.stderr.strip()[-300:]}"
            )
        shutil.move(packed[0], target)


def fetch_objectron(folder: str | Path | None = None, *, tarball: str | Path | None = None) -> Path:
    """Install the SSD: download ``@mediapipe/objectron`` (or read ``tarball``, its ``.tgz``),
    split its packed assets into the label map and the ``.tflite``, check both SHA-256 and write
    them into ``folder`` (default :func:`objectron_dir`). Does nothing when they are there.
    Returns the model's path.

    Raises:
        DetectorError: no download, or the files are not the expected ones.
    """
    target = Path(folder) if folder is not None else objectron_dir()
    model, labels = target / SSD_MODEL_FILE, target / SSD_LABELS_FILE
    if model.is_file() and labels.is_file() and _sha256(model.read_bytes()) == SSD_MODEL_SHA256:
        return model
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as work:
        archive = Path(tarball) if tarball is not None else Path(work) / "objectron.tgz"
        if tarball is None:
            _download(archive)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                member = tar.extractfile(OBJECTRON_MEMBER)
                packed = member.read() if member is not None else b""
        except (tarfile.TarError, KeyError, OSError) as exc:
            raise DetectorError(
                f"{archive} is not the {OBJECTRON_PACKAGE} package: {exc}"
            ) from None
        label_bytes, model_bytes = packed[:LABELS_BYTES], packed[LABELS_BYTES:]
        if (_sha256(label_bytes), _sha256(model_bytes)) != (SSD_LABELS_SHA256, SSD_MODEL_SHA256):
            raise DetectorError(
                f"{archive}: the SSD's checksums differ from {OBJECTRON_PACKAGE}@"
                f"{OBJECTRON_VERSION}'s (sha256 {_sha256(model_bytes)})"
            )
        for path, data in ((labels, label_bytes), (model, model_bytes)):
            part = Path(work) / path.name
            part.write_bytes(data)
            os.replace(part, path)  # atomic: a killed fetch leaves no half-written model
    return model
