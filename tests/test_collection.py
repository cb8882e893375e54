"""The Collection with the real model: indexing, incremental sync, bad files, search."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from lookalike import Collection, CollectionError
from tests.conftest import skimage_photo


def _collection(tmp_path: Path, embedder) -> Collection:
    return Collection.create(tmp_path / "col", embedder=embedder)


def test_index_and_search_finds_an_edited_copy(tmp_path, photo_dir, embedder) -> None:
    with _collection(tmp_path, embedder) as col:
        report = col.sync([photo_dir])
        assert report.added == 6 and not report.skipped
        query = skimage_photo("coffee").crop((60, 40, 560, 380)).rotate(8, expand=False)
        query = ImageEnhance.Color(query).enhance(1.4)
        hits = col.search(query, k=3)
        assert Path(hits[0].path).name == "coffee.jpg"
        assert hits[0].score > 0.7 > hits[1].score
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        # The image itself comes first, with cosine 1 when query expansion is off.
        rocket = photo_dir / "rocket.jpg"
        # 1 to the precision of the stored (int8) vector: within 1e-3 of the float32 query
        assert col.search(rocket, k=1, expand=0)[0].score == pytest.approx(1, abs=1e-3)
        assert col.search(rocket, k=1)[0].path == str(rocket)


def test_incremental_sync_adds_modifies_and_deletes(tmp_path, photo_dir, embedder) -> None:
    with _collection(tmp_path, embedder) as col:
        col.sync([photo_dir])
        again = col.sync([photo_dir])
        assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 6)

        (photo_dir / "rocket.jpg").unlink()
        skimage_photo("chelsea").save(photo_dir / "new_cat.png")
        modified = photo_dir / "astronaut.jpg"
        skimage_photo("astronaut").rotate(180).save(modified, quality=80)
        os.utime(modified, ns=(time.time_ns(), time.time_ns() + 10**9))
        report = col.sync([photo_dir])
        assert (report.added, report.updated, report.removed) == (1, 1, 1)
        assert len(col) == 6
        paths = {h.path for h in col.search(photo_dir / "coffee.jpg", k=10)}
        assert str(photo_dir / "rocket.jpg") not in paths
        assert str(photo_dir / "new_cat.png") in paths
        # The modified file is searchable under its new content.
        upside_down = skimage_photo("astronaut").rotate(180)
        assert col.search(upside_down, k=1)[0].path == str(modified)


def test_identical_files_are_stored_once_and_reported(tmp_path, photo_dir, embedder) -> None:
    shutil.copy(photo_dir / "coffee.jpg", photo_dir / "coffee_copy.jpg")
    with _collection(tmp_path, embedder) as col:
        report = col.sync([photo_dir])
        assert report.added == 6 and len(col) == 6
        assert [Path(p).name for p, _ in report.duplicates] == ["coffee_copy.jpg"]
        hit = col.search(photo_dir / "coffee.jpg", k=1)[0]
        assert {Path(p).name for p in hit.paths} == {"coffee.jpg", "coffee_copy.jpg"}
        # Deleting one copy keeps the image; deleting both drops it.
        (photo_dir / "coffee.jpg").unlink()
        col.sync([photo_dir])
        assert len(col) == 6
        (photo_dir / "coffee_copy.jpg").unlink()
        col.sync([photo_dir])
        assert len(col) == 5


def test_bad_files_are_skipped_with_reasons(tmp_path, photo_dir, embedder) -> None:
    good = (photo_dir / "coffee.jpg").read_bytes()
    (photo_dir / "empty.jpg").write_bytes(b"")
    (photo_dir / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (photo_dir / "text.png").write_text("not a picture at all")
    (photo_dir / "corrupt.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 " + os.urandom(300))
    with _collection(tmp_path, embedder) as col:
        report = col.sync([photo_dir])
        reasons = {Path(p).name: r for p, r in report.skipped}
        assert set(reasons) == {"empty.jpg", "truncated.jpg", "text.png", "corrupt.webp"}
        assert "empty" in reasons["empty.jpg"]
        assert "truncated" in reasons["truncated.jpg"]
        assert "not an image" in reasons["text.png"]
        assert report.added == 6
        assert col.info()["skipped"] == 4
        # Fixing a file makes it count on the next run.
        (photo_dir / "truncated.jpg").write_bytes(good)
        report = col.sync([photo_dir])
        assert len(report.skipped) == 3
        assert [Path(p).name for p, _ in report.duplicates] == ["truncated.jpg"]


def test_reopen_rebuilds_a_stale_index(tmp_path, photo_dir, embedder) -> None:
    with _collection(tmp_path, embedder) as col:
        col.sync([photo_dir])
    (tmp_path / "col" / "index" / "image.faiss").unlink()  # as if killed before saving
    with Collection.open(tmp_path / "col", embedder=embedder) as col:
        assert len(col.index()) == 6
        assert Path(col.search(photo_dir / "chelsea.jpg", k=1)[0].path).name == "chelsea.jpg"


def test_remove_files_and_folders(tmp_path, photo_dir, embedder) -> None:
    with _collection(tmp_path, embedder) as col:
        col.sync([photo_dir])
        assert col.remove([photo_dir / "coffee.jpg"]) == 1
        assert len(col) == 5 and len(col.index()) == 5
        assert col.remove([photo_dir]) == 5
        assert len(col) == 0 and col.search(photo_dir / "rocket.jpg") == []


def test_collection_refuses_wrong_model_and_newer_format(tmp_path, photo_dir, embedder) -> None:
    _collection(tmp_path, embedder).close()
    with pytest.raises(CollectionError, match="efficientnet-lite0"):
        Collection.open(tmp_path / "col", model="efficientnet-lite2")
    manifest = tmp_path / "col" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["format_version"] = 99
    manifest.write_text(json.dumps(data))
    with pytest.raises(CollectionError, match="newer"):
        Collection.open(tmp_path / "col")
    with pytest.raises(CollectionError, match="no collection"):
        Collection.open(tmp_path / "nothing")


def test_search_many_batches_queries(tmp_path, photo_dir, embedder) -> None:
    with _collection(tmp_path, embedder) as col:
        col.sync([photo_dir])
        answers = col.search_many(
            [photo_dir / "rocket.jpg", Image.open(photo_dir / "coffee.jpg")], k=2
        )
        assert [Path(a[0].path).name for a in answers] == ["rocket.jpg", "coffee.jpg"]


def test_pca_is_learned_on_the_collection_and_relearned_as_it_grows(
    tmp_path, photo_dir, embedder, monkeypatch
) -> None:
    import lookalike.collection.spaces as collection_module
    from lookalike.index.projected import ProjectedIndex

    monkeypatch.setattr(collection_module, "REDUCE_MIN_IMAGES", 4)
    few = tmp_path / "few"
    few.mkdir()
    for name in sorted(p.name for p in photo_dir.iterdir())[:4]:
        shutil.copy(photo_dir / name, few / name)
    with _collection(tmp_path, embedder) as col:
        col.sync([few])
        index = col.index()
        assert isinstance(index, ProjectedIndex) and index.fitted_on == 4
        assert index.projection.dim == 3  # at most n - 1 axes from n images
        first = index.projection.mean.copy()
        col.sync([photo_dir])  # 6 images: not yet twice as many, the projection stays
        assert col.index().fitted_on == 4
        for i in range(2):
            skimage_photo("astronaut").rotate(90 * (i + 1)).save(photo_dir / f"turn{i}.jpg")
        col.sync([photo_dir])  # 8 images: re-learned
        assert col.index().fitted_on == 8
        assert not np.allclose(col.index().projection.mean, first)
        assert Path(col.search(photo_dir / "coffee.jpg", k=1)[0].path).name == "coffee.jpg"
    with Collection.open(tmp_path / "col", embedder=embedder) as col:
        assert isinstance(col.index(), ProjectedIndex)  # saved beside the index and reloaded
        assert col.index().fitted_on == 8 and len(col.index()) == 8


def test_metadata_is_stored_merged_and_returned(tmp_path, photo_dir, embedder) -> None:
    with _collection(tmp_path, embedder) as col:
        col.add([photo_dir], metadata={photo_dir / "rocket.jpg": {"sku": "R-1", "tags": ["space"]}})
        hit = col.search(photo_dir / "rocket.jpg", k=1)[0]
        assert hit.metadata == {"sku": "R-1", "tags": ["space"]}
        assert hit.to_dict()["metadata"]["sku"] == "R-1"
        # Re-adding an unchanged file with new metadata updates it; None deletes a key.
        col.add([photo_dir / "rocket.jpg"], metadata={photo_dir / "rocket.jpg": {"tags": None}})
        assert col.get(hit.id).metadata == {"sku": "R-1"}
        assert col.update_metadata(hit.id, {"title": "launch"}) == {"sku": "R-1", "title": "launch"}
        with pytest.raises(CollectionError):
            col.update_metadata(10**9, {})


_MID_WRITE = """
import sys
from lookalike.collection import Collection
from lookalike.collection.lock import WriteLock

col = Collection.open(sys.argv[1])
col.save_indexes = lambda: None  # the catalogue is written, the index not saved yet
col.add([sys.argv[2]])
with WriteLock(col.path):  # and the writer is still at work
    print("mid-write", flush=True)
    sys.stdin.read()
"""


def test_readers_follow_the_saved_index_while_another_process_writes(
    tmp_path, photo_dir, embedder
) -> None:
    """A reader never rebuilds the index under a live writer (that stalled every search of a
    busy server); it answers from the last saved index and sees the write once it is saved."""
    import subprocess
    import sys

    extra = tmp_path / "extra"
    extra.mkdir()
    skimage_photo("coffee").rotate(180).save(extra / "upside.jpg", quality=92)
    with _collection(tmp_path, embedder) as col:
        col.sync([photo_dir])
    with Collection.open(tmp_path / "col", embedder=embedder) as reader:
        assert len(reader.index()) == 6
        writer = subprocess.Popen(
            [sys.executable, "-c", _MID_WRITE, str(tmp_path / "col"), str(extra / "upside.jpg")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert writer.stdout.readline().strip() == "mid-write"
            assert len(reader) == 7  # the catalogue is ahead of every saved index
            reader._build_index = None  # a rebuild now would fail loudly
            assert len(reader.index()) == 6
            assert reader.search(photo_dir / "chelsea.jpg", k=1)[0].path.endswith("chelsea.jpg")
        finally:
            writer.communicate("", timeout=60)
        del reader._build_index  # the writer is gone and never saved: rebuild from the catalogue
        assert len(reader.index()) == 7


def test_two_runs_creating_one_collection_at_once(tmp_path, photo_dir, embedder) -> None:
    """The loser of a race to create a collection gets BusyError (or waits and proceeds), never
    a raw database error such as "table meta already exists" (issue #15)."""
    import threading

    from lookalike.errors import BusyError

    for attempt in range(3):
        path = tmp_path / f"col{attempt}"
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def index(path=path, barrier=barrier, outcomes=outcomes) -> None:
            barrier.wait()
            try:
                with Collection.open(path, create=True, embedder=embedder) as col:
                    col.sync([photo_dir])
                outcomes.append("indexed")
            except BusyError:
                outcomes.append("busy")
            except Exception as exc:  # what the test looks for
                outcomes.append(repr(exc))

        threads = [threading.Thread(target=index) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert sorted(outcomes) in (["busy", "indexed"], ["indexed", "indexed"]), outcomes
        with Collection.open(path, embedder=embedder) as col:
            assert len(col) == 6 and len(col.index()) == 6


def test_saving_never_stamps_a_stale_index(tmp_path, photo_dir, embedder) -> None:
    with _collection(tmp_path, embedder) as col:
        col.sync([photo_dir])
        text = col.index("text")  # loaded now
        image_id = col.image_ids()[0]
        col.put_vectors("text", [image_id], col.catalogue.vectors("text", [image_id]) * 0)
        col.rebuild_index("image")  # saves what is loaded: the text index is behind
        stamp = json.loads((tmp_path / "col" / "index" / "text.json").read_text())
        assert stamp["generation"] != col.catalogue.generation()
        assert col.index("text") is not text  # rebuilt from the catalogue


def test_a_damaged_index_file_is_rebuilt_and_said_once(tmp_path, photo_dir, embedder, caplog):
    with _collection(tmp_path, embedder) as col:
        col.sync([photo_dir])
    file = tmp_path / "col" / "index" / "image.faiss"
    file.write_bytes(file.read_bytes()[:100])
    with caplog.at_level("WARNING", logger="lookalike"):
        for _ in range(2):
            with Collection.open(tmp_path / "col", embedder=embedder) as col:
                assert Path(col.search(photo_dir / "rocket.jpg", k=1)[0].path).name == "rocket.jpg"
    assert caplog.text.count("image.faiss is damaged") == 1


def test_a_manifest_that_is_not_json_names_the_repair(tmp_path, embedder) -> None:
    _collection(tmp_path, embedder).close()
    for damage in (b"\x00\xff", b"[1, 2]", b'{"format": "lookalike-collection", "model": 3}'):
        (tmp_path / "col" / "manifest.json").write_bytes(damage)
        with pytest.raises(CollectionError, match="check --repair"):
            Collection.open(tmp_path / "col")
