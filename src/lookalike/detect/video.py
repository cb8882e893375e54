"""Catalogue items in video frames, over time.

:func:`detect_video` decodes a video with PyAV, looks at one frame in ``every``, and yields a
:class:`FrameDetections` (frame index, time, detections) per sampled frame; its ``summary``
lists each item with the first and last time it was seen and the frames per second achieved.
Each frame goes through :class:`FrameDetector`: the catalogue matcher
(:mod:`lookalike.detect.matcher`) at :data:`FRAME_SIDE` px with at most :data:`FRAME_FEATURES`
keypoints; an item found at nearly the same place as in the previous sampled frame keeps that
frame's catalogue matches and scores (no new embedding), new ones are embedded once.
Collections larger than ``matcher.MATCH_ALL_LIMIT`` are matched against a shortlist: the
:data:`SHORTLIST` best hits of the whole frame and its 2x2 tiles in the ``image`` space,
renewed every :data:`REFRESH` sampled frames, plus the items seen in the previous one.

Measured in ``benchmarks/detect.py`` (section ``detect`` of docs/benchmarks.md).

Example:
    >>> from lookalike import Collection
    >>> col = Collection.open("shop.lookalike")  # doctest: +SKIP
    >>> run = detect_video(col, "aisle.mp4", every=5)  # doctest: +SKIP
    >>> for frame in run:  # doctest: +SKIP
    ...     print(frame.index, round(frame.time, 2), [d.best.path for d in frame.detections])
    0 0.0 ['/catalogue/mug.jpg']
    >>> items = run.summary.items  # doctest: +SKIP
    >>> [(i.path, i.first_seen, i.last_seen) for i in items]  # doctest: +SKIP
    [('/catalogue/mug.jpg', 0.0, 4.5)]
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from lookalike.detect.boxes import Detection, grid_boxes, iou
from lookalike.detect.matcher import (
    MATCH_ALL_LIMIT,
    MAX_COPIES,
    MIN_INLIERS,
    CatalogueMatcher,
    catalogue_hits,
    catalogue_matcher,
    rescored,
)
from lookalike.keypoints.verify import MIN_INLIERS as PAIR_MIN_INLIERS
from lookalike.keypoints.verify import extract
from lookalike.videos import VideoError, open_video

if TYPE_CHECKING:
    from lookalike.collection import Collection

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
        hits = catalogue_hits(self.col, found)
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
                own = rescored(self.col, hit, vector)
                matches = [own, *(r for r in row if r.id != m.id)][: self.k]
                detections[i] = Detection(
                    m.region, matches, "keypoints", True, m.inliers, m.homography
                )
        result = [d for d in detections if d is not None]
        self._previous = result
        return result


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
        summary = self.summary
        container = open_video(self.video)  # FileNotFoundError / VideoError with a clear message
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
        FileNotFoundError: no such file; lookalike.errors.VideoError: it cannot be decoded.

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
