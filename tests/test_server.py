"""The REST server through the real app: catalogues, images, search, access control, hardening,
several writers, and S3 storage against a moto server on loopback."""

from __future__ import annotations

import http.server
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from lookalike.server import create_app

from .conftest import PHOTOS, skimage_photo

ADMIN = "admin-secret-for-tests"
MODEL = "efficientnet-lite0"


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    return {name: jpeg(skimage_photo(name)) for name in PHOTOS}


def make_app(data: Path, embedder, **settings):
    settings.setdefault("allow_private_urls", True)
    return create_app(
        data, admin_key=ADMIN, embedder_factory=lambda _: embedder, models=[MODEL], **settings
    )


@pytest.fixture
def client(tmp_path, embedder):
    with TestClient(make_app(tmp_path / "data", embedder)) as c:
        yield c


def new_catalog(client: TestClient, name: str = "shop", key: str = ADMIN) -> str:
    r = client.post("/catalogs", json={"name": name, "model": MODEL}, headers=auth(key))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def upload(client, catalog, photos: dict[str, bytes], key=ADMIN, metadata=None, **params):
    files = [("files", (f"{n}.jpg", data, "image/jpeg")) for n, data in photos.items()]
    form = {"metadata": json.dumps(metadata)} if metadata is not None else {}
    return client.post(
        f"/catalogs/{catalog}/images", files=files, data=form, headers=auth(key), params=params
    )


def search(client, catalog, image: bytes, key=ADMIN, **fields):
    form = {k: (json.dumps(v) if isinstance(v, dict) else str(v)) for k, v in fields.items()}
    return client.post(
        f"/catalogs/{catalog}/search",
        files={"file": ("q.jpg", image, "image/jpeg")},
        data=form,
        headers=auth(key),
    )


def test_catalogue_images_search_and_delete(client, photos):
    catalog = new_catalog(client)
    metadata = [
        {"sku": f"S-{i}", "tags": ["cat"] if n == "chelsea" else []} for i, n in enumerate(photos)
    ]
    r = upload(client, catalog, photos, metadata=metadata)
    assert r.status_code == 200, r.text
    ids = {n: item["id"] for n, item in zip(photos, r.json()["images"], strict=True)}
    assert r.json()["added"] == len(PHOTOS)

    page = client.get(f"/catalogs/{catalog}/images?limit=4", headers=auth(ADMIN)).json()
    assert page["total"] == len(PHOTOS) and len(page["images"]) == 4
    rest = client.get(f"/catalogs/{catalog}/images?offset=4", headers=auth(ADMIN)).json()
    assert {i["id"] for i in page["images"] + rest["images"]} == set(ids.values())

    cat_id = ids["chelsea"]
    info = client.get(f"/catalogs/{catalog}/images/{cat_id}", headers=auth(ADMIN)).json()
    assert info["metadata"]["sku"] == "S-1" and info["width"] == 451
    thumb = client.get(info["thumbnail"], headers=auth(ADMIN))
    assert thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 320
    original = client.get(info["original"], headers=auth(ADMIN))
    assert original.content == photos["chelsea"]

    # An edited copy (crop + recompression) finds its original first.
    edited = skimage_photo("chelsea").crop((40, 20, 420, 300))
    hits = search(client, catalog, jpeg(edited, 60), k=3).json()["results"]
    assert hits[0]["id"] == cat_id and hits[0]["score"] > 0.5 and len(hits) == 3
    # Filters are applied to the metadata (list values match by membership).
    hits = search(client, catalog, jpeg(edited), k=5, filters={"sku": "S-3"}).json()["results"]
    assert [h["id"] for h in hits] == [ids[list(photos)[3]]]
    hits = search(client, catalog, jpeg(edited), k=5, filters={"tags": "cat"}).json()["results"]
    assert [h["id"] for h in hits] == [cat_id]
    # A region of a composite picture: the astronaut half finds the astronaut.
    pair = Image.new("RGB", (1024, 512))
    pair.paste(skimage_photo("astronaut").resize((512, 512)), (0, 0))
    pair.paste(skimage_photo("coffee").resize((512, 512)), (512, 0))
    left = search(client, catalog, jpeg(pair), k=1, region="0,0,0.5,1").json()["results"]
    right = search(client, catalog, jpeg(pair), k=1, region="0.5,0,0.5,1").json()["results"]
    assert left[0]["id"] == ids["astronaut"] and right[0]["id"] == ids["coffee"]

    # The default model searches by text too, offline.
    r = client.post(f"/catalogs/{catalog}/search", json={"text": "a cat"}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["id"] == cat_id

    assert (
        client.delete(f"/catalogs/{catalog}/images/{cat_id}", headers=auth(ADMIN)).status_code
        == 204
    )
    assert (
        client.get(f"/catalogs/{catalog}/images/{cat_id}", headers=auth(ADMIN)).status_code == 404
    )
    assert client.get(info["thumbnail"], headers=auth(ADMIN)).status_code == 404
    hits = search(client, catalog, jpeg(edited), k=10).json()["results"]
    assert cat_id not in [h["id"] for h in hits] and len(hits) == len(PHOTOS) - 1
    assert client.get(f"/catalogs/{catalog}", headers=auth(ADMIN)).json()["images"] == 5

    assert client.delete(f"/catalogs/{catalog}", headers=auth(ADMIN)).status_code == 204
    assert client.get(f"/catalogs/{catalog}", headers=auth(ADMIN)).status_code == 404
    assert client.get("/catalogs", headers=auth(ADMIN)).json()["catalogs"] == []


def test_upload_by_url_and_as_a_job(client, photos, tmp_path):
    folder = tmp_path / "site"
    folder.mkdir()
    for name, data in photos.items():
        (folder / f"{name}.jpg").write_bytes(data)
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder))  # noqa: E731
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        catalog = new_catalog(client)
        body = {"images": [{"url": f"{base}/coffee.jpg", "metadata": {"title": "Coffee"}}]}
        r = client.post(f"/catalogs/{catalog}/images", json=body, headers=auth(ADMIN))
        assert r.status_code == 200, r.text
        coffee = r.json()["images"][0]["id"]
        hits = client.post(
            f"/catalogs/{catalog}/search",
            json={"url": f"{base}/coffee.jpg", "k": 1},
            headers=auth(ADMIN),
        ).json()["results"]
        assert hits[0]["id"] == coffee and hits[0]["metadata"] == {"title": "Coffee"}
        r = client.post(
            f"/catalogs/{catalog}/search", json={"url": f"{base}/missing.jpg"}, headers=auth(ADMIN)
        )
        assert r.status_code == 400 and "404" in r.json()["error"]

        r = upload(client, catalog, photos, wait="false")
        assert r.status_code == 202
        status = r.json()["status"]
        for _ in range(200):
            job = client.get(status, headers=auth(ADMIN)).json()
            if job["state"] in ("done", "failed"):
                break
            time.sleep(0.1)
        assert job["state"] == "done" and job["done"] == len(PHOTOS)
        assert client.get(f"/catalogs/{catalog}", headers=auth(ADMIN)).json()["images"] == 6
    finally:
        server.shutdown()


def test_access_control_on_every_route(client, photos):
    mine, theirs = new_catalog(client, "mine"), new_catalog(client, "theirs")
    upload(client, mine, {"coffee": photos["coffee"]})
    upload(client, theirs, {"rocket": photos["rocket"]})
    image_mine = client.get(f"/catalogs/{mine}/images", headers=auth(ADMIN)).json()["images"][0]
    image_theirs = client.get(f"/catalogs/{theirs}/images", headers=auth(ADMIN)).json()
    image_theirs = image_theirs["images"][0]
    r = client.post("/keys", json={"name": "ro", "catalogs": {mine: "read"}}, headers=auth(ADMIN))
    reader = r.json()["key"]
    r = client.post("/keys", json={"name": "rw", "catalogs": {mine: "write"}}, headers=auth(ADMIN))
    writer = r.json()["key"]

    def routes(catalog: str, image: int) -> list[tuple[str, str, dict, bool]]:
        """(method, url, request kwargs, needs write)"""
        file = {"files": [("files", ("a.jpg", photos["chelsea"], "image/jpeg"))]}
        query = {"files": {"file": ("q.jpg", photos["coffee"], "image/jpeg")}}
        base = f"/catalogs/{catalog}"
        return [
            ("GET", base, {}, False),
            ("GET", f"{base}/images", {}, False),
            ("GET", f"{base}/images/{image}", {}, False),
            ("GET", f"{base}/images/{image}/thumbnail", {}, False),
            ("GET", f"{base}/images/{image}/original", {}, False),
            ("POST", f"{base}/search", query, False),
            ("POST", f"{base}/images", file, True),
            ("DELETE", f"{base}/images/{image}", {}, True),
            ("DELETE", base, {}, True),
        ]

    for method, url, kwargs, _ in [*routes(mine, image_mine["id"]), ("GET", "/catalogs", {}, 0)]:
        assert client.request(method, url, **kwargs).status_code == 401, url
        r = client.request(method, url, headers=auth("wrong"), **kwargs)
        assert r.status_code == 401 and r.json()["error"], url
    for method, url, kwargs, write in routes(mine, image_mine["id"])[:-2]:
        expected = 403 if write else 200
        assert client.request(method, url, headers=auth(reader), **kwargs).status_code == expected
    for key in (reader, writer):
        for method, url, kwargs, _ in routes(theirs, image_theirs["id"]):
            r = client.request(method, url, headers=auth(key), **kwargs)
            assert r.status_code == 404, (method, url, r.text)
        listed = client.get("/catalogs", headers=auth(key)).json()["catalogs"]
        assert [c["id"] for c in listed] == [mine]
    # Keys: only the admin makes them, and no key may create a catalogue without the right.
    for key in (reader, writer):
        assert client.post("/keys", json={"name": "x"}, headers=auth(key)).status_code == 403
        assert client.get("/keys", headers=auth(key)).status_code == 403
        r = client.post("/catalogs", json={"name": "x"}, headers=auth(key))
        assert r.status_code == 403
    assert client.get("/me", headers=auth(reader)).json()["catalogs"] == {mine: "read"}
    # A key with the create right owns what it creates, and nothing else.
    creator = client.post("/keys", json={"name": "c", "create": True}, headers=auth(ADMIN)).json()[
        "key"
    ]
    own = new_catalog(client, "own", key=creator)
    assert [c["id"] for c in client.get("/catalogs", headers=auth(creator)).json()["catalogs"]] == [
        own
    ]
    assert client.get(f"/catalogs/{mine}", headers=auth(creator)).status_code == 404
    # The writer may write: upload, delete an image, delete the catalogue.
    for method, url, kwargs, write in routes(mine, image_mine["id"]):
        if write:
            r = client.request(method, url, headers=auth(writer), **kwargs)
            assert r.status_code in (200, 204), (url, r.text)
    # Deleted keys stop working.
    key_id = client.get("/me", headers=auth(reader)).json()["id"]
    assert client.delete(f"/keys/{key_id}", headers=auth(ADMIN)).status_code == 204
    assert client.get("/catalogs", headers=auth(reader)).status_code == 401


def test_hardening(tmp_path, embedder, photos):
    app = make_app(
        tmp_path / "data",
        embedder,
        allow_private_urls=False,
        max_upload_bytes=2_000_000,
        max_pixels=4_000_000,
    )
    with TestClient(app) as client:
        catalog = new_catalog(client)
        # Content decides: a text file named .jpg is refused with the reason.
        r = upload(client, catalog, {"fake": b"hello, not an image"})
        assert r.status_code == 400 and "not an image" in r.json()["error"]
        # A small file with too many pixels (decompression bomb) is refused.
        bomb = io.BytesIO()
        Image.new("L", (4000, 4000)).save(bomb, "PNG")
        assert len(bomb.getvalue()) < 200_000
        r = upload(client, catalog, {"bomb": bomb.getvalue()})
        assert r.status_code == 400 and "pixels" in r.json()["error"]
        # Too many bytes.
        r = upload(client, catalog, {"big": b"\xff" * 2_100_000})
        assert r.status_code == 413
        # One bad file among good ones does not stop the others.
        r = upload(client, catalog, {"ok": photos["rocket"], "bad": b"x"})
        assert r.status_code == 200 and "id" in r.json()["images"][0]
        assert "error" in r.json()["images"][1]
        # Loopback and private URLs are refused; so are other schemes.
        for url in ("http://127.0.0.1:9/a.jpg", "http://10.0.0.1/a.jpg", "file:///etc/passwd"):
            r = client.post(f"/catalogs/{catalog}/search", json={"url": url}, headers=auth(ADMIN))
            assert r.status_code == 400, url
        # Nothing from the request reaches the file system: ids and model names are checked.
        for bad in ("..", "..%2F..%2Fetc", "c_../../x", "c_0123456789ab"):
            r = client.get(f"/catalogs/{bad}/images", headers=auth(ADMIN))
            assert r.status_code == 404, bad
        r = client.post(
            "/catalogs", json={"name": "x", "model": str(tmp_path)}, headers=auth(ADMIN)
        )
        assert r.status_code == 400 and "unknown model" in r.json()["error"]
        # Malformed requests are 4xx with a JSON error.
        for body in ({"k": 0, "text": "x"}, {"k": "many", "text": "x"}, {}, {"region": "x"}):
            r = client.post(f"/catalogs/{catalog}/search", json=body, headers=auth(ADMIN))
            assert r.status_code == 400 and r.json()["error"], body
        r = search(client, catalog, photos["coffee"], region="0.9,0.9,0.5,0.001")
        assert r.status_code == 400
        r = client.post(
            f"/catalogs/{catalog}/search",
            content=b"{nope",
            headers={**auth(ADMIN), "content-type": "application/json"},
        )
        assert r.status_code == 400
        for body in ({"threshold": 2}, {"k": 0}, {"limit": "many"}, [1]):
            r = client.post(f"/catalogs/{catalog}/duplicates", json=body, headers=auth(ADMIN))
            assert r.status_code == 422 and r.json()["error"], body
        for body in ({}, {"url": "x", "k": 99}, {"url": 5}, {"url": "x", "proposals": 3}):
            r = client.post(f"/catalogs/{catalog}/detect", json=body, headers=auth(ADMIN))
            assert r.status_code == 400 and r.json()["error"], body


def test_busy_collection_answers_409_with_retry_after(tmp_path, embedder, photos):
    """Another writer (the CLI, say) holding the collection for longer than the server waits:
    409 with Retry-After, and the same request works once it lets go. Any other collection
    error (here a damaged manifest) is a 500 that says what is wrong, never a 409."""
    from lookalike.collection.lock import WriteLock

    data = tmp_path / "data"
    with TestClient(make_app(data, embedder, write_wait_seconds=0.3)) as client:
        catalog = new_catalog(client)
        folder = data / "catalogs" / catalog
        with WriteLock(folder):
            r = upload(client, catalog, {"coffee": photos["coffee"]})
            assert r.status_code == 409, r.text
            assert int(r.headers["retry-after"]) > 0
            error = r.json()["error"]
            assert "another lookalike process" in error and catalog in error
            assert str(data) not in error  # the server's folders are not the caller's business
            r = upload(client, catalog, {"coffee": photos["coffee"]}, wait="false")
            assert r.status_code == 202
            for _ in range(100):
                job = client.get(r.json()["status"], headers=auth(ADMIN)).json()
                if job["state"] in ("done", "failed"):
                    break
                time.sleep(0.1)
            assert job["state"] == "failed"
            assert "another lookalike process" in job["result"]["error"]
        r = upload(client, catalog, {"coffee": photos["coffee"]})
        assert r.status_code == 200, r.text
        image = f"/catalogs/{catalog}/images/{r.json()['images'][0]['id']}"
        with WriteLock(folder):
            r = client.delete(image, headers=auth(ADMIN))
            assert r.status_code == 409 and "retry-after" in r.headers
        assert client.get(image, headers=auth(ADMIN)).status_code == 200

        (folder / "manifest.json").write_text("{damaged")
        r = client.get(f"/catalogs/{catalog}", headers=auth(ADMIN))
        assert r.status_code == 500, r.text
        error = r.json()["error"]
        assert "damaged" in error and catalog in error and str(data) not in error
        assert "retry-after" not in r.headers


def test_writes_from_several_workers_are_never_lost(tmp_path, embedder):
    """Two app instances on one data folder stand for two worker processes: each holds its own
    Collections; uploads from many threads through both are all kept, and each sees the
    other's uploads at its next search."""
    data = tmp_path / "data"
    first, second = make_app(data, embedder), make_app(data, embedder)
    with TestClient(first) as a, TestClient(second) as b:
        catalog = new_catalog(a)
        assert b.get(f"/catalogs/{catalog}", headers=auth(ADMIN)).json()["images"] == 0
        images = {}
        for name in PHOTOS:
            base = skimage_photo(name).resize((256, 256))
            for turn in range(2):
                images[f"{name}-{turn}"] = jpeg(base.rotate(90 * turn))

        def send(item: tuple[int, tuple[str, bytes]]) -> int:
            i, (name, data) = item
            client = a if i % 2 else b
            r = upload(client, catalog, {name: data}, metadata={"name": name})
            assert r.status_code == 200, r.text
            return r.json()["images"][0]["id"]

        with ThreadPoolExecutor(6) as pool:
            ids = list(pool.map(send, enumerate(images.items())))
        assert len(set(ids)) == len(images)
        for client in (a, b):
            listed = client.get(f"/catalogs/{catalog}/images?limit=100", headers=auth(ADMIN))
            assert {i["id"] for i in listed.json()["images"]} == set(ids)
            hits = search(client, catalog, images["rocket-1"], k=1).json()["results"]
            assert hits[0]["metadata"]["name"] == "rocket-1"


@pytest.fixture
def moto_s3():
    """A real S3 API (moto's server mode) on loopback, with a bucket."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="lookalike")
    yield endpoint, s3
    server.stop()


def test_originals_and_thumbnails_in_s3(tmp_path, embedder, photos, moto_s3):
    endpoint, s3 = moto_s3
    options = {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": endpoint}}
    app = make_app(
        tmp_path / "data", embedder, storage_url="s3://lookalike/blobs", storage_options=options
    )
    with TestClient(app) as client:
        catalog = new_catalog(client)
        r = upload(client, catalog, {"coffee": photos["coffee"], "rocket": photos["rocket"]})
        ids = [item["id"] for item in r.json()["images"]]

        def keys() -> list[str]:
            listing = s3.list_objects_v2(Bucket="lookalike", Prefix="blobs/")
            return sorted(o["Key"] for o in listing.get("Contents", []))

        stored = keys()
        assert len(stored) == 4 and all(k.startswith(f"blobs/{catalog}/") for k in stored)
        assert not (tmp_path / "data" / "blobs").exists()
        original = client.get(f"/catalogs/{catalog}/images/{ids[0]}/original", headers=auth(ADMIN))
        assert original.content == photos["coffee"]
        thumb = client.get(f"/catalogs/{catalog}/images/{ids[1]}/thumbnail", headers=auth(ADMIN))
        assert Image.open(io.BytesIO(thumb.content)).format == "JPEG"
        client.delete(f"/catalogs/{catalog}/images/{ids[0]}", headers=auth(ADMIN))
        assert len(keys()) == 2
        client.delete(f"/catalogs/{catalog}", headers=auth(ADMIN))
        assert keys() == []


def test_a_text_with_a_colon_is_text_not_a_weight(client, photos):
    """``TEXT:WEIGHT`` is CLI syntax; through the API "cat: sleeping" is searched as written."""
    catalog = new_catalog(client)
    upload(client, catalog, photos)
    url = f"/catalogs/{catalog}/search"
    r = client.post(url, json={"text": "cat: sleeping", "k": 2}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    assert client.post(url, json={"text": "  "}, headers=auth(ADMIN)).status_code == 400
