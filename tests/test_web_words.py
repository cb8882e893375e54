"""The web page boxes the matched words on each result, in headless Chromium (Debian's, driven by
Playwright) against a real uvicorn server on loopback, as tests/test_web.py drives the rest of
the page: photos with rendered text are uploaded, their words read ("Read the words in the
images"), then a word is searched: the photo that shows it comes first with a box drawn over its
thumbnail where the text was rendered (scaled and cropped as the thumbnail is), and nothing the
page does is blocked by its Content-Security-Policy. Screenshots go under the test's tmp_path.

Skips when the OCR engine (rapidocr-onnxruntime) or Chromium is not installed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import skimage_photo
from .test_server import ADMIN
from .test_server_words import SIGNS, render_sign
from .test_web import csp_violations, page, server_url, until  # noqa: F401 (fixtures)

PNG = b"\x89PNG\r\n\x1a\n"

#: The thumbnail's square and each box's rectangle on screen, and what the box says.
BOXES_JS = """() => [...document.querySelectorAll('#results .card')].map(card => {
  const img = card.querySelector('img').getBoundingClientRect();
  return {
    name: card.querySelector('.name').textContent,
    image: [img.left, img.top, img.width, img.height],
    boxes: [...card.querySelectorAll('.word-box')].map(b => {
      const r = b.getBoundingClientRect();
      return {rect: [r.left, r.top, r.right, r.bottom], text: b.dataset.text};
    }),
  };
})"""


def _on_screen(box, image, size=(480, 320)) -> tuple[float, ...]:
    """Where a box in the photo's pixels lands on a thumbnail shown with object-fit: cover."""
    left, top, width, height = image
    scale = max(width / size[0], height / size[1])
    dx, dy = (width - size[0] * scale) / 2, (height - size[1] * scale) / 2
    x0, y0, x1, y1 = box
    return (
        left + dx + x0 * scale,
        top + dy + y0 * scale,
        left + dx + x1 * scale,
        top + dy + y1 * scale,
    )


def test_matched_words_are_boxed_on_the_result(page, server_url, tmp_path: Path) -> None:  # noqa: F811
    pytest.importorskip("rapidocr_onnxruntime", reason="the OCR engine is not installed")
    from playwright.sync_api import expect

    folder = tmp_path / "photos"
    folder.mkdir()
    drawn = {}
    for name in SIGNS:
        image, drawn[name] = render_sign(name)
        image.save(folder / f"{name}.jpg", quality=92)
    for name in ("astronaut", "chelsea"):
        skimage_photo(name).save(folder / f"{name}.jpg", quality=92)

    blocked = csp_violations(page)
    page.goto(server_url)
    page.fill("#key", ADMIN)
    page.click("#key-form button")
    expect(page.locator("#message")).to_contain_text("Signed in as admin")
    page.fill("#new-name", "Signs")
    page.click("#create-form button")
    expect(page.locator("#catalog option")).to_have_text(["Signs"])
    page.set_input_files("#folder", str(folder))
    expect(page.locator("#message")).to_contain_text("Uploaded 4 images")
    page.click("#read-words")
    expect(page.locator("#message")).to_contain_text("Words read in 4 images: 2 with text")

    cards = page.locator("#results .card")
    for name, word in (("market", "zentrix"), ("bus", "lisboa")):
        page.fill("#words", word)
        page.click("#search")
        expect(page.locator("#message")).to_contain_text(re.compile(r"results? in \d+ ms"))
        expect(cards.first.locator(".caption")).to_contain_text(f"{name}.jpg")
        until(page, "() => [...document.querySelectorAll('#results img')].every(i => i.complete)")
        shown = page.evaluate(BOXES_JS)
        first = shown[0]
        assert len(first["boxes"]) == 1, shown
        assert all(not card["boxes"] for card in shown[1:])  # only the lines that matched
        x0, y0, x1, y1 = first["boxes"][0]["rect"]
        assert x1 - x0 > 20 and y1 - y0 > 5
        want = _on_screen(drawn[name], first["image"])
        tolerance = 16 * first["image"][2] / 320  # 16 photo pixels, on screen
        assert all(abs(a - b) <= tolerance for a, b in zip((x0, y0, x1, y1), want, strict=True)), (
            first["boxes"][0],
            want,
        )
        shot = tmp_path / f"web-words-{word}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == PNG

    # A search without words draws no box.
    page.fill("#words", "")
    page.fill("#text", "a cat")
    page.click("#search")
    expect(cards.first.locator(".caption")).to_contain_text("chelsea.jpg")
    assert page.locator("#results .word-box").count() == 0
    assert not blocked, blocked
