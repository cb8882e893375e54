"""The REST search by words answers each hit's matched lines with their boxes in the image's
pixels (``box``: four corners; ``bbox``: the upright rectangle, inside the image), where the
words were rendered on the photo; what the web page draws over each result.

Skips when the OCR engine (rapidocr-onnxruntime) is not installed."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw, ImageFont

from lookalike.words.match import key

from .conftest import skimage_photo
from .test_server import ADMIN, auth, make_app
from .test_words import FONT

#: name -> (photo, text, top-left, font size): a sign low right and one high left.
SIGNS = {
    "market": ("coffee", "MERCADO Zentrix", (150, 230), 34),
    "bus": ("rocket", "LISBOA 2024 Express", (20, 40), 30),
}


def render_sign(name: str) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The sign's photo (480 x 320) with its text drawn on a dark band, and the text's box."""
    photo, text, where, size = SIGNS[name]
    image = skimage_photo(photo).resize((480, 320))
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, size)
    box = draw.textbbox(where, text, font=font)
    draw.rectangle((box[0] - 6, box[1] - 6, box[2] + 6, box[3] + 6), fill=(20, 20, 20))
    draw.text(where, text, font=font, fill=(255, 230, 40))
    return image, box


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def test_a_words_hit_carries_its_matched_lines_with_boxes(tmp_path: Path, embedder) -> None:
    pytest.importorskip("rapidocr_onnxruntime", reason="the OCR engine is not installed")
    admin = auth(ADMIN)
    client = TestClient(make_app(tmp_path / "data", embedder))
    catalog = client.post("/catalogs", json={"name": "signs"}, headers=admin).json()["id"]
    drawn = {name: render_sign(name) for name in SIGNS}
    files = [("files", (f"{n}.jpg", jpeg(image), "image/jpeg")) for n, (image, _) in drawn.items()]
    files.append(("files", ("plain.jpg", jpeg(skimage_photo("astronaut")), "image/jpeg")))
    added = client.post(f"/catalogs/{catalog}/images", files=files, headers=admin)
    assert added.status_code == 200, added.text
    names = [name for _, (name, _, _) in files]
    ids = dict(zip(names, (img["id"] for img in added.json()["images"]), strict=True))
    read = client.post(f"/catalogs/{catalog}/words", headers=admin)
    assert read.status_code == 200 and read.json()["with_text"] == 2, read.text

    for name, word in (("market", "zentrix"), ("bus", "lisboa")):
        found = client.post(f"/catalogs/{catalog}/search", json={"words": word}, headers=admin)
        assert found.status_code == 200, found.text
        hit = found.json()["results"][0]
        assert hit["id"] == ids[f"{name}.jpg"] and (hit["width"], hit["height"]) == (480, 320)
        assert hit["words_score"] > 0.5 and "path" not in hit, hit
        line = hit["words"][0]
        assert key(word) in key(line["text"]) and 0.5 <= line["confidence"] <= 1
        assert line["matched"][0]["word"] == word
        assert len(line["box"]) == 4 and all(len(corner) == 2 for corner in line["box"])
        x0, y0, x1, y1 = line["bbox"]
        assert 0 <= x0 < x1 <= 480 and 0 <= y0 < y1 <= 320
        xs, ys = [x for x, _ in line["box"]], [y for _, y in line["box"]]
        assert [x0, y0, x1, y1] == [
            max(0, min(xs)),
            max(0, min(ys)),
            min(480, max(xs)),
            min(320, max(ys)),
        ]
        # where the text was rendered, give or take the detector's margin
        tx0, ty0, tx1, ty1 = drawn[name][1]
        assert abs(x0 - tx0) <= 16 and abs(x1 - tx1) <= 16, (line["bbox"], drawn[name][1])
        assert abs(y0 - ty0) <= 12 and abs(y1 - ty1) <= 12, (line["bbox"], drawn[name][1])
