"""The web page's compare view in headless Chromium (Debian's, driven by Playwright) against a
real uvicorn server on loopback, as tests/test_web.py drives the rest of the page: a crop of a
stored photo is searched, its result's compare view draws the keypoint matches
(``/images/{id}/match``) as lines from the query to the result and boxes the matched region on
the result; the blend slider lays the query over that region; an unrelated result says "not
verified". Screenshots of each step are saved under the test's tmp_path (and checked to be PNG
images)."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from .conftest import PHOTOS, skimage_photo
from .test_server import ADMIN
from .test_web import csp_violations, page, server_url, until  # noqa: F401 (fixtures)

PNG = b"\x89PNG\r\n\x1a\n"
#: The query: this part of chelsea (451 x 300), x0, y0, x1, y1.
CROP = (30, 10, 400, 290)

#: Where the overlay's shapes are, in page pixels, with both pictures' boxes.
GEOMETRY = """() => {
  const box = (e) => {
    const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom] };
  const svg = document.getElementById('compare-lines'), base = svg.getBoundingClientRect();
  const lines = [...svg.querySelectorAll('line')].map(l => [l.x1, l.y1, l.x2, l.y2].map(
    (v, i) => v.baseVal.value + (i % 2 ? base.top : base.left)));
  return { lines, regions: [...svg.querySelectorAll('rect.region')].map(box),
    query: box(document.getElementById('compare-query')),
    result: box(document.getElementById('compare-result')),
    blend: box(document.getElementById('compare-blend')),
    opacity: getComputedStyle(document.getElementById('compare-blend')).opacity,
    status: document.getElementById('compare-status').textContent };
}"""


def _shot(tab, path: Path) -> None:
    tab.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 5_000, path
    with Image.open(path) as image:
        assert image.width >= 300 and image.height >= 300


def _inside(point: tuple[float, float], box: list[float], slack: float = 2.0) -> bool:
    x, y = point
    return box[0] - slack <= x <= box[2] + slack and box[1] - slack <= y <= box[3] + slack


def _open_compare(tab, card) -> dict:
    """Open a result's details, then its compare view; wait for the match to be drawn."""
    from playwright.sync_api import expect

    card.click()
    expect(tab.locator("#details")).to_be_visible()
    expect(tab.locator("#compare")).to_be_hidden()
    with tab.expect_response(re.compile(r"/images/\d+/match$")) as answer:
        tab.click("#detail-compare")
    assert answer.value.status == 200
    expect(tab.locator("#compare")).to_be_visible()
    until(tab, "() => /erified/.test(document.getElementById('compare-status').textContent)")
    return answer.value.json()


def test_compare_view_draws_keypoints_region_and_blend(page, server_url, photo_dir, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    shots = tmp_path / "screenshots"
    shots.mkdir()
    blocked = csp_violations(page)
    page.goto(server_url)
    page.fill("#key", ADMIN)
    page.click("#key-form button")
    expect(page.locator("#message")).to_contain_text("Signed in as admin")
    page.fill("#new-name", "Photos")
    page.click("#create-form button")
    expect(page.locator("#catalog option")).to_have_text(["Photos"])
    page.set_input_files("#folder", str(photo_dir))
    expect(page.locator("#message")).to_contain_text(f"Uploaded {len(PHOTOS)} images")

    query = tmp_path / "query.jpg"
    skimage_photo("chelsea").crop(CROP).save(query, quality=80)
    page.set_input_files("#query-file", str(query))
    cards = page.locator("#results .card")
    expect(cards).to_have_count(len(PHOTOS))
    expect(cards.first.locator(".caption")).to_contain_text("chelsea.jpg")

    # The crop's own photo: verified, lines from the query to the result, the region boxed.
    match = _open_compare(page, cards.first)
    assert match["verified"] is True and len(match["pairs"]) >= 15
    drawn = page.evaluate(GEOMETRY)
    assert drawn["status"].startswith("Verified"), drawn["status"]
    assert len(drawn["lines"]) == len(match["pairs"]) >= 15
    assert len(drawn["regions"]) == 1
    assert all(_inside(line[:2], drawn["query"]) for line in drawn["lines"])
    assert all(_inside(line[2:], drawn["result"]) for line in drawn["lines"])
    # The box sits where the crop was cut from, scaled to the result as shown.
    left, top, right, bottom = drawn["result"]
    width, height = skimage_photo("chelsea").size
    want = [
        left + CROP[0] * (right - left) / width,
        top + CROP[1] * (bottom - top) / height,
        left + CROP[2] * (right - left) / width,
        top + CROP[3] * (bottom - top) / height,
    ]
    assert max(abs(a - b) for a, b in zip(drawn["regions"][0], want, strict=True)) < 6
    # Each line ends where its query point is in the result (the crop's offset, scaled).
    sx, sy = (right - left) / width, (bottom - top) / height
    qleft, qtop, qright, _ = drawn["query"]
    qscale = (qright - qleft) / (CROP[2] - CROP[0])
    for x1, y1, x2, y2 in drawn["lines"]:
        assert abs(left + ((x1 - qleft) / qscale + CROP[0]) * sx - x2) < 4
        assert abs(top + ((y1 - qtop) / qscale + CROP[1]) * sy - y2) < 4
    assert float(drawn["opacity"]) == 0.0  # the blend starts transparent
    _shot(page, shots / "1-compare-lines.png")

    # The blend: the query over the matched region; the slider sets its opacity.
    page.fill("#compare-opacity", "70")
    blended = page.evaluate(GEOMETRY)
    assert abs(float(blended["opacity"]) - 0.7) < 0.01
    assert max(abs(a - b) for a, b in zip(blended["blend"], want, strict=True)) < 6
    page.uncheck("#compare-show-lines")
    expect(page.locator("#compare-lines")).to_be_hidden()
    _shot(page, shots / "2-compare-blend.png")
    page.fill("#compare-opacity", "25")
    assert abs(float(page.evaluate(GEOMETRY)["opacity"]) - 0.25) < 0.01
    page.check("#compare-show-lines")
    page.click("#details form.close button")
    expect(page.locator("#details")).to_be_hidden()

    # An unrelated photo: "not verified", no region box, the blend over the whole picture.
    coffee = cards.filter(has_text="coffee.jpg")
    match = _open_compare(page, coffee)
    assert match["verified"] is False
    drawn = page.evaluate(GEOMETRY)
    assert drawn["status"].startswith("Not verified"), drawn["status"]
    assert drawn["regions"] == []
    assert max(abs(a - b) for a, b in zip(drawn["blend"], drawn["result"], strict=True)) < 2
    _shot(page, shots / "3-compare-not-verified.png")
    assert blocked == []  # all of it under the page's Content-Security-Policy
