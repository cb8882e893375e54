"""Finding catalogue items inside a photo: region search, detection, the detect CLI.

The scene is built here: scikit-image's coffee and rocket photos, resized and slightly rotated,
pasted onto its grass texture beside the cat photo (chelsea), which is not in the catalogue.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lookalike.cli import app
from lookalike.collection import Collection
from lookalike.detect.boxes import crop_region, grid_boxes, iou, nms, parse_box
from lookalike.detect.photo import detect
from tests.conftest import skimage_photo

CATALOGUE = ("coffee", "rocket", "astronaut", "hubble_deep_field", "immunohistochemistry")


def _paste(scene: Image.Image, name: str, scale: float, angle: float, at: tuple[int, int]):
    item = skimage_photo(name).convert("RGBA")
    item = item.resize((round(item.width * scale), round(item.height * scale)))
    item = item.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
    scene.paste(item, at, item)  # the alpha keeps the rotated corners transparent
    return (at[0], at[1], at[0] + item.width, at[1] + item.height)


@pytest.fixture(scope="module")
def shelf(tmp_path_factory, embedder) -> dict:
    from skimage import data

    root = tmp_path_factory.mktemp("detect")
    photos = root / "photos"
    photos.mkdir()
    for name in CATALOGUE:
        skimage_photo(name).save(photos / f"{name}.jpg", quality=92)
    scene = Image.fromarray(np.stack([data.grass()] * 3, axis=-1)).resize((1400, 900))
    boxes = {
        "coffee": _paste(scene, "coffee", 0.7, 8, (50, 80)),
        "rocket": _paste(scene, "rocket", 0.6, -6, (600, 200)),
        "chelsea": _paste(scene, "chelsea", 0.6, 0, (1000, 450)),
    }
    scene_path = root / "scene.jpg"
    scene.save(scene_path, quality=90)
    col = Collection.create(root / "col", embedder=embedder)
    col.sync([photos])
    yield {"col": col, "scene": scene_path, "boxes": boxes, "root": root}
    col.close()


def test_detect_finds_both_pasted_items_with_keypoint_confirmation(shelf):
    found = detect(shelf["col"], shelf["scene"])
    names = {Path(d.best.path).stem: d for d in found}
    assert set(names) == {"coffee", "rocket"}  # chelsea is not in the catalogue
    for name in ("coffee", "rocket"):
        d = names[name]
        assert iou(d.box, shelf["boxes"][name]) > 0.5
        assert d.verified and d.inliers >= 15 and d.homography is not None
        assert d.source == "keypoints" and d.score > 0.5
    # The unknown item (the cat) has no box: nothing reported overlaps it.
    assert all(iou(d.box, shelf["boxes"]["chelsea"]) < 0.1 for d in found)


def test_grid_proposals_find_items_by_similarity(shelf):
    found = detect(shelf["col"], shelf["scene"], proposals="grid")
    best = {Path(d.best.path).stem: d for d in found}
    assert {"coffee", "rocket"} <= set(best)
    assert iou(best["rocket"].box, shelf["boxes"]["rocket"]) > 0.5
    assert all(d.score >= 0.75 for d in found)  # the documented MIN_SCORE
    assert "chelsea" not in best


def test_unknown_source_is_refused(shelf):
    with pytest.raises(ValueError, match="unknown proposal source"):
        detect(shelf["col"], shelf["scene"], proposals="magic")


def test_crop_region_and_its_errors():
    image = Image.new("RGB", (200, 100))
    assert crop_region(image, (10, 20, 110, 90)).size == (100, 70)
    with pytest.raises(ValueError, match="outside the 200x100 image"):
        crop_region(image, (10, 20, 300, 90))
    with pytest.raises(ValueError, match="empty"):
        crop_region(image, (50, 20, 50, 90))
    assert parse_box("1,2,3,4") == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="four numbers"):
        parse_box("1,2,3")


def test_boxes_helpers():
    boxes = grid_boxes((1000, 500), scales=(0.5,))
    assert all(0 <= b[0] < b[2] <= 1000 and 0 <= b[1] < b[3] <= 500 for b in boxes)
    assert (500, 250, 1000, 500) in boxes  # windows reach the far edges
    assert nms([(0, 0, 10, 10), (0, 0, 10, 9), (50, 50, 60, 60)], [0.5, 0.9, 0.1]) == [1, 2]


def test_region_search_returns_the_pasted_item_first(shelf):
    runner = CliRunner()
    box = ",".join(map(str, shelf["boxes"]["rocket"]))
    col = str(shelf["root"] / "col")
    shelf["col"].close()  # the CLI opens the collection itself
    try:
        done = runner.invoke(
            app, ["search", str(shelf["scene"]), "-c", col, "--region", box, "--json"]
        )
        assert done.exit_code == 0, done.output
        assert Path(json.loads(done.stdout)["results"][0]["path"]).stem == "rocket"
        whole = runner.invoke(app, ["search", str(shelf["scene"]), "-c", col, "--json"])
        assert Path(json.loads(whole.stdout)["results"][0]["path"]).stem != "rocket"
        bad = runner.invoke(
            app, ["search", str(shelf["scene"]), "-c", col, "--region", "0,0,5000,10", "--json"]
        )
        assert bad.exit_code == 1
        assert "outside the 1400x900 image" in json.loads(bad.stdout)["error"]
    finally:
        shelf["col"] = Collection.open(col)


def test_detect_cli_json_and_picture(shelf, tmp_path):
    col = str(shelf["root"] / "col")
    shelf["col"].close()
    try:
        picture = tmp_path / "boxes.png"
        done = CliRunner().invoke(
            app, ["detect", str(shelf["scene"]), "-c", col, "--json", "--grid", str(picture)]
        )
        assert done.exit_code == 0, done.output
        answer = json.loads(done.stdout.splitlines()[0])
        assert answer["image"] == str(shelf["scene"])
        found = {Path(d["matches"][0]["path"]).stem: d for d in answer["detections"]}
        assert set(found) == {"coffee", "rocket"}
        assert found["coffee"]["verified"] and len(found["coffee"]["homography"]) == 3
        assert iou(found["coffee"]["box"], shelf["boxes"]["coffee"]) > 0.5
        assert Image.open(picture).size == (1400, 900)
    finally:
        shelf["col"] = Collection.open(col)
