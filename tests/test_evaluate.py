"""``lookalike eval`` on tiny evaluation sets made from scikit-image's photos, in every layout."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from lookalike.evaluate import run as evaluate_module
from lookalike.evaluate.run import EvalResult, evaluate
from tests.conftest import shared_dataset, skimage_photo

LOOKALIKE = [sys.executable, "-m", "lookalike"]
CLASSES = ("astronaut", "chelsea", "coffee")


def _variant(photo: Image.Image, n: int) -> Image.Image:
    """The n-th view of a photo: a different crop, rotation and colour each time."""
    w, h = photo.size
    box = [(0, 0, w, h), (w // 8, h // 10, w, h), (0, h // 8, w * 7 // 8, h), (w // 10, 0, w, h)][n]
    image = photo.crop(box).rotate((0, 8, -10, 4)[n], expand=False, fillcolor=(128, 128, 128))
    image = ImageEnhance.Color(image).enhance((1.0, 0.7, 1.3, 0.9)[n])
    image = ImageEnhance.Brightness(image).enhance((1.0, 1.15, 0.85, 1.05)[n])
    image.thumbnail((256, 256))
    return image


def _views(name: str) -> list[Image.Image]:
    photo = skimage_photo(name)
    return [_variant(photo, n) for n in range(4)]


@pytest.fixture(scope="module")
def views() -> dict[str, list[Image.Image]]:
    return {name: _views(name) for name in CLASSES}


@pytest.fixture
def class_folders(tmp_path: Path, views) -> Path:
    root = tmp_path / "classes"
    for name, images in views.items():
        (root / name).mkdir(parents=True)
        for n, image in enumerate(images):
            image.save(root / name / f"{name}_{n}.jpg", quality=90)
    return root


def _check_ranges(result: EvalResult) -> None:
    for name, value in result.metrics.items():
        if name == "N-S":
            assert 1.0 <= value <= 4.0
        elif name != "threshold@P90" and not math.isnan(value):
            assert 0.0 <= value <= 1.0, (name, value)


def test_folders_eval_and_incremental_rerun(tmp_path, class_folders, embedder) -> None:
    col = tmp_path / "col"
    result = evaluate(class_folders, collection=col, embedder=embedder, worst=3)
    assert (result.layout, result.images, result.queries, result.gallery) == ("folders", 12, 12, 12)
    _check_ranges(result)
    assert result.metrics["mAP"] > 0.8 and result.metrics["P@1"] > 0.9
    assert "P@20" not in result.metrics  # only 12 images: no 20 results to count
    assert set(result.per_class) == set(CLASSES)
    assert all(row["queries"] == 4 and 0 <= row["P@10"] <= 1 for row in result.per_class.values())
    assert result.indexing["embedded"] == 12 and result.indexing["images_per_second"] > 0
    assert result.latency["queries"] == 12 and result.latency["p50_ms"] > 0
    assert "CPU" in result.device or "GPU" in result.device
    # The worst queries come worst first, never list themselves, and say what is correct.
    assert len(result.worst) == 3
    assert [q.score for q in result.worst] == sorted(q.score for q in result.worst)
    for query in result.worst:
        assert query.query not in [h.path for h in query.hits] and len(query.hits) == 8
        label = Path(query.query).parent.name
        assert [h.correct for h in query.hits] == [
            Path(h.path).parent.name == label for h in query.hits
        ]
    assert result.pr_curve is not None and result.pr_predictions == "every query-gallery pair"
    json.dumps(result.to_dict())  # JSON-safe: nan -> null, numpy scalars -> numbers

    # Second run on the same collection: nothing to embed, same numbers.
    again = evaluate(class_folders, collection=col, embedder=embedder, worst=3)
    assert again.indexing["embedded"] == 0 and "nothing to embed" in again.indexing["note"]
    assert again.metrics == pytest.approx(result.metrics)

    # Scoring in many small blocks (and a top-k PR curve) gives the same ranking metrics.
    evaluate_module.BLOCK_CELLS, evaluate_module.PR_ALL_PAIRS = 30, 50
    try:
        blocked = evaluate(class_folders, collection=col, embedder=embedder, worst=0)
    finally:
        evaluate_module.BLOCK_CELLS, evaluate_module.PR_ALL_PAIRS = 4_000_000, 4_000_000
    assert blocked.metrics == pytest.approx(result.metrics)
    assert blocked.pr_predictions == "each query's top 4" and blocked.worst == []


def test_default_cache_collection_is_reused(tmp_path, class_folders, embedder, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_EVAL_CACHE", str(tmp_path / "cache"))
    first = evaluate(class_folders, embedder=embedder, worst=0)
    assert Path(first.collection).parent == tmp_path / "cache"
    second = evaluate(class_folders, embedder=embedder, worst=0)
    assert second.collection == first.collection and second.indexing["embedded"] == 0


def test_query_gallery_split_with_an_unreadable_file(tmp_path, views, embedder) -> None:
    root = tmp_path / "reid"
    (root / "query").mkdir(parents=True)
    (root / "gallery").mkdir()
    for name, images in views.items():
        images[0].save(root / "query" / f"{name}_0.jpg")
        for n, image in enumerate(images[1:], start=1):
            image.save(root / "gallery" / f"{name}_{n}.jpg")
    (root / "gallery" / "coffee_9.jpg").write_bytes(b"not a jpeg")
    result = evaluate(root, collection=tmp_path / "col", embedder=embedder)
    assert (result.layout, result.queries, result.gallery) == ("query-gallery", 3, 9)
    assert [Path(p).name for p, _ in result.skipped] == ["coffee_9.jpg"]
    assert result.metrics["Recall@1"] == 1.0 and result.metrics["mAP"] > 0.8
    _check_ranges(result)


def test_ukbench_flat_folder(tmp_path, views, embedder) -> None:
    root = tmp_path / "ukb"
    root.mkdir()
    for obj, name in enumerate(CLASSES):
        for n, image in enumerate(views[name]):
            image.save(root / f"ukbench{4 * obj + n:05d}.jpg")
    result = evaluate(root, collection=tmp_path / "col", embedder=embedder)
    assert result.layout == "ukbench"
    assert result.metrics["N-S"] > 3.0
    _check_ranges(result)


def test_pairs_csv_with_a_negative_query(tmp_path, views, embedder) -> None:
    root = tmp_path / "copies"
    (root / "references").mkdir(parents=True)
    (root / "queries").mkdir()
    for name, images in views.items():
        images[0].save(root / "references" / f"{name}.jpg")
        images[2].save(root / "queries" / f"{name}.jpg")
    skimage_photo("rocket").resize((256, 256)).save(root / "queries" / "rocket.jpg")
    rows = [f"queries/{n}.jpg,references/{n}.jpg" for n in CLASSES] + ["queries/rocket.jpg,"]
    (root / "gt.csv").write_text("query,reference\n" + "\n".join(rows) + "\n")
    result = evaluate(root, collection=tmp_path / "col", embedder=embedder)
    assert (result.layout, result.queries, result.gallery) == ("pairs", 4, 3)
    assert 0.0 <= result.metrics["micro-AP"] <= 1.0
    assert result.metrics["Recall@1"] == 1.0  # the negative query does not count
    assert 0.0 <= result.metrics["Recall@P90"] <= 1.0
    assert result.per_class == {} and result.pr_curve is not None
    _check_ranges(result)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LOOKALIKE, *args], capture_output=True, text=True, timeout=300)


def test_cli_eval_json_and_report(tmp_path, class_folders) -> None:
    report = tmp_path / "report"
    done = _run(
        "eval", str(class_folders), "-c", str(tmp_path / "col"), "--json",
        "--report", str(report), "--worst", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["layout"] == "folders" and data["metrics"]["mAP"] > 0.8
    assert set(data["per_class"]) == set(CLASSES) and len(data["worst"]) == 2
    assert data["indexing"]["embedded"] == 12
    assert (report / "index.html").is_file() and data["report"] == str(report / "index.html")
    assert {p.name for p in report.glob("*.png")} == {
        "pr_curve.png",
        "query_001.png",
        "query_002.png",
    }
    assert "Per class" in (report / "index.html").read_text()


def test_cli_eval_errors(tmp_path, class_folders) -> None:
    wrong = _run("eval", str(class_folders), "--layout", "nonsense", "-c", str(tmp_path / "c"))
    # A bad choice is a usage error (exit 2): Click's usage lines, then one "Error:" line.
    assert wrong.returncode == 2 and "unknown layout 'nonsense'" in wrong.stderr
    errors = [line for line in wrong.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1 and "Traceback" not in wrong.stderr
    (tmp_path / "empty").mkdir()
    empty = _run("eval", str(tmp_path / "empty"), "-c", str(tmp_path / "c"))
    assert empty.returncode == 1 and "no images found" in empty.stderr
    assert len(empty.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_ukbench_sample_ns(tmp_path, embedder) -> None:
    result = evaluate(
        shared_dataset("ukbench-sample"), collection=tmp_path / "col", embedder=embedder
    )
    assert result.metrics["N-S"] >= 3.5
