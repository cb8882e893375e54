"""Geometric verification on real image pairs: OpenCV's samples when the shared data is there,
and a crop of a scikit-image photo, rescaled, rotated and recompressed, always."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from lookalike.keypoints.verify import MIN_INLIERS, extract, homography_problem, verify
from tests.conftest import shared_dataset, skimage_photo

# The box's corners in box_in_scene.png, read off the image by eye (the top-right one is hidden
# behind the rice packet): top-left, bottom-right, bottom-left.
BOX_CORNERS = {(0, 0): (118, 162), (324, 223): (268, 298), (0, 223): (90, 272)}
BOX_REGION = (90, 160, 285, 300)


def _pairs(name: str) -> Image.Image:
    return Image.open(shared_dataset("opencv-pairs") / name).convert("RGB")


def _map(homography: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64).reshape(-1, 1, 2)
    return cv2.perspectiveTransform(points, homography).reshape(-1, 2)


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / area


def test_box_is_found_in_the_scene() -> None:
    result = verify(_pairs("box.png"), _pairs("box_in_scene.png"))
    assert result.verified, result.reason
    assert result.inliers >= 3 * MIN_INLIERS
    assert _iou(result.region, BOX_REGION) > 0.8
    found = _map(result.homography, list(BOX_CORNERS))
    assert np.abs(found - np.array(list(BOX_CORNERS.values()))).max() < 8


def test_graf_homography_matches_ground_truth() -> None:
    folder = shared_dataset("opencv-pairs")
    storage = cv2.FileStorage(str(folder / "H1to3p.xml"), cv2.FILE_STORAGE_READ)
    truth = storage.getNode("H13").mat()
    storage.release()
    query = _pairs("graf1.png")
    result = verify(query, _pairs("graf3.png"))
    assert result.verified, result.reason
    w, h = query.size
    corners = [(0, 0), (w, 0), (w, h), (0, h)]
    error = np.linalg.norm(_map(result.homography, corners) - _map(truth, corners), axis=1)
    assert error.max() < 5, error


def test_cached_query_features_give_the_same_answer() -> None:
    query = extract(_pairs("box.png"))
    scene = _pairs("box_in_scene.png")
    assert verify(query, scene).region == verify(_pairs("box.png"), scene).region


@pytest.mark.parametrize(
    ("query", "candidate"), [("box.png", "aero1.jpg"), ("graf1.png", "leuvenA.jpg")]
)
def test_unrelated_pairs_are_rejected(query: str, candidate: str) -> None:
    result = verify(_pairs(query), _pairs(candidate))
    assert not result.verified
    assert result.inliers < MIN_INLIERS


def _edited_crop() -> tuple[Image.Image, np.ndarray]:
    """A crop of the astronaut photo, shrunk to 80%, turned 8° and saved as JPEG; and the true
    homography from the copy's pixels to the original's."""
    original = np.asarray(skimage_photo("astronaut"))
    x0, y0, x1, y1 = 100, 60, 420, 360
    scale, angle = 0.8, 8.0
    size = (round((x1 - x0) * scale), round((y1 - y0) * scale))
    to_copy = cv2.getRotationMatrix2D(((x0 + x1) / 2, (y0 + y1) / 2), angle, scale)
    to_copy[:, 2] += np.array(size) / 2 - np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    copy = cv2.warpAffine(original, to_copy, size, flags=cv2.INTER_AREA)
    buffer = io.BytesIO()
    Image.fromarray(copy).save(buffer, "JPEG", quality=60)
    truth = np.linalg.inv(np.vstack([to_copy, [0, 0, 1]]))
    return Image.open(buffer).convert("RGB"), truth


def test_edited_crop_is_found_with_its_region() -> None:
    copy, truth = _edited_crop()
    original = skimage_photo("astronaut")
    result = verify(copy, original)
    assert result.verified, result.reason
    w, h = copy.size
    corners = [(0, 0), (w, 0), (w, h), (0, h)]
    assert np.abs(_map(result.homography, corners) - _map(truth, corners)).max() < 3
    quad = _map(truth, corners)
    expected = (*np.floor(quad.min(axis=0)).astype(int), *np.ceil(quad.max(axis=0)).astype(int))
    assert np.abs(np.array(result.region) - np.array(expected)).max() <= 3


def test_edited_crop_is_not_found_in_another_photo() -> None:
    copy, _ = _edited_crop()
    for other in ("coffee", "chelsea", "rocket"):
        result = verify(copy, skimage_photo(other))
        assert not result.verified, other


def test_orb_also_finds_the_crop() -> None:
    copy, _ = _edited_crop()
    result = verify(extract(copy, "orb"), skimage_photo("astronaut"))
    assert result.verified, result.reason


def test_region_is_clipped_and_mirrors_are_rejected() -> None:
    # The candidate is a crop of the query: the query's corners fall outside the candidate.
    photo = skimage_photo("astronaut")
    result = verify(photo, photo.crop((100, 100, 400, 400)))
    assert result.verified and result.region == (0, 0, 300, 300)
    mirror = np.array([[-1.0, 0, 100], [0, 1, 0], [0, 0, 1]])
    assert homography_problem(mirror, (100, 100), (100, 100)) == "homography mirrors the image"


def test_blank_images_are_not_verified() -> None:
    blank = Image.new("RGB", (200, 200), "gray")
    result = verify(blank, skimage_photo("astronaut"))
    assert not result.verified and result.homography is None
