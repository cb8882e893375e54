"""Catalogue items in video frames and several copies of one item in a photo.

Everything is made here from scikit-image's bundled photos: a catalogue of four photos, a short
MPEG-4 clip (PyAV) of a grass texture where the astronaut photo drifts in halfway through,
and a scene holding the coffee photo twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lookalike.cli import app
from lookalike.collection import Collection
from lookalike.detect import matcher as dm
from lookalike.detect import photo as dp
from lookalike.detect import video as dv
from lookalike.detect.boxes import iou
from lookalike.detect.photo import detect
from lookalike.keypoints.verify import extract
from tests.conftest import skimage_photo

CATALOGUE = ("coffee", "rocket", "astronaut", "immunohistochemistry")
FRAMES, RATE, APPEARS = 24, 12, 8  # the astronaut photo is in frames 8..23
ITEM = "astronaut"


def _grass(size: tuple[int, int]) -> Image.Image:
    from skimage import data

    return Image.fromarray(np.stack([data.grass()] * 3, axis=-1)).resize(size)


def _paste(scene: Image.Image, name: str, side: int, angle: float, at: tuple[int, int]):
    item = skimage_photo(name).convert("RGBA")
    scale = side / max(item.size)
    item = item.resize((round(item.width * scale), round(item.height * scale)))
    item = item.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
    scene.paste(item, at, item)
    return (at[0], at[1], at[0] + item.width, at[1] + item.height)


def _write_video(path: Path) -> dict[int, tuple[int, int, int, int]]:
    """The clip; returns the astronaut photo's box per frame where it is shown."""
    import av

    boxes = {}
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = 480, 272, "yuv420p"
        stream.options = {"qscale": "3"}
        background = _grass((480, 272))
        for i in range(FRAMES):
            scene = background.copy()
            if i >= APPEARS:
                boxes[i] = _paste(scene, ITEM, 170 + 2 * i, -6 + i / 2, (20 + 9 * i, 40 + i))
            for packet in stream.encode(av.VideoFrame.from_image(scene)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return boxes


@pytest.fixture(scope="module")
def setup(tmp_path_factory, embedder) -> dict:
    root = tmp_path_factory.mktemp("detect-video")
    photos = root / "photos"
    photos.mkdir()
    for name in CATALOGUE:
        skimage_photo(name).save(photos / f"{name}.jpg", quality=92)
    clip = root / "clip.mp4"
    boxes = _write_video(clip)
    col = Collection.create(root / "col", embedder=embedder)
    col.sync([photos])
    yield {"col": col, "clip": clip, "boxes": boxes, "root": root}
    col.close()


def test_video_item_found_in_most_frames_with_times(setup):
    run = dv.detect_video(setup["col"], setup["clip"], every=2)
    frames = list(run)
    assert [f.index for f in frames] == list(range(0, FRAMES, 2))
    assert frames[1].time == pytest.approx(2 / RATE, abs=1e-3)
    shown = [f for f in frames if f.index in setup["boxes"]]
    right = [
        f
        for f in shown
        if any(
            Path(d.best.path).stem == ITEM and iou(d.box, setup["boxes"][f.index]) >= 0.5
            for d in f.detections
        )
    ]
    assert len(right) >= len(shown) - 1  # 8 sampled frames show it
    # Nothing is reported where nothing from the catalogue is shown, nor anything else.
    assert all(not f.detections for f in frames if f.index not in setup["boxes"])
    assert all(Path(d.best.path).stem == ITEM for f in frames for d in f.detections)
    d = right[-1].detections[0]
    assert d.verified and d.inliers >= 15 and 0.3 < d.score <= 1.0
    summary = run.summary
    assert summary.frames_decoded == FRAMES and summary.frames_sampled == FRAMES // 2
    assert summary.size == (480, 272) and summary.fps > 0 and summary.cpu_fps > 0
    [item] = summary.items
    assert Path(item.path).stem == ITEM and item.copies == 1
    assert item.first_seen == pytest.approx(APPEARS / RATE, abs=2.01 / RATE)
    assert item.last_seen == pytest.approx(22 / RATE, abs=1e-3)
    assert item.frames == len(right)


def test_video_through_a_shortlist(setup, monkeypatch):
    """Collections too large to match whole: the frame's global-descriptor shortlist."""
    monkeypatch.setattr(dv, "MATCH_ALL_LIMIT", 0)
    find = dv.FrameDetector(setup["col"])
    assert not find.whole
    import av

    with av.open(str(setup["clip"])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    found = find(frames[20])
    assert [Path(d.best.path).stem for d in found] == [ITEM]
    assert iou(found[0].box, setup["boxes"][20]) >= 0.5
    assert find(frames[2]) == []


def test_cli_video_json_lines(setup):
    col = str(setup["root"] / "col")
    result = CliRunner().invoke(
        app, ["detect", "--video", str(setup["clip"]), "--every", "4", "-c", col, "--json"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    frames, summary = lines[:-1], lines[-1]["summary"]
    assert [f["frame"] for f in frames] == list(range(0, FRAMES, 4))
    assert all(set(f) == {"frame", "time", "detections", "seconds"} for f in frames)
    seen = [f for f in frames if f["detections"]]
    assert len(seen) >= 3  # frames 8, 12, 16, 20 show the astronaut photo
    d = seen[0]["detections"][0]
    assert d["verified"] and len(d["box"]) == 4 and Path(d["matches"][0]["path"]).stem == ITEM
    assert summary["frames_sampled"] == len(frames) and summary["fps"] > 0
    assert [Path(i["path"]).stem for i in summary["items"]] == [ITEM]
    assert summary["items"][0]["first_seen"] <= summary["items"][0]["last_seen"]


def test_cli_video_errors(setup, tmp_path):
    col = str(setup["root"] / "col")
    missing = CliRunner().invoke(app, ["detect", "--video", str(tmp_path / "no.mp4"), "-c", col])
    assert missing.exit_code == 1 and "no such video" in missing.output
    both = CliRunner().invoke(app, ["detect", "x.jpg", "--video", str(setup["clip"]), "-c", col])
    assert both.exit_code == 2
    nothing = CliRunner().invoke(app, ["detect", "-c", col])
    assert nothing.exit_code == 2 and "--video" in nothing.output
    with pytest.raises(ValueError, match="at least 1"):
        dv.detect_video(setup["col"], setup["clip"], every=0)


@pytest.fixture(scope="module")
def twice(setup) -> dict:
    scene = _grass((1200, 800))
    boxes = [
        _paste(scene, "coffee", 380, 10, (40, 60)),
        _paste(scene, "coffee", 300, -20, (700, 380)),
        _paste(scene, "rocket", 260, 5, (520, 30)),
    ]
    path = setup["root"] / "twice.jpg"
    scene.save(path, quality=90)
    return {"path": path, "boxes": boxes}


@pytest.mark.parametrize(
    "whole", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["whole", "shortlist"]
)
def test_one_item_twice_in_a_photo_is_found_twice(setup, twice, whole, monkeypatch):
    if not whole:
        monkeypatch.setattr(dp, "MATCH_ALL_LIMIT", 0)
    found = detect(setup["col"], twice["path"])
    coffee = [d for d in found if Path(d.best.path).stem == "coffee"]
    assert len(coffee) == 2
    for truth in twice["boxes"][:2]:
        assert max(iou(d.box, truth) for d in coffee) >= 0.5
    assert any(
        Path(d.best.path).stem == "rocket" and iou(d.box, twice["boxes"][2]) >= 0.5 for d in found
    )
    assert len(found) == 3
    if whole:  # one copy at most when asked
        assert len(detect(setup["col"], twice["path"], max_copies=1)) == 2


def test_matcher_finds_nothing_in_an_unrelated_photo(setup):
    matcher = dm.catalogue_matcher(setup["col"])
    assert len(matcher) == len(CATALOGUE)
    assert dm.catalogue_matcher(setup["col"]) is matcher  # cached per collection state
    unrelated = extract(skimage_photo("chelsea"), max_side=1600, max_features=10_000)
    assert matcher.find(unrelated) == []
    with pytest.raises(ValueError, match="ORB"):
        dm.CatalogueMatcher({1: extract(skimage_photo("coffee"), "orb")})


def test_catalogue_keypoints_are_kept_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path / "cache"))
    photo = tmp_path / "rocket.jpg"
    skimage_photo("rocket").save(photo, quality=92)
    first = dm.item_keypoints([str(tmp_path / "gone.jpg"), str(photo)], limit=500)
    assert first is not None and 100 < len(first) <= 500
    assert len(list((tmp_path / "cache" / "keypoints").rglob("*.npz"))) == 1
    again = dm.item_keypoints([str(photo)], limit=500)
    np.testing.assert_array_equal(again.keypoints, first.keypoints)
    np.testing.assert_allclose(again.descriptors, first.descriptors, atol=2e-3)
    assert again.size == first.size and again.scale == first.scale
    # A changed file is read again, under another name.
    stat = photo.stat()
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    dm.item_keypoints([str(photo)], limit=500)
    assert len(list((tmp_path / "cache" / "keypoints").rglob("*.npz"))) == 2
    assert dm.item_keypoints([str(tmp_path / "gone.jpg")]) is None
