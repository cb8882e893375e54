"""An upload costs its images, not the collection's (issue #15 item 14): adding a few files
reads the catalogue's rows of those files only, checks the text space over the images added
since its last check only, and appends to the indexes' logs (tests/test_index_log.py); the
figures are in docs/benchmarks.md, section ``upload-scale``."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike import Collection
from lookalike.store import FileState, NewImage

#: Catalogue reads that go over every file or image: an upload must not make them.
WHOLE_READS = ("file_states", "skipped_states", "ids_missing")


def forbid_whole_reads(col: Collection, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(name: str):
        def read(*_: object, **__: object) -> None:
            raise AssertionError(f"an upload read every row: catalogue.{name}()")

        return read

    for name in WHOLE_READS:
        monkeypatch.setattr(col.catalogue, name, refused(name))


def test_an_upload_reads_only_its_own_files(tmp_path, photo_dir, embedder, monkeypatch) -> None:
    photos = sorted(photo_dir.iterdir())
    bad = photo_dir / "broken.jpg"
    bad.write_bytes(b"not a JPEG at all")
    with Collection.create(tmp_path / "col", embedder=embedder) as col:
        col.add([*photos[:2], bad])  # the first write of this instance may check everything
        forbid_whole_reads(col, monkeypatch)
        assert col.add([photos[2]]).added == 1
        # one unchanged, one new, one that failed before and has not changed since
        report = col.add([photos[0], photos[3], bad])
        assert (report.added, report.unchanged) == (1, 1)
        assert [path for path, _ in report.skipped] == [str(bad.resolve())]
        photos[1].write_bytes(photos[4].read_bytes())  # changed: its image is now another's
        report = col.add([photos[1]])
        assert (report.added, report.updated) == (0, 1)
        for space in col.spaces():
            assert len(col.index(space)) == len(col) == 4
        monkeypatch.undo()
        assert col.catalogue.ids_missing("text") == []
        assert col.search(photos[3], k=1)[0].path == str(photos[3].resolve())
        # a sync still reads every file under its folders, to drop those gone
        photos[3].unlink()
        report = col.sync([photo_dir])
        assert (report.removed, report.added, len(report.duplicates)) == (1, 1, 1)
        assert len(col.index("text")) == len(col.index("image")) == len(col) == 4


def test_images_added_without_a_text_vector_are_still_completed(
    tmp_path, photo_dir, embedder
) -> None:
    """The text space is checked over the images added since the last check only, so one
    committed by another writer without its text vector is still found."""
    photos = sorted(photo_dir.iterdir())
    with Collection.create(tmp_path / "col", embedder=embedder) as col:
        col.add(photos[:2])
        (image_id,) = col.catalogue.add_images(
            [
                NewImage(
                    "f" * 32,
                    "/elsewhere/x.jpg",
                    FileState(1, 1),
                    8,
                    8,
                    {"image": col.catalogue.vectors("image", [1])[0]},
                )
            ]
        )
        assert col.catalogue.ids_missing("text") == [image_id]
        col.add([photos[2]])
        assert col.catalogue.ids_missing("text") == []
        assert len(col.index("text")) == len(col) == 4
        text = col.catalogue.vectors("text", [1, image_id])
        np.testing.assert_array_equal(text[0], text[1])  # the same descriptor's
