"""The OCR engine: PaddleOCR's PP-OCRv4 text detector and recogniser run by ONNX Runtime.

The two networks (Chinese + English, ~16 MB) come with the PyPI package
``rapidocr-onnxruntime`` (installed ``--no-deps``: it declares ``opencv-python``, which would
clash with the ``opencv-contrib-python-headless`` lookalike uses); its DB post-processing (boxes
from the detector's probability map) and CTC decoding are reused, the rest is here so that:

* the detector sees each image with its **longest side limited** to ``det_side`` (960); small
  images are **upscaled** so their longest side reaches ``min_det_side`` (at most
  ``max_upscale`` times), since text a few pixels high in a small photo is found only after
  some upscaling, but only when a first look at their own size saw any text: the detector's
  cost grows with pixels and most photos have none (on Corel-1k, 4 in 5 cost the small look
  alone);
* images of the same detector size go through it **as one batch**;
* only detected boxes are recognised (an image without text costs the detector alone), boxes
  less than ``min_box_height`` pixels high (in the original image) are skipped, and the crops
  of a whole batch of images are recognised together, sorted by aspect ratio (little padding);
* no angle classifier: boxes are rotated rectangles, so text rotated by tens of degrees is
  straightened by the crop; a vertical box is read both ways up (the surer reading is kept);
  only upside-down horizontal text is lost.

Boxes are given in pixels of the original (upright) image: four corners, clockwise from the
top-left of the text. Settings were tuned by ``benchmarks/words.py`` (docs/benchmarks.md,
section words).

Example:
    >>> reader = Reader()  # doctest: +SKIP
    >>> [line.text for line in reader.read_one("bus.jpg")]  # doctest: +SKIP
    ['LISBOA 2024 Express']
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.errors import ModelError
from lookalike.images import decode

__all__ = ["ENGINE", "Line", "Reader", "ReaderSettings", "available", "install_hint"]

#: The engine's package and the version its models and post-processing are pinned to.
ENGINE = "rapidocr-onnxruntime"
ENGINE_VERSION = "1.4.4"
_DET_MODEL = "ch_PP-OCRv4_det_infer.onnx"
_REC_MODEL = "ch_PP-OCRv4_rec_infer.onnx"


def install_hint() -> str:
    """How to install the OCR engine (one line)."""
    return (
        "reading words needs the OCR engine: pip install 'lookalike[words]' && pip install "
        f"--no-deps {ENGINE}=={ENGINE_VERSION} (or `make install`)"
    )


def available() -> bool:
    """True when the OCR engine is installed."""
    try:
        _package_dir()
    except ModelError:
        return False
    return True


def _package_dir() -> Path:
    try:
        import rapidocr_onnxruntime
    except ImportError as exc:
        raise ModelError(install_hint()) from exc
    return Path(rapidocr_onnxruntime.__file__).resolve().parent


@dataclass(frozen=True)
class Line:
    """One line of text found in an image: what it says, how sure the recogniser is (0..1),
    and where: four corners in original pixels, clockwise from the top-left of the text."""

    text: str
    confidence: float
    box: tuple[tuple[int, int], ...]

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """The upright rectangle around the box: x0, y0, x1, y1."""
        xs = [p[0] for p in self.box]
        ys = [p[1] for p in self.box]
        return min(xs), min(ys), max(xs), max(ys)

    @property
    def height(self) -> float:
        """The text's height in pixels (the box's shorter side for a horizontal line)."""
        (x0, y0), _, _, (x3, y3) = self.box
        return math.hypot(x3 - x0, y3 - y0)

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "confidence": round(float(self.confidence), 4),
            "box": [list(p) for p in self.box],
        }


@dataclass(frozen=True)
class ReaderSettings:
    """What the reader does; the defaults are the tuned ones (benchmarks/words.py)."""

    det_side: int = 960  # the detector's input: longest side at most this
    min_det_side: int = 640  # smaller images are upscaled to this longest side...
    max_upscale: float = 2.0  # ...by at most this factor,
    upscale_when_seen: bool = True  # ...only when a first look at their own size saw text
    det_thresh: float = 0.3  # pixel probability that counts as text
    box_thresh: float = 0.5  # mean probability inside a box to keep it
    unclip_ratio: float = 1.6  # how much a detected kernel is grown into a box
    min_box_height: int = 8  # boxes lower than this (original pixels) are not recognised
    min_confidence: float = 0.5  # recognised lines below this are dropped
    single_confidence: float = 0.9  # ...and lines of one letter or digit below this (noise:
    # a round cup read as "O")
    rec_batch: int = 8  # crops per recogniser run
    extra: dict = field(default_factory=dict)  # recorded, for experiments

    def version(self) -> str:
        """A short name of the engine and settings, stored with every image read."""
        spec = json.dumps(asdict(self), sort_keys=True)
        digest = hashlib.blake2b(spec.encode(), digest_size=4).hexdigest()
        return f"pp-ocrv4/{ENGINE_VERSION}/{digest}"


class Reader:
    """Reads the lines of text in images. Thread-safe (one run at a time per reader).

    ``threads``: ONNX Runtime threads per network (default: the cores, at most 4).
    """

    def __init__(self, settings: ReaderSettings | None = None, *, threads: int | None = None):
        self.settings = settings or ReaderSettings()
        base = _package_dir()
        try:
            import onnxruntime as ort
            from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess
            from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode
        except ImportError as exc:  # a dependency of the engine is missing
            raise ModelError(f"{install_hint()} ({exc})") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Threads that wait spinning burn the cores other work (the embedder, other processes)
        # needs: on 2 busy cores the detector took twice the CPU time with spinning on.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        try:
            self._det = ort.InferenceSession(
                str(base / "models" / _DET_MODEL), options, providers=providers
            )
            self._rec = ort.InferenceSession(
                str(base / "models" / _REC_MODEL), options, providers=providers
            )
        except Exception as exc:  # a damaged or incompatible model file
            raise ModelError(f"cannot load the OCR models from {base}: {exc}") from exc
        s = self.settings
        self._post = DBPostProcess(
            thresh=s.det_thresh,
            box_thresh=s.box_thresh,
            max_candidates=1000,
            unclip_ratio=s.unclip_ratio,
            use_dilation=True,
            score_mode="fast",
        )
        characters = self._rec.get_modelmeta().custom_metadata_map["character"].splitlines()
        self._decode = CTCLabelDecode(character=characters)
        self._det_input = self._det.get_inputs()[0].name
        self._rec_input = self._rec.get_inputs()[0].name
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return self.settings.version()

    # -- the public entry points ----------------------------------------------------------
    def read_one(
        self, image: str | Path | bytes | Image.Image | np.ndarray, size=None
    ) -> list[Line]:
        """The lines of text in one image (a path, bytes, a PIL image or an RGB array)."""
        return self.read([image], [size] if size else None)[0]

    def read(
        self,
        images: Sequence[str | Path | bytes | Image.Image | np.ndarray],
        sizes: Sequence[tuple[int, int] | None] | None = None,
    ) -> list[list[Line]]:
        """The lines of text in each image, top to bottom. ``sizes``: the (width, height) of
        each original image when the given one was decoded at a reduced scale; boxes are
        scaled to it."""
        arrays = [_bgr(image) for image in images]
        with self._lock:
            boxes = self._detect(arrays)
            crops, owners, turned = [], [], []
            for i, (array, found) in enumerate(zip(arrays, boxes, strict=True)):
                scale = _scale_to(array, sizes[i] if sizes else None)
                for box in found:
                    if _box_height(box) * scale < self.settings.min_box_height:
                        continue
                    crop = _crop(array, box)
                    if crop.shape[0] >= 1.5 * crop.shape[1]:  # vertical text: read it both
                        turned.append(len(crops))  # ways up, keep the surer reading
                        crops.append(np.ascontiguousarray(np.rot90(crop, 3)))
                        crop = np.rot90(crop)
                    crops.append(np.ascontiguousarray(crop))
                    owners.append((i, box, scale))
            read = self._recognise(crops)
        texts = []
        for j in range(len(read)):
            if j - 1 in turned:
                continue  # the second reading of a vertical line, taken with the first
            texts.append(max(read[j], read[j + 1], key=lambda r: r[1]) if j in turned else read[j])
        out: list[list[Line]] = [[] for _ in arrays]
        for (i, box, scale), (text, confidence) in zip(owners, texts, strict=True):
            text = text.strip()
            if not text or confidence < self.settings.min_confidence:
                continue
            if sum(c.isalnum() for c in text) < 2 and confidence < self.settings.single_confidence:
                continue
            corners = tuple((round(float(x) * scale), round(float(y) * scale)) for x, y in box)
            out[i].append(Line(text, float(confidence), corners))
        return out

    # -- detection ------------------------------------------------------------------------
    def detector_shape(self, height: int, width: int, *, upscale: bool = True) -> tuple[int, int]:
        """The detector's input size (height, width; multiples of 32) for an image: the
        longest side at most ``det_side``, and a small image upscaled (unless ``upscale`` is
        False) so its longest side reaches ``min_det_side``, at most ``max_upscale`` times."""
        s = self.settings
        longest = max(height, width)
        ratio = 1.0
        if longest > s.det_side:
            ratio = s.det_side / longest
        elif longest < s.min_det_side and upscale:
            ratio = min(s.min_det_side / longest, s.max_upscale)
        return (
            max(32, round(height * ratio / 32) * 32),
            max(32, round(width * ratio / 32) * 32),
        )

    def _detect(self, arrays: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Text boxes in each image. With ``upscale_when_seen``, small images go through the
        detector at their own size first, and again upscaled only when that first look found
        some text (most photos have none: they cost the small pass alone)."""
        two_pass = self.settings.upscale_when_seen
        first = [self.detector_shape(*a.shape[:2], upscale=not two_pass) for a in arrays]
        boxes, seen = self._detect_at(arrays, first, range(len(arrays)))
        if two_pass:
            again = [
                i
                for i, a in enumerate(arrays)
                if seen[i] and self.detector_shape(*a.shape[:2]) != first[i]
            ]
            shapes = [self.detector_shape(*a.shape[:2]) for a in arrays]
            more, _ = self._detect_at(arrays, shapes, again)
            for i in again:
                boxes[i] = more[i]
        return boxes

    def _detect_at(
        self, arrays: list[np.ndarray], shapes: list[tuple[int, int]], chosen
    ) -> tuple[list[list[np.ndarray]], list[bool]]:
        """Boxes of the ``chosen`` images, each at its detector input size ``shapes[i]``
        (images of one size go as one batch), and whether any pixel looked like text."""
        import cv2

        groups: dict[tuple[int, int], list[int]] = {}
        for i in chosen:
            groups.setdefault(shapes[i], []).append(i)
        out: list[list[np.ndarray]] = [[] for _ in arrays]
        seen = [False] * len(arrays)
        for (h, w), members in groups.items():
            batch = np.empty((len(members), 3, h, w), np.float32)
            for j, i in enumerate(members):
                resized = cv2.resize(arrays[i], (w, h), interpolation=cv2.INTER_LINEAR)
                batch[j] = (resized.astype(np.float32).transpose(2, 0, 1) - 127.5) / 127.5
            maps = self._det.run(None, {self._det_input: batch})[0]
            for j, i in enumerate(members):
                seen[i] = bool((maps[j] > self.settings.det_thresh).any())
                found, _ = self._post(maps[j : j + 1], arrays[i].shape[:2])
                out[i] = _tidy(found, arrays[i].shape[:2])
        return out, seen

    # -- recognition ----------------------------------------------------------------------
    def _recognise(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        import cv2

        if not crops:
            return []
        order = np.argsort([c.shape[1] / max(1, c.shape[0]) for c in crops])
        out: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        step = max(1, self.settings.rec_batch)
        for begin in range(0, len(crops), step):
            chosen = order[begin : begin + step]
            ratios = [crops[i].shape[1] / max(1, crops[i].shape[0]) for i in chosen]
            width = int(48 * max(320 / 48, *ratios))
            batch = np.zeros((len(chosen), 3, 48, width), np.float32)
            for j, i in enumerate(chosen):
                crop = crops[i]
                w = min(width, math.ceil(48 * crop.shape[1] / max(1, crop.shape[0])))
                resized = cv2.resize(crop, (max(1, w), 48)).astype(np.float32)
                batch[j, :, :, :w] = (resized.transpose(2, 0, 1) / 255 - 0.5) / 0.5
            preds = self._rec.run(None, {self._rec_input: batch})[0]
            for i, result in zip(chosen, self._decode(preds), strict=True):
                out[int(i)] = (result[0], float(result[1]))
        return out


def _bgr(image: str | Path | bytes | Image.Image | np.ndarray) -> np.ndarray:
    """An image as the networks take it: 8-bit BGR (they were trained on OpenCV's order)."""
    if isinstance(image, np.ndarray):
        rgb = image if image.ndim == 3 else np.stack([image] * 3, axis=-1)
        return np.ascontiguousarray(rgb[:, :, 2::-1])
    picture = decode(image) if not isinstance(image, Image.Image) else image.convert("RGB")
    return np.ascontiguousarray(np.asarray(picture)[:, :, ::-1])


def _scale_to(array: np.ndarray, size: tuple[int, int] | None) -> float:
    if not size:
        return 1.0
    return size[0] / array.shape[1]


def _tidy(boxes: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    """Detected boxes as float32 corners, clockwise from the top-left, inside the image."""
    height, width = shape[:2]
    out = []
    for box in boxes:
        pts = np.asarray(box, np.float32).reshape(4, 2)
        by_x = pts[np.argsort(pts[:, 0])]
        left, right = by_x[:2], by_x[2:]
        tl, bl = left[np.argsort(left[:, 1])]
        tr, br = right[np.argsort(right[:, 1])]
        pts = np.array([tl, tr, br, bl], np.float32)
        pts[:, 0] = np.clip(pts[:, 0], 0, width - 1)
        pts[:, 1] = np.clip(pts[:, 1], 0, height - 1)
        if np.linalg.norm(pts[0] - pts[1]) <= 3 or np.linalg.norm(pts[0] - pts[3]) <= 3:
            continue
        out.append(pts)
    out.sort(key=lambda p: (round(float(p[0][1]) / 10), float(p[0][0])))
    return out


def _box_height(box: np.ndarray) -> float:
    width = max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[3] - box[2]))
    height = max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2]))
    return float(min(width, height))


def _crop(array: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The box cut out and straightened."""
    import cv2

    width = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3])))
    height = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2])))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    matrix = cv2.getPerspectiveTransform(box.astype(np.float32), target)
    crop = cv2.warpPerspective(
        array,
        matrix,
        (max(1, width), max(1, height)),
        borderMode=cv2.BORDER_REPLICATE,
        flags=cv2.INTER_CUBIC,
    )
    return crop
