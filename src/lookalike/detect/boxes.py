"""Boxes in a photo and their maths: the :class:`Detection` record, overlap, suppression, grids.

Every box is ``(x0, y0, x1, y1)`` in the upright photo's pixels. This module is the leaf that
the detection paths (:mod:`lookalike.detect.photo`, :mod:`lookalike.detect.video`), the catalogue
matcher (:mod:`lookalike.detect.matcher`) and the object detectors
(:mod:`lookalike.detect.objects`) share: :func:`iou`, the one non-maximum suppression
(:func:`nms`), sliding windows (:func:`grid_boxes`), and region queries (:func:`parse_box`,
:func:`crop_region`, for ``lookalike search IMAGE --region x0,y0,x1,y1``).

Example:
    >>> iou((0, 0, 10, 10), (5, 0, 15, 10))
    0.3333333333333333
    >>> nms([(0, 0, 10, 10), (1, 1, 10, 10), (20, 20, 30, 30)], [0.9, 0.8, 0.7])
    [0, 2]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from lookalike.collection.results import SearchResult

Box = tuple[int, int, int, int]
#: Overlap (IoU) above which non-maximum suppression drops the weaker box.
NMS_IOU = 0.3


@dataclass
class Detection:
    """One item found in a photo.

    Attributes:
        box: (x0, y0, x1, y1) in the photo's upright pixels.
        matches: the best catalogue matches of the box, best first (``SearchResult``).
        source: which proposal source gave the box ("keypoints", "grid", "selective", "ssd",
            "yolo").
        verified: the first match was confirmed by keypoints inside the box.
        inliers: keypoint matches consistent with the homography (0 when none was found).
        homography: 3x3, the first match's pixels to photo pixels; None when not verified.
        label: the object detector's class name (sources "ssd" and "yolo"), else None.
    """

    box: Box
    matches: list[SearchResult]
    source: str
    verified: bool = False
    inliers: int = 0
    homography: np.ndarray | None = field(default=None, repr=False)
    label: str | None = None

    @property
    def best(self) -> SearchResult:
        """The first (best) catalogue match."""
        return self.matches[0]

    @property
    def score(self) -> float:
        """The first match's cosine score."""
        return self.matches[0].score if self.matches else float("nan")

    def to_dict(self) -> dict:
        """JSON-ready: box, source, verified, inliers, homography (nested lists) and matches."""
        return {
            "box": list(self.box),
            "source": self.source,
            "verified": self.verified,
            "inliers": self.inliers,
            "homography": None if self.homography is None else self.homography.tolist(),
            "label": self.label,
            "matches": [
                {"id": m.id, "path": m.path, "score": round(m.score, 4)} for m in self.matches
            ],
        }


# -- regions -----------------------------------------------------------------------------------
def parse_box(text: str) -> Box:
    """``"x0,y0,x1,y1"`` as integers; ValueError when it is not four numbers.

    Example:
        >>> parse_box("10, 20,110,220")
        (10, 20, 110, 220)
    """
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise ValueError(f"a region is x0,y0,x1,y1 (four numbers), not {text!r}")
    try:
        x0, y0, x1, y1 = (round(float(p)) for p in parts)
    except ValueError:
        raise ValueError(f"a region is x0,y0,x1,y1 (four numbers), not {text!r}") from None
    return x0, y0, x1, y1


def crop_region(image: Image.Image, box: Box | Sequence[float]) -> Image.Image:
    """The part of ``image`` inside ``box`` = (x0, y0, x1, y1), pixels of the upright image.

    Raises:
        ValueError: the box is empty or not wholly inside the image (the message gives its size).

    Example:
        >>> crop_region(Image.new("RGB", (100, 50)), (10, 5, 60, 45)).size
        (50, 40)
    """
    x0, y0, x1, y1 = (round(float(v)) for v in box)
    width, height = image.size
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"region {x0},{y0},{x1},{y1} is empty (need x0 < x1 and y0 < y1)")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ValueError(
            f"region {x0},{y0},{x1},{y1} is outside the {width}x{height} image "
            f"(x in 0..{width}, y in 0..{height})"
        )
    return image.crop((x0, y0, x1, y1))


# -- box maths ---------------------------------------------------------------------------------
def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes.

    Example:
        >>> iou((0, 0, 10, 10), (5, 0, 15, 10))
        0.3333333333333333
    """
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def nms(
    boxes: Sequence[Sequence[float]] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    threshold: float = NMS_IOU,
    limit: int | None = None,
) -> list[int]:
    """Greedy non-maximum suppression: the indices of the boxes kept, best score first.

    A box is dropped when its IoU with a kept, better-scored one is above ``threshold``; ties
    keep the earlier box. At most ``limit`` boxes are kept (all when None).

    Example:
        >>> nms([(0, 0, 10, 10), (1, 1, 10, 10), (20, 20, 30, 30)], [0.9, 0.8, 0.7])
        [0, 2]
        >>> nms([(0, 0, 10, 10), (20, 20, 30, 30)], [0.5, 0.7], limit=1)
        [1]
    """
    corners = np.asarray(boxes)
    corners = corners.reshape(-1, 4) if corners.size else np.zeros((0, 4))
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    x0, y0, x1, y1 = (corners[:, j] for j in range(4))
    areas = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    most = len(order) if limit is None else limit
    kept: list[int] = []
    while order.size and len(kept) < most:
        i = int(order[0])
        kept.append(i)
        rest = order[1:]
        ix = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
        iy = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)
        inter = ix * iy
        union = areas[i] + areas[rest] - inter
        overlap = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        order = rest[overlap <= threshold]
    return kept


def grid_boxes(
    size: tuple[int, int], scales: Sequence[float] = (0.3, 0.45, 0.6), overlap: float = 0.5
) -> list[Box]:
    """Multi-scale sliding windows: for each scale s, windows of s x the photo's width and
    height, stepped by (1 - overlap) of their size, covering the photo edge to edge.

    Example:
        >>> len(grid_boxes((100, 100), scales=(0.5,)))
        9
    """
    width, height = size
    boxes: list[Box] = []
    for scale in scales:
        bw, bh = max(1, round(width * scale)), max(1, round(height * scale))
        xs = _steps(width, bw, overlap)
        ys = _steps(height, bh, overlap)
        boxes += [(x, y, x + bw, y + bh) for y in ys for x in xs]
    return boxes


def _steps(length: int, window: int, overlap: float) -> list[int]:
    if window >= length:
        return [0]
    count = int(np.ceil((length - window) / max(1.0, window * (1 - overlap)))) + 1
    return sorted({round(v) for v in np.linspace(0, length - window, count)})
