"""Evaluation-set layouts built in tmp_path with tiny generated images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.evaluate.datasets import (
    DatasetError,
    EvalSet,
    detect_layout,
    load_eval_set,
    load_pairs,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _image(path: Path, shade: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".png": "PNG", ".bmp": "BMP"}.get(path.suffix.lower(), "JPEG")
    Image.new("RGB", (8, 8), (shade, 255 - shade, 128)).save(path, fmt)
    return path


def _names(ev: EvalSet, indices: np.ndarray) -> list[str]:
    return [ev.paths[i].name for i in indices]


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    root = tmp_path / "classes"
    _image(root / "cats" / "a.jpg")
    _image(root / "cats" / "nested" / "b.PNG")  # nested, upper-case suffix: still an image
    _image(root / "dogs" / "c.jpg")
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / "dogs" / ".DS_Store").write_bytes(b"\0")
    _image(root / "dogs" / "._c.jpg")  # macOS resource fork: hidden, skipped
    return root


def test_folders_layout(folders: Path) -> None:
    assert detect_layout(folders) == "folders"
    ev = load_eval_set(folders)
    assert ev.layout == "folders"
    assert [p.name for p in ev.paths] == ["a.jpg", "b.PNG", "c.jpg"]
    assert ev.labels == ("cats", "cats", "dogs")
    assert ev.is_query.all() and ev.is_gallery.all()
    # Each image queries the others, itself excluded.
    assert ev.exclude().tolist() == np.eye(3, dtype=bool).tolist()
    assert ev.relevance().tolist() == [
        [False, True, False],
        [True, False, False],
        [False, False, False],  # c has no other dog
    ]


def test_folders_refuses_loose_images(folders: Path) -> None:
    _image(folders / "stray.jpg")
    with pytest.raises(DatasetError, match="both loose images"):
        detect_layout(folders)
    with pytest.raises(DatasetError, match="directly in the folder"):
        load_eval_set(folders, "folders")


def test_query_gallery_layout(tmp_path: Path) -> None:
    root = tmp_path / "reid"
    _image(root / "query" / "0001_c1.jpg")
    _image(root / "query" / "0002_c1_extra.jpg")  # identity stops at the first '_'
    _image(root / "gallery" / "0001_c2.jpg")
    _image(root / "gallery" / "0001_c3.jpg")
    _image(root / "gallery" / "0003_c2.png")
    assert detect_layout(root) == "query-gallery"
    ev = load_eval_set(root)
    assert _names(ev, ev.queries) == ["0001_c1.jpg", "0002_c1_extra.jpg"]
    assert _names(ev, ev.gallery) == ["0001_c2.jpg", "0001_c3.jpg", "0003_c2.png"]
    assert [ev.labels[i] for i in ev.queries] == ["0001", "0002"]
    assert ev.relevance().tolist() == [[True, True, False], [False, False, False]]
    assert not ev.exclude().any()


def test_query_gallery_needs_identity_prefix(tmp_path: Path) -> None:
    root = tmp_path / "reid"
    _image(root / "query" / "noprefix.jpg")
    _image(root / "gallery" / "0001_c2.jpg")
    with pytest.raises(DatasetError, match="<identity>_<image>"):
        load_eval_set(root)


def test_ukbench_layout(tmp_path: Path) -> None:
    root = tmp_path / "ukb"
    for number in range(8, 16):  # objects 2 and 3
        _image(root / f"ukbench{number:05d}.jpg", shade=number * 10)
    assert detect_layout(root) == "ukbench"
    ev = load_eval_set(root)
    assert ev.labels == ("2",) * 4 + ("3",) * 4
    assert ev.paths[4].name == "ukbench00012.jpg"  # 12 // 4 = 3
    rel = ev.relevance()
    assert rel.sum(axis=1).tolist() == [3] * 8  # the three other views of each object
    assert not rel.diagonal().any()


def test_ukbench_incomplete_group_is_not_detected(tmp_path: Path) -> None:
    root = tmp_path / "ukb"
    for number in range(5):  # object 1 has only one view
        _image(root / f"ukbench{number:05d}.jpg")
    with pytest.raises(DatasetError, match="groups of four") as info:
        detect_layout(root)
    assert "Accepted evaluation layouts" in str(info.value)
    with pytest.raises(DatasetError, match="exactly four"):
        load_eval_set(root, "ukbench")


def _copy_detection(tmp_path: Path) -> Path:
    root = tmp_path / "disc"
    _image(root / "queries" / "q1.jpg")
    _image(root / "queries" / "q2.jpg")
    _image(root / "queries" / "q3.jpg")
    _image(root / "references" / "r1.jpg")
    _image(root / "references" / "r2.jpg")
    _image(root / "references" / "distractor.jpg")
    (root / "gt.csv").write_text(
        "query,reference\n"
        "queries/q1.jpg,references/r1.jpg\n"
        "queries/q2.jpg,\n"  # negative query: no copy
        "queries/q3.jpg,references/r2.jpg\n"
        "queries/q3.jpg,references/r1.jpg\n"  # q3 copies two references
    )
    return root


def test_pairs_layout(tmp_path: Path) -> None:
    root = _copy_detection(tmp_path)
    assert detect_layout(root) == "pairs"
    assert detect_layout(root / "gt.csv") == "pairs"
    ev = load_eval_set(root)
    assert ev.layout == "pairs"
    assert _names(ev, ev.queries) == ["q1.jpg", "q2.jpg", "q3.jpg"]
    # The whole references/ folder is the gallery, distractor included.
    assert _names(ev, ev.gallery) == ["distractor.jpg", "r1.jpg", "r2.jpg"]
    assert ev.relevance().tolist() == [
        [False, True, False],
        [False, False, False],
        [False, True, True],
    ]
    # A query's label is the first reference it copies; "" for a negative query.
    labels = [ev.labels[i] for i in ev.queries]
    assert labels == ["references/r1.jpg", "", "references/r2.jpg"]
    assert len(ev.pairs) == 3


def test_pairs_without_reference_folder_uses_named_references(tmp_path: Path) -> None:
    root = _copy_detection(tmp_path)
    (root / "references").rename(root / "refs")
    (root / "gt.csv").write_text("queries/q1.jpg,refs/r1.jpg\n")  # no header
    ev = load_pairs(root / "gt.csv")
    assert _names(ev, ev.gallery) == ["r1.jpg"]
    ev = load_pairs(root / "gt.csv", references=root / "refs")
    assert _names(ev, ev.gallery) == ["distractor.jpg", "r1.jpg", "r2.jpg"]


def test_pairs_missing_file_is_reported(tmp_path: Path) -> None:
    root = _copy_detection(tmp_path)
    (root / "gt.csv").write_text("query,reference\nqueries/nope.jpg,references/r1.jpg\n")
    with pytest.raises(DatasetError, match=r"do not exist.*nope\.jpg"):
        load_eval_set(root)


@pytest.mark.parametrize("make", ["empty", "flat-unnumbered", "one-class", "missing"])
def test_unknown_layouts_explain_what_is_accepted(tmp_path: Path, make: str) -> None:
    root = tmp_path / "data"
    root.mkdir()
    if make == "flat-unnumbered":
        _image(root / "holiday.jpg")
        _image(root / "beach.jpg")
    elif make == "one-class":
        _image(root / "cats" / "a.jpg")
    elif make == "missing":
        root = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as info:
        detect_layout(root)
    message = str(info.value)
    for layout in ("folders", "query-gallery", "ukbench", "pairs"):
        assert layout in message


def test_real_datasets_are_detected() -> None:
    if not SHARED.is_dir():
        pytest.skip("shared datasets not available")
    expected = {"corel1k": "folders", "ukbench-sample": "ukbench", "tiny-imagenet-val": "folders"}
    present = {name: layout for name, layout in expected.items() if (SHARED / name).is_dir()}
    if not present:
        pytest.skip("none of the expected shared datasets is present")
    for name, layout in present.items():
        assert detect_layout(SHARED / name) == layout, name
    if "ukbench-sample" in present:
        ev = load_eval_set(SHARED / "ukbench-sample")
        assert len(ev) % 4 == 0 and ev.relevance().sum(axis=1).tolist() == [3] * len(ev)
