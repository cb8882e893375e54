"""Indexing in a hostile world (issue #15): hostile files, names that are not UTF-8, damaged
collections and `lookalike check`, a full disk, and `kill -9` at random points of `index`,
`index --copy` and `remove` followed by a resume."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lookalike import Collection
from lookalike.cli import app
from lookalike.collection.check import check_collection
from lookalike.ingest import files as ingest
from lookalike.store import FileState
from tests.conftest import PHOTOS, skimage_photo
from tests.hostile_files import make_corpus, vanish_on_read

LOOKALIKE = [sys.executable, "-m", "lookalike"]


def run(*args: str | bytes, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LOOKALIKE, *args], capture_output=True, text=True, timeout=timeout, errors="replace"
    )


def _one_line_naming_repair(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "lookalike check --repair" in lines[0], result.stderr


# -- 1. hostile files ------------------------------------------------------------------------
def test_a_fifo_never_blocks_a_reader_thread(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    done: list = []
    reader = threading.Thread(
        target=lambda: done.append(ingest.load_file(str(fifo), FileState(0, 0), min_side=224)),
        daemon=True,
    )
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock the stuck open() so the thread can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO blocked the reader thread")
    assert done[0].error == "not a regular file (a FIFO)"
    with pytest.raises(Exception, match="FIFO"):
        ingest.file_state(str(fifo))


_READ_ZERO = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from lookalike.ingest.files import load_file
from lookalike.store import FileState
print(load_file(sys.argv[1], FileState(0, 0), min_side=224).error)
"""


def test_a_link_to_dev_zero_is_never_read(tmp_path: Path) -> None:
    link = tmp_path / "zero.jpg"
    link.symlink_to("/dev/zero")
    result = subprocess.run(
        [sys.executable, "-c", _READ_ZERO, str(link)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "not a regular file (a character device)"


def test_files_over_the_size_cap_are_skipped_unread(tmp_path: Path, monkeypatch) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + b"\x00" * 5000)
    with pytest.raises(Exception, match="file too large"):
        ingest.read_regular(str(big), limit=1000)
    item = ingest.load_file(str(big), FileState(5002, 0), min_side=None)
    assert item.error and "not an image" in item.error  # under the real cap: decoded, refused


def test_hostile_corpus_is_indexed_in_bounded_time(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "hostile")
    col = tmp_path / "col"
    try:
        started = time.monotonic()
        result = run("index", str(corpus.folder), "-c", str(col), "--json", timeout=120)
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 120
        report = json.loads(result.stdout)
        skipped = {s["path"]: s["reason"] for s in report["skipped"]}
        assert set(skipped) == set(corpus.bad), set(skipped) ^ set(corpus.bad)
        for path, reason in corpus.bad.items():
            assert reason in skipped[path], (path, skipped[path])
        assert report["images"] == corpus.contents
        with Collection.open(col) as opened:
            indexed = opened.catalogue.file_states()
            assert set(indexed) == set(corpus.good)  # every good file, nothing else
            assert len(opened) == corpus.contents  # each content once
            assert not opened.spaces_missing()
        # Again, as a table: unchanged, the same skips, and names that are not UTF-8 print.
        again = run("index", str(corpus.folder), "-c", str(col), timeout=120)
        assert again.returncode == 0, again.stderr
        printed = again.stdout.replace("\n", "")  # rich wraps long lines
        assert "unchanged 14" in printed and "\\udcff-broken-latin1.jpg" in printed
    finally:
        corpus.close()


def test_a_file_that_vanishes_after_listing_is_skipped(tmp_path, monkeypatch, embedder) -> None:
    corpus = make_corpus(tmp_path / "hostile")
    gone = vanish_on_read(corpus, monkeypatch)
    try:
        with Collection.create(tmp_path / "col", embedder=embedder) as col:
            report = col.sync([corpus.folder])
            skipped = dict(report.skipped)
            assert "No such file" in skipped[gone]
            assert set(col.catalogue.file_states()) == set(corpus.good)
            assert len(col) == corpus.contents
    finally:
        corpus.close()


# -- 2. names that are not UTF-8 -------------------------------------------------------------
def test_names_that_are_not_utf8_are_stored_and_searched(tmp_path, photo_dir, embedder) -> None:
    name = os.path.join(os.fsencode(photo_dir), b"caf\xe9-\xff.jpg")
    skimage_photo("coffee").rotate(90).save(name, "JPEG", quality=90)
    path = os.fsdecode(name)
    with Collection.create(tmp_path / "col", embedder=embedder) as col:
        assert col.sync([photo_dir]).added == 7
        hit = col.search(path, k=1)[0]
        assert hit.path == path
        with open(hit.path, "rb") as f:  # the path given back opens the file
            assert f.read(2) == b"\xff\xd8"
        assert json.loads(json.dumps(hit.to_dict()))["path"] == path
    with Collection.open(tmp_path / "col", embedder=embedder) as col:
        assert col.sync([photo_dir]).unchanged == 7  # the stored path round-trips exactly
        assert col.remove([path]) == 1 and len(col) == 6
    col_dir = tmp_path / "cli"
    assert run("index", str(photo_dir), "-c", str(col_dir)).returncode == 0
    found = subprocess.run(
        [*LOOKALIKE, "search", name, "-c", os.fsencode(col_dir), "-k", "2", "--json"],
        capture_output=True,
        timeout=120,
    )
    assert found.returncode == 0, found.stderr
    line = json.loads(found.stdout)  # valid JSON: the lone surrogates are escaped
    assert line["results"][0]["path"] == path and line["query"] == path
    table = subprocess.run(
        [*LOOKALIKE, "search", name, "-c", os.fsencode(col_dir), "-k", "2"],
        capture_output=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert table.returncode == 0, table.stderr
    assert b"caf\\udce9-\\udcff.jpg" in table.stdout


# -- 4. damaged collections and `lookalike check` --------------------------------------------
@pytest.fixture
def indexed(tmp_path: Path, photo_dir: Path) -> Path:
    col = tmp_path / "col"
    result = run("index", str(photo_dir), "-c", str(col))
    assert result.returncode == 0, result.stderr
    return col


def _top(col: Path, query: Path, k: int = 3) -> list[str]:
    result = run("search", str(query), "-c", str(col), "-k", str(k), "--json")
    assert result.returncode == 0, result.stderr
    return [Path(r["path"]).name for r in json.loads(result.stdout)["results"]]


def test_a_truncated_index_file_is_rebuilt_with_one_warning(indexed: Path, photo_dir) -> None:
    before = _top(indexed, photo_dir / "coffee.jpg")
    file = indexed / "index" / "image.faiss"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    info = run("info", "-c", str(indexed), "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["index"]["vectors"] == 6
    warnings = [line for line in info.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and "image.faiss is damaged" in warnings[0], info.stderr
    assert _top(indexed, photo_dir / "coffee.jpg") == before
    checked = run("check", "-c", str(indexed), "--json")
    assert checked.returncode == 1
    assert any(f["part"] == "index:image" for f in json.loads(checked.stdout)["findings"])
    repaired = run("check", "-c", str(indexed), "--repair", "--json")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    info = run("info", "-c", str(indexed))
    assert info.returncode == 0 and not info.stderr.strip()
    assert run("check", "-c", str(indexed)).returncode == 0


def _corrupt_pages(catalogue: Path, names: list[str]) -> None:
    with sqlite3.connect(catalogue) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = db.execute("PRAGMA page_size").fetchone()[0]
        roots = dict(db.execute("SELECT name, rootpage FROM sqlite_master"))
    db.close()
    with open(catalogue, "r+b") as f:
        for name in names:
            f.seek((roots[name] - 1) * size)
            f.write(bytes(range(256)) * (size // 256))


def test_a_damaged_catalogue_names_the_repair_and_is_salvaged(indexed: Path, photo_dir) -> None:
    before = {q: _top(indexed, photo_dir / q) for q in ("coffee.jpg", "rocket.jpg")}
    _corrupt_pages(indexed / "catalogue.sqlite", ["vectors", "files_by_image"])
    failed = 0
    for args in (
        ["info"],
        ["search", str(photo_dir / "coffee.jpg")],
        ["index", str(photo_dir)],
        ["remove", str(photo_dir / "nothing.jpg")],
        ["duplicates"],
    ):
        result = run(*args, "-c", str(indexed))
        assert "Traceback" not in result.stderr, (args, result.stderr)
        if result.returncode != 0:
            _one_line_naming_repair(result)
            failed += 1
    assert failed >= 2  # search and index read what is damaged
    checked = run("check", "-c", str(indexed), "--json")
    assert checked.returncode == 1 and not json.loads(checked.stdout)["healthy"]
    repaired = run("check", "-c", str(indexed), "--repair", "--json")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    report = json.loads(repaired.stdout)
    assert report["healthy"] and any("vectors" in lost for lost in report["lost"])
    assert list(indexed.glob("catalogue.sqlite.damaged-*"))  # kept beside the new one
    # Every image and file was saved; the lost vectors were computed again from the files.
    info = json.loads(run("info", "-c", str(indexed), "--json").stdout)
    assert info["images"] == info["files"] == 6 and info["index"]["vectors"] == 6
    assert {q: _top(indexed, photo_dir / q) for q in before} == before
    assert run("check", "-c", str(indexed)).returncode == 0


def test_an_empty_catalogue_is_not_taken_for_an_empty_collection(indexed: Path, photo_dir) -> None:
    catalogue = indexed / "catalogue.sqlite"
    catalogue.write_bytes(b"")
    for args in (["info"], ["search", str(photo_dir / "coffee.jpg")], ["index", str(photo_dir)]):
        _one_line_naming_repair(run(*args, "-c", str(indexed)))
    assert catalogue.stat().st_size == 0  # nothing wrote over it
    repaired = run("check", "-c", str(indexed), "--repair", "--json")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert any("empty" in lost for lost in json.loads(repaired.stdout)["lost"])
    again = json.loads(run("index", str(photo_dir), "-c", str(indexed), "--json").stdout)
    assert again["added"] == 6
    assert _top(indexed, photo_dir / "rocket.jpg")[0] == "rocket.jpg"


@pytest.mark.parametrize("damage", [b"{not json", b'{"format": "lookalike-collection"}'])
def test_a_broken_manifest_is_restored_from_the_catalogue(
    indexed: Path, photo_dir, damage: bytes
) -> None:
    (indexed / "manifest.json").write_bytes(damage)
    for args in (["info"], ["search", str(photo_dir / "coffee.jpg")], ["index", str(photo_dir)]):
        _one_line_naming_repair(run(*args, "-c", str(indexed)))
    assert run("check", "-c", str(indexed)).returncode == 1
    repaired = run("check", "-c", str(indexed), "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert list(indexed.glob("manifest.json.damaged-*"))
    assert _top(indexed, photo_dir / "chelsea.jpg")[0] == "chelsea.jpg"


# -- 6. a full disk --------------------------------------------------------------------------
def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def test_a_full_disk_is_one_line_and_leaves_no_temporary_files(
    tmp_path, photo_dir, monkeypatch
) -> None:
    import lookalike.fileio as fileio

    replace = os.replace

    def full(src, dst, *args, **kwargs):
        if str(dst).endswith(".faiss"):  # the catalogue is written; saving an index fails
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(fileio.os, "replace", full)
    col = tmp_path / "col"
    result = CliRunner().invoke(app, ["index", str(photo_dir), "-c", str(col)])
    assert result.exit_code == 1
    assert "no space left on the device" in result.output
    assert not _temporaries(col)
    monkeypatch.setattr(fileio.os, "replace", replace)
    assert check_collection(col).healthy  # the committed images are there, the index a cache
    again = CliRunner().invoke(app, ["index", str(photo_dir), "-c", str(col), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["images"] == 6


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 1 MiB tmpfs (needs root and mount; skipped elsewhere): an empty catalogue (~270 KiB)
    and its manifest fit, the photos of the test do not."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace')}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk(tiny_disk: Path, tmp_path: Path) -> None:
    photos = tmp_path / "many"
    _photos(photos, 60)
    col = tiny_disk / "col"
    result = run("index", str(photos), "-c", str(col), "--batch-size", "4")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and ("full" in lines[0] or "no space" in lines[0]), result.stderr
    assert not _temporaries(col)
    assert check_collection(col).healthy  # what was committed is whole


# -- kill -9 at random points, then resume -----------------------------------------------------
def _photos(folder: Path, count: int, sub: int = 0) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    sources = [skimage_photo(name).resize((320, 240)) for name in PHOTOS]
    for i in range(count):
        photo = sources[i % len(sources)]
        x, y = rng.integers(0, 40, size=2)
        crop = photo.crop((x, y, x + 260, y + 190)).rotate(float(rng.uniform(-25, 25)))
        where = folder / "sub" if i < sub else folder
        where.mkdir(exist_ok=True)
        crop.save(where / f"img{i:03d}.jpg", quality=85)


QUERIES = ("img000.jpg", "img007.jpg", "img031.jpg")


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """40 photos (12 in sub/) and a FIFO, a clean collection of them, and the clean results of
    `index --copy` and `remove sub/` on it."""
    root = tmp_path_factory.mktemp("faults")
    folder = root / "photos"
    _photos(folder, 40, sub=12)
    os.mkfifo(folder / "pipe.jpg")
    base = root / "base"
    assert run("index", str(folder), "-c", str(base)).returncode == 0
    copy, removed = root / "copy", root / "removed"
    shutil.copytree(base, copy)
    assert run("index", str(folder), "-c", str(copy), "--copy").returncode == 0
    shutil.copytree(base, removed)
    assert run("remove", str(folder / "sub"), "-c", str(removed)).returncode == 0
    return {"root": root, "folder": folder, "base": base, "copy": copy, "removed": removed}


def _queries(faults: dict) -> list[Path]:
    return [next(faults["folder"].rglob(name)) for name in QUERIES]


def _results(col: Path, queries: list[Path], space: str) -> list[list[tuple[str, float]]]:
    with Collection.open(col) as opened:
        return [[(h.path, h.score) for h in opened.search(q, k=5, space=space)] for q in queries]


def _count(catalogue: Path, sql: str) -> int:
    try:
        with sqlite3.connect(f"file:{catalogue}?mode=ro", uri=True, timeout=0.2) as db:
            return db.execute(sql).fetchone()[0]
    except sqlite3.Error:
        return 0


def _kill_when(args: list[str], ready: Callable[[], bool], delay: float) -> bool:
    """Start `lookalike args`, wait until ``ready()`` then ``delay`` seconds, kill -9 it;
    whether it was still running."""
    process = subprocess.Popen(
        [*LOOKALIKE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while process.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    running = process.poll() is None
    if running:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return running


def _invariants(col: Path, clean: Path, queries: list[Path], space: str) -> None:
    with Collection.open(col) as opened, Collection.open(clean) as reference:
        assert opened.catalogue.file_states().keys() == reference.catalogue.file_states().keys()
        assert len(opened) == len(reference)
        assert opened.spaces().keys() == reference.spaces().keys()
        assert not opened.spaces_missing()
    assert check_collection(col).healthy
    got, expected = _results(col, queries, space), _results(clean, queries, space)
    for row, want in zip(got, expected, strict=True):
        assert [p for p, _ in row] == [p for p, _ in want]
        assert np.allclose([s for _, s in row], [s for _, s in want], atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_during_index_then_resume(faults: dict, tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    col = tmp_path / "col"
    catalogue = col / "catalogue.sqlite"
    after = int(rng.integers(1, 30))
    _kill_when(
        ["index", str(faults["folder"]), "-c", str(col), "--batch-size", "4", "--workers", "1"],
        lambda: _count(catalogue, "SELECT COUNT(*) FROM images") >= after,
        float(rng.uniform(0, 0.2)),
    )
    resumed = run("index", str(faults["folder"]), "-c", str(col), "--json")
    assert resumed.returncode == 0, resumed.stderr
    _invariants(col, faults["base"], _queries(faults), "image")


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_during_index_copy_then_resume(faults: dict, tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    col = tmp_path / "col"
    shutil.copytree(faults["base"], col)
    catalogue = col / "catalogue.sqlite"

    # Seed 0: as soon as the copy space is recorded; seed 1: after its first batch is stored.
    def ready() -> bool:
        if seed == 0:
            return b'"copy"' in (col / "manifest.json").read_bytes()
        return _count(catalogue, "SELECT COUNT(*) FROM vectors WHERE space = 'copy'") > 0

    _kill_when(
        ["index", str(faults["folder"]), "-c", str(col), "--copy"],
        ready,
        float(rng.uniform(0, 0.1)),
    )
    resumed = run("index", str(faults["folder"]), "-c", str(col), "--copy", "--json")
    assert resumed.returncode == 0, resumed.stderr
    _invariants(col, faults["copy"], _queries(faults), "copy")
    duplicates = run("duplicates", "-c", str(col))
    assert duplicates.returncode == 0 and "no copy vector" not in duplicates.stderr


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_during_remove_then_resume(faults: dict, tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    col = tmp_path / "col"
    shutil.copytree(faults["base"], col)
    started = time.monotonic()
    delay = float(rng.uniform(0.4, 1.4))
    _kill_when(
        ["remove", str(faults["folder"] / "sub"), "-c", str(col)],
        lambda: time.monotonic() - started >= delay,
        0.0,
    )
    resumed = run("remove", str(faults["folder"] / "sub"), "-c", str(col), "--json")
    # Exit 1 when the killed run had removed them all already ("not in the collection").
    assert resumed.returncode == 0 or "not in the collection" in resumed.stderr, resumed.stderr
    queries = [q for q in _queries(faults) if "sub" not in q.parts]
    _invariants(col, faults["removed"], queries, "image")
