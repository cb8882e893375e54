"""``POST /catalogs/{id}/images/{image_id}/match``: keypoint verification of a query against one
stored image, for the web page's compare view (lines between matched keypoints, the matched
region boxed)."""

from __future__ import annotations

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from .conftest import skimage_photo
from .test_server import ADMIN, auth, client, jpeg, new_catalog, upload  # noqa: F401 (fixture)

#: Where the query is cut from chelsea (451 x 300): x0, y0, x1, y1.
CROP = (30, 10, 400, 290)


@pytest.fixture
def stored(client):  # noqa: F811
    catalog = new_catalog(client)
    photos = {name: jpeg(skimage_photo(name)) for name in ("chelsea", "coffee")}
    added = upload(client, catalog, photos, params={"wait": "true"})
    assert added.status_code == 200, added.text
    ids = {n: item["id"] for n, item in zip(photos, added.json()["images"], strict=True)}
    return catalog, ids


def match(client, catalog, image_id, data: bytes, key=ADMIN, **fields):  # noqa: F811
    return client.post(
        f"/catalogs/{catalog}/images/{image_id}/match",
        files={"file": ("q.jpg", data, "image/jpeg")},
        data=fields,
        headers=auth(key),
    )


def test_a_crop_is_verified_with_its_region_and_pairs(client, stored):  # noqa: F811
    catalog, ids = stored
    query = skimage_photo("chelsea").crop(CROP)
    answer = match(client, catalog, ids["chelsea"], jpeg(query, 80))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["verified"] is True and body["inliers"] >= 15
    assert body["query_size"] == list(query.size)
    assert body["image_size"] == list(skimage_photo("chelsea").size)
    x0, y0, x1, y1 = body["region"]
    assert max(abs(a - b) for a, b in zip((x0, y0, x1, y1), CROP, strict=True)) <= 6
    pairs = body["pairs"]
    assert 15 <= len(pairs) <= 200
    # Each pair maps a query point onto its place in the stored image: offset by the crop.
    off = [abs(cx - qx - CROP[0]) + abs(cy - qy - CROP[1]) for qx, qy, cx, cy in pairs]
    assert sorted(off)[len(off) // 2] < 2.0
    assert all(0 <= qx <= query.width and 0 <= qy <= query.height for qx, qy, *_ in pairs)


def test_a_region_of_the_query_answers_in_the_whole_query_pixels(client, stored):  # noqa: F811
    catalog, ids = stored
    query = Image.new("RGB", (900, 300), "white")
    query.paste(skimage_photo("chelsea").crop(CROP), (450, 0))
    answer = match(client, catalog, ids["chelsea"], jpeg(query, 85), region="0.5,0,0.5,1")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["verified"] is True and body["query_size"] == [900, 300]
    off = [abs(cx - qx + 450 - CROP[0]) for qx, qy, cx, cy in body["pairs"]]
    assert sorted(off)[len(off) // 2] < 2.0


def test_an_unrelated_photo_is_not_verified(client, stored):  # noqa: F811
    catalog, ids = stored
    answer = match(client, catalog, ids["chelsea"], jpeg(skimage_photo("rocket")))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["verified"] is False and body["region"] is None and body["reason"]
    assert len(body["pairs"]) <= 200


def test_unknown_image_bad_upload_and_rights(client, stored):  # noqa: F811
    catalog, ids = stored
    query = jpeg(skimage_photo("chelsea").crop(CROP))
    assert match(client, catalog, 987654, query).status_code == 404
    assert match(client, "c_000000000000", ids["chelsea"], query).status_code == 404
    bad = match(client, catalog, ids["chelsea"], b"not an image at all")
    assert bad.status_code == 400 and "error" in bad.json()
    for region in ("0,0,2,2", "0,0,0.001,0.001", "0.1,0.1", "nan,0,1,1"):
        refused = match(client, catalog, ids["chelsea"], query, region=region)
        assert refused.status_code == 400 and "region" in refused.json()["error"], region
    truncated = match(client, catalog, ids["chelsea"], query[: len(query) // 3])
    assert 400 <= truncated.status_code < 500
    text_only = client.post(
        f"/catalogs/{catalog}/images/{ids['chelsea']}/match",
        json={"text": "a cat"},
        headers=auth(ADMIN),
    )
    assert text_only.status_code == 400
    wrong_kind = client.post(
        f"/catalogs/{catalog}/images/{ids['chelsea']}/match",
        content=b"x",
        headers={**auth(ADMIN), "content-type": "text/plain"},
    )
    assert wrong_kind.status_code == 415
    no_key = client.post(
        f"/catalogs/{catalog}/images/{ids['chelsea']}/match",
        files={"file": ("q.jpg", query, "image/jpeg")},
    )
    assert no_key.status_code == 401


def test_read_rights_are_enough_and_other_catalogues_are_hidden(client, stored):  # noqa: F811
    catalog, ids = stored
    other = new_catalog(client, "other")
    keys = {}
    for name, rights in (("reader", {catalog: "read"}), ("stranger", {other: "write"})):
        made = client.post("/keys", json={"name": name, "catalogs": rights}, headers=auth(ADMIN))
        keys[name] = made.json()["key"]
    query = jpeg(skimage_photo("chelsea").crop(CROP))
    answer = match(client, catalog, ids["chelsea"], query, key=keys["reader"])
    assert answer.status_code == 200 and answer.json()["verified"] is True
    assert match(client, catalog, ids["chelsea"], query, key=keys["stranger"]).status_code == 404
