"""The user's own object detector: a YOLO exported to ONNX (proposal source ``"yolo"``).

:class:`YoloOnnxDetector` (``lookalike detect --detector model.onnx``) runs a detector the user
trained, exported to ONNX in the common Ultralytics format. Input ``1x3xHxW`` float RGB in
[0, 1], the photo letterboxed (resized to fit, keeping its aspect, padded with grey 114, as
Ultralytics does; :func:`letterbox`). Output, the first one:

* YOLOv5 (``export.py --include onnx``): ``(1, N, 5 + C)``, each row ``cx, cy, w, h`` in
  input pixels, the objectness and the C class probabilities; score = objectness x class;
* YOLOv8 / YOLO11 (``yolo export format=onnx``): ``(1, 4 + C, N)``, each column
  ``cx, cy, w, h`` and the C class scores.

The layout is told apart by orientation (N, the anchors, outnumbers the columns), and N is
checked against the input size (:func:`anchor_counts`: one anchor per cell of the stride 8, 16,
32 (and 64) grids for YOLOv8, three for YOLOv5). Exports with NMS built in (``nms=True``,
YOLOv10's ``(1, 300, 6)``) are refused: export without it. Class names come from ``--labels
FILE`` (one per line, in class order; :func:`read_labels`) or else from the ``names``
metadata Ultralytics writes into the ONNX file.

Example:
    >>> from PIL import Image
    >>> yolo = YoloOnnxDetector("best.onnx", labels="classes.txt")  # doctest: +SKIP
    >>> [(b.label, b.box) for b in yolo.detect(Image.open("shelf.jpg"))]  # doctest: +SKIP
    [('my-product', (412, 80, 690, 371))]
"""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.detect.objects import DETECTOR_NMS_IOU, MAX_BOXES, ObjectBox, to_boxes
from lookalike.errors import DetectorError

#: Lowest score a YOLO box needs (Ultralytics' own default confidence).
YOLO_THRESHOLD = 0.25
#: Grey of the letterbox padding (Ultralytics').
PAD_VALUE = 114


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
        return to_boxes(
            corners, scores, classes, labels, image.size,
            self.threshold, self.nms_iou, self.max_boxes,
        )  # fmt: skip
