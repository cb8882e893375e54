"""``lookalike watch``: files that appear, change, move or go are indexed within seconds, in
debounced batches; ``kill -9`` loses nothing (the next watch resumes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.collection import Collection
from lookalike.ingest.watch import Watcher
from lookalike.store import open_catalogue
from tests.test_filters import ColourEmbedder

ROOT = Path(__file__).resolve().parents[1]


def _photo(path: Path, seed: int, size: int = 48) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "PNG")
    return path


def _files(col_path: Path) -> dict[str, int]:
    cat = open_catalogue(col_path / "catalogue.sqlite", create=False)
    try:
        return {Path(p).name: image_id for p, (_, image_id) in cat.file_states().items()}
    finally:
        cat.close()


def _wait_for(check, timeout: float = 10.0) -> float:
    """Seconds until ``check()`` is true (fails after ``timeout``)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if check():
            return time.perf_counter() - start
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


@pytest.fixture
def watched(tmp_path: Path):
    folder = tmp_path / "photos"
    _photo(folder / "first.png", 0)
    col = Collection.open(tmp_path / "col", create=True, embedder=ColourEmbedder())
    batches = []
    watcher = Watcher(col, [folder], report=batches.append)
    watcher.start()
    assert watcher.ready.wait(20)
    yield {"folder": folder, "col": col, "path": tmp_path / "col", "batches": batches}
    watcher.stop()
    col.close()


def test_new_changed_moved_and_deleted_files_follow(watched) -> None:
    folder, path = watched["folder"], watched["path"]
    assert set(_files(path)) == {"first.png"}  # the catch-up sync at start
    # A new file is searchable within 2 s of being closed.
    _photo(folder / "new.png", 1)
    closed = time.perf_counter()
    _wait_for(lambda: "new.png" in _files(path))
    assert time.perf_counter() - closed < 2.0
    # A changed file is re-embedded, a moved one keeps its image, a deleted one goes.
    before = _files(path)["new.png"]
    _photo(folder / "new.png", 2)
    _wait_for(lambda: _files(path).get("new.png") not in (None, before))
    moved_id = _files(path)["first.png"]
    (folder / "sub").mkdir()
    os.rename(folder / "first.png", folder / "sub" / "renamed.png")
    _wait_for(lambda: "renamed.png" in _files(path) and "first.png" not in _files(path))
    assert _files(path)["renamed.png"] == moved_id  # linked, not embedded again
    (folder / "new.png").unlink()
    _wait_for(lambda: "new.png" not in _files(path))
    # A folder moved in is walked; hidden files and other files are left out.
    outside = folder.parent / "outside"
    _photo(outside / "a.png", 3)
    _photo(outside / "b.png", 4)
    (outside / "notes.txt").write_text("not an image")
    _photo(folder / ".hidden.png", 5)
    os.rename(outside, folder / "album")
    _wait_for(lambda: {"a.png", "b.png"} <= set(_files(path)))
    time.sleep(1.5)
    assert set(_files(path)) == {"renamed.png", "a.png", "b.png"}
    hit = watched["col"].search(folder / "album" / "a.png", 1, expand=0)[0]
    assert hit.path == str(folder / "album" / "a.png") and hit.score > 0.99


def test_a_burst_of_files_is_debounced_into_few_batches(watched) -> None:
    folder, path = watched["folder"], watched["path"]
    watched["batches"].clear()
    for i in range(25):
        _photo(folder / "burst" / f"{i:02d}.png", 100 + i)
    _wait_for(lambda: len(_files(path)) == 26)
    assert 1 <= len(watched["batches"]) <= 4
    assert sum(b.added for b in watched["batches"]) == 25
    assert "25 added" in watched["batches"][0].summary() or len(watched["batches"]) > 1


_SCRIPT = """
import sys, time
import numpy as np
from tests.test_filters import ColourEmbedder
from lookalike.collection import Collection
from lookalike.ingest.watch import Watcher

class Slow(ColourEmbedder):
    def embed_images(self, images):
        time.sleep(0.04 * len(images))
        return super().embed_images(images)

col = Collection.open(sys.argv[1], create=True, embedder=Slow())
watcher = Watcher(col, [sys.argv[2]], report=lambda b: print(b.summary(), flush=True))
watcher.run()
"""


def test_kill_9_loses_nothing(tmp_path) -> None:
    folder, col_path = tmp_path / "photos", tmp_path / "col"
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", _SCRIPT, str(col_path), str(folder)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        process.stdout.readline()  # the catch-up line: watching from here
        for i in range(120):
            _photo(folder / f"{i:03d}.png", 1000 + i)
        _wait_for(lambda: len(_files(col_path)) > 0, timeout=30)
        os.kill(process.pid, signal.SIGKILL)  # in the middle of the batch
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert len(_files(col_path)) < 120  # it was killed before the end
    again = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = again.stdout.readline()  # the catch-up: what was left
        assert "added" in line
        _wait_for(lambda: len(_files(col_path)) == 120, timeout=30)
    finally:
        again.send_signal(signal.SIGINT)
        try:
            again.wait(timeout=20)
        except subprocess.TimeoutExpired:
            again.kill()
            again.wait()
    with Collection.open(col_path, embedder=ColourEmbedder()) as col:
        assert len(col) == 120 and len(col.index()) == 120
        assert col.catalogue.count()["files"] == 120


def test_watch_command_refuses_a_missing_folder(tmp_path) -> None:
    from typer.testing import CliRunner

    from lookalike.cli import app

    result = CliRunner().invoke(app, ["watch", str(tmp_path / "nowhere"), "-c", str(tmp_path)])
    assert result.exit_code == 1 and "no such folder" in result.output
