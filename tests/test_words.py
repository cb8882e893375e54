"""Finding pictures by the words in them (lookalike.words): the OCR on rendered text, the
matching (exact > prefix/partial > fuzzy, accents and OCR confusions), the full-text stores
(SQLite FTS5 trigram; PostgreSQL pg_trgm on a real server), the combined ranking, resuming an
interrupted run, and the message for a collection without words.

The tests that run the OCR skip when its engine (rapidocr-onnxruntime) is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest
from PIL import Image, ImageDraw, ImageFont

from lookalike.collection import Collection
from lookalike.errors import CollectionError
from lookalike.words.match import Query, best_match, fold, key, score_lines, words_of
from tests.conftest import PHOTOS, skimage_photo
from tests.test_catalogue_contract import fresh_postgres_uri, postgres_server  # noqa: F401

FONT = str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf")
#: image name -> (text drawn, top-left, font size)
TEXTS = {
    "bus": ("LISBOA 2024 Express", (20, 40), 30),
    "cafe": ("Café Zentrix", (30, 150), 34),
}


def _with_text(name: str, photo: str) -> Image.Image:
    image = skimage_photo(photo).resize((480, 320))
    text, where, size = TEXTS[name]
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = draw.textbbox(where, text, font=ImageFont.truetype(FONT, size))
    draw.rectangle((x0 - 6, y0 - 6, x1 + 6, y1 + 6), fill=(20, 20, 20))
    draw.text(where, text, font=ImageFont.truetype(FONT, size), fill=(255, 230, 40))
    return image


@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("rapidocr_onnxruntime", reason="the OCR engine is not installed")
    from lookalike.words.ocr import Reader

    return Reader(threads=2)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Four photos without text and two with text (JPEG)."""
    folder = tmp_path_factory.mktemp("words") / "photos"
    folder.mkdir()
    for name in PHOTOS[:4]:
        skimage_photo(name).save(folder / f"{name}.jpg", quality=92)
    _with_text("bus", "rocket").save(folder / "bus.jpg", quality=90)
    _with_text("cafe", "coffee").save(folder / "cafe.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def indexed(photos: Path, embedder, engine, tmp_path_factory) -> Path:
    """A collection of the photos with their words read."""
    from lookalike.words import add_words

    path = tmp_path_factory.mktemp("words") / "col"
    with Collection.open(path, create=True, embedder=embedder) as col:
        col.sync([photos])
        report = add_words(col, reader=engine, batch_size=4)
    assert report.read == 6 and report.with_text == 2
    return path


# -- matching (no OCR) ---------------------------------------------------------------------
def test_folding_removes_case_accents_and_punctuation() -> None:
    assert fold("Crème-BRÛLÉE, Zürich!") == "creme brulee zurich"
    assert key("LISB0A") == key("lisboa")
    assert words_of("LISB0A2024Express") == ["lisb0a2024express", "lisb0a", "2024", "express"]


def test_exact_beats_prefix_beats_partial_beats_fuzzy() -> None:
    exact = best_match("lisboa", ["lisboa"])
    ocr = best_match("lisboa", ["lisb0a"])  # an OCR error still matches, just below exact
    prefix = best_match("lisb", ["lisboa"])
    partial = best_match("sboa", ["lisboa"])
    fuzzy = best_match("lisboa", ["lisbqa"])  # one letter misread
    assert [m.kind for m in (exact, ocr, prefix, partial, fuzzy)] == [
        "exact",
        "ocr",
        "prefix",
        "partial",
        "fuzzy",
    ]
    assert exact.score > ocr.score > prefix.score > partial.score > fuzzy.score > 0
    assert best_match("lisboa", ["madrid"]).score == 0


def test_an_image_showing_every_word_ranks_first() -> None:
    query = Query.parse("Lisboa express")
    both, _ = score_lines(query, [("LISBOA 2024 Express", 0.9)])
    one, _ = score_lines(query, [("Lisboa", 0.99)])
    ran_together, matches = score_lines(query, [("LISB0A2024Express", 0.9)])
    assert both > ran_together > one > 0
    assert {m.word for m in matches} == {"lisboa", "express"}


# -- the OCR -------------------------------------------------------------------------------
def test_reads_rendered_text_with_its_box(engine) -> None:
    image = _with_text("bus", "rocket")
    lines = engine.read_one(image)
    found = [ln for ln in lines if "express" in words_of(ln.text)]
    assert found, [ln.text for ln in lines]
    line = found[0]
    assert key("lisboa") in key(line.text) and "2024" in line.text
    x0, y0, x1, y1 = line.bbox
    assert 0 <= x0 <= 30 and 25 <= y0 <= 55 and x1 > 300 and y1 < 90  # drawn at (20, 40)
    assert 0.5 <= line.confidence <= 1


def test_boxes_are_in_pixels_of_the_original_image(engine) -> None:
    image = _with_text("bus", "rocket")
    small = image.resize((240, 160))
    line = next(ln for ln in engine.read_one(small, size=(480, 320)) if "2024" in ln.text)
    assert line.bbox[2] > 300  # scaled back to the 480-px-wide original


# -- searching a collection ----------------------------------------------------------------
def test_search_by_words_finds_the_picture_with_its_lines(indexed: Path) -> None:
    from lookalike.words import search_words, words_info

    with Collection.open(indexed) as col:
        hits = search_words(col, "lisboa", k=3)
        assert Path(hits[0].path).name == "bus.jpg"
        data = hits[0].to_dict()
        assert {"path", "score", "id", "words", "words_score"} <= set(data)
        assert data["score"] == data["words_score"] > 0.85
        assert data["words"][0]["box"] and data["words"][0]["matched"][0]["word"] == "lisboa"
        # accents folded, a brand-like word, a partial word, a misspelt query
        assert Path(search_words(col, "cafe", k=1)[0].path).name == "cafe.jpg"
        assert Path(search_words(col, "ZENTR", k=1)[0].path).name == "cafe.jpg"
        assert Path(search_words(col, "expres", k=1)[0].path).name == "bus.jpg"
        assert Path(search_words(col, "lisbao", k=1)[0].path).name == "bus.jpg"  # fuzzy
        assert search_words(col, "giraffe", k=3) == []
        info = words_info(col)
        assert info["images_read"] == 6 and info["images_with_text"] == 2
        assert info["to_read"] == 0


def test_words_combine_with_an_image_query_in_one_ranking(indexed: Path, photos: Path) -> None:
    from lookalike.words import search_words

    with Collection.open(indexed) as col:
        # the coffee photo looks like the query; the bus shows the words: the picture that
        # does both comes first, and each result carries both parts of its score
        hits = search_words(col, "zentrix", k=6, image=photos / "coffee.jpg")
        assert Path(hits[0].path).name == "cafe.jpg"
        first = hits[0]
        assert first.similarity is not None and first.words_score > 0.8
        assert first.score == pytest.approx(0.5 * first.words_score + 0.5 * first.similarity)
        looks_only = next(h for h in hits if Path(h.path).name == "coffee.jpg")
        assert looks_only.words_score == 0 and looks_only.words == []
        text_hits = search_words(col, "express", k=3, text="a rocket")
        assert Path(text_hits[0].path).name == "bus.jpg"


def test_a_collection_without_words_says_how_to_add_them(photos: Path, embedder, tmp_path):
    from lookalike.words import has_words, search_words, words_info

    with Collection.open(tmp_path / "col", create=True, embedder=embedder) as col:
        col.add([photos / "astronaut.jpg"])
        with pytest.raises(CollectionError, match="lookalike words --collection"):
            search_words(col, "lisboa")
        assert words_info(col) is None and not has_words(col)


def test_an_interrupted_run_resumes_and_never_half_writes(
    photos: Path, embedder, engine, tmp_path, monkeypatch
) -> None:
    from lookalike.words import add_words, words_info
    from lookalike.words import store as words_store

    with Collection.open(tmp_path / "col", create=True, embedder=embedder) as col:
        col.sync([photos])
        original = words_store.key
        calls = {"n": 0}

        def crash_on_second_line(text: str) -> str:
            calls["n"] += 1
            if calls["n"] == 2:  # inside a batch's transaction, after one line is written
                raise RuntimeError("killed")
            return original(text)

        monkeypatch.setattr(words_store, "key", crash_on_second_line)
        with pytest.raises(RuntimeError, match="killed"):
            add_words(col, reader=engine, batch_size=2)
        monkeypatch.setattr(words_store, "key", original)
        partial = words_info(col)
        # the batch that crashed left nothing: every image read has all its lines
        assert partial["images_read"] < 6
        assert partial["lines"] == partial["images_with_text"]  # one line per text image
        resumed = add_words(col, reader=engine, batch_size=2)
        assert resumed.read == 6 - partial["images_read"]
        assert words_info(col)["images_read"] == 6
        assert add_words(col, reader=engine).read == 0  # nothing left to read
        # an image removed from the collection is dropped from the words on the next run
        col.remove([photos / "bus.jpg"])
        from lookalike.words import search_words

        assert all(Path(h.path).name != "bus.jpg" for h in search_words(col, "lisboa"))
        assert add_words(col, reader=engine).dropped == 1


def test_the_cli_reads_images_and_answers_words_queries(indexed: Path, photos: Path) -> None:
    from typer.testing import CliRunner

    from lookalike.cli import app
    from lookalike.cli.application import COMMANDS

    if "lookalike.words.cli" not in COMMANDS:
        pytest.skip("lookalike.words.cli is not in lookalike.cli.application.COMMANDS yet")
    runner = CliRunner()
    result = runner.invoke(app, ["ocr", str(photos / "bus.jpg"), "--json"])
    assert result.exit_code == 0, result.output
    lines = json.loads(result.stdout.splitlines()[0])["lines"]
    assert any("Express" in ln["text"] for ln in lines)
    result = runner.invoke(app, ["words", "--collection", str(indexed), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["read"] == 0
    result = runner.invoke(
        app, ["search", "--words", "lisboa", "--collection", str(indexed), "--json"]
    )
    assert result.exit_code == 0, result.output
    hit = json.loads(result.stdout.splitlines()[0])["results"][0]
    assert Path(hit["path"]).name == "bus.jpg" and hit["words"]


def test_the_cli_says_in_one_line_how_to_add_words(photos: Path, embedder, tmp_path) -> None:
    from typer.testing import CliRunner

    from lookalike.cli import app

    runner = CliRunner()
    with Collection.open(tmp_path / "col", create=True, embedder=embedder) as col:
        col.add([photos / "astronaut.jpg"])
    result = runner.invoke(
        app, ["search", "--words", "lisboa", "--collection", str(tmp_path / "col")]
    )
    assert result.exit_code == 1
    assert "lookalike words --collection" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_words_in_a_postgresql_catalogue(
    postgres_server: str,  # noqa: F811
    photos: Path,
    embedder,
    engine,
    tmp_path,
) -> None:
    from lookalike.words import add_words, search_words, words_info
    from lookalike.words.store import FILE_NAME

    uri = fresh_postgres_uri(postgres_server)
    path = tmp_path / "col"
    with Collection.open(path, create=True, embedder=embedder, catalogue=uri) as col:
        col.add([photos / "bus.jpg", photos / "cafe.jpg", photos / "astronaut.jpg"])
        assert add_words(col, reader=engine).read == 3
        assert not (path / FILE_NAME).exists()  # kept in the catalogue's database
        assert Path(search_words(col, "lisboa", k=1)[0].path).name == "bus.jpg"
        assert Path(search_words(col, "lisbao", k=1)[0].path).name == "bus.jpg"  # fuzzy
        assert Path(search_words(col, "Café", k=1)[0].path).name == "cafe.jpg"
        assert words_info(col)["images_with_text"] == 2
        assert add_words(col, reader=engine).read == 0


def test_words_through_the_rest_api(tmp_path: Path, embedder) -> None:
    """POST /catalogs/{id}/words reads the words; search takes ``words``; later uploads are
    read as they come; a catalogue without words says how to read them."""
    pytest.importorskip("rapidocr_onnxruntime")
    import io

    from fastapi.testclient import TestClient

    from tests.test_server import ADMIN, auth, make_app

    admin = auth(ADMIN)
    client = TestClient(make_app(tmp_path / "data", embedder))
    catalog = client.post("/catalogs", json={"name": "signs"}, headers=admin).json()["id"]

    def jpeg(image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=92)
        return buffer.getvalue()

    files = [("files", ("plain.jpg", jpeg(skimage_photo("coffee")), "image/jpeg"))]
    assert client.post(f"/catalogs/{catalog}/images", files=files, headers=admin).status_code == 200
    url = f"/catalogs/{catalog}/search"
    refused = client.post(url, json={"words": "lisboa"}, headers=admin)
    assert refused.status_code == 400 and "/words" in refused.json()["error"]

    assert client.post(f"/catalogs/{catalog}/words", headers=admin).status_code == 200
    sign = jpeg(_with_text("bus", "astronaut"))
    files = [("files", ("sign.jpg", sign, "image/jpeg"))]
    added = client.post(f"/catalogs/{catalog}/images", files=files, headers=admin).json()
    found = client.post(url, json={"words": "lisboa", "k": 2}, headers=admin)
    assert found.status_code == 200, found.text
    results = found.json()["results"]
    assert results and results[0]["id"] == added["images"][0]["id"]
    assert results[0]["words"] and "path" not in results[0]
