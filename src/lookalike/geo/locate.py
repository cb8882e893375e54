"""Where was this photo taken? Position a query from its nearest geotagged neighbours.

The collection holds frames (or photos) with ``lat``/``lon`` metadata (see ``video.py``). A query
is searched, its top-k neighbours weighted by similarity (``exp((score - best) / temperature)``),
a robust centre taken (weighted median), neighbours far from it rejected as outliers, and the
position is the weighted mean of the rest; the uncertainty radius is their weighted RMS distance
from it. For an ordered series of queries (frames of a second pass, a burst of photos),
``sequence=True`` picks one candidate per query with a Viterbi pass that trades similarity against
jumps along the way, and positions each query around its pick.

Example:
    >>> from lookalike import Collection
    >>> with Collection.open("walk.lookalike") as col:  # doctest: +SKIP
    ...     where = locate(col, ["photo.jpg"])[0]
    ...     print(where.lat, where.lon, where.radius_m)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lookalike.errors import LocateError
from lookalike.geo.tracks import from_local, haversine, to_local

if TYPE_CHECKING:
    from lookalike.collection import Collection

#: Similarity weights are exp((score - best) / TEMPERATURE): a neighbour 0.01 below the best
#: counts e^-1 as much. Measured on gopro-walk (docs/benchmarks.md, section locate): 0.005-0.01
#: give the lowest errors, 0.01 a radius that holds the truth more often.
TEMPERATURE = 0.01
#: Neighbours further than max(MIN_INLIER_M, INLIER_SCALE x the weighted median distance) from
#: the robust centre are outliers.
MIN_INLIER_M = 1.0
INLIER_SCALE = 3.0
#: The radius is RADIUS_SCALE x the inliers' weighted RMS distance from the estimate: with 1.5
#: the truth lay inside it for 87% of the gopro-walk queries (1x: 70%).
RADIUS_SCALE = 1.5
#: ``sequence=True`` ends with a running median over this many consecutive queries (it cut the
#: 90th percentile error by a quarter on gopro-walk; the Viterbi pass alone by ~3%).
SMOOTH_WINDOW = 5


@dataclass
class Support:
    """A neighbour that voted for a position."""

    id: int
    path: str
    score: float
    lat: float
    lon: float
    weight: float
    inlier: bool
    time: float | None = None


@dataclass
class Location:
    """An estimated position: degrees, an uncertainty radius in metres, and its support."""

    query: str
    lat: float
    lon: float
    radius_m: float
    support: list[Support] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The JSON form (``--json``): query, lat, lon, radius_m, support."""
        out = asdict(self)
        out["lat"], out["lon"] = round(self.lat, 8), round(self.lon, 8)
        out["radius_m"] = round(self.radius_m, 3)
        for s in out["support"]:
            s["score"], s["weight"] = round(s["score"], 6), round(s["weight"], 6)
        return out


@dataclass
class Estimate:
    """The output of :func:`estimate`: position, radius and per-neighbour weights/inliers."""

    lat: float
    lon: float
    radius_m: float
    weights: np.ndarray
    inliers: np.ndarray


def weights_of(scores: np.ndarray, temperature: float = TEMPERATURE) -> np.ndarray:
    """Similarity weights, 1 for the best neighbour (softmax numerators)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.exp((scores - scores.max()) / temperature)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value below which half the weight lies.

    Example:
        >>> weighted_median(np.array([1.0, 2.0, 10.0]), np.array([1.0, 1.0, 1.0]))
        2.0
    """
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def estimate(
    scores: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    *,
    temperature: float = TEMPERATURE,
    centre: int | None = None,
) -> Estimate:
    """Position from neighbours' similarity ``scores`` and positions.

    The robust centre is the weighted median of east and north (or neighbour ``centre`` when
    given, as the sequence pass does); neighbours beyond the inlier radius of it are dropped.

    Example:
        >>> e = estimate(np.array([0.9, 0.9, 0.5]), np.array([0.0, 0.0, 1.0]),
        ...              np.array([0.0, 0.00001, 1.0]))
        >>> round(e.lon * 1e6), e.inliers.tolist()
        (5, [True, True, False])
    """
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    scores = np.asarray(scores, np.float64)
    weights = weights_of(scores, temperature)
    best = int(np.argmax(scores))
    xy = to_local(lat, lon, lat[best], lon[best])
    if centre is None:
        middle = np.array([weighted_median(xy[:, 0], weights), weighted_median(xy[:, 1], weights)])
    else:
        middle = xy[centre]
    distance = np.linalg.norm(xy - middle, axis=1)
    cutoff = max(MIN_INLIER_M, INLIER_SCALE * weighted_median(distance, weights))
    inliers = distance <= cutoff
    # Re-based on the best inlier, so that weights far below the overall best cannot underflow.
    w = weights_of(np.where(inliers, scores, -np.inf), temperature) * inliers
    point = (w[:, None] * xy).sum(0) / w.sum()
    spread = np.sqrt((w * ((xy - point) ** 2).sum(1)).sum() / w.sum())
    lat_out, lon_out = from_local(point, lat[best], lon[best])
    return Estimate(float(lat_out), float(lon_out), RADIUS_SCALE * float(spread), weights, inliers)


def viterbi(
    scores: np.ndarray, xy: np.ndarray, step_m: float, temperature: float = TEMPERATURE
) -> np.ndarray:
    """The candidate index per query maximising similarity minus jumps along the series.

    ``scores``: (n, k) neighbour similarities; ``xy``: (n, k, 2) their positions in metres.
    A move of d metres between consecutive queries costs ``d / step_m`` (a Laplace prior on
    the step), a similarity ``temperature`` below another costs 1.
    """
    emission = (scores - scores.max(1, keepdims=True)) / temperature
    total = emission[0].copy()
    back = np.zeros(scores.shape, dtype=np.int64)
    for i in range(1, len(scores)):
        jump = np.linalg.norm(xy[i][:, None, :] - xy[i - 1][None, :, :], axis=2) / step_m
        candidates = total[None, :] - jump  # (k_now, k_before)
        back[i] = np.argmax(candidates, axis=1)
        total = candidates[np.arange(len(back[i])), back[i]] + emission[i]
    path = np.zeros(len(scores), dtype=np.int64)
    path[-1] = int(np.argmax(total))
    for i in range(len(scores) - 1, 0, -1):
        path[i - 1] = back[i][path[i]]
    return path


def locate(
    collection: Collection,
    images: Sequence,
    *,
    k: int = 10,
    sequence: bool = False,
    temperature: float = TEMPERATURE,
    expand: int = 0,
    smooth_window: int = SMOOTH_WINDOW,
) -> list[Location]:
    """Estimate where each image was taken from its ``k`` nearest positioned neighbours.

    ``images`` are paths, bytes, PIL images or descriptors. ``sequence=True`` treats them as an
    ordered series (frames of one pass): a Viterbi pass picks one candidate per query, then a
    running median over ``smooth_window`` queries smooths the positions. ``expand`` is the
    collection search's query expansion (off: measured worse for locating).

    Raises:
        LocateError: the collection has no image with a position.
    """
    vectors = collection.embed(list(images))
    hits = collection.search_vectors(vectors, k, expand=expand)
    labels = [_label(q, i) for i, q in enumerate(images)]
    return locate_hits(hits, labels, sequence, temperature, smooth_window)


def locate_hits(
    hits: list[list],
    labels: Sequence[str],
    sequence: bool = False,
    temperature: float = TEMPERATURE,
    smooth_window: int = SMOOTH_WINDOW,
) -> list[Location]:
    """:func:`locate` from search results (``SearchResult`` lists with lat/lon metadata)."""
    positioned = [[h for h in row if "lat" in h.metadata and "lon" in h.metadata] for row in hits]
    if not any(positioned):
        raise LocateError(
            "no neighbour has a position: index frames with `lookalike index-video VIDEO "
            "--track TRACK` or photos with GPS EXIF"
        )
    picks: list[int | None] = [None] * len(positioned)
    if sequence and len(positioned) > 1:
        picks = _sequence_picks(positioned, temperature)
    out = []
    for label, row, pick in zip(labels, positioned, picks, strict=True):
        if not row:
            out.append(Location(label, float("nan"), float("nan"), float("inf")))
            continue
        scores = np.array([h.score for h in row])
        lat = np.array([h.metadata["lat"] for h in row], dtype=np.float64)
        lon = np.array([h.metadata["lon"] for h in row], dtype=np.float64)
        e = estimate(scores, lat, lon, temperature=temperature, centre=pick)
        support = [
            Support(
                id=h.id, path=h.path, score=float(h.score), lat=float(la), lon=float(lo),
                weight=float(w), inlier=bool(ok), time=h.metadata.get("time"),
            )
            for h, la, lo, w, ok in zip(row, lat, lon, e.weights, e.inliers, strict=True)
        ]  # fmt: skip
        out.append(Location(label, e.lat, e.lon, e.radius_m, support))
    if sequence and smooth_window > 1:
        _running_median(out, smooth_window)
    return out


def _running_median(locations: list[Location], window: int) -> None:
    """Replace each position by the median of the ``window`` around it (in east/north metres),
    over the located queries in order."""
    located = [loc for loc in locations if np.isfinite(loc.lat)]
    if len(located) < window:  # a median of a few far-apart photos would merge them
        return
    lat0, lon0 = located[0].lat, located[0].lon
    xy = to_local([x.lat for x in located], [x.lon for x in located], lat0, lon0)
    half = window // 2
    smoothed = np.stack(
        [np.median(xy[max(0, i - half) : i + half + 1], axis=0) for i in range(len(xy))]
    )
    lats, lons = from_local(smoothed, lat0, lon0)
    for loc, la, lo in zip(located, lats, lons, strict=True):
        loc.lat, loc.lon = float(la), float(lo)


def _sequence_picks(rows: list[list], temperature: float) -> list[int | None]:
    """Viterbi over the queries that have neighbours; the step scale is the median distance
    between consecutive independent estimates (how far the series moves per query)."""
    present = [i for i, row in enumerate(rows) if row]
    k = max(len(rows[i]) for i in present)
    lat0 = rows[present[0]][0].metadata["lat"]
    lon0 = rows[present[0]][0].metadata["lon"]
    scores = np.full((len(present), k), -np.inf)
    xy = np.zeros((len(present), k, 2))
    for n, i in enumerate(present):
        row = rows[i]
        scores[n, : len(row)] = [h.score for h in row]
        lats = [h.metadata["lat"] for h in row]
        lons = [h.metadata["lon"] for h in row]
        xy[n, : len(row)] = to_local(lats, lons, lat0, lon0)
    # Missing candidates (fewer than k hits) get a hopeless emission, never picked.
    scores = np.where(np.isfinite(scores), scores, np.nanmin(scores[np.isfinite(scores)]) - 100)
    independent = np.array(
        [
            [
                e.lat,
                e.lon,
            ]
            for e in (
                estimate(s, *from_local(p, lat0, lon0), temperature=temperature)
                for s, p in zip(scores, xy, strict=True)
            )
        ]
    )
    steps = haversine(
        independent[:-1, 0], independent[:-1, 1], independent[1:, 0], independent[1:, 1]
    )
    step_m = max(float(np.median(steps)) if len(steps) else 1.0, 0.1)
    path = viterbi(scores, xy, step_m, temperature)
    picks: list[int | None] = [None] * len(rows)
    for n, i in enumerate(present):
        picks[i] = int(path[n])
    return picks


def _label(query: object, i: int) -> str:
    if isinstance(query, str | Path):
        return str(query)
    return f"#{i}"
