"""``search --grid --verify``: each verified result's tile boxes the region the query covers, and
the row ends with the query beside its first verified result, lines between their matched
keypoints (``lookalike.grid``: ``Tile.box``, ``Tile.span``, ``pair_panel``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lookalike.cli import app
from lookalike.grid import CELL, GAP, LABEL, REGION, Tile, pair_panel, render
from tests.conftest import PHOTOS, skimage_photo

runner = CliRunner()
#: The query: this part of chelsea (451 x 300), x0, y0, x1, y1.
CROP = (30, 10, 400, 290)


def invoke(*args: str | Path):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def _amber(pixels: np.ndarray) -> np.ndarray:
    """Where ``pixels`` (h, w, 3) are the region box's colour."""
    return np.all(np.abs(pixels.astype(int) - REGION) <= 12, axis=-1)


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("grid")
    photos = root / "photos"
    photos.mkdir()
    for name in PHOTOS:
        skimage_photo(name).save(photos / f"{name}.jpg", quality=92)
    col = root / "col"
    done = invoke("index", photos, "-c", col)
    assert done.exit_code == 0, done.output
    query = root / "query.jpg"
    skimage_photo("chelsea").crop(CROP).save(query, quality=85)
    return {"photos": photos, "col": col, "query": query}


def test_verified_tile_boxes_the_region_and_a_pair_panel_ends_the_row(lib, tmp_path):
    picture = tmp_path / "grid.png"
    done = invoke(
        "search", lib["query"], "-c", lib["col"], "-k", "3", "--verify", "--grid", picture
    )
    assert done.exit_code == 0, done.output
    hits = json.loads(
        invoke("search", lib["query"], "-c", lib["col"], "-k", "3", "--verify", "--json").stdout
    )["results"]
    assert hits[0]["verified"] and Path(hits[0]["path"]).name == "chelsea.jpg"
    grid = np.asarray(Image.open(picture).convert("RGB"))
    # query, 3 results, and the pair panel two cells wide
    assert grid.shape[1] == GAP + 6 * (CELL + GAP)
    assert grid.shape[0] == GAP + CELL + LABEL + GAP

    def cell(column: int, span: int = 1) -> np.ndarray:
        x = GAP + column * (CELL + GAP)
        return grid[GAP : GAP + CELL, x : x + span * (CELL + GAP) - GAP]

    # The first result (chelsea, 451 x 300 shown 160 x 106): the box where the crop was cut.
    tile = cell(1)
    amber = _amber(tile)
    assert amber.sum() > 200
    ys, xs = np.nonzero(amber)
    scale = 160 / 451
    top = (CELL - round(300 * scale)) // 2
    want = (CROP[0] * scale, top + CROP[1] * scale, CROP[2] * scale, top + CROP[3] * scale)
    got = (xs.min(), ys.min(), xs.max(), ys.max())
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 4, (got, want)
    # Unverified results carry no box.
    for column, hit in zip((2, 3), hits[1:], strict=True):
        if not hit["verified"]:
            assert _amber(cell(column)).sum() == 0
    # The pair panel: query and result side by side, coloured lines, the region boxed.
    panel = cell(4, span=2)
    assert _amber(panel).sum() > 200
    colourful = (panel.max(axis=-1).astype(int) - panel.min(axis=-1)) > 150
    assert colourful.sum() > 500


def test_grid_without_verify_is_unchanged(lib, tmp_path):
    picture = tmp_path / "grid.png"
    done = invoke("search", lib["query"], "-c", lib["col"], "-k", "3", "--grid", picture)
    assert done.exit_code == 0, done.output
    grid = np.asarray(Image.open(picture).convert("RGB"))
    assert grid.shape[1] == GAP + 4 * (CELL + GAP)
    assert _amber(grid).sum() == 0


def test_render_box_and_span_and_pair_panel(tmp_path):
    photo = skimage_photo("chelsea")
    tiles = [
        Tile(photo, "boxed", box=(100, 50, 300, 250)),
        Tile(photo, "boxed in a frame", box=(50, 25, 150, 125), box_size=(225, 150)),
        Tile(pair_panel(photo.crop(CROP), photo, [[0, 0, 30, 10], [370, 280, 400, 290]], CROP),
             "panel", span=2),
    ]  # fmt: skip
    out = render([tiles], tmp_path / "tiles.png")
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape[1] == GAP + 4 * (CELL + GAP)
    first, second = (grid[GAP : GAP + CELL, GAP + c * (CELL + GAP) :][:, :CELL] for c in (0, 1))
    assert np.array_equal(_amber(first), _amber(second))  # one box, given in two frames
    assert _amber(first).sum() > 100
