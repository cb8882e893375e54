"""The command line as scripts drive it: the JSON contract, exit codes, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lookalike.cli import app
from tests.conftest import PHOTOS, skimage_photo

LOOKALIKE = [sys.executable, "-m", "lookalike"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*LOOKALIKE, *args], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def test_search_json_contract(tmp_path, photo_dir) -> None:
    col = str(tmp_path / "col")
    indexed = json.loads(run("index", str(photo_dir), "-c", col, "--json").stdout)
    assert indexed["added"] == 6 and indexed["images"] == 6

    queries = [photo_dir / "rocket.jpg", photo_dir / "coffee.jpg"]
    result = run("search", *map(str, queries), "-c", col, "-k", "3", "--json")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["query"] for line in lines] == [str(q) for q in queries]
    for query, line in zip(queries, lines, strict=True):
        assert len(line["results"]) == 3
        first = line["results"][0]
        assert set(first) >= {"path", "score", "id"}
        assert first["path"] == str(query) and isinstance(first["id"], int)
        assert -1.0 <= line["results"][-1]["score"] <= first["score"] <= 1.0 + 1e-6


def test_search_reports_a_bad_query_and_keeps_going(tmp_path, photo_dir) -> None:
    col = str(tmp_path / "col")
    run("index", str(photo_dir), "-c", col)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    result = run(
        "search", str(bad), str(photo_dir / "rocket.jpg"), "-c", col, "--json", check=False
    )
    assert result.returncode == 1
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["results"] == [] and "not an image" in first["error"]
    assert Path(second["results"][0]["path"]).name == "rocket.jpg"


def test_grid_info_remove_and_errors(tmp_path, photo_dir) -> None:
    col = str(tmp_path / "col")
    run("index", str(photo_dir), "-c", col)
    grid = tmp_path / "grid.png"
    run("search", str(photo_dir / "chelsea.jpg"), "-c", col, "-k", "4", "--grid", str(grid))
    from PIL import Image

    with Image.open(grid) as picture:
        assert picture.width > 4 * 160  # the query and four results side by side
    info = json.loads(run("info", "-c", col, "--json").stdout)
    assert info["images"] == 6 and info["model"]["name"] == "efficientnet-lite0"
    removed = json.loads(run("remove", str(photo_dir / "chelsea.jpg"), "-c", col, "--json").stdout)
    assert removed == {"removed": 1, "images": 5}
    missing = run(
        "search", str(photo_dir / "chelsea.jpg"), "-c", str(tmp_path / "none"), check=False
    )
    assert missing.returncode == 1 and "no collection" in missing.stderr


def _many_photos(folder: Path, count: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(1)
    sources = [skimage_photo(name) for name in PHOTOS]
    for i in range(count):
        photo = sources[i % len(sources)]
        x, y = rng.integers(0, 100, size=2)
        crop = photo.crop((x, y, x + 280, y + 260)).rotate(float(rng.uniform(-20, 20)))
        crop.save(folder / f"img{i:03d}.jpg", quality=85)


def _committed(catalogue: Path) -> int:
    try:
        with sqlite3.connect(f"file:{catalogue}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_kill_during_indexing_then_resume_loses_nothing(tmp_path) -> None:
    folder = tmp_path / "many"
    _many_photos(folder, 160)
    col = tmp_path / "col"
    process = subprocess.Popen(
        [*LOOKALIKE, "index", str(folder), "-c", str(col), "--batch-size", "2", "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while _committed(col / "catalogue.sqlite") < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = _committed(col / "catalogue.sqlite")
    assert 6 <= done_before < 160, "the run was not interrupted mid-way"

    # The collection opens and answers from what was committed.
    info = json.loads(run("info", "-c", str(col), "--json").stdout)
    assert info["images"] == info["index"]["vectors"] == done_before

    resumed = json.loads(run("index", str(folder), "-c", str(col), "--json").stdout)
    assert resumed["unchanged"] == done_before
    assert resumed["added"] + len(resumed["duplicates"]) == 160 - done_before
    assert not resumed["skipped"]
    info = json.loads(run("info", "-c", str(col), "--json").stdout)
    assert info["files"] == 160 and info["index"]["vectors"] == info["images"]


def _commands() -> list[str]:
    """Every command the app registers (each capability adds its own)."""
    import typer.main

    return sorted(typer.main.get_command(app).commands)


def _command_paths() -> list[list[str]]:
    """The app and every command under it, subcommands of groups included."""
    import typer.main

    def walk(command, path: list[str]):
        yield path
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


def test_every_capability_registers_its_commands() -> None:
    expected = {"index", "search", "info", "remove", "models", "eval", "serve", "train"}
    expected |= {"index-video", "locate", "duplicates", "detect"}
    assert expected <= set(_commands())


#: What must never show in a help text: Python types, the usage line's braces around required
#: arguments, module paths standing in for values, an unset default.
PLACEHOLDERS = ("<list[", "lookalike.", "{", "None]", "<class ")


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "lookalike")
def test_help_names_values_not_placeholders(path: list[str]) -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0 and "Usage" in result.stdout, result.output
    leaked = [p for p in PLACEHOLDERS if p in result.stdout]
    assert not leaked, (leaked, result.stdout)
    assert CliRunner().invoke(app, [*path, "-h"]).stdout == result.stdout


def test_help_runs_as_a_program() -> None:
    assert "Usage" in run("search", "--help").stdout
    assert run("--version").stdout.startswith("lookalike ")
