"""Catalogue items in video frames, over time; and keypoint matching against many catalogue
images at once (used by photos too).

**Matching the whole catalogue at once.** :class:`CatalogueMatcher` stacks the RootSIFT
descriptors of many catalogue images (at most :data:`ITEM_FEATURES` each) in one FLANN
kd-tree. A photo's features are the queries: each keeps its nearest catalogue feature when it
passes Lowe's ratio test against the nearest feature *of another catalogue image* (Lowe 2004,
§7.1), and votes for that image. Every image with at least ``min_inliers`` votes gets a
homography (USAC, as in :mod:`lookalike.keypoints.verify`, fitted at the extraction resolutions); a
found copy's matches are removed and the fit runs again, so **one item seen several times is
found each time** (at most :data:`MAX_COPIES`). Inliers are counted once per catalogue
feature, so many photo features piling onto one catalogue feature do not add up. Matching goes
photo → catalogue because the other way (``verify``'s) loses every match of an item shown twice:
its nearest and second-nearest photo features are the two copies, and the ratio test fails.

Used by ``detect(..., proposals="keypoints")`` for collections of at most
:data:`MATCH_ALL_LIMIT` images (no global-descriptor shortlist, so an item whose crop ranks low
is still looked for), and by :func:`detect_video` for every frame.

**Video.** :func:`detect_video` decodes a video with PyAV, looks at one frame in ``every``,
and yields a :class:`FrameDetections` (frame index, time, detections) per sampled frame; its
``summary`` lists each item with the first and last time it was seen and the frames per second
achieved. Frames are matched at :data:`FRAME_SIDE` px with at most :data:`FRAME_FEATURES`
keypoints; an item found at nearly the same place as in the previous sampled frame keeps that
frame's catalogue matches and scores (no new embedding), new ones are embedded once. Collections
larger than :data:`MATCH_ALL_LIMIT` are matched against a shortlist: the
:data:`SHORTLIST` best hits of the whole frame and its 2x2 tiles in the ``image`` space, renewed
every :data:`REFRESH` sampled frames, plus the items seen in the previous one.

Measured in ``benchmarks/detect.py`` (section ``detect`` of docs/benchmarks.md).

Example:
    >>> from lookalike import Collection
    >>> col = Collection.open("shop.lookalike")  # doctest: +SKIP
    >>> run = detect_video(col, "aisle.mp4", every=5)  # doctest: +SKIP
    >>> for frame in run:  # doctest: +SKIP
    ...     print(frame.index, round(frame.time, 2), [d.best.path for d in frame.detections])
    0 0.0 ['/catalogue/mug.jpg']
    >>> items = run.summary.items  # doctest: +SKIP
    >>> run.summary.fps, [(i.path, i.first_seen, i.last_seen) for i in items]  # doctest: +SKIP
    (7.9, [('/catalogue/mug.jpg', 0.0, 4.5)])
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image

from lookalike.detect.photo import MAX_COPIES, MIN_INLIERS, Detection, grid_boxes, iou, nms
from lookalike.images import ImageError, decode
from lookalike.keypoints.verify import (
    INLIER_THRESHOLD,
    RANSAC_THRESHOLD,
    RATIO,
    Features,
    Verification,
    _to_original,
    extract,
    homography_problem,
    region_of,
)
from lookalike.keypoints.verify import MIN_INLIERS as PAIR_MIN_INLIERS

if TYPE_CHECKING:
    from lookalike.collection import Collection, SearchResult

#: Collections up to this many images are matched whole (one joint index of their keypoints,
#: about 0.75 MB per image); larger ones through a shortlist from the global descriptor.
MATCH_ALL_LIMIT = 400
#: Keypoints kept per catalogue image in the joint index (an even subset of the cached ones).
ITEM_FEATURES = 1500
#: FLANN kd-tree: trees and leaves checked per query. On a 100-image catalogue (64k features)
#: 4 trees / 32 checks find the exact nearest neighbour for 97% of the matches that pass the
#: ratio test (16 checks: 95%), at 32 ms (19 ms) per 1000 query features on one core; exact
#: search takes 250 ms.
FLANN_TREES = 4
FLANN_CHECKS = 32
#: Video frames: longest side, keypoint budget and FLANN checks. Measured on 20 shelf scenes
#: shrunk to 848 px wide (items 124-282 px, a hard case): 640 px and 1000 / 1500 / 2000
#: keypoints found 73% / 79% / 82% of the items at 70 / 82 / 92 ms of extraction per frame on
#: one core; 512 px with 1500 found 75%, 848 px with 1000 only 70% at 173 ms (the background
#: takes the budget).
FRAME_SIDE = 640
FRAME_FEATURES = 1500
FRAME_CHECKS = 16
#: Large collections: shortlisted catalogue images per frame, renewed every REFRESH frames.
SHORTLIST = 24
REFRESH = 10


@dataclass(frozen=True)
class ItemMatch:
    """One copy of a catalogue image found in a photo by :meth:`CatalogueMatcher.find`.

    Attributes:
        id: the catalogue image id.
        inliers: distinct catalogue keypoints consistent with the homography.
        matches: the photo's matches to this image (all copies) before fitting.
        homography: 3x3, catalogue image pixels to photo pixels.
        region: (x0, y0, x1, y1), the image's mapped corners in the photo, clipped.
    """

    id: int
    inliers: int
    matches: int
    homography: np.ndarray = field(repr=False)
    region: tuple[int, int, int, int]

    def verification(self) -> Verification:
        """The same as ``lookalike.keypoints.verify.Verification`` (verified)."""
        return Verification(self.inliers, self.matches, self.homography, self.region, True)


class CatalogueMatcher:
    """A joint FLANN index over the keypoints of many catalogue images.

    Example:
        >>> matcher = CatalogueMatcher({1: extract(mug), 2: extract(box)})  # doctest: +SKIP
        >>> found = matcher.find(extract(shelf, max_side=1600))  # doctest: +SKIP
        >>> [(m.id, m.region) for m in found]  # doctest: +SKIP
        [(1, (412, 80, 690, 371))]
    """

    def __init__(self, items: Mapping[int, Features], *, item_features: int = ITEM_FEATURES):
        kept = {i: _subset(f, item_features) for i, f in items.items() if f is not None}
        kept = {i: f for i, f in kept.items() if len(f) >= 4}
        methods = {f.method for f in kept.values()}
        if len(methods) > 1:
            raise ValueError(f"catalogue features of several kinds: {sorted(methods)}")
        self.method = methods.pop() if methods else "rootsift"
        self.features = kept
        self.ids = np.array(sorted(kept), np.int64)
        sizes = [len(kept[i]) for i in self.ids]
        #: For each stacked keypoint: which image (position in ``ids``) and which keypoint.
        self.owner = np.repeat(np.arange(len(self.ids)), sizes)
        self.local = np.concatenate([np.arange(n) for n in sizes]) if sizes else np.zeros(0, int)
        if self.method == "orb":
            raise ValueError("the catalogue matcher takes SIFT or RootSIFT features, not ORB")
        self._index = None
        if sizes:
            stacked = np.concatenate([kept[i].descriptors for i in self.ids]).astype(np.float32)
            self._index = cv2.flann_Index(stacked, {"algorithm": 1, "trees": FLANN_TREES})
            self._stacked = stacked  # FLANN keeps a pointer to it
        self._lock = threading.Lock()  # one FLANN search at a time

    def __len__(self) -> int:
        return len(self.ids)

    def find(
        self,
        photo: Features,
        *,
        min_inliers: int = MIN_INLIERS,
        max_copies: int = MAX_COPIES,
        ratio: float = RATIO,
        checks: int = FLANN_CHECKS,
    ) -> list[ItemMatch]:
        """Every copy of every catalogue image found in the photo (``photo``: its features from
        :func:`lookalike.keypoints.verify.extract`), most inliers first; overlapping finds of
        different images (near-duplicates in the catalogue) keep the one with the most inliers."""
        if self._index is None or len(photo) < 4:
            return []
        if photo.method != self.method:
            raise ValueError(f"photo features are {photo.method}, the catalogue's {self.method}")
        k = min(4, len(self.owner))
        with self._lock:
            nearest, distance = self._index.knnSearch(
                photo.descriptors, k, params={"checks": checks}
            )
        nearest = nearest.astype(np.int64)
        distance = np.sqrt(np.maximum(distance.astype(np.float64), 0))  # FLANN gives squares
        valid = nearest >= 0
        owners = np.where(valid, self.owner[np.clip(nearest, 0, None)], -1)
        # Second neighbour: the nearest one of another image (the k-th one when all k are the
        # first's own, a stricter bound).
        other = (owners != owners[:, :1]) & valid
        second = np.where(other.any(axis=1), other.argmax(axis=1), k - 1)
        d1 = distance[:, 0]
        d2 = distance[np.arange(len(distance)), second]
        keep = valid[:, 0] & (d1 < ratio * d2)
        query = np.flatnonzero(keep)
        owner = owners[keep, 0]
        target = self.local[nearest[keep, 0]]
        found: list[ItemMatch] = []
        for position in np.unique(owner):
            mine = owner == position
            if np.count_nonzero(mine) < min_inliers:
                continue
            image_id = int(self.ids[position])
            found += self._copies(
                image_id, photo, query[mine], target[mine], min_inliers, max_copies
            )
        found.sort(key=lambda m: -m.inliers)
        keep_ids = nms([m.region for m in found], [m.inliers for m in found], 0.5)
        return [found[i] for i in sorted(keep_ids)]

    def _copies(
        self,
        image_id: int,
        photo: Features,
        photo_idx: np.ndarray,
        item_idx: np.ndarray,
        min_inliers: int,
        max_copies: int,
    ) -> list[ItemMatch]:
        item = self.features[image_id]
        total = len(photo_idx)
        src_all = ((item.keypoints[item_idx] + 0.5) * item.scale - 0.5).astype(np.float64)
        dst_all = ((photo.keypoints[photo_idx] + 0.5) * photo.scale - 0.5).astype(np.float64)
        left = np.ones(total, bool)
        copies: list[ItemMatch] = []
        while len(copies) < max_copies and np.count_nonzero(left) >= min_inliers:
            rows = np.flatnonzero(left)
            fitted, inlier = _fit(src_all[rows], dst_all[rows])
            if fitted is None:
                break
            inliers = len(np.unique(item_idx[rows[inlier]]))
            homography = _to_original(fitted, item.scale, photo.scale)
            problem = homography_problem(homography, item.size, photo.size)
            region = None if problem else region_of(homography, item.size, photo.size)
            if problem or region is None or inliers < min_inliers:
                break
            copies.append(ItemMatch(image_id, inliers, total, homography, region))
            # This copy's matches (inliers, and whatever else falls on it) are used up.
            points = photo.keypoints[photo_idx[rows]]
            inside = (
                (points[:, 0] >= region[0])
                & (points[:, 0] <= region[2])
                & (points[:, 1] >= region[1])
                & (points[:, 1] <= region[3])
            )
            left[rows[inlier | inside]] = False
        return copies


def _subset(features: Features | None, limit: int) -> Features | None:
    if features is None or len(features) <= limit:
        return features
    keep = np.linspace(0, len(features) - 1, limit).round().astype(int)
    return replace(
        features, keypoints=features.keypoints[keep], descriptors=features.descriptors[keep]
    )


def _fit(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """USAC_ACCURATE at verify's thresholds; the inlier mask at the counting threshold."""
    fitted, mask = cv2.findHomography(
        src, dst, cv2.USAC_ACCURATE, RANSAC_THRESHOLD, maxIters=10_000, confidence=0.999
    )
    if fitted is None or mask is None or not np.all(np.isfinite(fitted)):
        return None, np.zeros(len(src), bool)
    projected = cv2.perspectiveTransform(src.reshape(-1, 1, 2), fitted).reshape(-1, 2)
    return fitted, np.linalg.norm(projected - dst, axis=1) <= INLIER_THRESHOLD


# -- catalogue keypoints, kept on disk ---------------------------------------------------------
#: Bumped when the stored keypoints would change (extraction settings, file layout).
KEYPOINTS_VERSION = 1


def keypoint_cache_dir() -> Path:
    """Where catalogue keypoints are kept: ``$LOOKALIKE_CACHE/keypoints`` or the user cache's
    (one small ``.npz`` per file version; safe to delete)."""
    from lookalike.models.efficientnet import cache_dir

    return cache_dir() / "keypoints"


def item_keypoints(paths: Sequence[str], limit: int = ITEM_FEATURES) -> Features | None:
    """RootSIFT keypoints of a catalogue image: its first readable file, decoded like
    ``detect``'s candidates (longest side 1024) with at most ``limit`` keypoints (the
    strongest). Read from the disk cache when that file (path, size, mtime) was seen before,
    else extracted and stored (descriptors as float16: half the space, same matches)."""
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            continue
        key = f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{limit}"
        key += f"\0rootsift\0{KEYPOINTS_VERSION}"
        name = hashlib.blake2b(key.encode(), digest_size=16).hexdigest() + ".npz"
        cached = keypoint_cache_dir() / name[:2] / name
        try:
            with np.load(cached) as data:
                return Features(
                    data["keypoints"],
                    data["descriptors"].astype(np.float32),
                    (int(data["size"][0]), int(data["size"][1])),
                    float(data["scale"]),
                    "rootsift",
                )
        except (OSError, ValueError, KeyError):
            pass
        try:
            features = extract(decode(path, min_side=1024), max_features=limit)
        except (ImageError, OSError):
            continue
        _store(cached, features)
        return features
    return None


def _store(target: Path, features: Features) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.stem}.{os.getpid()}.{threading.get_ident()}.npz")
        np.savez(
            tmp,
            keypoints=features.keypoints.astype(np.float32),
            descriptors=features.descriptors.astype(np.float16),
            size=np.array(features.size, np.int64),
            scale=np.float64(features.scale),
        )
        os.replace(tmp, target)  # readers never see half a file
    except OSError:
        pass  # a read-only cache only costs the extraction next time


# -- matchers per collection -------------------------------------------------------------------
_MATCHERS: dict[tuple, CatalogueMatcher] = {}
_MATCHERS_LOCK = threading.Lock()


def catalogue_matcher(
    col: Collection, ids: Sequence[int] | None = None, *, item_features: int = ITEM_FEATURES
) -> CatalogueMatcher:
    """The (cached) matcher over ``ids``, or over the whole collection when None. Catalogue
    keypoints come from :func:`item_keypoints` (kept on disk); the matcher is rebuilt when
    the collection changes.

    Raises:
        ValueError: ``ids`` is None and the collection holds more than MATCH_ALL_LIMIT images.
    """
    generation = col.catalogue.generation()
    key = (str(col.path), generation, None if ids is None else tuple(sorted(ids)), item_features)
    with _MATCHERS_LOCK:
        cached = _MATCHERS.get(key)
    if cached is not None:
        return cached
    if ids is None:
        if len(col) > MATCH_ALL_LIMIT:
            raise ValueError(
                f"{col.path} holds {len(col)} images; matching all at once is limited to "
                f"{MATCH_ALL_LIMIT}: pass a shortlist of ids"
            )
        records = list(col.records())
    else:
        records = [r for r in col.catalogue.images(sorted(set(ids))) if r is not None]
    features = {r.id: item_keypoints(r.paths or (r.path,), item_features) for r in records}
    matcher = CatalogueMatcher(features, item_features=item_features)
    with _MATCHERS_LOCK:
        if ids is None:  # a whole-catalogue matcher replaces older ones of this collection
            for old in [k for k in _MATCHERS if k[0] == key[0] and k[2] is None]:
                del _MATCHERS[old]
        elif len(_MATCHERS) >= 8:  # shortlists change: keep a few
            del _MATCHERS[next(iter(_MATCHERS))]
        _MATCHERS[key] = matcher
    return matcher


def match_catalogue(
    col: Collection,
    features: Features,
    *,
    min_inliers: int = MIN_INLIERS,
    max_copies: int = MAX_COPIES,
) -> list[tuple[SearchResult, Verification]]:
    """Every catalogue image found in a photo (its ``features``), as (hit, verification)
    pairs like ``detect``'s keypoint localisation; the hit's score is 0 until re-scored.

    Raises:
        ValueError: the collection holds more than MATCH_ALL_LIMIT images.
    """
    found = catalogue_matcher(col).find(features, min_inliers=min_inliers, max_copies=max_copies)
    return [(hit, m.verification()) for hit, m in zip(_hits(col, found), found, strict=True)]


def _hits(col: Collection, found: Sequence[ItemMatch]) -> list[SearchResult]:
    from lookalike.collection import SearchResult

    records = {r.id: r for r in col.catalogue.images(sorted({m.id for m in found})) if r}
    return [
        SearchResult(
            id=m.id,
            path=records[m.id].path,
            score=0.0,
            paths=records[m.id].paths,
            width=records[m.id].width,
            height=records[m.id].height,
            metadata=records[m.id].metadata,
            verified=True,
            inliers=m.inliers,
            region=m.region,
        )
        for m in found
    ]


# -- frames ------------------------------------------------------------------------------------
class FrameDetector:
    """Detection tuned for a stream of frames: smaller keypoint budget, the whole catalogue
    (or a renewed shortlist) matched at once, matches reused for items that stay in place.

    Example:
        >>> find = FrameDetector(col)  # doctest: +SKIP
        >>> [d.best.path for d in find(frame)]  # doctest: +SKIP
        ['/catalogue/mug.jpg']
    """

    def __init__(
        self,
        collection: Collection,
        *,
        k: int = 3,
        side: int = FRAME_SIDE,
        max_features: int = FRAME_FEATURES,
        min_inliers: int | None = None,
        max_copies: int = MAX_COPIES,
        scores: bool = True,
    ):
        self.col = collection
        self.k = k
        self.side = side
        self.max_features = max_features
        self.whole = len(collection) <= MATCH_ALL_LIMIT
        # The joint matcher's tuned threshold; verify's over a shortlist (see detect.MIN_INLIERS).
        default = MIN_INLIERS if self.whole else PAIR_MIN_INLIERS
        self.min_inliers = default if min_inliers is None else min_inliers
        self.max_copies = max_copies
        self.scores = scores
        self._previous: list[Detection] = []
        self._shortlist: list[int] = []
        self._frames = 0

    def matcher(self, frame: Image.Image) -> CatalogueMatcher:
        """The whole catalogue's matcher, or the shortlist's for large collections."""
        if self.whole:
            return catalogue_matcher(self.col)
        if not self._shortlist or self._frames % REFRESH == 0:
            tiles = grid_boxes(frame.size, scales=(0.5,), overlap=0.0)
            crops = [frame, *(frame.crop(b) for b in tiles)]
            rows = self.col.search_vectors(self.col.embed(crops), SHORTLIST, expand=0)
            best: dict[int, float] = {}
            for row in rows:
                for hit in row:
                    best[hit.id] = max(best.get(hit.id, -1.0), hit.score)
            self._shortlist = sorted(best, key=lambda i: -best[i])[:SHORTLIST]
        ids = set(self._shortlist) | {d.best.id for d in self._previous}
        return catalogue_matcher(self.col, sorted(ids))

    def __call__(self, frame: Image.Image | np.ndarray) -> list[Detection]:
        """The catalogue items in one frame (an RGB PIL image or HxWx3 uint8 array)."""
        image = frame if isinstance(frame, Image.Image) else Image.fromarray(frame)
        features = extract(frame, max_side=self.side, max_features=self.max_features)
        matcher = self.matcher(image)
        self._frames += 1
        found = matcher.find(
            features,
            min_inliers=self.min_inliers,
            max_copies=self.max_copies,
            checks=FRAME_CHECKS,
        )
        hits = _hits(self.col, found)
        detections: list[Detection | None] = []
        fresh: list[int] = []
        for hit, m in zip(hits, found, strict=True):
            before = max(
                (d for d in self._previous if d.best.id == m.id),
                key=lambda d: iou(d.box, m.region),
                default=None,
            )
            if before is not None and iou(before.box, m.region) >= 0.3:
                # The same item near the same place: keep its matches (scores) from before.
                detections.append(
                    Detection(m.region, before.matches, "keypoints", True, m.inliers, m.homography)
                )
            elif self.scores:
                detections.append(None)
                fresh.append(len(detections) - 1)
            else:
                detections.append(
                    Detection(m.region, [hit], "keypoints", True, m.inliers, m.homography)
                )
        if fresh:
            boxes = [found[i].region for i in fresh]
            vectors = self.col.embed([image.crop(b) for b in boxes])
            rows = self.col.search_vectors(vectors, self.k, expand=0)
            for i, vector, row in zip(fresh, vectors, rows, strict=True):
                m, hit = found[i], hits[i]
                own = _rescored(self.col, hit, vector)
                matches = [own, *(r for r in row if r.id != m.id)][: self.k]
                detections[i] = Detection(
                    m.region, matches, "keypoints", True, m.inliers, m.homography
                )
        result = [d for d in detections if d is not None]
        self._previous = result
        return result


def _rescored(col: Collection, hit: SearchResult, vector: np.ndarray) -> SearchResult:
    stored = col.catalogue.vectors("image", [hit.id])
    score = float(col.project(vector[None])[0] @ col.project(stored)[0])
    return replace(hit, score=score)


# -- video -------------------------------------------------------------------------------------
@dataclass
class FrameDetections:
    """The detections of one sampled frame: its index in the video, time (s), and the seconds
    detection took (decoding not included)."""

    index: int
    time: float
    detections: list[Detection]
    seconds: float

    def to_dict(self) -> dict:
        """JSON-ready (one line per frame in ``lookalike detect --video --json``)."""
        return {
            "frame": self.index,
            "time": round(self.time, 3),
            "detections": [d.to_dict() for d in self.detections],
            "seconds": round(self.seconds, 4),
        }


@dataclass
class VideoItem:
    """One catalogue item seen in a video: when first and last, in how many sampled frames,
    and its most keypoint inliers in one frame; ``copies``: most copies in one frame."""

    id: int
    path: str
    first_seen: float
    last_seen: float
    frames: int = 0
    max_inliers: int = 0
    copies: int = 1

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "path": self.path,
            "first_seen": round(self.first_seen, 3),
            "last_seen": round(self.last_seen, 3),
            "frames": self.frames,
            "max_inliers": self.max_inliers,
            "copies": self.copies,
        }


@dataclass
class VideoSummary:
    """What a :func:`detect_video` run saw. ``fps``: sampled frames per second of wall time
    (decoding every frame and detecting in the sampled ones); ``detect_fps``: per second of
    detection alone; ``cpu_fps``: per second of this process's CPU time (what an idle core
    would reach; on a busy machine wall time is longer)."""

    video: str
    every: int
    frames_decoded: int = 0
    frames_sampled: int = 0
    seconds: float = 0.0
    detect_seconds: float = 0.0
    cpu_seconds: float = 0.0
    size: tuple[int, int] = (0, 0)
    items: list[VideoItem] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames_sampled / self.seconds if self.seconds else 0.0

    @property
    def decoded_fps(self) -> float:
        """Video frames decoded per second of wall time (sampled or not)."""
        return self.frames_decoded / self.seconds if self.seconds else 0.0

    @property
    def detect_fps(self) -> float:
        return self.frames_sampled / self.detect_seconds if self.detect_seconds else 0.0

    @property
    def cpu_fps(self) -> float:
        return self.frames_sampled / self.cpu_seconds if self.cpu_seconds else 0.0

    def to_dict(self) -> dict:
        return {
            "video": self.video,
            "every": self.every,
            "size": list(self.size),
            "frames_decoded": self.frames_decoded,
            "frames_sampled": self.frames_sampled,
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 2),
            "decoded_fps": round(self.decoded_fps, 2),
            "detect_fps": round(self.detect_fps, 2),
            "cpu_fps": round(self.cpu_fps, 2),
            "items": [i.to_dict() for i in self.items],
        }


class VideoDetection:
    """An iterable over a video's sampled frames (:class:`FrameDetections`); ``summary`` is
    complete once the iteration has ended. Made by :func:`detect_video`."""

    def __init__(self, collection: Collection, video: str | Path, every: int, **options):
        if every < 1:
            raise ValueError(f"every must be at least 1 (one frame in N), not {every}")
        self.video = Path(video).expanduser()
        self.every = every
        self.detector = FrameDetector(collection, **options)
        self.summary = VideoSummary(str(self.video), every)
        self._items: dict[int, VideoItem] = {}

    def __iter__(self) -> Iterator[FrameDetections]:
        from lookalike.geo.frames import VideoError, _open

        summary = self.summary
        container = _open(self.video)  # FileNotFoundError / VideoError with a clear message
        start, cpu = time.perf_counter(), time.process_time()
        try:
            with container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                origin = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
                for index, frame in enumerate(container.decode(stream)):
                    summary.frames_decoded += 1
                    if index % self.every:
                        continue
                    pts = frame.pts if frame.pts is not None else 0
                    t = float(pts * stream.time_base) - origin
                    rgb = frame.to_ndarray(format="rgb24")
                    summary.size = (rgb.shape[1], rgb.shape[0])
                    tick = time.perf_counter()
                    found = self.detector(rgb)
                    seconds = time.perf_counter() - tick
                    summary.detect_seconds += seconds
                    summary.frames_sampled += 1
                    self._record(t, found)
                    summary.seconds = time.perf_counter() - start
                    summary.cpu_seconds = time.process_time() - cpu
                    yield FrameDetections(index, t, found, seconds)
        except Exception as exc:  # PyAV raises its own error classes per FFmpeg error
            if type(exc).__module__.startswith("av"):
                raise VideoError(f"cannot decode {self.video}: {exc}") from None
            raise
        summary.seconds = time.perf_counter() - start
        summary.cpu_seconds = time.process_time() - cpu
        summary.items = sorted(self._items.values(), key=lambda i: (i.first_seen, i.id))

    def _record(self, t: float, found: list[Detection]) -> None:
        counts: dict[int, int] = {}
        for d in found:
            counts[d.best.id] = counts.get(d.best.id, 0) + 1
            item = self._items.setdefault(d.best.id, VideoItem(d.best.id, d.best.path, t, t))
            item.last_seen = t
            item.max_inliers = max(item.max_inliers, d.inliers)
        for image_id, count in counts.items():
            self._items[image_id].frames += 1
            self._items[image_id].copies = max(self._items[image_id].copies, count)


def detect_video(
    collection: Collection,
    video: str | Path,
    *,
    every: int = 1,
    k: int = 3,
    side: int = FRAME_SIDE,
    max_features: int = FRAME_FEATURES,
    min_inliers: int | None = None,
    max_copies: int = MAX_COPIES,
    scores: bool = True,
) -> VideoDetection:
    """Catalogue items in one frame of ``video`` in ``every``: iterate the answer for a
    :class:`FrameDetections` per sampled frame; its ``summary`` (a :class:`VideoSummary`)
    then says when each item was first and last seen and the frames per second.

    ``scores=False`` skips embedding the boxes (each detection's only match is the item found,
    score 0): faster when only boxes and identities matter.

    Raises (while iterating):
        FileNotFoundError: no such file; lookalike.geo.frames.VideoError: it cannot be decoded.

    Example:
        >>> run = detect_video(col, "aisle.mp4", every=5)  # doctest: +SKIP
        >>> frames = list(run); run.summary.fps  # doctest: +SKIP
        8.2
    """
    return VideoDetection(
        collection,
        video,
        every,
        k=k,
        side=side,
        max_features=max_features,
        min_inliers=min_inliers,
        max_copies=max_copies,
        scores=scores,
    )
