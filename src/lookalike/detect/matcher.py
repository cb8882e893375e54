"""The catalogue matcher both detection paths use: many catalogue images looked for at once.

:class:`CatalogueMatcher` stacks the RootSIFT descriptors of many catalogue images (at most
:data:`ITEM_FEATURES` each) in one FLANN kd-tree. A photo's features are the queries: each
keeps its nearest catalogue feature when it passes Lowe's ratio test against the nearest
feature *of another catalogue image* (Lowe 2004, §7.1), and votes for that image. Every image
with at least ``min_inliers`` votes gets a homography (USAC, as in
:mod:`lookalike.keypoints.verify`, fitted at the extraction resolutions); a found copy's
matches are removed and the fit runs again, so **one item seen several times is found each
time** (at most :data:`MAX_COPIES`). Inliers are counted once per catalogue feature, so many
photo features piling onto one catalogue feature do not add up. Matching goes photo →
catalogue because the other way (``verify``'s) loses every match of an item shown twice: its
nearest and second-nearest photo features are the two copies, and the ratio test fails.

Catalogue keypoints are kept on disk (:func:`item_keypoints`, under
:func:`keypoint_cache_dir`). :func:`catalogue_matcher` builds (and caches) the matcher of a
collection: whole for collections of at most :data:`MATCH_ALL_LIMIT` images, else over a
shortlist of ids; :func:`match_catalogue` turns its finds into ``SearchResult`` s. Used by
``lookalike.detect.photo.detect(..., proposals="keypoints")`` and by
``lookalike.detect.video.detect_video`` for every frame. :data:`MIN_INLIERS` was tuned with
``benchmarks/detect.py`` (section ``detect`` of docs/benchmarks.md).

Example:
    >>> from lookalike.keypoints.verify import extract
    >>> matcher = catalogue_matcher(col)  # doctest: +SKIP
    >>> found = matcher.find(extract(shelf, max_side=1600, max_features=10_000))  # doctest: +SKIP
    >>> [(m.id, m.region, m.inliers) for m in found]  # doctest: +SKIP
    [(1, (412, 80, 690, 371), 118)]
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from lookalike.detect.boxes import nms
from lookalike.images import ImageError, decode
from lookalike.keypoints.verify import (
    RATIO,
    Features,
    Verification,
    extract,
    fit_homography,
    homography_problem,
    region_of,
    to_original_pixels,
)

if TYPE_CHECKING:
    from lookalike.collection import Collection
    from lookalike.collection.results import SearchResult

#: Keypoint inliers a find by the joint catalogue matcher needs (source "keypoints" in
#: collections of at most MATCH_ALL_LIMIT images, and video): chosen on the tuning half of
#: benchmarks/detect.py's shelf scenes (the best recall at precision >= 0.95 and <= 0.05 false
#: items per empty scene; docs/benchmarks.md, section detect). Larger collections go through
#: ``verify``, whose own threshold (verify.MIN_INLIERS) is kept: its counts reach 9 between
#: unrelated images.
MIN_INLIERS = 8
#: Copies of one catalogue item looked for in one photo.
MAX_COPIES = 5
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
            fitted, inlier = fit_homography(src_all[rows], dst_all[rows])
            if fitted is None:
                break
            inliers = len(np.unique(item_idx[rows[inlier]]))
            homography = to_original_pixels(fitted, item.scale, photo.scale)
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
    hits = catalogue_hits(col, found)
    return [(hit, m.verification()) for hit, m in zip(hits, found, strict=True)]


def catalogue_hits(col: Collection, found: Sequence[ItemMatch]) -> list[SearchResult]:
    """The catalogue records of the matcher's finds as ``SearchResult`` s (score 0, verified,
    with the find's inliers and region), in the order of ``found``."""
    from lookalike.collection.results import SearchResult

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


def rescored(col: Collection, hit: SearchResult, vector: np.ndarray) -> SearchResult:
    """``hit``, keypoint-confirmed, with its cosine score (``image`` space) against ``vector``
    (the descriptor of the box it was found in)."""
    stored = col.catalogue.vectors("image", [hit.id])
    score = float(col.project(vector[None])[0] @ col.project(stored)[0])
    return replace(hit, score=score, verified=True)
