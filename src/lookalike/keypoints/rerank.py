"""Keypoint verification of search results: is each hit really a copy of the query?

Re-ranks a result list by geometric verification (RootSIFT + USAC, :mod:`.verify`): verified
hits first, by inliers, and each checked hit gains ``verified``, ``inliers`` and ``region``.
``Collection.search(..., verify=True)`` and the copy and detect capabilities use it.

Example:
    >>> hits = col.search("crop.jpg", space="copy")  # doctest: +SKIP
    >>> hits = verify_results("crop.jpg", hits)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from lookalike.images import ImageError, decode
from lookalike.keypoints.verify import Features, extract, verify

if TYPE_CHECKING:
    from lookalike.collection.results import SearchResult

#: Longest side images are decoded at for verification (``verify.MAX_SIDE``).
VERIFY_SIDE = 1024


def decode_any(paths: Sequence[str], min_side: int):
    """The first of ``paths`` that decodes, or None."""
    for path in paths:
        try:
            return decode(path, min_side=min_side)
        except (ImageError, OSError):
            continue
    return None


def in_original(
    region: tuple[int, int, int, int] | None,
    decoded: tuple[int, int],
    original: tuple[int, int],
) -> tuple[int, int, int, int] | None:
    """A box found on the picture as decoded for verification (large JPEGs are decoded at a
    reduced scale) in the pixels of the original (its recorded ``width`` x ``height``; the
    box as found when they are unknown).

    Example:
        >>> in_original((10, 20, 30, 40), (1024, 768), (4096, 3072))
        (40, 80, 120, 160)
    """
    if region is None or not all(original) or tuple(decoded) == tuple(original):
        return region
    sx, sy = original[0] / decoded[0], original[1] / decoded[1]
    x0, y0, x1, y1 = region
    return (round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy))


def query_image(query: object) -> Image.Image | np.ndarray:
    """A query (path, bytes, PIL image or pixel array) as verification reads it: decoded upright
    at :data:`VERIFY_SIDE`, a pixel array as it is.

    Raises:
        ValueError: a vector, which has no keypoints.
    """
    if isinstance(query, np.ndarray):
        if query.ndim == 1:
            raise ValueError("verification needs the query image, not a vector")
        return query
    return decode(query, min_side=VERIFY_SIDE)


def query_features(query: object) -> Features:
    """RootSIFT features of a query (path, bytes, PIL image or pixel array), computed once."""
    return extract(query_image(query))


def verify_results(
    query: object | Features, results: list[SearchResult], *, top: int | None = None
) -> list[SearchResult]:
    """Check the first ``top`` results (all by default) by geometric verification and re-rank:
    verified hits first (by inliers, then score), then the others in score order. Each checked
    result gains ``verified``, ``inliers`` and ``region`` (x0, y0, x1, y1 in its pixels).

    Example:
        >>> hits = col.search("crop.jpg", space="copy")  # doctest: +SKIP
        >>> hits = verify_results("crop.jpg", hits)  # doctest: +SKIP
        >>> hits[0].verified, hits[0].region  # doctest: +SKIP
        (True, (120, 80, 410, 300))
    """
    features = query if isinstance(query, Features) else query_features(query)
    checked = results if top is None else results[:top]
    for result in checked:
        candidate = decode_any(result.paths or (result.path,), VERIFY_SIDE)
        if candidate is None:
            result.verified, result.inliers, result.region = False, 0, None
            continue
        outcome = verify(features, candidate)
        result.verified = outcome.verified
        result.inliers = outcome.inliers
        result.region = (
            in_original(outcome.region, candidate.size, (result.width, result.height))
            if outcome.verified
            else None
        )
    ranked = sorted(
        checked,
        key=lambda r: (not r.verified, -(r.inliers or 0) if r.verified else 0, -r.score),
    )
    return ranked + list(results[len(checked) :])
