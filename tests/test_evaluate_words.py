"""``lookalike eval --task words`` on a tiny rendered set: words drawn on photos, a ``words.csv``
ground truth, photos without text as distractors; each word is a query whose correct answers are
the images that show it. Also the words set's errors and a collection without words.

Skips when the OCR engine (rapidocr-onnxruntime) is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from lookalike.collection import Collection
from lookalike.errors import DatasetError, EvalError
from lookalike.evaluate.datasets import load_words

from .conftest import skimage_photo
from .test_words import FONT

#: file -> (photo, text drawn, top-left, font size, what words.csv says it shows)
SIGNS = {
    "bus.jpg": ("rocket", "LISBOA Express", (30, 40), 34, "Lisboa Express"),
    "cafe.jpg": ("coffee", "Café Zentrix", (40, 200), 34, "Café Zentrix"),
    "train.jpg": ("chelsea", "EXPRESS Porto", (60, 120), 36, "express porto"),
}


def _sign(photo: str, text: str, where: tuple[int, int], size: int) -> Image.Image:
    image = skimage_photo(photo).resize((480, 320))
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, size)
    x0, y0, x1, y1 = draw.textbbox(where, text, font=font)
    draw.rectangle((x0 - 6, y0 - 6, x1 + 6, y1 + 6), fill=(20, 20, 20))
    draw.text(where, text, font=font, fill=(255, 230, 40))
    return image


@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("rapidocr_onnxruntime", reason="the OCR engine is not installed")
    from lookalike.words.ocr import Reader

    return Reader(threads=2)


@pytest.fixture(scope="module")
def words_set(tmp_path_factory) -> Path:
    """Three signs and two photos without text, with words.csv (a header, one image on two
    rows, a quoted field)."""
    root = tmp_path_factory.mktemp("words-eval") / "signs"
    (root / "plain").mkdir(parents=True)
    for name, (photo, text, where, size, _) in SIGNS.items():
        _sign(photo, text, where, size).save(root / name, quality=90)
    for photo in ("astronaut", "hubble_deep_field"):
        skimage_photo(photo).resize((480, 320)).save(root / "plain" / f"{photo}.jpg", quality=90)
    rows = ["path,words", "bus.jpg,Lisboa", "bus.jpg,Express", '"cafe.jpg","Café, Zentrix"']
    rows.append("train.jpg,express porto")
    (root / "words.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_words_set_is_read_from_its_csv(words_set: Path) -> None:
    ws = load_words(words_set)
    assert len(ws) == 5  # the distractors without text are part of the gallery
    queries = ws.queries()
    assert list(queries) == ["cafe", "express", "lisboa", "porto", "zentrix"]  # folded, sorted
    names = [p.name for p in ws.paths]
    assert sorted(names[i] for i in queries["express"]) == ["bus.jpg", "train.jpg"]
    assert load_words(words_set / "words.csv").paths == ws.paths


def test_words_set_errors_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no words\.csv"):
        load_words(tmp_path)
    (tmp_path / "words.csv").write_text("path,words\nmissing.jpg,hello\n")
    with pytest.raises(DatasetError, match=r"missing\.jpg does not exist"):
        load_words(tmp_path)
    skimage_photo("coffee").save(tmp_path / "a.jpg")
    (tmp_path / "words.csv").write_text("a.jpg\n")
    with pytest.raises(DatasetError, match="is not 'path,words'"):
        load_words(tmp_path)


def test_eval_words_scores_each_word_query(words_set: Path, embedder, engine, tmp_path) -> None:
    from lookalike.evaluate.words import RANKED, evaluate_words

    col = tmp_path / "col"
    result = evaluate_words(words_set, collection=col, embedder=embedder, reader=engine)
    assert result.layout == "words" and result.images == 5 and result.queries == 5
    assert result.indexing["embedded"] == 5 and result.indexing["with_text"] == 3
    per_word = result.per_class
    assert set(per_word) == {"cafe", "express", "lisboa", "porto", "zentrix"}
    assert per_word["express"]["images"] == 2 and per_word["express"]["found@10"] == 1.0
    assert per_word["lisboa"]["P@1"] == 1.0 and per_word["zentrix"]["mAP"] == 1.0
    metrics = result.metrics
    assert set(metrics) == {"mAP", "P@1", "Recall@10", "found@10"}
    assert metrics["P@1"] >= 0.8 and metrics["mAP"] >= 0.8 and metrics["Recall@10"] >= 0.8
    assert all(0 <= v <= 1 for v in metrics.values())
    assert result.latency["queries"] == 5 and result.latency["mean_ms"] > 0
    assert RANKED >= 10
    data = json.loads(json.dumps(result.to_dict()))
    assert data["metrics"]["P@1"] == round(metrics["P@1"], 6)

    # A second run reuses the collection: nothing embedded, no word read again.
    again = evaluate_words(words_set, collection=col, embedder=embedder, reader=engine)
    assert again.indexing["embedded"] == 0 and again.indexing["words_read"] == 0
    assert again.metrics == metrics


def test_eval_words_refuses_a_collection_without_words(
    words_set: Path, embedder, engine, tmp_path
) -> None:
    from lookalike.evaluate.words import evaluate_words

    path = tmp_path / "col"
    with Collection.open(path, create=True, embedder=embedder) as col:
        col.add([str(words_set / "bus.jpg")])
    with pytest.raises(EvalError, match="lookalike words --collection"):
        evaluate_words(words_set, collection=path, embedder=embedder, reader=engine)
    with Collection.open(path) as col:
        assert len(col) == 1  # nothing was added to it


def test_the_cli_runs_the_words_task(words_set: Path, engine, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from lookalike.cli import app

    monkeypatch.setenv("LOOKALIKE_EVAL_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(words_set), "--task", "words", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["layout"] == "words" and data["queries"] == 5
    assert data["metrics"]["P@1"] >= 0.8 and data["latency"]["mean_ms"] > 0
    report = tmp_path / "report"
    shown = runner.invoke(app, ["eval", str(words_set), "--task", "words", "--report", str(report)])
    assert shown.exit_code == 0, shown.output
    assert "P@1" in shown.stdout and "ms per query" in shown.stdout
    assert "zentrix" in (report / "index.html").read_text()
    wrong = runner.invoke(app, ["eval", str(words_set), "--task", "words", "--layout", "folders"])
    assert wrong.exit_code == 2 and "--layout is for --task images" in wrong.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = runner.invoke(app, ["eval", str(empty), "--task", "words"])
    assert missing.exit_code == 1 and "no words.csv" in missing.stderr
