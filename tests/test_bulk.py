"""Bulk embedding with Ray Data on a local Ray (2 CPUs, started once for the module): the shard
format, merging into a collection (incremental, bad files skipped, duplicates linked), the same
vectors as the plain path, ``lookalike index --ray``, and Ray workers reading from S3 (moto)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from lookalike.cli import app
from lookalike.collection import Collection

from .conftest import PHOTOS, skimage_photo
from .test_s3_ingest import BUCKET, encoded, s3_server  # noqa: F401 - a fixture

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("pyarrow")

from lookalike.ingest import bulk  # noqa: E402

pytestmark = pytest.mark.slow  # a local Ray takes ~10 s to start and each run a few more
runner = CliRunner()


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        yield
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def mixed_dir(photo_dir):
    """Six photos, a byte-identical copy of one, and a corrupt file."""
    shutil.copy(photo_dir / "coffee.jpg", photo_dir / "coffee-copy.jpg")
    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    return photo_dir


def stored_vectors(col: Collection) -> dict[str, np.ndarray]:
    return {r.path: col.catalogue.vectors("image", [r.id])[0] for r in col.records()}


def test_index_with_ray_cli_shards_and_resume(tmp_path, mixed_dir, embedder, local_ray):
    col_dir, shards = tmp_path / "col", tmp_path / "shards"
    args = ["index", str(mixed_dir), "-c", str(col_dir), "--json", "--batch-size", "2"]
    ray_args = ["--ray", "local", "--workers", "2", "--shards", str(shards)]
    result = runner.invoke(app, [*args, *ray_args])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["added"], report["images"]) == (6, 6)
    assert [s["path"] for s in report["skipped"]] == [str(mixed_dir / "broken.jpg")]
    assert len(report["duplicates"]) == 1 and "coffee" in report["duplicates"][0]["path"]

    # The shards: documented layout, every listed file once, the failure kept with its reason.
    info = json.loads((shards / "shards.json").read_text())
    assert info["format"] == "lookalike-shards" and info["complete"] is True
    assert info["model"]["version"] == embedder.version and info["rows"] == 8
    assert info["errors"] == 1
    rows = list(bulk.read_shards(shards))
    assert sorted(r.path for r in rows) == sorted(str(p) for p in mixed_dir.iterdir())
    for part in info["parts"]:
        vectors = np.load(shards / "embeddings" / f"{part['name']}.npy")
        assert vectors.dtype == np.float32 and vectors.shape == (part["rows"], embedder.dim)
    broken = next(r for r in rows if r.path.endswith("broken.jpg"))
    assert broken.vectors is None and "not an image" in broken.error

    # Ray workers (one thread each) compute what the plain path computes.
    with Collection.open(col_dir) as col:
        got = stored_vectors(col)
        names = sorted(got)
        from lookalike.images import decode

        direct = embedder.embed_images([decode(p, min_side=embedder.input_size) for p in names])
        cosines = np.sum(np.stack([got[n] for n in names]) * direct, axis=1)
        assert cosines.min() > 0.999, cosines
        assert col.search(mixed_dir / "rocket.jpg", k=1)[0].path == str(mixed_dir / "rocket.jpg")
        assert "coffee" in col.search_text("a cup of coffee", k=1)[0].path

    # Nothing changed: nothing to embed, so Ray is not asked for anything.
    before = (shards / "shards.json").stat().st_mtime_ns
    again = json.loads(runner.invoke(app, [*args, "--ray", "local"]).stdout)
    assert (again["added"], again["unchanged"], len(again["skipped"])) == (0, 7, 1)
    assert (shards / "shards.json").stat().st_mtime_ns == before
    assert not (col_dir / "shards").exists()  # no temporary shards left behind

    # A changed file is re-embedded, a removed one dropped; temporary shards are cleaned up.
    skimage_photo("horse").save(mixed_dir / "rocket.jpg")
    (mixed_dir / "chelsea.jpg").unlink()
    with Collection.open(col_dir) as col:
        synced = bulk.index_with_ray(col, [mixed_dir], workers=1)
        assert (synced.added, synced.updated, synced.removed) == (0, 1, 1)
        assert col.search(skimage_photo("horse"), k=1)[0].path == str(mixed_dir / "rocket.jpg")
        assert len(col) == 5
    assert not (col_dir / "shards").exists()


def test_embed_with_ray_then_add_embedded(tmp_path, mixed_dir, embedder, local_ray):
    out = tmp_path / "shards"
    info = bulk.embed_with_ray([mixed_dir], embedder.name, out, workers=2, batch_size=2)
    assert info["rows"] == 8 and info["complete"] and len(info["parts"]) == 1

    with Collection.open(tmp_path / "col", create=True) as col:
        merged = col.add_embedded(out)
        assert (merged.added, len(merged.duplicates), len(merged.skipped)) == (6, 1, 1)
        plain = Collection.open(tmp_path / "plain", create=True)
        plain.sync([mixed_dir])
        ours, theirs = stored_vectors(col), stored_vectors(plain)
        assert sorted(ours) == sorted(theirs)
        assert min(float(ours[p] @ theirs[p]) for p in ours) > 0.999
        query = mixed_dir / "astronaut.jpg"
        ranked = [h.path for h in plain.search(query, k=3)]
        assert [h.path for h in col.search(query, k=3)] == ranked
        plain.close()
        again = col.add_embedded(out)
        assert (again.added, again.unchanged) == (0, 7)

    # Shards of another model version are refused before anything is written.
    info_file = out / "shards.json"
    tampered = json.loads(info_file.read_text())
    tampered["model"]["version"] = "efficientnet-lite0/other"
    info_file.write_text(json.dumps(tampered))
    with Collection.open(tmp_path / "col") as col, pytest.raises(bulk.BulkError, match="other"):
        col.add_embedded(out)
    with pytest.raises(bulk.BulkError, match="no embedding shards"):
        bulk.read_shard_info(tmp_path)


def test_collections_with_other_model_spaces_are_refused(tmp_path, embedder):
    with Collection.open(tmp_path / "col", create=True, embedder=embedder) as col:
        col.manifest["spaces"]["copy"] = {"dim": 512, "index": "flat", "model": "sscd-mobile"}
        with pytest.raises(bulk.BulkError, match="without --ray"):
            bulk.RayLoader(col)


def test_ray_workers_read_s3(tmp_path, s3_server, local_ray):  # noqa: F811
    _, s3 = s3_server
    s3.create_bucket(Bucket=BUCKET)
    try:
        for name in PHOTOS[:4]:
            s3.put_object(Bucket=BUCKET, Key=f"ray/{name}.jpg", Body=encoded(skimage_photo(name)))
        s3.put_object(Bucket=BUCKET, Key="ray/broken.png", Body=b"\x89PNG\r\n\x1a\n broken")
        with Collection.open(tmp_path / "col", create=True) as col:
            report = bulk.index_with_ray(col, [f"s3://{BUCKET}/ray"], workers=2, batch_size=2)
            assert report.added == 4
            assert report.skipped[0][0] == f"s3://{BUCKET}/ray/broken.png"
            hit = col.search(encoded(skimage_photo("coffee")), k=1, expand=0)[0]
            assert hit.path == f"s3://{BUCKET}/ray/coffee.jpg" and hit.score > 0.999
            assert bulk.index_with_ray(col, [f"s3://{BUCKET}/ray/"]).unchanged == 4
    finally:
        for obj in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
        s3.delete_bucket(Bucket=BUCKET)
