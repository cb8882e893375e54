"""Find catalogue items inside a photo: which ones, and where.

:func:`detect` answers "which catalogue items are in this photo, and where?". Each
:class:`~lookalike.detect.boxes.Detection` carries a box in photo pixels, the best catalogue
matches of that box (cosine scores in the ``image`` space, no query expansion) and the keypoint
confirmation (RootSIFT + USAC, ``keypoints.verify``): inliers and the homography from the
matched catalogue image to the photo.

Where boxes come from (``proposals``):

- ``"keypoints"`` (default): *catalogue-driven localisation*. In a collection of at most
  ``matcher.MATCH_ALL_LIMIT`` images every catalogue image is looked for at once by the
  catalogue matcher (:mod:`lookalike.detect.matcher`). In a larger one the whole photo and
  two grids of crops are searched, and the first :data:`CANDIDATES` catalogue images (by best
  rank in any crop) are looked for by the pairwise matcher (``verify(candidate, photo)``).
  Each find gives its box by its homography. Only confirmed items are reported, so the
  threshold is the matcher's own: at least ``min_inliers`` inliers (by default
  ``matcher.MIN_INLIERS`` for the joint matcher, ``verify.MIN_INLIERS`` through the
  shortlist) and a sane homography; any other box is dropped as an unknown object. Several
  copies of one item are each reported (at most ``max_copies``, ``matcher.MAX_COPIES``).
  Identical items (products, printed matter, the same photo) are found with tight boxes;
  items the matcher cannot confirm (another object of the same kind, a heavy blur) are not.
- ``"grid"``: class-agnostic multi-scale sliding windows; ``"selective"``: OpenCV contrib's
  selective search. Every proposal is embedded and searched; proposals whose best score is
  below ``min_score`` (:data:`MIN_SCORE`) are dropped as unknown objects, the rest go through
  non-maximum suppression, and each kept box is checked by keypoints against its first match
  (``verified`` says whether it held). These find *similar* items, not only identical ones, but
  their boxes are only as good as the proposals.
- ``"ssd"``: the boxes of a real object detector, MediaPipe Objectron's SSD (Open Images, 23
  classes; installed by ``make install``, see :mod:`lookalike.detect.ssd`); ``"yolo"``: the
  user's own detector (``detector="model.onnx"``, a YOLOv5/v8/11 ONNX export, with its
  ``labels``; :mod:`lookalike.detect.yolo`). Their boxes are then treated like grid boxes, and
  each detection keeps the detector's class (``label``). Only objects of the detector's
  classes get a box.

Several sources can be combined (``proposals=("keypoints", "grid")``): confirmed boxes win, and
a proposal box overlapping one of them is dropped. Limitation: the proposal sources ("grid",
"selective", "ssd", "yolo") give one box per catalogue item per photo; only "keypoints"
reports a second copy of the same item. How each source fares (precision, recall, time) is
measured by ``benchmarks/detect.py``: section ``detect`` of docs/benchmarks.md.

Example:
    >>> from lookalike import Collection
    >>> col = Collection.open("shop.lookalike")  # doctest: +SKIP
    >>> [(d.box, d.best.path, d.inliers) for d in detect(col, "shelf.jpg")]  # doctest: +SKIP
    [((412, 80, 690, 371), '/catalogue/mug.jpg', 118)]
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from lookalike.detect.boxes import (
    NMS_IOU,
    Box,
    Detection,
    crop_region,
    grid_boxes,
    iou,
    nms,
    parse_box,
)
from lookalike.detect.detectors import detector_for
from lookalike.detect.matcher import (
    MATCH_ALL_LIMIT,
    MAX_COPIES,
    MIN_INLIERS,
    match_catalogue,
    rescored,
)
from lookalike.detect.objects import ObjectDetector
from lookalike.images import ImageError, decode
from lookalike.keypoints.verify import MIN_INLIERS as PAIR_MIN_INLIERS
from lookalike.keypoints.verify import Features, Verification, extract, verify

if TYPE_CHECKING:
    from lookalike.collection import Collection
    from lookalike.collection.results import SearchResult

SOURCES = ("keypoints", "grid", "selective", "ssd", "yolo")
DEFAULT_PROPOSALS = "keypoints"
#: Catalogue images looked for by the keypoint matcher per photo (source "keypoints").
CANDIDATES = 12
#: Grid scales (share of the photo's sides) of the crops whose hits are the candidates.
CANDIDATE_SCALES = (0.3, 0.5)
#: Best cosine score (image space, no expansion) a proposal box needs to be kept (sources
#: "grid" and "selective"); below it the box is an unknown object and dropped. On 50 synthetic
#: Corel scenes (benchmarks/detect.py) 0.75 gives precision/recall 0.66/0.50 (grid) and
#: 0.60/0.69 (selective); 0.85 gives 0.86/0.20 and 0.76/0.49. Raise it for fewer false boxes.
MIN_SCORE = 0.75
#: Longest side and feature budget of the photo's keypoints. More than ``verify``'s defaults
#: (1024 px, 4000): a textured background otherwise takes most of the budget and a small item
#: keeps too few features (a 0.45x rocket on grass: 12 inliers at the defaults, 37 here).
PHOTO_SIDE = 1600
PHOTO_FEATURES = 10_000
#: Proposal boxes embedded per photo at most (selective search gives thousands).
MAX_PROPOSALS = 150


def selective_search_boxes(image: Image.Image, limit: int = MAX_PROPOSALS) -> list[Box]:
    """Class-agnostic proposals by OpenCV contrib's selective search ("fast" mode, run at 500 px
    for speed), keeping boxes between 2% and 80% of the photo, at most ``limit`` of them.

    Raises:
        RuntimeError: OpenCV was built without the contrib module ``ximgproc``.
    """
    import cv2

    if not hasattr(cv2, "ximgproc"):
        raise RuntimeError("selective search needs opencv-contrib-python (cv2.ximgproc)")
    scale = min(1.0, 500 / max(image.size))
    small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.asarray(small)[..., ::-1].copy())
    search.switchToSelectiveSearchFast()
    cv2.setNumThreads(1)  # its own threads only fight the other jobs on a small machine
    rects = search.process()
    area = small.width * small.height
    boxes: list[Box] = []
    for x, y, w, h in rects:
        if not 0.02 <= w * h / area <= 0.8 or max(w, h) > 6 * min(w, h):
            continue
        box = tuple(round(v / scale) for v in (x, y, x + w, y + h))
        if all(iou(box, b) < 0.8 for b in boxes):  # near-identical proposals waste embeddings
            boxes.append(box)  # type: ignore[arg-type]
        if len(boxes) >= limit:
            break
    return boxes


# -- detection ---------------------------------------------------------------------------------
def detect(
    collection: Collection,
    image: str | Path | bytes | Image.Image,
    *,
    k: int = 3,
    min_score: float = MIN_SCORE,
    proposals: str | Sequence[str] = DEFAULT_PROPOSALS,
    candidates: int = CANDIDATES,
    min_inliers: int | None = None,
    max_copies: int = MAX_COPIES,
    detector: str | Path | ObjectDetector | None = None,
    labels: Sequence[str] | str | Path | None = None,
    detector_threshold: float | None = None,
) -> list[Detection]:
    """The catalogue items found in ``image``, keypoint-confirmed ones first, then by score.

    ``proposals`` names where boxes come from (see the module docstring): "keypoints"
    (default), "grid", "selective", or several of them. ``min_score`` drops proposal boxes whose
    best match scores lower (not used by "keypoints", whose threshold is the matcher's).
    "ssd" boxes come from the Objectron SSD, "yolo" boxes from ``detector`` (a YOLO ``.onnx``
    and its ``labels``; see ``lookalike.detect.detectors``); ``detector_threshold`` is their lowest
    detector score.

    Example:
        >>> found = detect(col, "shelf.jpg", k=3)  # doctest: +SKIP
        >>> found[0].box, found[0].best.path, found[0].verified  # doctest: +SKIP
        ((412, 80, 690, 371), '/catalogue/mug.jpg', True)
    """
    sources = [proposals] if isinstance(proposals, str) else list(proposals)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise ValueError(f"unknown proposal source {unknown}; choose from {', '.join(SOURCES)}")
    photo = decode(image)
    found: list[Detection] = []
    if "keypoints" in sources:
        # Once per photo, reused for every candidate.
        features = extract(photo, max_side=PHOTO_SIDE, max_features=PHOTO_FEATURES)
        found += _localise(collection, photo, features, k, candidates, min_inliers, max_copies)
    for source in (s for s in sources if s != "keypoints"):
        names: dict[Box, str] = {}
        if source in ("ssd", "yolo"):
            found_objects = detector_for(source, detector, labels, detector_threshold).detect(photo)
            names = {o.box: o.label for o in found_objects}
            boxes = list(names)
        else:
            boxes = grid_boxes(photo.size) if source == "grid" else selective_search_boxes(photo)
        for detection in _from_proposals(collection, photo, boxes, source, k, min_score):
            detection.label = names.get(detection.box)
            # A confirmed box already covers this item; proposals only add what it missed.
            if all(iou(detection.box, d.box) <= NMS_IOU for d in found):
                found.append(detection)
    found.sort(key=lambda d: (not d.verified, -d.score))
    return found


def _localise(
    col: Collection,
    photo: Image.Image,
    features: Features,
    k: int,
    candidates: int,
    min_inliers: int | None = None,
    max_copies: int = MAX_COPIES,
) -> list[Detection]:
    """Source "keypoints": look for the catalogue images inside the photo: all of them at once
    in a small collection (``matcher.CatalogueMatcher``), else the most likely ones."""
    if len(col) <= MATCH_ALL_LIMIT:
        least = MIN_INLIERS if min_inliers is None else min_inliers
        confirmed = match_catalogue(col, features, min_inliers=least, max_copies=max_copies)
    else:
        least = PAIR_MIN_INLIERS if min_inliers is None else min_inliers
        confirmed = _shortlisted(col, photo, features, candidates, least, max_copies)
    return _described(col, photo, confirmed, k)


def _shortlisted(
    col: Collection,
    photo: Image.Image,
    features: Features,
    candidates: int,
    min_inliers: int,
    max_copies: int,
) -> list[tuple[SearchResult, Verification]]:
    """The shortlist's catalogue images confirmed in the photo by ``verify``; each found copy's
    photo keypoints are masked and the image looked for again (at most ``max_copies``)."""
    # The whole photo finds large items, two grids of crops the smaller ones. Candidates are
    # ordered by their best rank in any crop, then score: an item is usually first in a crop
    # holding it, while its global score may trail a background's (12 Corel scenes, 31 items:
    # 4 ranked past the 12th by score with one grid, 2 by rank with two).
    boxes = grid_boxes(photo.size, scales=CANDIDATE_SCALES)
    crops = [photo, *(photo.crop(b) for b in boxes)]
    hits = col.search_vectors(col.embed(crops), candidates, expand=0)
    order: dict[int, tuple[int, float]] = {}
    first: dict[int, SearchResult] = {}
    for row in hits:
        for rank, hit in enumerate(row):
            key = (rank, -hit.score)
            if hit.id not in order or key < order[hit.id]:
                order[hit.id], first[hit.id] = key, hit
    ranked = [first[i] for i in sorted(order, key=order.__getitem__)[:candidates]]
    confirmed: list[tuple[SearchResult, Verification]] = []
    for hit in ranked:
        candidate = _features_of(hit.paths or (hit.path,))
        if candidate is None:
            continue
        left = features
        for _ in range(max_copies):
            outcome = verify(candidate, left, min_inliers=min_inliers)
            if not outcome.verified:
                break
            confirmed.append((hit, outcome))
            x0, y0, x1, y1 = outcome.region
            xs, ys = left.keypoints[:, 0], left.keypoints[:, 1]
            outside = (xs < x0) | (xs > x1) | (ys < y0) | (ys > y1)
            points = left.keypoints
            left = replace(left, keypoints=points[outside], descriptors=left.descriptors[outside])
    # Two catalogue images confirmed at one place (near-duplicates): keep the most inliers.
    keep = nms([o.region for _, o in confirmed], [o.inliers for _, o in confirmed], 0.5)
    return [confirmed[i] for i in keep]


def _described(
    col: Collection,
    photo: Image.Image,
    confirmed: list[tuple[SearchResult, Verification]],
    k: int,
) -> list[Detection]:
    """Detections of keypoint-confirmed items: each box embedded and searched for its
    catalogue matches, the confirmed image first (re-scored against the box)."""
    if not confirmed:
        return []
    boxes = [o.region for _, o in confirmed]
    vectors = col.embed([photo.crop(b) for b in boxes])
    rows = col.search_vectors(vectors, k, expand=0)
    detections = []
    for (hit, outcome), vector, row in zip(confirmed, vectors, rows, strict=True):
        own = rescored(col, hit, vector)
        matches = [own, *(r for r in row if r.id != hit.id)][:k]
        detections.append(
            Detection(
                outcome.region, matches, "keypoints", True, outcome.inliers, outcome.homography
            )
        )
    return detections


def _from_proposals(
    col: Collection,
    photo: Image.Image,
    boxes: list[Box],
    source: str,
    k: int,
    min_score: float,
) -> list[Detection]:
    """Sources "grid" and "selective": embed every box, keep the ones that match the catalogue."""
    if not boxes:
        return []
    rows: list[list[SearchResult]] = []
    for start in range(0, len(boxes), 32):
        crops = [photo.crop(b) for b in boxes[start : start + 32]]
        rows += col.search_vectors(col.embed(crops), k, expand=0)
    scored = [(b, r) for b, r in zip(boxes, rows, strict=True) if r and r[0].score >= min_score]
    kept = _suppress([b for b, _ in scored], [r for _, r in scored])
    detections = []
    for i in kept:
        box, row = scored[i]
        detection = Detection(box, row, source)
        candidate = _features_of(row[0].paths or (row[0].path,))
        if candidate is not None:
            outcome = verify(candidate, photo.crop(box))
            detection.verified, detection.inliers = outcome.verified, outcome.inliers
            if outcome.verified:
                x0, y0 = box[0], box[1]
                shift = np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], np.float64)
                detection.homography = shift @ outcome.homography
        detections.append(detection)
    return detections


def _suppress(boxes: list[Box], rows: list[list[SearchResult]]) -> list[int]:
    """NMS by score, and one box per catalogue item (the best scored): windows holding the item
    and half of it would otherwise both survive IoU alone."""
    kept: list[int] = []
    for i in np.argsort([-r[0].score for r in rows], kind="stable"):
        clash = any(
            iou(boxes[i], boxes[j]) > NMS_IOU or rows[i][0].id == rows[j][0].id for j in kept
        )
        if not clash:
            kept.append(int(i))
    return kept


@functools.lru_cache(maxsize=256)
def _cached_features(path: str, mtime_ns: int, size: int) -> Features | None:
    del mtime_ns, size  # part of the cache key only: a changed file is read again
    try:
        return extract(decode(path, min_side=1024))
    except (ImageError, OSError):
        return None


def _features_of(paths: Sequence[str]) -> Features | None:
    """RootSIFT features of the first readable file of a catalogue image (cached per file)."""
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            continue
        features = _cached_features(path, stat.st_mtime_ns, stat.st_size)
        if features is not None:
            return features
    return None


def detect_many(
    collection: Collection, images: Sequence[str | Path], **options: object
) -> list[tuple[str, list[Detection] | None, str | None, float]]:
    """:func:`detect` for several photos: (photo, detections or None, error or None, seconds);
    one unreadable photo does not stop the others."""
    answers = []
    for image in images:
        start = time.perf_counter()
        try:
            found = detect(collection, image, **options)  # type: ignore[arg-type]
        except (ImageError, OSError) as exc:
            answers.append((str(image), None, getattr(exc, "reason", None) or str(exc), 0.0))
            continue
        answers.append((str(image), found, None, time.perf_counter() - start))
    return answers


def draw_detections(
    image: str | Path | Image.Image, detections: Sequence[Detection], out: str | Path
) -> Path:
    """The photo with each detection's box and label (matched file name and score): green when
    confirmed by keypoints, orange otherwise. Returns the written path.

    Example:
        >>> draw_detections("shelf.jpg", detect(col, "shelf.jpg"), "boxes.png")  # doctest: +SKIP
        PosixPath('boxes.png')
    """
    from PIL import ImageDraw

    from lookalike.grid import GOOD, font

    photo = decode(image).copy()
    draw = ImageDraw.Draw(photo)
    width = max(2, round(max(photo.size) / 300))
    text_size = max(12, round(max(photo.size) / 50))
    caption = font(text_size)
    for d in detections:
        colour = GOOD if d.verified else (230, 140, 20)
        draw.rectangle(d.box, outline=colour, width=width)
        label = f"{Path(d.best.path).name} {d.score:.2f}" + (f" ({d.inliers})" if d.inliers else "")
        label = f"{d.label}: {label}" if d.label else label  # the detector's class, if any
        x, y = d.box[0], max(0, d.box[1] - text_size - 6)
        draw.rectangle(draw.textbbox((x, y), label, font=caption, anchor="lt"), fill=colour)
        draw.text((x, y), label, fill="white", font=caption, anchor="lt")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    photo.save(out)
    return out


__all__ = [
    "CANDIDATES",
    "DEFAULT_PROPOSALS",
    "MIN_SCORE",
    "SOURCES",
    "Detection",
    "crop_region",
    "detect",
    "detect_many",
    "draw_detections",
    "parse_box",
    "selective_search_boxes",
]
