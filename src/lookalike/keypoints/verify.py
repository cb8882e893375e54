"""Geometric verification: is the query (or a part of it) really inside the candidate?

A global descriptor says two images *look* alike; verification checks that local features
agree on one plane-to-plane mapping. Features come from OpenCV (RootSIFT by default), are matched
with Lowe's ratio test plus a mutual-nearest-neighbour check, and a homography is fitted with
OpenCV's USAC (``USAC_ACCURATE``: GC-RANSAC local optimisation with SPRT). The answer says how
many matches agree (``inliers``), the homography from query pixels to candidate pixels, and the
box of the candidate that the query covers.

Feature extraction is separate (:func:`extract`) so a caller checking one query against many
candidates extracts the query's features once.

Choice of features, measured on OpenCV's sample pairs (``../shared/datasets/opencv-pairs``) and
the 56-image UKBench sample, on a 2-core CPU with the defaults below (at most 4000 features,
longest side 1024, ratio 0.8, mutual check, fit at 1.5 px, inliers counted at 3 px). Columns:
inliers of the six true pairs; the most inliers over 222 unrelated pairs (60 cross-pairs of the
OpenCV images, 162 of different UKBench objects); UKBench same-object pairs verified; graf's
corner error (largest distance, over graf1's four corners, between where the fitted and the
true homography ``H1to3p`` put it); extraction per image (640x480) and matching plus fitting per
pair:

========  ===  ====  ======  ====  ======  =======  =========  =======  =======  ======  ======
features  box  graf  leuven  aero  basket  suzanne  unrelated  ukbench  graf px  ext ms  fit ms
========  ===  ====  ======  ====  ======  =======  =========  =======  =======  ======  ======
RootSIFT   80   447     125     4     283       80          7    78/84     1.6     146      97
SIFT       76   426     122     5     285       79          7    77/84     9.1     110      98
ORB        64   241     215     5    1235      122          7    75/84     2.2      18      92
========  ===  ====  ======  ====  ======  =======  =========  =======  =======  ======  ======

RootSIFT (SIFT, L1-normalised and square-rooted; Arandjelović & Zisserman, CVPR 2012) is the
default: the most inliers on the hard pairs (the box in clutter, graf's viewpoint change), and
the only SIFT variant whose fit landed on graf's main plane (graf has a near-coplanar ledge that
pulls looser fits 7-9 px off at the corners; this is also why the fit threshold is 1.5 px and
the estimator USAC_ACCURATE rather than MAGSAC++, which was 7-8 px off at every threshold). ORB
extracts 8x faster and is fine for copies of the same view, so it is offered for throughput.
aero1/aero3 (a 60° turn with little overlap) is not verified by any of them. Without the mutual
check unrelated pairs reached 115 inliers (many features matching one repeated structure);
the homography checks rejected them, but the mutual check removes them at the source.

Threshold: a pair is ``verified`` with at least :data:`MIN_INLIERS` (15) inliers, twice the
most seen between unrelated images, and a homography that passes :func:`homography_problem`:
finite, orientation-preserving, the query's corners in front of the camera and mapped to a
convex quadrilateral of sensible area and aspect. Mirrored copies are therefore not verified
(SIFT is not mirror invariant anyway; flip the query to look for them).

Example:
    >>> from lookalike.keypoints.verify import extract, verify
    >>> query = extract(box_image)  # doctest: +SKIP
    >>> result = verify(query, scene_image)  # doctest: +SKIP
    >>> result.verified, result.inliers, result.region  # doctest: +SKIP
    (True, 80, (89, 160, 286, 299))
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

METHODS = ("rootsift", "sift", "orb")
DEFAULT_METHOD = "rootsift"
#: Inliers needed to call a pair verified (unrelated pairs reach about 9; see the table above).
MIN_INLIERS = 15
#: Lowe's ratio: keep a match when the best distance is below this share of the second best.
RATIO = 0.8
#: USAC's reprojection threshold, in pixels at the extraction resolution, for fitting ...
RANSAC_THRESHOLD = 1.5
#: ... and the one for counting inliers of the fitted homography (noisy copies need slack).
INLIER_THRESHOLD = 3.0
#: Longest side, in pixels, at which features are extracted (coordinates are mapped back).
MAX_SIDE = 1024
MAX_FEATURES = 4000

ImageLike = Image.Image | np.ndarray


@dataclass(frozen=True)
class Features:
    """Local features of one image.

    Attributes:
        keypoints: (n, 2) float32 x, y positions in the original image's pixels.
        descriptors: (n, d) float32 (SIFT, RootSIFT) or uint8 (ORB, 32 bytes).
        size: the original image's (width, height).
        scale: extraction resolution / original resolution (1.0 when not downscaled).
        method: which features ("rootsift", "sift" or "orb").
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    size: tuple[int, int]
    scale: float
    method: str

    def __len__(self) -> int:
        return len(self.keypoints)


@dataclass(frozen=True)
class Verification:
    """The outcome of :func:`verify`.

    Attributes:
        inliers: matches consistent with the fitted homography.
        matches: putative matches after the ratio and mutual checks.
        homography: 3x3 float64, query pixels to candidate pixels, or None when none was found.
        region: (x0, y0, x1, y1) box in candidate pixels covered by the query's mapped corners,
            clipped to the candidate; None without a usable homography.
        verified: enough inliers and a sane homography.
        reason: why the pair was not verified ("" when it was).
        pairs: (n, 4) float32 rows of query x, y and candidate x, y, in the original pixels of
            each image: the matches counted as inliers of the fitted homography (for drawing
            them); None when no homography was fitted.
    """

    inliers: int
    matches: int
    homography: np.ndarray | None
    region: tuple[int, int, int, int] | None
    verified: bool
    reason: str = ""
    pairs: np.ndarray | None = None


def to_gray(image: ImageLike) -> np.ndarray:
    """An 8-bit single-channel copy of a PIL image or an RGB(A)/gray NumPy array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("L"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        # Floats in [0, 1] are the common non-uint8 case (scikit-image); others are clipped.
        is_unit = array.dtype.kind == "f" and array.size > 0 and float(np.nanmax(array)) <= 1.0
        array = np.clip(array * 255.0 if is_unit else array, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 3:
        return cv2.cvtColor(np.ascontiguousarray(array[..., :3]), cv2.COLOR_RGB2GRAY)
    if array.ndim != 2:
        raise ValueError(f"expected an image array, got shape {array.shape}")
    return np.ascontiguousarray(array)


def _detector(method: str, max_features: int) -> cv2.Feature2D:
    if method in ("sift", "rootsift"):
        return cv2.SIFT_create(nfeatures=max_features)
    if method == "orb":
        # FAST threshold lowered from 20: small or flat images otherwise give too few points.
        return cv2.ORB_create(nfeatures=max_features, fastThreshold=10)
    raise ValueError(f"unknown feature method {method!r}; choose from {', '.join(METHODS)}")


def extract(
    image: ImageLike,
    method: str = DEFAULT_METHOD,
    *,
    max_side: int = MAX_SIDE,
    max_features: int = MAX_FEATURES,
) -> Features:
    """Detect and describe local features, downscaling so the longest side is ``max_side``.

    Example:
        >>> feats = extract(Image.new("RGB", (64, 64)))
        >>> len(feats), feats.method
        (0, 'rootsift')
    """
    gray = to_gray(image)
    height, width = gray.shape
    scale = min(1.0, max_side / max(width, height, 1))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    keypoints, descriptors = _detector(method, max_features).detectAndCompute(gray, None)
    dim, dtype = (32, np.uint8) if method == "orb" else (128, np.float32)
    if descriptors is None or not keypoints:
        points = np.zeros((0, 2), np.float32)
        descriptors = np.zeros((0, dim), dtype)
    else:
        # Pixel centres: position p at scale s is (p + 0.5) / s - 0.5 in the original.
        points = (np.array([k.pt for k in keypoints], np.float32) + 0.5) / scale - 0.5
        descriptors = descriptors.astype(dtype, copy=False)
        if method == "rootsift":
            descriptors = _root(descriptors)
    return Features(points, descriptors, (width, height), scale, method)


def _root(descriptors: np.ndarray) -> np.ndarray:
    # Hellinger kernel: L2 distance on sqrt(L1-normalised) SIFT compares histograms better.
    norm = np.abs(descriptors).sum(axis=1, keepdims=True)
    return np.sqrt(descriptors / np.maximum(norm, 1e-7)).astype(np.float32)


def match(
    query: Features, candidate: Features, *, ratio: float = RATIO, mutual: bool = True
) -> np.ndarray:
    """Putative matches as an (m, 2) int array of (query index, candidate index).

    Keeps a query feature's nearest candidate feature when it passes Lowe's ratio test and, with
    ``mutual``, when that candidate feature's nearest query feature is the same one.
    """
    if query.method != candidate.method:
        raise ValueError(f"cannot match {query.method} features with {candidate.method}")
    if len(query) < 2 or len(candidate) < 2:
        return np.zeros((0, 2), np.int64)
    norm = cv2.NORM_HAMMING if query.method == "orb" else cv2.NORM_L2
    matcher = cv2.BFMatcher(norm)
    pairs = []
    for best, second in (
        p for p in matcher.knnMatch(query.descriptors, candidate.descriptors, 2) if len(p) == 2
    ):
        if best.distance < ratio * second.distance:
            pairs.append((best.queryIdx, best.trainIdx))
    found = np.array(pairs, np.int64).reshape(-1, 2)
    if mutual and len(found):
        back = matcher.match(candidate.descriptors[found[:, 1]], query.descriptors)
        nearest = np.array([m.trainIdx for m in sorted(back, key=lambda m: m.queryIdx)])
        found = found[nearest == found[:, 0]]
    return found


def homography_problem(
    homography: np.ndarray, query_size: tuple[int, int], candidate_size: tuple[int, int]
) -> str:
    """Why ``homography`` (query → candidate pixels) is not a plausible copy, or "" if it is.

    Rejects non-finite matrices, mirror images, corners mapped behind the camera (the image
    plane would cross the horizon), non-convex quadrilaterals (collapsed or twisted), an area
    change beyond 400x either way, one side stretched 20x more than another, and a mapped
    query covering under 0.05% of the candidate. Real copies and objects seen from another
    viewpoint stay far inside these bounds; random consensus sets rarely do.

    Example:
        >>> homography_problem(np.eye(3), (100, 100), (100, 100))
        ''
        >>> homography_problem(np.diag([-1.0, 1.0, 1.0]), (100, 100), (100, 100))
        'homography mirrors the image'
    """
    h = np.asarray(homography, np.float64)
    if not np.all(np.isfinite(h)) or abs(h[2, 2]) < 1e-12:
        return "degenerate homography"
    h = h / h[2, 2]
    if np.linalg.det(h[:2, :2]) <= 0:
        return "homography mirrors the image"
    w, ht = query_size
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, ht, 1], [0, ht, 1]], np.float64)
    mapped = corners @ h.T
    if np.any(mapped[:, 2] <= 1e-6):
        return "query corners map behind the camera"
    quad = mapped[:, :2] / mapped[:, 2:]
    edges = np.roll(quad, -1, axis=0) - quad
    turns = (
        edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, 0)[:, 0]
    )
    if not (np.all(turns > 0) or np.all(turns < 0)):
        return "mapped query is not convex"
    area = 0.5 * abs(
        np.sum(quad[:, 0] * np.roll(quad[:, 1], -1) - quad[:, 1] * np.roll(quad[:, 0], -1))
    )
    area_ratio = area / max(w * ht, 1)
    if not 1 / 400 <= area_ratio <= 400:
        return f"mapped query changes area by {area_ratio:.3g}x"
    if area < 5e-4 * candidate_size[0] * candidate_size[1]:
        return "mapped query covers almost none of the candidate"
    lengths = np.linalg.norm(edges, axis=1) / np.array([w, ht, w, ht], np.float64).clip(1)
    if lengths.max() > 20 * lengths.min():
        return "mapped query is stretched too much"
    return ""


def region_of(
    homography: np.ndarray, query_size: tuple[int, int], candidate_size: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """Bounding box, in candidate pixels, of the query's mapped corners, clipped to the
    candidate; None when it misses the candidate."""
    w, h = query_size
    corners = np.array([[[0, 0]], [[w, 0]], [[w, h]], [[0, h]]], np.float64)
    quad = cv2.perspectiveTransform(corners, homography).reshape(-1, 2)
    if not np.all(np.isfinite(quad)):
        return None
    cw, ch = candidate_size
    x0, y0 = np.clip(np.floor(quad.min(axis=0)), 0, [cw, ch]).astype(int)
    x1, y1 = np.clip(np.ceil(quad.max(axis=0)), 0, [cw, ch]).astype(int)
    if x1 <= x0 or y1 <= y0:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def contained(
    homography: np.ndarray | None,
    query_size: tuple[int, int],
    candidate_size: tuple[int, int],
    margin: float = 0.02,
) -> float:
    """The share of the query (a 21x21 grid of its points) that the homography maps inside
    the candidate (with a ``margin`` of its sides). A copy, cropped or not, lies wholly inside
    its original (1.0); another photo of the same scene, framed otherwise, spills out (0.3-0.9
    on Corel's photo series).

    Example:
        >>> contained(np.eye(3), (100, 50), (200, 100))
        1.0
    """
    if homography is None:
        return 0.0
    w, h = query_size
    xs, ys = np.meshgrid(np.linspace(0, w, 21), np.linspace(0, h, 21))
    points = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    mapped = homography @ points
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = mapped[0] / mapped[2], mapped[1] / mapped[2]
    cw, ch = candidate_size
    inside = (x >= -margin * cw) & (x <= (1 + margin) * cw) & (y >= -margin * ch)
    inside &= (y <= (1 + margin) * ch) & (mapped[2] > 0)
    return float(inside.mean())


def verify(
    query: ImageLike | Features,
    candidate: ImageLike | Features,
    *,
    method: str = DEFAULT_METHOD,
    ratio: float = RATIO,
    mutual: bool = True,
    min_inliers: int = MIN_INLIERS,
    ransac_threshold: float = RANSAC_THRESHOLD,
    inlier_threshold: float = INLIER_THRESHOLD,
) -> Verification:
    """Check that the query appears in the candidate by fitting a homography to local matches.

    Either side may be an image or :class:`Features` from :func:`extract` (``method`` is then
    taken from them). Coordinates in the result are in original pixels.

    Example:
        >>> result = verify(box_image, scene_image)  # doctest: +SKIP
        >>> result.verified, result.region  # doctest: +SKIP
        (True, (89, 160, 286, 299))
    """
    if isinstance(query, Features):
        method = query.method
    elif isinstance(candidate, Features):
        method = candidate.method
    q = query if isinstance(query, Features) else extract(query, method)
    c = candidate if isinstance(candidate, Features) else extract(candidate, method)
    pairs = match(q, c, ratio=ratio, mutual=mutual)
    if len(pairs) < 4:
        return Verification(0, len(pairs), None, None, False, "too few matches")
    # Fit at the extraction resolution so the pixel threshold means the same for every size.
    src = ((q.keypoints[pairs[:, 0]] + 0.5) * q.scale - 0.5).astype(np.float64)
    dst = ((c.keypoints[pairs[:, 1]] + 0.5) * c.scale - 0.5).astype(np.float64)
    fitted, mask = fit_homography(src, dst, ransac_threshold, inlier_threshold)
    if fitted is None:
        return Verification(0, len(pairs), None, None, False, "no homography found")
    inliers = int(np.count_nonzero(mask))
    kept = pairs[mask]
    points = np.hstack([q.keypoints[kept[:, 0]], c.keypoints[kept[:, 1]]]).astype(np.float32)
    homography = to_original_pixels(fitted, q.scale, c.scale)
    problem = homography_problem(homography, q.size, c.size)
    region = None if problem else region_of(homography, q.size, c.size)
    if not problem and region is None:
        problem = "mapped query misses the candidate"
    if not problem and inliers < min_inliers:
        problem = f"{inliers} inliers < {min_inliers}"
    return Verification(inliers, len(pairs), homography, region, not problem, problem, points)


def fit_homography(
    src: np.ndarray,
    dst: np.ndarray,
    threshold: float = RANSAC_THRESHOLD,
    count_threshold: float = INLIER_THRESHOLD,
) -> tuple[np.ndarray | None, np.ndarray]:
    """The homography mapping ``src`` points onto ``dst`` (both (N, 2), working-resolution
    pixels), fitted by USAC_ACCURATE at ``threshold``, and the inlier mask at
    ``count_threshold``; (None, all False) when no homography is found.

    Example:
        >>> src = np.array([[0, 0], [100, 0], [100, 80], [0, 80], [50, 40]], np.float64)
        >>> fitted, inliers = fit_homography(src, src + 10)
        >>> fitted.round(3)[:, 2].tolist(), int(inliers.sum())
        ([10.0, 10.0, 1.0], 5)
    """
    # USAC_ACCURATE (GC-RANSAC local optimisation) at a tight threshold picks the dominant
    # plane; a looser one (or MAGSAC++'s soft scoring) blends near-coplanar structures, which
    # put graf's corners 7-9 px off. Inliers are then counted with some slack for noisy copies.
    fitted, mask = cv2.findHomography(
        src, dst, cv2.USAC_ACCURATE, threshold, maxIters=10_000, confidence=0.999
    )
    if fitted is None or mask is None or not np.all(np.isfinite(fitted)):
        return None, np.zeros(len(src), bool)
    projected = cv2.perspectiveTransform(src.reshape(-1, 1, 2).astype(np.float64), fitted)
    errors = np.linalg.norm(projected.reshape(-1, 2) - dst, axis=1)
    return fitted, errors <= count_threshold


def to_original_pixels(fitted: np.ndarray, q_scale: float, c_scale: float) -> np.ndarray:
    """A homography fitted at the extraction resolutions (query features scaled by
    ``q_scale``, candidate features by ``c_scale``: :attr:`Features.scale`) as one between the
    original images' pixels.

    Example:
        >>> to_original_pixels(np.eye(3), 1.0, 1.0).tolist()
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """

    # x_work = s * (x + 0.5) - 0.5, so conjugate the working-resolution H by that affine map.
    def affine(s: float) -> np.ndarray:
        return np.array([[s, 0, 0.5 * s - 0.5], [0, s, 0.5 * s - 0.5], [0, 0, 1]], np.float64)

    h = np.linalg.inv(affine(c_scale)) @ fitted @ affine(q_scale)
    return h / h[2, 2]
