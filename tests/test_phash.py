"""PDQ hashes: re-encoded, resized and rotated copies match; different photos do not."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lookalike.copies.phash import (
    DIHEDRAL,
    MATCH_THRESHOLD,
    as_array,
    dihedral_distance,
    hamming,
    hamming_matrix,
    matches,
    pdq,
    pdq_dihedral,
)
from tests.conftest import PHOTOS, skimage_photo


def _reencoded(image: Image.Image, scale: float = 0.6, quality: int = 50) -> Image.Image:
    small = image.resize((round(image.width * scale), round(image.height * scale)))
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def test_hash_format() -> None:
    h = pdq(skimage_photo("astronaut"))
    assert len(h.hash) == 32 and len(h.hex) == 64
    assert h.quality >= 50
    assert pdq(np.asarray(skimage_photo("astronaut"))).hash == h.hash  # arrays work too


def test_resized_recompressed_copy_matches_and_other_photos_do_not() -> None:
    photo = skimage_photo("coffee")
    copy = pdq(_reencoded(photo))
    assert hamming(pdq(photo), copy) <= MATCH_THRESHOLD
    for other in PHOTOS:
        if other != "coffee":
            assert hamming(pdq(skimage_photo(other)), copy) > 2 * MATCH_THRESHOLD, other


@pytest.mark.parametrize("turn", [1, 2, 3])
def test_rotated_copy_matches_through_dihedral_variants(turn: int) -> None:
    photo = skimage_photo("chelsea")
    rotated = _reencoded(photo.rotate(90 * turn, expand=True), scale=0.8)
    gallery = as_array([pdq(skimage_photo(name)) for name in PHOTOS])
    assert hamming(pdq(photo), pdq(rotated)) > MATCH_THRESHOLD  # the plain hash misses it
    distances = dihedral_distance(pdq_dihedral(rotated), gallery)
    assert np.flatnonzero(distances <= MATCH_THRESHOLD).tolist() == [PHOTOS.index("chelsea")]


def test_dihedral_order_matches_numpy_transforms() -> None:
    array = np.asarray(skimage_photo("astronaut"))
    transforms = {
        "original": array,
        "rot90": np.rot90(array, 1),
        "rot180": np.rot90(array, 2),
        "rot270": np.rot90(array, 3),
        "flip_x": array[::-1],
        "flip_y": array[:, ::-1],
        "transpose": array.transpose(1, 0, 2),
        "antitranspose": np.rot90(array, 2).transpose(1, 0, 2),
    }
    variants = pdq_dihedral(array)
    for name, variant in zip(DIHEDRAL, variants, strict=True):
        assert hamming(variant, pdq(np.ascontiguousarray(transforms[name]))) <= 20, name


def test_hamming_matrix_agrees_with_a_bit_count() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (7, 32), np.uint8), rng.integers(0, 256, (5, 32), np.uint8)
    expected = np.unpackbits(a[:, None] ^ b[None], axis=2).sum(axis=2)
    np.testing.assert_array_equal(hamming_matrix(a, b), expected)
    np.testing.assert_array_equal(matches(a, b, threshold=128), expected <= 128)
    assert hamming_matrix([], b).shape == (0, 5)
