"""Text search through collections: offline, combined queries, older collections, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lookalike import Collection, CollectionError
from tests.test_cli import run


@pytest.fixture
def col(tmp_path, photo_dir, embedder):
    with Collection.create(tmp_path / "col", embedder=embedder) as collection:
        collection.sync([photo_dir])
        yield collection


def _names(results) -> list[str]:
    return [Path(r.path).stem for r in results]


def test_text_finds_what_the_words_describe(col) -> None:
    assert "text" in col.spaces()
    assert _names(col.search_text("a cat", k=1)) == ["chelsea"]
    assert _names(col.search_text("a cup of coffee", k=1)) == ["coffee"]
    assert -1 <= col.search_text("a cat", k=6)[-1].score <= col.search_text("a cat")[0].score <= 1


def test_negative_terms_and_images_combine(col, photo_dir) -> None:
    cat = col.search_text("a cat", k=6)
    steered = col.search_text("a cat", k=6, negative=[("cat", 2.0)])
    assert _names(steered)[0] != "chelsea"  # subtracting the concept itself pushes it away
    assert {r.id for r in cat} == {r.id for r in steered}
    combined = col.search_text(["a cat:0.2"], k=1, images=[photo_dir / "rocket.jpg"])
    assert _names(combined) == ["rocket"]  # the image outweighs a light text term


def test_older_collection_gains_text_without_decoding(col, photo_dir) -> None:
    expected = _names(col.search_text("a cat", k=3))
    del col.manifest["spaces"]["text"]  # as written before text search existed
    assert _names(col.search_text("a cat", k=3)) == expected  # derived on the fly
    for image in photo_dir.iterdir():
        image.unlink()  # nothing can be decoded again
    assert col.enable_text()
    assert "text" in col.spaces() and _names(col.search_text("a cat", k=3)) == expected


def test_a_model_without_a_text_side_says_so(tmp_path, photo_dir) -> None:
    from lookalike.models.efficientnet import EfficientNetLite

    plain = EfficientNetLite(fusion=0)  # pooled features only: no class probabilities
    with Collection.create(tmp_path / "plain", embedder=plain) as collection:
        collection.add([photo_dir / "rocket.jpg"])
        assert "text" not in collection.spaces()
        with pytest.raises(CollectionError, match="no text side"):
            collection.search_text("a rocket")


def test_cli_text_search_json(tmp_path, photo_dir) -> None:
    col = str(tmp_path / "cli")
    run("index", str(photo_dir), "-c", col)
    out = run("search", "--text", "a cat", "--text", "coffee", "-c", col, "-k", "2", "--json")
    first, second = (json.loads(line) for line in out.stdout.splitlines())
    assert first["query"] == "a cat" and Path(first["results"][0]["path"]).stem == "chelsea"
    assert Path(second["results"][0]["path"]).stem == "coffee"
    assert set(first["results"][0]) >= {"path", "score", "id"}


def test_text_model_version_is_stable_across_loading(col) -> None:
    from lookalike.models.text import ConSE

    fresh = ConSE()
    before = fresh.version
    fresh.text_vectors(["a cat"])  # loads the sentence model
    assert fresh.version == before == col.spaces()["text"]["version"]
