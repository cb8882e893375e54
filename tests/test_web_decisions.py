"""The web page's duplicates decisions in headless Chromium (Debian's, driven by Playwright)
against a real uvicorn server on loopback, as tests/test_web.py drives the rest of the page:
photos and an edited copy of the coffee photo are uploaded and the duplicates found; "Keep this
one" on the copy makes it the group's original (marked as chosen), "Not duplicates" makes the
group go, "Forget them" brings it back as it was; each step is what the REST API then answers.
Screenshots of each step are saved under the test's tmp_path (and checked to be PNG images)."""

from __future__ import annotations

import re

import pytest

from .conftest import PHOTOS, skimage_photo
from .test_server import ADMIN
from .test_web import csp_violations, page, server_url, until  # noqa: F401 (fixtures)
from .test_web_filters import _shot


def test_keep_this_one_and_not_duplicates(page, server_url, photo_dir, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    httpx = pytest.importorskip("httpx")
    key = {"Authorization": f"Bearer {ADMIN}"}
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
    catalog = page.eval_on_selector("#catalog", "menu => menu.value")

    page.set_input_files("#folder", str(photo_dir))
    expect(page.locator("#message")).to_contain_text(f"Uploaded {len(PHOTOS)} images")
    copy = tmp_path / "coffee-reposted.jpg"  # an edited copy: cropped, shrunk, re-encoded
    skimage_photo("coffee").crop((60, 40, 560, 370)).resize((300, 198)).save(copy, quality=35)
    page.set_input_files("#files", str(copy))
    expect(page.locator("#message")).to_contain_text("Uploaded 1 image")

    def loaded() -> None:
        until(
            page,
            "() => [...document.querySelectorAll('#results img')]"
            ".every(i => i.complete && i.naturalWidth)",
        )

    results = page.locator("#results")
    original = results.locator(".card.original")
    page.click("#duplicates")
    expect(page.locator("#message")).to_contain_text("1 group of duplicates")
    expect(results.locator(".group")).to_have_count(1)
    expect(original.locator(".caption")).to_contain_text("coffee.jpg")
    expect(original).not_to_have_class(re.compile(r"\bdecided\b"))
    expect(results.locator(".dupe")).to_have_count(2)
    expect(results.locator(".dupe .keep")).to_have_text(["Keep this one"] * 2)
    loaded()
    _shot(page, shots / "1-duplicates.png")

    # Keep this one, on the copy: it becomes the group's original, first and marked as chosen.
    copy_item = results.locator(".dupe").filter(has_text="coffee-reposted.jpg")
    copy_item.locator(".keep").click()
    expect(page.locator("#message")).to_contain_text("Kept coffee-reposted.jpg as the original")
    expect(page.locator("#message")).to_contain_text("1 group of duplicates")
    expect(original.locator(".caption")).to_contain_text("coffee-reposted.jpg")
    expect(original).to_have_class("card original decided")
    expect(original.locator(".score")).to_have_text("kept ✓")
    expect(results.locator(".card").first).to_have_class("card original decided")
    expect(results.locator(".dupe .keep")).to_have_text(["Kept", "Keep this one"])
    expect(results.locator(".dupe .keep").first).to_be_disabled()
    expect(results.locator(".group").nth(1)).to_contain_text("original chosen")
    expect(results.locator(".decisions")).to_contain_text("1 original chosen")
    held = httpx.get(f"{server_url}/catalogs/{catalog}/duplicates/decisions", headers=key)
    copy_id = int(original.get_attribute("data-id"))
    assert held.json() == {"decisions": [{"decision": "keep", "images": [copy_id]}]}
    loaded()
    _shot(page, shots / "2-kept.png")

    # Not duplicates: the group is gone, here and for the REST API.
    results.locator(".group .distinct").click()
    expect(page.locator("#message")).to_contain_text("Group 1 marked not duplicates")
    expect(page.locator("#message")).to_contain_text(f"No duplicates among {len(PHOTOS) + 1}")
    expect(results.locator(".card")).to_have_count(0)
    expect(results.locator(".decisions")).to_contain_text("1 pair not duplicates")
    answer = httpx.post(f"{server_url}/catalogs/{catalog}/duplicates", json={}, headers=key)
    assert answer.json()["groups"] == []
    _shot(page, shots / "3-not-duplicates.png")

    # Forget them: the group is back with its suggested original.
    page.click("#forget-decisions")
    expect(page.locator("#message")).to_contain_text("Decisions forgotten")
    expect(page.locator("#message")).to_contain_text("1 group of duplicates")
    expect(original.locator(".caption")).to_contain_text("coffee.jpg")
    expect(results.locator(".decisions")).to_have_count(0)
    loaded()
    _shot(page, shots / "4-forgotten.png")
    assert sorted(p.name for p in shots.iterdir()) == [
        "1-duplicates.png", "2-kept.png", "3-not-duplicates.png", "4-forgotten.png",
    ]  # fmt: skip
    assert blocked == []  # the whole view works under the page's Content-Security-Policy
