"""Duplicates: decisions that stick ("not duplicates", "keep this one") and are exported, and
moves that keep the collection true (paths renamed in the catalogue, folders kept, a dry run
that says exactly what --apply does, a second --apply that moves nothing and says so).

A colour-layout embedder stands in for both the image and the copy model (the real models are
covered by tests/test_copies.py): photos of one colour layout are near duplicates."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from lookalike.cli import app
from lookalike.collection import Collection, CollectionError
from lookalike.copies.duplicates import Decisions, decide, duplicates, export, move_duplicates
from tests.test_filters import ColourEmbedder

THRESHOLD = 0.97


class CopyColour(ColourEmbedder):
    name = "test-colour-copy"
    version = "test-colour-copy-1"


def _photo(path: Path, colour: tuple[int, int, int], size=(64, 48), mark: int = 0) -> None:
    image = Image.new("RGB", size, colour)
    image.paste((colour[2], colour[0], colour[1]), (0, 0, size[0] // 2, size[1] // 2))
    if mark:
        image.paste((mark, mark, mark), (size[0] - 4, size[1] - 4, size[0], size[1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=95)


@pytest.fixture
def library(tmp_path: Path) -> dict:
    """Photos in two folders: a red picture, its exact copy and an edited copy; a blue one and
    a smaller copy; a green one alone."""
    photos = tmp_path / "photos"
    _photo(photos / "x" / "red.jpg", (220, 20, 20), (128, 96))
    (photos / "y").mkdir()
    shutil.copy(photos / "x" / "red.jpg", photos / "y" / "red-copy.jpg")
    _photo(photos / "y" / "red-edit.jpg", (215, 25, 20), (100, 75), mark=255)
    _photo(photos / "x" / "blue.jpg", (20, 20, 220), (128, 96))
    _photo(photos / "y" / "blue-small.jpg", (22, 20, 218), (48, 36))
    _photo(photos / "x" / "green.jpg", (20, 200, 20))
    path = tmp_path / "col"
    with Collection.open(path, create=True, embedder=ColourEmbedder()) as col:
        with col.writing():
            spec = {"model": CopyColour.name, "version": CopyColour.version, "dim": 24}
            col.add_space("copy", {**spec, "index": "flat"}, CopyColour())
        col.sync([photos])
    return {"photos": photos, "path": path}


def _open(library: dict) -> Collection:
    col = Collection.open(library["path"], embedder=ColourEmbedder())
    col._space_embedders["copy"] = CopyColour()
    return col


def _names(groups) -> list[tuple[str, list[str]]]:
    return [(Path(g.original).name, sorted(Path(p).name for p in g.paths[1:])) for g in groups]


def test_decisions_stick_across_runs_and_reopening(library) -> None:
    photos = library["photos"]
    with _open(library) as col:
        assert _names(duplicates(col, THRESHOLD)) == [
            ("red.jpg", ["red-copy.jpg", "red-edit.jpg"]),
            ("blue.jpg", ["blue-small.jpg"]),
        ]
        decide(col, "distinct", [photos / "x" / "red.jpg", photos / "y" / "red-edit.jpg"])
        decide(col, "keep", [photos / "y" / "red-copy.jpg"])
        decide(col, "distinct", [photos / "y" / "blue-small.jpg"])  # its whole group
    with _open(library) as col:  # kept in the collection
        col.sync([photos])  # an indexing run changes nothing
        groups = duplicates(col, THRESHOLD)
        assert _names(groups) == [("red-copy.jpg", ["red.jpg"])]
        assert groups[0].decided and groups[0].to_dict()["decided"] == "keep"
        assert len(duplicates(col, THRESHOLD, decided=False)) == 2
        decide(col, "forget", [photos / "x" / "blue.jpg"])
        assert ("blue.jpg", ["blue-small.jpg"]) in _names(duplicates(col, THRESHOLD))
        listed = Decisions.load(col).to_list(col)
        assert {d["decision"] for d in listed} == {"distinct", "keep"}
        with pytest.raises(CollectionError, match="not in"):
            decide(col, "keep", [photos / "nowhere.jpg"])
        with pytest.raises(CollectionError, match="no group"):
            decide(col, "distinct", [photos / "x" / "green.jpg"])


def test_identical_files_can_be_meant(library) -> None:
    photos = library["photos"]
    with _open(library) as col:
        decide(col, "distinct", [photos / "x" / "red.jpg", photos / "y" / "red-copy.jpg"])
        decide(col, "distinct", [photos / "x" / "red.jpg", photos / "y" / "red-edit.jpg"])
        assert _names(duplicates(col, THRESHOLD)) == [("blue.jpg", ["blue-small.jpg"])]


def test_export_csv_and_json(library) -> None:
    photos = library["photos"]
    with _open(library) as col:
        decide(col, "keep", [photos / "y" / "blue-small.jpg"])
        groups = duplicates(col, THRESHOLD)
        decisions = Decisions.load(col).to_list(col)
    rows = list(csv.DictReader(io.StringIO(export(groups, decisions, "csv"))))
    originals = [r for r in rows if r["role"] == "original"]
    assert [Path(r["path"]).name for r in originals] == ["red.jpg", "blue-small.jpg"]
    assert originals[1]["decided"] == "keep"
    assert {r["kind"] for r in rows if r["role"] == "copy"} == {"exact", "near"}
    assert [r["decided"] for r in rows if r["role"] == "decision"] == ["keep"]
    data = json.loads(export(groups, decisions, "json"))
    assert len(data["groups"]) == 2 and data["decisions"][0]["decision"] == "keep"


def test_moves_keep_the_collection_true(library, tmp_path) -> None:
    photos, dest = library["photos"], tmp_path / "dupes"
    with _open(library) as col:
        groups = duplicates(col, THRESHOLD)
        plan = move_duplicates(col, groups, dest)  # a dry run
        assert {m.status for m in plan} == {"planned"} and not dest.exists()
        done = move_duplicates(col, groups, dest, apply=True)
        assert [(m.source, m.target) for m in done] == [(m.source, m.target) for m in plan]
        assert {m.status for m in done} == {"moved"}
        # Folders below the collection's common root are kept.
        assert sorted(str(Path(m.target).relative_to(dest)) for m in done) == [
            "y/blue-small.jpg", "y/red-copy.jpg", "y/red-edit.jpg",
        ]  # fmt: skip
        paths = {p for r in col.records() for p in r.paths}
        assert {m.target for m in done} <= paths and not {m.source for m in done} & paths
        # The next indexing run of the photos folder keeps the moved files where they are now.
        report = col.sync([photos])
        assert report.removed == 0 and report.added == 0
        hit = col.search(dest / "y" / "red-edit.jpg", 1, expand=0)[0]
        assert hit.path == str(dest / "y" / "red-edit.jpg")
        # A second --apply moves nothing: those files are in the destination already.
        again = move_duplicates(col, duplicates(col, THRESHOLD), dest, apply=True)
        assert {m.status for m in again} == {"here"}


def test_cli_decide_export_and_moves(library, tmp_path) -> None:
    runner = CliRunner()
    photos, path, dest = library["photos"], str(library["path"]), tmp_path / "dupes"
    common = ["duplicates", "-c", path, "--threshold", str(THRESHOLD)]
    result = runner.invoke(app, [*common, "--decide", "keep", str(photos / "y" / "red-copy.jpg")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*common, "--export", "json"])
    data = json.loads(result.stdout)
    assert Path(data["groups"][0]["original"]).name == "red-copy.jpg"
    assert data["decisions"][0]["decision"] == "keep"
    assert runner.invoke(app, [*common, "--decide", "keep"]).exit_code == 2
    assert runner.invoke(app, [*common, str(photos / "x" / "red.jpg")]).exit_code == 2
    # Moving checks the near copies by keypoints unless told not to: these flat colour
    # pictures have no keypoints to confirm them, so only the exact copy would move.
    for flags, kinds in (([], {"exact"}), (["--no-verify"], {"exact", "near"})):
        done = runner.invoke(app, [*common, *flags, "--move-to", str(dest), "--json"])
        assert done.exit_code == 0, done.output
        others = [o for g in json.loads(done.stdout)["groups"] for o in g["others"]]
        assert {o["kind"] for o in others} == kinds, others
    common.append("--no-verify")  # a file deleted below could not be checked: kept out then
    # Dry run, then apply: the same lines; a file deleted in between is reported, not "moved".
    (photos / "y" / "blue-small.jpg").unlink()
    dry = runner.invoke(app, [*common, "--move-to", str(dest)])
    assert dry.exit_code == 0 and "would move" in dry.stdout and not dest.exists()
    applied = runner.invoke(app, [*common, "--move-to", str(dest), "--apply"])
    assert applied.exit_code == 0, applied.output
    assert applied.stdout.replace("moved", "would move") == dry.stdout
    moved = [line for line in applied.stdout.splitlines() if line.startswith("moved ")]
    assert len(moved) == 2 and not any("blue-small.jpg" in line for line in moved)
    assert "missing (not moved)" in applied.stderr and "2 moved, 1 missing" in applied.stderr
    second = runner.invoke(app, [*common, "--move-to", str(dest), "--apply", "--json"])
    moves = json.loads(second.stdout)["moves"]
    assert moves and {m["status"] for m in moves} <= {"here", "missing"}
