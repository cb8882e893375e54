"""The web page's filters and compare view in headless Chromium (Debian's, driven by Playwright)
against a real uvicorn server on loopback, as tests/test_web.py drives the rest of the page:
photos with EXIF headers (camera, taken time) and tags are uploaded, a query image is searched,
then filter chips (a camera, a date range, a tag) are added and removed: the results shown
change accordingly and are, in order, what the REST API answers for the same query and filter.
Then the compare view shows the query beside each of two results. Screenshots of each step are
saved under the test's tmp_path (and checked to be PNG images)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from .conftest import skimage_photo
from .test_server import ADMIN
from .test_web import csp_violations, page, server_url, until  # noqa: F401 (fixtures)

#: name -> (camera make, model, taken (EXIF), tags)
LIBRARY = {
    "astronaut": ("Canon", "Canon EOS 5D", "2021:05:01 10:00:00", ["space", "people"]),
    "chelsea": ("Canon", "Canon EOS R5", "2022:08:15 18:30:00", ["cat"]),
    "coffee": ("NIKON CORPORATION", "NIKON D750", "2022:03:02 08:00:00", ["food"]),
    "rocket": ("Canon", "Canon EOS R5", "2023:01:20 12:00:00", ["space"]),
    "hubble_deep_field": ("NIKON CORPORATION", "NIKON Z 6", "2021:11:11 23:00:00", ["space"]),
    "immunohistochemistry": ("Sony", "ILCE-7M3", "2022:12:24 09:15:00", ["lab"]),
}
PNG = b"\x89PNG\r\n\x1a\n"


def _photo(name: str, folder: Path) -> Path:
    """A bundled photo saved as JPEG with its LIBRARY camera and taken time in EXIF."""
    make, model, taken, _ = LIBRARY[name]
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = make, model
    sub = exif.get_ifd(0x8769)
    sub[0x9003], sub[0x9011] = taken, "+01:00"
    path = folder / f"{name}.jpg"
    skimage_photo(name).save(path, quality=90, exif=exif)
    return path


def _shot(tab, path: Path) -> None:
    """A full-page screenshot at ``path``, checked to be a PNG image of the page."""
    tab.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 5_000, path
    with Image.open(path) as image:
        assert image.width >= 300 and image.height >= 300


def test_filter_chips_and_compare_view(page, server_url, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    httpx = pytest.importorskip("httpx")
    key = {"Authorization": f"Bearer {ADMIN}"}
    shots = tmp_path / "screenshots"
    shots.mkdir()
    folder = tmp_path / "library"
    folder.mkdir()
    photos = {name: _photo(name, folder) for name in LIBRARY}

    blocked = csp_violations(page)
    page.goto(server_url)
    page.fill("#key", ADMIN)
    page.click("#key-form button")
    expect(page.locator("#message")).to_contain_text("Signed in as admin")
    page.fill("#new-name", "Library")
    page.click("#create-form button")
    expect(page.locator("#catalog option")).to_have_text(["Library"])
    catalog = page.locator("#catalog").input_value()

    # The photos, with their tags, through the REST API (the page uploads file names only).
    with httpx.Client(base_url=server_url, headers=key, timeout=120) as api:
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photos.values()]
        metadata = [{"filename": p.name, "tags": LIBRARY[n][3]} for n, p in photos.items()]
        added = api.post(
            f"/catalogs/{catalog}/images",
            params={"wait": "true"},
            files=files,
            data={"metadata": json.dumps(metadata)},
        )
        assert added.status_code in (200, 201), added.text
        ids = {n: item["id"] for n, item in zip(photos, added.json()["images"], strict=True)}
        query = tmp_path / "query.jpg"
        skimage_photo("rocket").crop((40, 20, 380, 400)).save(query, quality=80)

        def answer(where: dict | None) -> list[int]:
            """The REST API's results for the query under ``where``, as the page asks."""
            form = {"k": "12"} | ({"where": json.dumps(where)} if where else {})
            found = api.post(
                f"/catalogs/{catalog}/search",
                files={"file": ("query", query.read_bytes(), "image/jpeg")},
                data=form,
            )
            assert found.status_code == 200, found.text
            return [hit["id"] for hit in found.json()["results"]]

        cards = page.locator("#results .card")

        def shown() -> list[int]:
            return [int(i) for i in cards.evaluate_all("cards => cards.map(c => c.dataset.id)")]

        def searched(action) -> list[int]:
            """Run ``action`` (which searches) and the ids the page then shows."""
            with page.expect_response(re.compile(r"/search$")) as response:
                action()
            assert response.value.status == 200, response.value.text()
            expect(page.locator("#message")).to_contain_text(re.compile(r"results? in \d+ ms"))
            want = [hit["id"] for hit in response.value.json()["results"]]
            expect(cards).to_have_count(len(want))
            assert shown() == want
            return want

        def add_filter(kind: str, value: str) -> list[int]:
            def submit() -> None:
                page.select_option("#filter-kind", kind)
                page.fill("#filter-value", value)
                page.click("#filter-form button[type=submit]")

            return searched(submit)

        # No filter: every photo, the rocket first.
        everything = searched(lambda: page.set_input_files("#query-file", str(query)))
        assert sorted(everything) == sorted(ids.values()) and everything[0] == ids["rocket"]
        assert everything == answer(None)
        _shot(page, shots / "1-no-filter.png")

        # A camera: the Canon photos only, in the API's order.
        canon = add_filter("camera", "canon")
        assert set(canon) == {ids[n] for n in ("astronaut", "chelsea", "rocket")}
        assert canon == answer({"camera": "canon"})
        expect(page.locator("#chips .chip")).to_have_text(["camera canon ×"])
        _shot(page, shots / "2-camera.png")

        # A date range on top: the Canon photos taken in 2022.
        add_filter("taken_after", "2022-01-01")
        in_2022 = add_filter("taken_before", "2023")
        assert in_2022 == [ids["chelsea"]]
        where = {"camera": "canon", "taken_after": "2022-01-01", "taken_before": "2023"}
        assert in_2022 == answer(where)
        expect(page.locator("#chips .chip")).to_have_count(3)
        expect(cards.first.locator(".caption")).to_contain_text("chelsea.jpg")
        expect(cards.first.locator(".taken")).to_contain_text("2022-08-15 18:30")
        _shot(page, shots / "3-camera-and-dates.png")

        # The camera chip removed: every photo of 2022.
        any_camera = searched(lambda: page.click("#chips .chip >> nth=0"))
        assert set(any_camera) == {ids[n] for n in ("chelsea", "coffee", "immunohistochemistry")}
        assert any_camera == answer({"taken_after": "2022-01-01", "taken_before": "2023"})
        expect(page.locator("#chips .chip")).to_have_count(2)

        # The dates removed, a tag added: the photos tagged "space".
        searched(lambda: page.click("#chips .chip >> nth=0"))
        searched(lambda: page.click("#chips .chip >> nth=0"))
        expect(page.locator("#chips .chip")).to_have_count(0)
        space = add_filter("where", "tags=space")
        assert set(space) == {ids[n] for n in ("astronaut", "rocket", "hubble_deep_field")}
        assert space == answer({"where": ["tags=space"]})
        assert space[0] == ids["rocket"]
        _shot(page, shots / "4-tag.png")

    # The compare view: the query beside each of two results.
    sources = []
    for nth in (0, 1):
        cards.nth(nth).click()
        expect(page.locator("#details")).to_be_visible()
        expect(page.locator("#compare")).to_be_hidden()  # until asked for
        page.click("#detail-compare")
        expect(page.locator("#compare")).to_be_visible()
        # The result's picture is fetched, then set: wait for this result's (not the last one's).
        before = json.dumps(sources[-1][0] if sources else "")
        until(
            page,
            "() => ['compare-query', 'compare-result'].every(id => {"
            " const i = document.getElementById(id); return i.complete && i.naturalWidth > 0 })"
            f" && document.getElementById('compare-result').getAttribute('src') !== {before}",
        )
        sizes = page.evaluate(
            "['compare-query', 'compare-result'].map(id => {"
            " const i = document.getElementById(id);"
            " return [i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width] })"
        )
        query_size = Image.open(query).size
        assert tuple(sizes[0][:2]) == query_size  # the query as picked
        assert all(width > 50 for *_, width in sizes)  # both drawn, side by side
        expect(page.locator("#compare figcaption")).to_have_text(["query", "result"])
        sources.append((page.locator("#compare-result").get_attribute("src"), sizes[1][:2]))
        _shot(page, shots / f"5-compare-{nth + 1}.png")
        page.click("#details form.close button")
        expect(page.locator("#details")).to_be_hidden()
    (first, first_size), (second, second_size) = sources
    assert first != second
    want = [skimage_photo(n).size for n in ("rocket", "astronaut", "hubble_deep_field")]
    assert tuple(first_size) == want[0] and tuple(second_size) in want[1:]
    assert blocked == []  # all of it under the page's Content-Security-Policy
