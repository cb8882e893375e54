"""Shared fixtures: real images made in the test (from scikit-image's bundled photos) and the
real default model, loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lookalike.images import bundled_photo

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def skimage_photo(name: str) -> Image.Image:
    """One of scikit-image's bundled photos as an RGB PIL image."""
    return bundled_photo(name)


PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


@pytest.fixture(scope="session")
def embedder():
    from lookalike.models import load_embedder

    return load_embedder("efficientnet-lite0")


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """A folder with six different real photos as JPEG."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        skimage_photo(name).save(folder / f"{name}.jpg", quality=92)
    return folder


def shared_dataset(name: str) -> Path:
    """A folder of ../shared/datasets, or skip the test when it is absent."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"shared dataset {name} not available")
    return path
