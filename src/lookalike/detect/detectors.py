"""Object detectors that give ``lookalike detect`` its boxes: a bundled SSD and the user's YOLO.

Two detectors, both offline once installed, each returning :class:`ObjectBox` es (a box in
the photo's upright pixels, a class label and a score):

- :class:`ObjectronSSD` (proposal source ``"ssd"``): SSD-MobileNetV2 trained on Open Images
  (OIDv4), 23 classes (:data:`OBJECTRON_LABELS`: person, footwear, boot, high heels, mug, coffee
  cup, bottle, chair, table, desk, laptop, computer monitor and mouse, box, book, camera,
  bicycle, car, vehicle, cat, dog, cattle...). No general detector's weights ship on PyPI; this
  one ships, Apache-2.0, inside the npm package ``@mediapipe/objectron`` (the first 184 bytes of
  ``objectron_solution_packed_assets.data`` are the label map, the rest the ``.tflite``).
  :func:`fetch_objectron` downloads that package once from registry.npmjs.org (``make install``
  runs it; ``python -m lookalike.detect.detectors fetch`` does the same), checks the SHA-256 of both
  parts and keeps them in the user cache (``$LOOKALIKE_CACHE/objectron``). It runs on LiteRT
  (``ai-edge-litert``, the TensorFlow Lite runtime on PyPI). Decoding follows MediaPipe's
  Objectron graph: the photo stretched to 300x300 in [-1, 1], 1917 anchors
  (:func:`ssd_anchors`, six layers, strides 16-512, scales 0.2-0.95), box coder scales
  10/10/5/5 (:func:`decode_ssd`), sigmoid class scores (class 0 is the background), then
  class-agnostic non-maximum suppression.
- :class:`YoloOnnxDetector` (source ``"yolo"``, ``lookalike detect --detector model.onnx``): a
  detector the user trained, exported to ONNX in the common Ultralytics format. Input
  ``1x3xHxW`` float RGB in [0, 1], the photo letterboxed (resized to fit, keeping its aspect,
  padded with grey 114, as Ultralytics does; :func:`letterbox`). Output, the first one:

  * YOLOv5 (``export.py --include onnx``): ``(1, N, 5 + C)``, each row ``cx, cy, w, h`` in
    input pixels, the objectness and the C class probabilities; score = objectness x class;
  * YOLOv8 / YOLO11 (``yolo export format=onnx``): ``(1, 4 + C, N)``, each column
    ``cx, cy, w, h`` and the C class scores.

  The layout is told apart by orientation (N, the anchors, outnumbers the columns), and N is
  checked against the input size (one anchor per cell of the stride 8, 16, 32 (and 64) grids
  for YOLOv8, three for YOLOv5: 8400 and 25200 at 640x640). Exports with NMS built in
  (``nms=True``, YOLOv10's ``(1, 300, 6)``) are refused: export without it. Class names come
  from ``--labels FILE`` (one per line, in class order) or else from the ``names`` metadata
  Ultralytics writes into the ONNX file.

Example:
    >>> from PIL import Image
    >>> ssd = ObjectronSSD()  # doctest: +SKIP
    >>> ssd.detect(Image.open("chelsea.png"))  # doctest: +SKIP
    [ObjectBox(box=(2, 1, 424, 300), label='Cat', score=0.846)]
    >>> yolo = YoloOnnxDetector("best.onnx", labels="classes.txt")  # doctest: +SKIP
    >>> [(b.label, b.box) for b in yolo.detect(Image.open("shelf.jpg"))]  # doctest: +SKIP
    [('my-product', (412, 80, 690, 371))]
"""

from __future__ import annotations

import ast
import functools
import hashlib
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from lookalike.errors import DetectorError

Box = tuple[int, int, int, int]

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
#: Lowest score a YOLO box needs (Ultralytics' own default confidence).
YOLO_THRESHOLD = 0.25
#: IoU above which non-maximum suppression drops the weaker box (class-agnostic).
DETECTOR_NMS_IOU = 0.45
#: Boxes returned per photo at most, best first.
MAX_BOXES = 20
#: Grey of the letterbox padding (Ultralytics').
PAD_VALUE = 114


@dataclass(frozen=True)
class ObjectBox:
    """One object found by a detector.

    Attributes:
        box: (x0, y0, x1, y1) in the photo's upright pixels, inside the photo.
        label: the class name.
        score: the detector's confidence, 0..1.
    """

    box: Box
    label: str
    score: float


class ObjectDetector(Protocol):
    """What ``lookalike.detect.photo`` needs of a detector: a name and ``detect(image)``."""

    name: str

    def detect(self, image: Image.Image) -> list[ObjectBox]:
        """The objects in ``image`` (RGB), best first."""
        ...


# -- shared box maths ------------------------------------------------------------------------
def nms_indices(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int) -> list[int]:
    """Greedy non-maximum suppression over (N, 4) x0,y0,x1,y1 boxes; kept indices, best first.

    Example:
        >>> b = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], float)
        >>> nms_indices(b, np.array([0.9, 0.8, 0.7]), 0.5, 10)
        [0, 2]
    """
    order = np.argsort(-scores, kind="stable")
    x0, y0, x1, y1 = (boxes[:, j] for j in range(4))
    areas = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    kept: list[int] = []
    while order.size and len(kept) < limit:
        i = int(order[0])
        kept.append(i)
        rest = order[1:]
        ix = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
        iy = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)
        inter = ix * iy
        union = areas[i] + areas[rest] - inter
        overlap = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        order = rest[overlap <= iou]
    return kept


def _to_boxes(
    corners: np.ndarray, scores: np.ndarray, classes: np.ndarray, labels: Sequence[str],
    size: tuple[int, int], threshold: float, nms_iou: float, limit: int,
) -> list[ObjectBox]:  # fmt: skip
    """Photo-pixel corners -> clipped, thresholded, suppressed :class:`ObjectBox` es."""
    width, height = size
    keep = scores >= threshold
    corners, scores, classes = corners[keep], scores[keep], classes[keep]
    corners = np.stack(
        [
            np.clip(corners[:, 0], 0, width),
            np.clip(corners[:, 1], 0, height),
            np.clip(corners[:, 2], 0, width),
            np.clip(corners[:, 3], 0, height),
        ],
        axis=1,
    )
    found = []
    for i in nms_indices(corners, scores, nms_iou, limit):
        x0, y0, x1, y1 = (round(float(v)) for v in corners[i])
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        label = labels[classes[i]] if classes[i] < len(labels) else f"class {classes[i]}"
        found.append(ObjectBox((x0, y0, x1, y1), label, round(float(scores[i]), 4)))
    return found


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
        return _to_boxes(
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


# -- the user's YOLO -------------------------------------------------------------------------
def letterbox(
    image: Image.Image, size: tuple[int, int]
) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Ultralytics' letterbox: ``image`` resized by ``gain`` = min(W / w, H / h) to fit
    ``size`` = (W, H) (OpenCV bilinear, as in training), centred and padded with grey 114.

    Returns:
        The ``1x3xHxW`` float32 RGB tensor in [0, 1], the gain, and the (left, top) padding: a
        model's pixel ``p`` is the photo's ``(p - pad) / gain``.

    Example:
        >>> tensor, gain, pad = letterbox(Image.new("RGB", (640, 320)), (320, 320))
        >>> tensor.shape, gain, pad
        ((1, 3, 320, 320), 0.5, (0, 80))
    """
    import cv2

    width, height = size
    gain = min(width / image.width, height / image.height)
    new_w, new_h = round(image.width * gain), round(image.height * gain)
    pixels = np.asarray(image.convert("RGB"))
    if (new_w, new_h) != image.size:
        pixels = cv2.resize(pixels, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (width - new_w) / 2, (height - new_h) / 2
    left, top = round(dw - 0.1), round(dh - 0.1)
    canvas = np.full((height, width, 3), PAD_VALUE, np.uint8)
    canvas[top : top + new_h, left : left + new_w] = pixels
    tensor = canvas.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    return np.ascontiguousarray(tensor), gain, (left, top)


def decode_yolo(
    output: np.ndarray, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A YOLO ONNX output -> (N, 4) ``cx, cy, w, h`` (model pixels), (N,) scores, (N,) classes.

    ``(1, N, 5 + C)`` is YOLOv5 (score = objectness x class probability), ``(1, 4 + C, N)``
    YOLOv8/11 (score = class score); N > 5 + C tells them apart. ``num_classes`` (from the
    labels) is checked against the output.

    Raises:
        DetectorError: another shape (the message says which are accepted).

    Example:
        >>> out = np.zeros((1, 100, 7), np.float32); out[0, 3] = [50, 40, 20, 10, 0.9, 0.1, 0.8]
        >>> boxes, scores, classes = decode_yolo(out)
        >>> boxes[scores.argmax()].tolist(), round(float(scores.max()), 2), int(classes[3])
        ([50.0, 40.0, 20.0, 10.0], 0.72, 1)
    """
    accepted = (
        "a YOLO detector's ONNX output is (1, N, 5 + classes) (YOLOv5) or (1, 4 + classes, N) "
        "(YOLOv8/11), N anchors > columns; export without NMS"
    )
    array = np.asarray(output, np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or min(array.shape) < 5 or array.shape[0] == array.shape[1]:
        raise DetectorError(f"{accepted}; this model gives {tuple(np.shape(output))}")
    if array.shape[0] > array.shape[1]:  # YOLOv5: rows are anchors
        classes_in = array.shape[1] - 5
        if classes_in < 1:
            raise DetectorError(f"{accepted}; this model gives {tuple(np.shape(output))}")
        probabilities = array[:, 5:] * array[:, 4:5]
        layout = "YOLOv5"
    else:  # YOLOv8: columns are anchors
        array = array.T
        classes_in = array.shape[1] - 4
        probabilities = array[:, 4:]
        layout = "YOLOv8"
    if num_classes is not None and num_classes != classes_in:
        raise DetectorError(
            f"the labels name {num_classes} classes but the model ({layout} layout, output "
            f"{tuple(np.shape(output))}) has {classes_in}"
        )
    classes = probabilities.argmax(axis=1)
    scores = probabilities[np.arange(len(classes)), classes]
    return array[:, :4].copy(), scores, classes


def anchor_counts(size: tuple[int, int]) -> set[int]:
    """The row counts N a raw YOLO output can have for an input of ``size`` = (W, H): one or
    three anchors per cell of the stride 8/16/32 grids (P5 models) or 8/16/32/64 (P6).

    Example:
        >>> sorted(anchor_counts((640, 640)))
        [8400, 8500, 25200, 25500]
    """
    width, height = size
    counts = set()
    for strides in ((8, 16, 32), (8, 16, 32, 64)):
        cells = sum(math.ceil(width / s) * math.ceil(height / s) for s in strides)
        counts |= {cells, 3 * cells}
    return counts


def read_labels(path: str | Path) -> list[str]:
    """Class names, one per line in class order (trailing blank lines ignored).

    Raises:
        DetectorError: the file cannot be read or names nothing.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DetectorError(f"cannot read the labels file {path}: {exc}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DetectorError(f"the labels file {path} is empty (one class name per line)")
    return [line.strip() for line in lines]


def _metadata_names(meta: dict[str, str]) -> list[str] | None:
    """Ultralytics writes ``names`` = "{0: 'person', ...}" into the ONNX metadata."""
    text = meta.get("names")
    if not text:
        return None
    try:
        names = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    if isinstance(names, list | tuple):
        return [str(n) for n in names]
    return None


class YoloOnnxDetector:
    """A YOLO detector exported to ONNX (YOLOv5 or YOLOv8/11 layout; see the module docstring).

    Args:
        path: the ``.onnx`` file.
        labels: class names (a list, or a file with one per line); default: the ``names`` the
            export wrote into the model's metadata, else "class 0", "class 1"...
        threshold: lowest score kept (:data:`YOLO_THRESHOLD`).
        nms_iou: class-agnostic suppression overlap.
        max_boxes: boxes per photo at most.
        input_size: (W, H) when the model's input size is dynamic (default 640x640).

    Raises:
        DetectorError: the file is not a readable ONNX model with one ``1x3xHxW`` input, or the
            labels do not fit its output.
    """

    name = "yolo"

    def __init__(
        self,
        path: str | Path,
        labels: Sequence[str] | str | Path | None = None,
        *,
        threshold: float = YOLO_THRESHOLD,
        nms_iou: float = DETECTOR_NMS_IOU,
        max_boxes: int = MAX_BOXES,
        input_size: tuple[int, int] = (640, 640),
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise DetectorError(f"no detector model at {self.path}")
        try:
            self._session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own unrelated exception types
            raise DetectorError(f"{self.path} is not a readable ONNX model: {exc}") from None
        inputs = self._session.get_inputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        if len(shape) != 4 or shape[1] not in (3, "3"):
            raise DetectorError(
                f"{self.path}: a YOLO detector takes one 1x3xHxW image, this model takes "
                f"{[(i.name, i.shape) for i in inputs]}"
            )
        self._input = inputs[0].name
        h, w = shape[2], shape[3]
        self.input_size: tuple[int, int] = (
            (w, h) if isinstance(w, int) and isinstance(h, int) else (input_size[0], input_size[1])
        )
        if isinstance(labels, str | Path):
            labels = read_labels(labels)
        meta = self._session.get_modelmeta().custom_metadata_map
        self.labels = list(labels) if labels is not None else _metadata_names(meta)
        self.threshold, self.nms_iou, self.max_boxes = threshold, nms_iou, max_boxes

    def detect(self, image: Image.Image) -> list[ObjectBox]:
        """The objects in ``image``, best first (boxes in its pixels)."""
        tensor, gain, (left, top) = letterbox(image, self.input_size)
        output = self._session.run(None, {self._input: tensor})[0]
        centres, scores, classes = decode_yolo(
            output, len(self.labels) if self.labels is not None else None
        )
        expected = anchor_counts(self.input_size)
        if len(scores) not in expected:
            width, height = self.input_size
            raise DetectorError(
                f"{self.path}: output {tuple(np.shape(output))} is not the raw output of a YOLO "
                f"detector with a {width}x{height} input (expected "
                f"{', '.join(map(str, sorted(expected)))} anchors); export it without NMS "
                "(Ultralytics: nms=False; YOLOv10 is not supported)"
            )
        corners = np.concatenate(
            [centres[:, :2] - centres[:, 2:] / 2, centres[:, :2] + centres[:, 2:] / 2], axis=1
        )
        corners = (corners - np.array([left, top, left, top], np.float32)) / gain
        labels = self.labels or [f"class {i}" for i in range(int(classes.max(initial=0)) + 1)]
        return _to_boxes(
            corners, scores, classes, labels, image.size,
            self.threshold, self.nms_iou, self.max_boxes,
        )  # fmt: skip


def load_detector(
    spec: str | Path | ObjectDetector | None = None,
    labels: Sequence[str] | str | Path | None = None,
    threshold: float | None = None,
) -> ObjectDetector:
    """A detector from a spec: None or "ssd" -> :class:`ObjectronSSD`; a ``.onnx`` path ->
    :class:`YoloOnnxDetector`; a detector object is returned as it is.

    Raises:
        DetectorError: the spec names no detector, or it cannot be loaded.
    """
    if spec is not None and not isinstance(spec, str | Path):
        return spec
    if spec is None or str(spec) == "ssd":
        if labels is not None:
            raise DetectorError("--labels is for your own detector (--detector model.onnx)")
        return ObjectronSSD(threshold=SSD_THRESHOLD if threshold is None else threshold)
    if Path(spec).suffix.lower() != ".onnx":
        raise DetectorError(f"a detector is 'ssd' or a YOLO model exported to .onnx, not {spec}")
    return YoloOnnxDetector(
        spec, labels, threshold=YOLO_THRESHOLD if threshold is None else threshold
    )


@functools.lru_cache(maxsize=4)
def _cached(spec: str | None, labels: tuple[str, ...] | str | None, threshold: float | None):
    return load_detector(spec, labels if not isinstance(labels, tuple) else list(labels), threshold)


def detector_for(
    source: str,
    detector: str | Path | ObjectDetector | None = None,
    labels: Sequence[str] | str | Path | None = None,
    threshold: float | None = None,
) -> ObjectDetector:
    """The detector of a proposal source of ``lookalike.detect.photo``: "ssd" -> the Objectron SSD,
    "yolo" -> ``detector`` (a ``.onnx`` path or a detector object). Loaded models are kept
    (a few), so detecting in many photos loads each once.

    Raises:
        ValueError: "yolo" without a detector.
        DetectorError: the detector cannot be loaded.
    """
    if source == "ssd":
        return _cached(None, None, threshold)
    if detector is None:
        raise ValueError(
            "proposal source 'yolo' needs your detector: detect(..., detector='model.onnx') "
            "or `lookalike detect --detector model.onnx`"
        )
    if not isinstance(detector, str | Path):
        return detector
    if labels is None or isinstance(labels, str | Path):
        key: tuple[str, ...] | str | None = None if labels is None else str(labels)
    else:
        key = tuple(labels)
    return _cached(str(detector), key, threshold)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lookalike.detect.detectors fetch [--tarball FILE.tgz] [--to FOLDER]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m lookalike.detect.detectors", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download and install the SSD detector (once)")
    fetch.add_argument("--tarball", help="install from a local @mediapipe/objectron .tgz")
    fetch.add_argument("--to", help="folder (default: the user cache)")
    args = parser.parse_args(argv)
    try:
        path = fetch_objectron(args.to, tarball=args.tarball)
    except DetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"SSD detector ready: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "OBJECTRON_LABELS",
    "DetectorError",
    "ObjectBox",
    "ObjectDetector",
    "ObjectronSSD",
    "YoloOnnxDetector",
    "decode_ssd",
    "decode_yolo",
    "fetch_objectron",
    "letterbox",
    "load_detector",
    "read_labels",
    "ssd_anchors",
]
