"""Indexing an ``s3://bucket/prefix`` against a real S3 API (moto's server on loopback, started
here): listing, sniffing content rather than names, incremental re-runs by ETag, removal on sync,
and ``search --json`` answering with ``s3://`` paths."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from lookalike.cli import app
from lookalike.collection import Collection, CollectionError

from .conftest import PHOTOS, skimage_photo

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

BUCKET = "photos"
runner = CliRunner()


def encoded(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on a free loopback port, and the AWS variables pointing at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        env.setenv("AWS_ACCESS_KEY_ID", "test")
        env.setenv("AWS_SECRET_ACCESS_KEY", "test")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        env.delenv("AWS_PROFILE", raising=False)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        yield endpoint, client
    server.stop()


@pytest.fixture
def bucket(s3_server):
    """A fresh bucket with six photos under ``shop/``, a corrupt one, a PNG with no suffix,
    a text file, and images outside the prefix."""
    _, s3 = s3_server
    s3.create_bucket(Bucket=BUCKET)
    for name in PHOTOS:
        s3.put_object(Bucket=BUCKET, Key=f"shop/{name}.jpg", Body=encoded(skimage_photo(name)))
    s3.put_object(Bucket=BUCKET, Key="shop/broken.jpg", Body=b"\xff\xd8\xff not really a jpeg")
    png = encoded(skimage_photo("coins").convert("RGB"), "PNG")
    s3.put_object(Bucket=BUCKET, Key="shop/raw/0a1b2c", Body=png)  # no suffix: content decides
    s3.put_object(Bucket=BUCKET, Key="shop/notes.txt", Body=b"not an image")
    s3.put_object(Bucket=BUCKET, Key="shop-old/horse.jpg", Body=encoded(skimage_photo("horse")))
    s3.put_object(Bucket=BUCKET, Key="other/rocket.jpg", Body=encoded(skimage_photo("rocket")))
    yield s3
    listing = s3.list_objects_v2(Bucket=BUCKET)
    for obj in listing.get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
    s3.delete_bucket(Bucket=BUCKET)


def index_json(*args: str) -> dict:
    result = runner.invoke(app, ["index", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_listing_prefix_sniffs_content_and_keeps_etags(bucket):
    from lookalike.ingest.sources import is_remote, list_images, read_bytes

    states = list_images(f"s3://{BUCKET}/shop")
    assert sorted(states) == sorted(
        [f"s3://{BUCKET}/shop/{n}.jpg" for n in (*PHOTOS, "broken")]
        + [f"s3://{BUCKET}/shop/raw/0a1b2c"]
    )  # not notes.txt, not shop-old/ or other/
    assert list_images(f"s3://{BUCKET}/shop/") == states
    coffee = f"s3://{BUCKET}/shop/coffee.jpg"
    assert read_bytes(coffee) == encoded(skimage_photo("coffee"))
    assert states[coffee].size == len(read_bytes(coffee))
    # Same bytes, same ETag, same change key; other bytes, another one.
    bucket.put_object(Bucket=BUCKET, Key="shop/coffee.jpg", Body=read_bytes(coffee))
    assert list_images(coffee)[coffee] == states[coffee]
    bucket.put_object(Bucket=BUCKET, Key="shop/coffee.jpg", Body=encoded(skimage_photo("horse")))
    assert list_images(coffee)[coffee] != states[coffee]
    assert is_remote(coffee) and not is_remote("/tmp/x.jpg") and not is_remote("file:///tmp")


def test_index_s3_prefix_search_rerun_and_sync(tmp_path, bucket):
    col = str(tmp_path / "col")
    first = index_json(f"s3://{BUCKET}/shop", "-c", col)
    assert first["added"] == 7 and first["images"] == 7
    assert first["skipped"] == [
        {"path": f"s3://{BUCKET}/shop/broken.jpg", "reason": first["skipped"][0]["reason"]}
    ]
    assert "not an image" in first["skipped"][0]["reason"]

    query = tmp_path / "query.jpg"
    skimage_photo("chelsea").resize((300, 200)).save(query, quality=80)
    found = runner.invoke(app, ["search", str(query), "-c", col, "-k", "3", "--json"])
    assert found.exit_code == 0, found.output
    results = json.loads(found.stdout)["results"]
    assert results[0]["path"] == f"s3://{BUCKET}/shop/chelsea.jpg"
    assert all(r["path"].startswith(f"s3://{BUCKET}/shop/") for r in results)

    again = index_json(f"s3://{BUCKET}/shop", "-c", col)
    assert (again["added"], again["updated"], again["unchanged"]) == (0, 0, 7)
    assert len(again["skipped"]) == 1  # still broken, not retried

    bucket.delete_object(Bucket=BUCKET, Key="shop/astronaut.jpg")
    bucket.put_object(Bucket=BUCKET, Key="shop/rocket.jpg", Body=encoded(skimage_photo("horse")))
    synced = index_json(f"s3://{BUCKET}/shop/", "-c", col)
    assert (synced["added"], synced["updated"], synced["removed"]) == (0, 1, 1)
    with Collection.open(col) as c:
        paths = {r.path for r in c.records()}
        assert f"s3://{BUCKET}/shop/astronaut.jpg" not in paths
        horse = c.search(skimage_photo("horse"), k=1)[0]
        assert horse.path == f"s3://{BUCKET}/shop/rocket.jpg" and horse.score > 0.99
        assert c.remove([f"s3://{BUCKET}/shop/raw"]) == 1
        assert len(c) == 5


def test_missing_prefix_is_a_clear_error(tmp_path, bucket):
    result = runner.invoke(app, ["index", f"s3://{BUCKET}/nothing-here", "-c", str(tmp_path)])
    assert result.exit_code == 1
    assert "nothing at s3://photos/nothing-here" in result.output
    with Collection.open(tmp_path / "c", create=True) as col, pytest.raises(CollectionError):
        col.sync(["s3://no-such-bucket-here/x"])
