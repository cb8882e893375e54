"""Find catalogue items inside a photo: region queries, detection and keypoint confirmation.

:func:`crop_region` cuts a box (pixels of the upright image) out of a query, for
``lookalike search IMAGE --region x0,y0,x1,y1``. :func:`detect` answers "which catalogue items
are in this photo, and where?". Each :class:`Detection` carries a box in photo pixels, the best
catalogue matches of that box (cosine scores in the ``image`` space, no query expansion) and the
keypoint confirmation (RootSIFT + USAC, ``keypoints.verify``): inliers and the homography from
the matched catalogue image to the photo.

Where boxes come from (``proposals``; measured by ``benchmarks/detect.py``, section ``detect``
of docs/benchmarks.md):

- ``"keypoints"`` (default): *catalogue-driven localisation*. In a collection of at most
  ``detect_video.MATCH_ALL_LIMIT`` images every catalogue image is looked for at once: the
  photo's keypoints are matched against one joint index of all the catalogue's
  (``detect_video.CatalogueMatcher``) and each image with enough matches gets a homography.
  In a larger one the whole photo and two grids of crops are searched, and the first
  :data:`CANDIDATES` catalogue images (by best rank in any crop) are looked for by the
  keypoint matcher (``verify(candidate, photo)``). Each find gives its box by its homography.
  Only confirmed items are reported, so the threshold is the matcher's own: at least
  ``min_inliers`` inliers (by default :data:`MIN_INLIERS` for the joint matcher, tuned on the
  benchmark's shelf scenes, and ``verify.MIN_INLIERS`` through the shortlist) and a sane
  homography; any other box is dropped as an unknown object. Several copies of one
  item are each reported (at most ``max_copies``, :data:`MAX_COPIES`): a found copy's
  keypoints are set aside and the item looked for again. Identical items (products, printed
  matter, the same photo) are found with tight boxes; items the matcher cannot confirm
  (another object of the same kind, a heavy blur) are not.
- ``"grid"``: class-agnostic multi-scale sliding windows; ``"selective"``: OpenCV contrib's
  selective search. Every proposal is embedded and searched; proposals whose best score is
  below ``min_score`` (:data:`MIN_SCORE`) are dropped as unknown objects, the rest go through
  non-maximum suppression, and each kept box is checked by keypoints against its first match
  (``verified`` says whether it held). These find *similar* items, not only identical ones, but
  their boxes are only as good as the proposals.
- ``"ssd"``: the boxes of a real object detector, MediaPipe Objectron's SSD (Open Images, 23
  classes: people, footwear, mugs, bottles, chairs, laptops, boxes, cars...; installed by
  ``make install``, see ``lookalike.detect.detectors``); ``"yolo"``: the user's own detector
  (``detector="model.onnx"``, a YOLOv5/v8/11 ONNX export, with its ``labels``). Their boxes
  are then treated like grid boxes, and each detection keeps the detector's class (``label``).
  Only objects of the detector's classes get a box.

Measured on 50 synthetic scenes (121 Corel-1k items pasted into held-out Corel photos, 900
catalogue images): "keypoints" precision 0.95, recall 0.87; "grid" 0.66/0.50 and "selective"
0.60/0.69 at :data:`MIN_SCORE`, with looser boxes and several times more work per photo. On the
real ``box.png`` in ``box_in_scene.png`` "keypoints" and "grid" find the box, "selective" does
not (IoU < 0.5). Hence the default. "ssd" gives 0.55/0.36 there (its boxes are objects, not the
pasted photos), and "keypoints" + "ssd" 0.87/0.90 at MIN_SCORE (0.91/0.89 at 0.8): 4 more items
found for 10 more false boxes (3 for 5 at 0.8), so it is not the default. On
``box_in_scene.png`` "ssd" boxes the box (IoU 0.82, keypoint-confirmed), scored 0.71: under
MIN_SCORE.

On the issue's shelf set (``benchmarks/detect.py`` since issue #10: 100 catalogue object
images, 200 Corel scenes with 613 items pasted scaled, rotated, relit, half of them partly
occluded, 72 of them twice in one scene, plus 50 scenes of non-catalogue objects) "keypoints"
matching the whole catalogue at once has precision 1.000, recall 0.997 (every repeated item
found), no false item in empty scenes, at 0.65 CPU-seconds per 1024x683 scene; the proposal
sources find under 7% of these items at IoU >= 0.5 (their windows do not fit the pasted items).
Through the 12-image shortlist instead, 0.79 of the items of 20 tuning scenes were found: the
global descriptor of a crop often ranks a small pasted item below the background's look-alikes.

Several sources can be combined (``proposals=("keypoints", "grid")``): confirmed boxes win, and
a proposal box overlapping one of them is dropped. Limitation: the proposal sources ("grid",
"selective", "ssd", "yolo") give one box per catalogue item per photo; only "keypoints"
reports a second copy of the same item.

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from lookalike.detect.detectors import ObjectDetector, detector_for
from lookalike.images import ImageError, decode
from lookalike.keypoints.verify import Features, Verification, extract, verify

if TYPE_CHECKING:
    from lookalike.collection import Collection, SearchResult

Box = tuple[int, int, int, int]
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
#: Overlap (IoU) above which non-maximum suppression drops the weaker box.
NMS_IOU = 0.3
#: Longest side and feature budget of the photo's keypoints. More than ``verify``'s defaults
#: (1024 px, 4000): a textured background otherwise takes most of the budget and a small item
#: keeps too few features (a 0.45x rocket on grass: 12 inliers at the defaults, 37 here).
PHOTO_SIDE = 1600
PHOTO_FEATURES = 10_000
#: Proposal boxes embedded per photo at most (selective search gives thousands).
MAX_PROPOSALS = 150
#: Keypoint inliers a find by the joint catalogue matcher needs (source "keypoints" in
#: collections of at most detect_video.MATCH_ALL_LIMIT images, and video): chosen on the
#: tuning half of benchmarks/detect.py's shelf scenes (the best recall at precision >= 0.95
#: and <= 0.05 false items per empty scene: recall 0.996 at 8, 0.992 at 10-15, 0.949 at 30,
#: no false item at any of them). Larger collections go through ``verify``, whose own
#: threshold (verify.MIN_INLIERS, 15) is kept: its counts reach 9 between unrelated images.
MIN_INLIERS = 8
#: Copies of one catalogue item looked for in one photo.
MAX_COPIES = 5


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


# -- boxes -------------------------------------------------------------------------------------
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


def nms(boxes: Sequence[Box], scores: Sequence[float], threshold: float = NMS_IOU) -> list[int]:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first.

    Example:
        >>> nms([(0, 0, 10, 10), (1, 1, 10, 10), (20, 20, 30, 30)], [0.9, 0.8, 0.7])
        [0, 2]
    """
    kept: list[int] = []
    for i in np.argsort(-np.asarray(scores, np.float64), kind="stable"):
        if all(iou(boxes[i], boxes[j]) <= threshold for j in kept):
            kept.append(int(i))
    return kept


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
    in a small collection (``detect_video.CatalogueMatcher``), else the most likely ones."""
    from lookalike.detect.video import MATCH_ALL_LIMIT, match_catalogue
    from lookalike.keypoints.verify import MIN_INLIERS as PAIR_MIN_INLIERS

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
        own = _scored(col, hit, vector)
        matches = [own, *(r for r in row if r.id != hit.id)][:k]
        detections.append(
            Detection(
                outcome.region, matches, "keypoints", True, outcome.inliers, outcome.homography
            )
        )
    return detections


def _scored(col: Collection, hit: SearchResult, vector: np.ndarray) -> SearchResult:
    """``hit`` with its cosine score against ``vector`` (the box's descriptor)."""
    from dataclasses import replace

    stored = col.catalogue.vectors("image", [hit.id])
    score = float(col.project(vector[None])[0] @ col.project(stored)[0])
    return replace(hit, score=score, verified=True)


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

    from lookalike.grid import GOOD, _font

    photo = decode(image).copy()
    draw = ImageDraw.Draw(photo)
    width = max(2, round(max(photo.size) / 300))
    text_size = max(12, round(max(photo.size) / 50))
    font = _font(text_size)
    for d in detections:
        colour = GOOD if d.verified else (230, 140, 20)
        draw.rectangle(d.box, outline=colour, width=width)
        label = f"{Path(d.best.path).name} {d.score:.2f}" + (f" ({d.inliers})" if d.inliers else "")
        label = f"{d.label}: {label}" if d.label else label  # the detector's class, if any
        x, y = d.box[0], max(0, d.box[1] - text_size - 6)
        draw.rectangle(draw.textbbox((x, y), label, font=font, anchor="lt"), fill=colour)
        draw.text((x, y), label, fill="white", font=font, anchor="lt")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    photo.save(out)
    return out
