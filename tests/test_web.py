"""The web page in headless Chromium (Debian's, driven by Playwright) against a real uvicorn
server on loopback: sign in with a key, create a catalogue, upload a folder, search by image and
by a region, search by text, open a result, delete it, find the catalogue's items in a photo
(boxes drawn over it) and its duplicates on a phone-sized screen, delete the catalogue.
Screenshots go to tests/artifacts/."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import PHOTOS, skimage_photo
from .test_server import ADMIN, make_app

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture
def server_url(tmp_path, embedder):
    uvicorn = pytest.importorskip("uvicorn")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = make_app(tmp_path / "data", embedder)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def page():
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--headless", "--disable-gpu"]
        )
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.on("dialog", lambda dialog: dialog.accept())  # the confirm() before deleting
        yield page
        browser.close()


def csp_violations(page) -> list[str]:
    """Console messages of the page that report something its Content-Security-Policy
    blocked (filled as the page runs)."""
    found: list[str] = []
    page.on(
        "console",
        lambda message: (
            found.append(message.text)
            if "Content Security Policy" in message.text or "Refused to" in message.text
            else None
        ),
    )
    return found


def until(tab, predicate: str, timeout: float = 20.0) -> None:
    """Wait until the JavaScript function ``predicate`` returns true in the page. Polled with
    ``evaluate`` (which the page's Content-Security-Policy allows): ``wait_for_function``
    polls by evaluating a string in the page, which its ``script-src 'self'`` may refuse."""
    deadline = time.monotonic() + timeout
    while not tab.evaluate(predicate):
        assert time.monotonic() < deadline, f"still false after {timeout} s: {predicate}"
        time.sleep(0.05)


def test_web_page_upload_search_delete(page, server_url, photo_dir, tmp_path):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    blocked = csp_violations(page)
    response = page.goto(server_url)
    headers = response.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "no-referrer"
    page.fill("#key", ADMIN)
    page.click("#key-form button")
    expect(page.locator("#message")).to_contain_text("Signed in as admin")

    page.fill("#new-name", "Photos")
    page.click("#create-form button")
    expect(page.locator("#catalog option")).to_have_text(["Photos"])

    page.set_input_files("#folder", str(photo_dir))
    expect(page.locator("#message")).to_contain_text(f"Uploaded {len(PHOTOS)} images")
    expect(page.locator("#catalog-info")).to_contain_text(f"{len(PHOTOS)} images")

    query = tmp_path / "query.jpg"
    skimage_photo("chelsea").crop((30, 10, 400, 290)).save(query, quality=70)
    page.set_input_files("#query-file", str(query))
    cards = page.locator("#results .card")
    expect(cards).to_have_count(len(PHOTOS))
    expect(cards.first.locator(".caption")).to_contain_text("chelsea.jpg")
    score = float(cards.first.locator(".score").inner_text())
    assert 0.5 < score <= 1.0
    until(
        page,
        "() => [...document.querySelectorAll('#results img')]"
        ".every(i => i.complete && i.naturalWidth)",
    )
    page.screenshot(path=str(ARTIFACTS / "web-search.png"), full_page=True)

    # Draw a box over the cat's head: the region is searched.
    box = page.locator("#query-image").bounding_box()
    with page.expect_response(re.compile(r"/search$")) as answer:
        page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.1)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.9, steps=5)
        page.mouse.up()
    region_hits = answer.value.json()["results"]
    assert region_hits[0]["score"] != score  # another query: the region, not the whole image
    expect(page.locator("#box")).to_be_visible()
    expect(page.locator("#message")).to_contain_text(re.compile(r"results? in \d+ ms"))
    expect(cards.first.locator(".caption")).to_contain_text("chelsea.jpg")

    # Search by text: the default model answers offline.
    page.fill("#text", "a cat")
    page.click("#search")
    expect(page.locator("#message")).to_contain_text(re.compile(r"results? in \d+ ms"))
    expect(cards.first.locator(".caption")).to_contain_text("chelsea.jpg")

    # Open the best result, then delete it.
    page.fill("#text", "")
    page.set_input_files("#query-file", str(query))
    expect(page.locator("#message")).to_contain_text(re.compile(r"results? in \d+ ms"))
    expect(cards.first.locator(".caption")).to_contain_text("chelsea.jpg")
    cards.first.click()
    expect(page.locator("#details")).to_be_visible()
    expect(page.locator("#detail-meta")).to_contain_text("chelsea.jpg")
    page.click("#detail-delete")
    expect(page.locator("#details")).to_be_hidden()
    expect(cards).to_have_count(len(PHOTOS) - 1)
    expect(page.locator("#catalog-info")).to_contain_text(f"{len(PHOTOS) - 1} images")

    # A phone-sized screen shows the same page in two columns.
    page.set_viewport_size({"width": 390, "height": 844})
    page.click("#browse")
    expect(page.locator("#message")).to_contain_text("images in this catalogue")
    expect(cards).to_have_count(len(PHOTOS) - 1)
    first, second = cards.nth(0).bounding_box(), cards.nth(1).bounding_box()
    assert first["y"] == second["y"] and second["x"] + second["width"] <= 390
    page.screenshot(path=str(ARTIFACTS / "web-phone.png"), full_page=True)

    # Find items in a photo: two catalogue photos pasted on a plain background; the boxes are
    # drawn over the photo with the best match's thumbnail and score.
    scene = tmp_path / "scene.jpg"
    _scene({"rocket": (0.45, (40, 100)), "astronaut": (0.45, (520, 300))}).save(scene, quality=88)
    page.set_input_files("#query-file", str(scene))
    expect(page.locator("#message")).to_contain_text(re.compile(r"results? in \d+ ms"))
    with page.expect_response(re.compile(r"/detect$")) as answer:
        page.click("#detect")
    assert answer.value.status == 200, answer.value.text()
    expect(page.locator("#message")).to_contain_text("Found 2 items")
    boxes = page.locator("#detections .det-box")
    expect(boxes).to_have_count(2)
    photo = page.locator("#query-image").bounding_box()
    assert photo["x"] + photo["width"] <= 390
    names = set()
    for i in range(2):
        drawn = boxes.nth(i).bounding_box()
        assert drawn["width"] > 20 and drawn["height"] > 20
        assert (
            photo["x"] - 3 <= drawn["x"]
            and drawn["x"] + drawn["width"] <= photo["x"] + photo["width"] + 3
        )
        label = boxes.nth(i).locator(".det-label")
        names.add(label.locator(".name").inner_text())
        assert 0.3 < float(label.locator(".det-score").inner_text()) <= 1.0
    assert names == {"rocket.jpg", "astronaut.jpg"}
    until(
        page,
        "() => [...document.querySelectorAll('#detections img')]"
        ".every(i => i.complete && i.naturalWidth)",
    )
    page.screenshot(path=str(ARTIFACTS / "web-detect-phone.png"), full_page=True)

    # Duplicates: an edited copy of the coffee photo is grouped with it.
    copy = tmp_path / "coffee-reposted.jpg"
    coffee = skimage_photo("coffee")
    coffee.crop((60, 40, 560, 370)).resize((300, 198)).save(copy, quality=35)
    page.set_input_files("#files", str(copy))
    expect(page.locator("#message")).to_contain_text("Uploaded 1 image")
    page.click("#duplicates")
    expect(page.locator("#message")).to_contain_text("1 group of duplicates")
    expect(page.locator("#results .group")).to_have_count(1)
    expect(page.locator("#results .card.original .caption")).to_contain_text("coffee.jpg")
    expect(page.locator("#results .card")).to_have_count(2)
    page.screenshot(path=str(ARTIFACTS / "web-duplicates.png"), full_page=True)

    page.click("#delete-catalog")
    expect(page.locator("#message")).to_contain_text("Deleted Photos")
    expect(page.locator("#catalog option")).to_have_count(1)
    expect(page.locator("#results .card")).to_have_count(0)
    assert blocked == []  # the whole page works under its Content-Security-Policy


def test_api_docs_work_offline_under_the_policy(page, server_url):
    """/docs is Swagger UI from the server's own files: every request the page makes goes to
    the server (none to a CDN), nothing is blocked by the Content-Security-Policy, and the
    routes are listed."""
    from playwright.sync_api import expect

    pytest.importorskip("fastapi_offline")
    blocked = csp_violations(page)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    response = page.goto(f"{server_url}/docs")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    expect(page.locator(".opblock-summary-path", has_text="/search")).to_have_count(1)
    page.screenshot(path=str(ARTIFACTS / "web-docs.png"))
    outside = [u for u in requested if not u.startswith((server_url, "data:", "blob:"))]
    assert outside == [] and blocked == [], (outside, blocked)


def _scene(items: dict[str, tuple[float, tuple[int, int]]]) -> Image.Image:
    """Photos pasted (scale, top-left) onto a smooth 900x600 background."""
    ramp = np.linspace(60, 200, 900, dtype=np.float32)[None, :] + np.linspace(0, 40, 600)[:, None]
    scene = Image.fromarray(np.stack([ramp, ramp * 0.9, 255 - ramp], -1).astype(np.uint8))
    for name, (scale, at) in items.items():
        item = skimage_photo(name)
        scene.paste(item.resize((round(item.width * scale), round(item.height * scale))), at)
    return scene
