"""What an object detector gives and how its raw boxes become :class:`ObjectBox` es.

The shared part of the detectors behind ``lookalike detect``'s proposal sources "ssd"
(:mod:`lookalike.detect.ssd`) and "yolo" (:mod:`lookalike.detect.yolo`): the box record, the
:class:`ObjectDetector` protocol ``lookalike.detect.photo`` relies on, and :func:`to_boxes`
(clip, threshold, class-agnostic non-maximum suppression, labels).

Example:
    >>> corners = np.array([[0, 0, 50, 40], [2, 1, 50, 40], [60, 10, 90, 30]], np.float32)
    >>> boxes = to_boxes(corners, np.array([0.9, 0.8, 0.3]), np.array([0, 0, 1]),
    ...                  ["mug", "box"], (80, 60), threshold=0.25, nms_iou=0.45, limit=20)
    >>> [(b.box, b.label) for b in boxes]
    [((0, 0, 50, 40), 'mug'), ((60, 10, 80, 30), 'box')]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from lookalike.detect.boxes import Box, nms

#: IoU above which non-maximum suppression drops the weaker box (class-agnostic).
DETECTOR_NMS_IOU = 0.45
#: Boxes returned per photo at most, best first.
MAX_BOXES = 20


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


def to_boxes(
    corners: np.ndarray, scores: np.ndarray, classes: np.ndarray, labels: Sequence[str],
    size: tuple[int, int], threshold: float, nms_iou: float, limit: int,
) -> list[ObjectBox]:  # fmt: skip
    """Photo-pixel corners (N, 4) with their scores and class indices -> the boxes clipped to
    the photo (``size`` = (W, H)), at least ``threshold``, suppressed above ``nms_iou``
    (class-agnostic), at most ``limit``, best first; ``labels`` name the classes."""
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
    for i in nms(corners, scores, nms_iou, limit):
        x0, y0, x1, y1 = (round(float(v)) for v in corners[i])
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        label = labels[classes[i]] if classes[i] < len(labels) else f"class {classes[i]}"
        found.append(ObjectBox((x0, y0, x1, y1), label, round(float(scores[i]), 4)))
    return found
