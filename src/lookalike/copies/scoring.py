"""The copy score: one calibrated probability that a hit is a copy of the query.

A raw SSCD cosine does not mean the same for every query: a photo with many look-alikes in the
collection (dinosaurs, beaches, product shots on white) scores high against all of them, a
heavily edited copy scores low against its original. So the score of a copy search is

1. **self-normalised** (SSCD paper, Pizzi et al. 2022, §4.2, with the collection itself as the
   background): ``s_norm = cos − β · cos_k``, where ``cos_k`` is the query's similarity to its
   ``k``-th result in the whole collection (the filter, if any, is not applied to it);
2. turned into **P(copy) = σ(b + w_cos·cos + w_norm·s_norm)**, a logistic model fitted on the
   calibration split of ``benchmarks/copies_hard.py``'s DISC21-style set, so that one threshold
   means the same precision for every query and every model;
3. with ``verify``, the first :attr:`Calibration.depth` hits are checked by keypoint matching
   (RootSIFT + USAC, :mod:`lookalike.keypoints.verify`; the first one retried with the mirrored
   query) and scored by a second logistic model that adds *verified*, ``min(inliers, 60)/60``
   and the share of the reference the match covers: a confirmed heavy crop rises above an
   unconfirmed look-alike, and the score shows it (scripts sort by ``score``).

The raw cosine stays in each hit's ``cosine``. The constants in :data:`CALIBRATIONS` come from
``python benchmarks/copies_calibrate.py`` (docs/benchmarks.md, section ``copies-scoring``,
which gives the precision and recall each threshold has on the held-out test split).

Example:
    >>> hits = search_copies(col, "edited.jpg", k=5, verify=True)  # doctest: +SKIP
    >>> hits[0].score, hits[0].cosine, hits[0].verified  # doctest: +SKIP
    (0.97, 0.41, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from lookalike.collection.manifest import COPY_SPACE
from lookalike.keypoints.rerank import VERIFY_SIDE, decode_any, in_original, query_image
from lookalike.keypoints.verify import Features, contained, extract, verify
from lookalike.models.sscd import WINDOWS

if TYPE_CHECKING:
    from lookalike.collection import Collection
    from lookalike.collection.results import SearchResult

#: Inliers at which the inlier feature saturates.
INLIERS_CAP = 60
#: Results looked at beyond ``Calibration.rank`` for the normaliser (sure copies are skipped).
NORMALISER_SLACK = 10
#: The spaces of the copy space's region descriptors (``add_copy_space(regions=True)``): one
#: per window of each reference (``lookalike.models.sscd.Window``).
REGION_SPACES = tuple(f"{COPY_SPACE}-window{j}" for j in range(WINDOWS))
#: A match with a window of a reference counts this much below a whole-image match: the score
#: is max(cos(query, image), cos(query, best window) - WINDOW_MARGIN) (δ of docs/benchmarks.md,
#: section copies-hard, chosen on the calibration split).
WINDOW_MARGIN = 0.05


@dataclass(frozen=True)
class Calibration:
    """How one copy model's cosines become P(copy) (``benchmarks/copies_calibrate.py``).

    Attributes:
        rank: the result (1-based) whose cosine normalises the query's scores.
        beta: its weight: ``s_norm = cos − beta · cos_rank``.
        plain: (b, w_cos, w_norm) of P(copy) without verification.
        verified: (b, w_cos, w_norm, w_verified, w_inliers, w_area) of P(copy) for checked hits.
        depth: hits checked by keypoints with ``verify``.
        threshold: P(copy) giving 90% precision without verification (calibration split).
        verified_threshold: the same with verification.
        typical: the median ``cos_rank`` on the calibration split, the most a normaliser is
            taken to be while a collection holds fewer than ``rank`` other images.
        sure: hits at or above this cosine (re-saved, resized copies) are skipped when picking
            result #rank, so that a picture with several copies in the collection does not
            normalise its copies away (``benchmarks/copies_calibrate.py`` measures the cost).
    """

    rank: int
    beta: float
    plain: tuple[float, float, float]
    verified: tuple[float, float, float, float, float, float]
    depth: int
    threshold: float
    verified_threshold: float
    typical: float
    sure: float

    def kth(self, cosines: Sequence[float] | np.ndarray) -> float:
        """The normaliser of a query from its results' cosines (best first, the query image
        itself left out): result #rank among those below :attr:`sure`; in a collection too
        small to have one, the lower of :attr:`typical` and the last result."""
        rest = [float(c) for c in cosines if c < self.sure]
        if len(rest) >= self.rank:
            return rest[self.rank - 1]
        return min(self.typical, rest[-1]) if rest else self.typical

    def normalised(self, cosine: np.ndarray, kth: float) -> np.ndarray:
        return np.asarray(cosine, np.float64) - self.beta * kth

    def probability(self, cosine: np.ndarray, kth: float) -> np.ndarray:
        """P(copy) of hits with these cosines, for a query whose result #rank scored ``kth``."""
        cosine = np.asarray(cosine, np.float64)
        b, w_cos, w_norm = self.plain
        return _sigmoid(b + w_cos * cosine + w_norm * self.normalised(cosine, kth))

    def verified_probability(
        self, cosine: float, kth: float, verified: bool, inliers: int, area: float
    ) -> float:
        """P(copy) of a hit checked by keypoints (``area``: share of the reference covered)."""
        b, w_cos, w_norm, w_ver, w_inl, w_area = self.verified
        x = (
            b
            + w_cos * cosine
            + w_norm * float(self.normalised(cosine, kth))
            + (w_ver + w_inl * min(inliers, INLIERS_CAP) / INLIERS_CAP + w_area * area)
            * bool(verified)
        )
        return float(_sigmoid(x))


#: Per copy model; fitted by ``benchmarks/copies_calibrate.py`` on the calibration split
#: (docs/benchmarks.md, section ``copies-scoring``).
CALIBRATIONS: dict[str, Calibration] = {
    "sscd": Calibration(
        rank=5,
        beta=1.25,
        plain=(-5.229, 5.708, 13.972),
        verified=(-4.399, 0.91, 5.689, 4.33, 1.951, -2.012),
        depth=3,
        threshold=0.821,
        verified_threshold=0.746,
        typical=0.254,
        sure=0.95,
    ),
    "sscd-mobile": Calibration(
        rank=5,
        beta=0.75,
        plain=(-6.337, 1.361, 18.187),
        verified=(-5.094, 0.695, 5.373, 4.374, 1.772, -1.642),
        depth=3,
        threshold=0.64,
        verified_threshold=0.72,
        typical=0.267,
        sure=0.95,
    ),
}


def calibration(model: str) -> Calibration:
    """The calibration of a copy model (SSCD's for a model without one of its own)."""
    return CALIBRATIONS.get(model, CALIBRATIONS["sscd"])


def calibration_of(col: Collection) -> Calibration:
    """The calibration of the collection's copy model."""
    return calibration(str(col.spaces()[COPY_SPACE].get("model", "sscd")))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def score_hits(hits: Sequence[SearchResult], kth: float, cal: Calibration) -> list[SearchResult]:
    """The hits with ``cosine`` kept and ``score`` = P(copy) without verification (their order
    does not change: for one query P(copy) grows with the cosine)."""
    cosines = np.array([h.cosine_or_score() for h in hits])
    for hit, p in zip(hits, cal.probability(cosines, kth), strict=True):
        hit.cosine = hit.cosine_or_score()
        hit.score = float(p)
    return list(hits)


@dataclass
class Check:
    """What keypoint matching says about one hit."""

    verified: bool
    inliers: int
    region: tuple[int, int, int, int] | None
    area: float
    #: share of the query the match maps inside the candidate (``keypoints.verify.contained``)
    contained: float = 0.0


def check(query: Features, candidate: Image.Image | Features | None, mirrored=None) -> Check:
    """Verify ``candidate`` (an image or its features) against the query's features;
    ``mirrored`` (features of the mirrored query, or a function giving them) is tried when the
    first attempt fails."""
    if candidate is None:
        return Check(False, 0, None, 0.0)
    features = candidate if isinstance(candidate, Features) else extract(candidate)
    outcome = verify(query, features)
    if not outcome.verified and mirrored is not None:
        other = verify(mirrored() if callable(mirrored) else mirrored, features)
        if other.verified:
            outcome = other
    if not outcome.verified or outcome.region is None:
        return Check(False, int(outcome.inliers), None, 0.0)
    x0, y0, x1, y1 = outcome.region
    w, h = features.size
    area = (x1 - x0) * (y1 - y0) / max(1, w * h)
    inside = contained(outcome.homography, query.size, features.size)
    return Check(True, int(outcome.inliers), outcome.region, area, inside)


def verify_hits(
    query: object,
    hits: list[SearchResult],
    kth: float,
    cal: Calibration,
    *,
    depth: int | None = None,
) -> list[SearchResult]:
    """Check the first ``depth`` hits (the calibration's by default) by keypoint matching, score
    them by the verified model, and sort every hit by P(copy). ``query``: a path, bytes, PIL
    image or pixel array (not a vector). Hits must carry ``cosine`` (:func:`score_hits`)."""
    depth = cal.depth if depth is None else depth
    image = query_image(query)
    if isinstance(image, np.ndarray):  # mirrored below
        image = Image.fromarray(image)
    features = extract(image)
    mirror: list[Features] = []

    def mirrored() -> Features:
        if not mirror:
            mirror.append(extract(ImageOps.mirror(image)))
        return mirror[0]

    for rank, hit in enumerate(hits[:depth]):
        candidate = decode_any(hit.paths or (hit.path,), VERIFY_SIDE)
        outcome = check(features, candidate, mirrored if rank == 0 else None)
        hit.verified, hit.inliers = outcome.verified, outcome.inliers
        hit.region = in_original(
            outcome.region, candidate.size if candidate else (0, 0), (hit.width, hit.height)
        )
        hit.score = cal.verified_probability(
            hit.cosine_or_score(), kth, outcome.verified, outcome.inliers, outcome.area
        )
    return sorted(hits, key=lambda h: -h.score)


def search_copies(
    col: Collection,
    query: object,
    k: int = 10,
    *,
    vector: np.ndarray | None = None,
    windows: np.ndarray | None = None,
    verify: bool = False,
    where=None,
    exclude: Sequence[int] = (),
) -> list[SearchResult]:
    """The ``k`` best copy candidates of ``query`` in ``col``'s copy space, scored by P(copy)
    (see the module docstring), best first. ``vector``: the query's copy vector when already
    computed; ``windows``: its region vectors (a collection with region descriptors: computed
    from ``query`` when not given). ``verify``: check the first few by keypoints (needs the
    query image). ``where``: a filter (``Collection.search``); ``exclude``: ids never
    returned."""
    cal = calibration_of(col)
    image = None
    if vector is None or (windows is None and query is not None and region_spaces_of(col)):
        image = _embeddable(col, query)  # decoded once for every space, as indexing decodes
    if vector is None:
        vector = col.embed([image], COPY_SPACE)
    vector = np.asarray(vector, np.float32).reshape(1, -1)
    if windows is None and isinstance(image, Image.Image):
        windows = query_windows(col, image)
    # The normaliser comes from the whole collection; without a filter, the same search also
    # gives the hits.
    wanted = (
        cal.rank + NORMALISER_SLACK if where is not None else max(k, cal.rank + NORMALISER_SLACK)
    )
    others = candidates(col, vector, wanted, exclude=exclude, windows=windows)
    kth = cal.kth([h.score for h in others])
    if where is not None:
        others = candidates(col, vector, k, where, exclude, windows=windows)
    hits = score_hits(others[:k], kth, cal)
    if verify and hits:
        hits = verify_hits(query, hits, kth, cal)
    return hits


def _embeddable(col: Collection, query: object) -> Image.Image:
    """The query decoded as the collection decodes what it indexes (a vector passes through:
    ``Collection.embed``)."""
    from lookalike.images import decode

    if isinstance(query, np.ndarray):
        return query
    return decode(query, min_side=col.decode_side)


def region_spaces_of(col: Collection) -> list[str]:
    """The region spaces of ``col`` (``copy-window0`` ...), empty without region descriptors."""
    return [space for space in REGION_SPACES if space in col.spaces()]


def query_windows(col: Collection, image: Image.Image) -> np.ndarray | None:
    """The query's own windows, embedded as the references' are (one vector per region
    space), or None when ``col`` has no region descriptors."""
    spaces = region_spaces_of(col)
    if not spaces:
        return None
    return np.concatenate([col.embed([image], space) for space in spaces])


def candidates(
    col: Collection,
    vector: np.ndarray,
    k: int,
    where=None,
    exclude: Sequence[int] = (),
    *,
    windows: np.ndarray | None = None,
) -> list[SearchResult]:
    """The ``k`` references most similar to a query's copy vector, by cosine. With region
    descriptors, a reference's score is the best of its whole-image cosine, and, less
    :data:`WINDOW_MARGIN`, its best window's against the query and its whole image's against
    the query's best window (``windows``): a crop matches a window of its original, a copy
    pasted into another picture matches through a window of the query."""
    searches = [(COPY_SPACE, vector, 0.0)]
    searches += [(space, vector, WINDOW_MARGIN) for space in region_spaces_of(col)]
    if windows is not None:  # the query's windows: one batch against the whole images
        searches.append((COPY_SPACE, np.asarray(windows, np.float32), WINDOW_MARGIN))
    found = {}
    for space, queries, margin in searches:
        rows = col.search_vectors(queries, k, space=space, expand=0, where=where, exclude=exclude)
        for hit in (hit for row in rows for hit in row):
            hit.score -= margin
            if hit.id not in found or hit.score > found[hit.id].score:
                found[hit.id] = hit
    return sorted(found.values(), key=lambda h: -h.score)[:k]
