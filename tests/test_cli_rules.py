"""The command line's rules (docs/cli.md), row by row from issue #16: every input gets a correct
answer or one clear line with the documented exit code (0 success, 1 some inputs failed, 2 a
usage error), and never a traceback. In-process (CliRunner) except where file descriptor 2 or a
terminal matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from lookalike.cli import app
from tests.conftest import PHOTOS, skimage_photo

runner = CliRunner()


def invoke(*args: str | Path):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> dict:
    """Six photos indexed once; tests that change a collection make their own."""
    root = tmp_path_factory.mktemp("rules")
    photos = root / "photos"
    photos.mkdir()
    for name in PHOTOS:
        skimage_photo(name).save(photos / f"{name}.jpg", quality=92)
    col = root / "col"
    done = invoke("index", photos, "-c", col)
    assert done.exit_code == 0, done.output
    return {"root": root, "photos": photos, "col": col}


def _usage(result, *words: str) -> None:
    """A usage error: exit code 2 and the words in the message."""
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    for word in words:
        assert word in text, (word, result.output)


def _failed(result, *words: str) -> None:
    """Some input failed: exit code 1 and the words in the message."""
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    for word in words:
        assert word in text, (word, result.output)


# -- index -------------------------------------------------------------------------------------
def test_index_a_missing_folder_creates_nothing(tmp_path: Path) -> None:
    col = tmp_path / "col"
    _failed(invoke("index", tmp_path / "nonexistent_dir", "-c", col), "no such file or folder")
    assert not col.exists()


def test_index_an_empty_folder_says_so_and_leaves_no_collection(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    col = tmp_path / "col"
    _failed(invoke("index", tmp_path / "empty", "-c", col), "no images found")
    assert not col.exists()


def test_index_follows_symlinked_class_folders_without_looping(lib, tmp_path: Path) -> None:
    real = tmp_path / "real"
    for label, name in (("cats", "chelsea"), ("cups", "coffee")):
        (real / label).mkdir(parents=True)
        (real / label / f"{name}.jpg").write_bytes((lib["photos"] / f"{name}.jpg").read_bytes())
    links = tmp_path / "links"
    links.mkdir()
    for label in ("cats", "cups"):
        (links / label).symlink_to(real / label, target_is_directory=True)
    (real / "cups" / "loop").symlink_to(links, target_is_directory=True)  # a cycle
    done = invoke("index", links, "-c", tmp_path / "col", "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["added"] == 2 and report["images"] == 2


@pytest.mark.parametrize(
    ("model", "words"),
    [("dir", ["written by `lookalike train`", "--model PATH"]), ("nope", ["lookalike models"])],
)
def test_index_model_names(lib, tmp_path: Path, model: str, words: list[str]) -> None:
    _usage(invoke("index", lib["photos"], "-c", tmp_path / "c", "--model", model), *words)
    assert not (tmp_path / "c").exists()


def test_index_kind_of_an_existing_collection_is_refused(lib) -> None:
    before = (lib["col"] / "manifest.json").read_text()
    done = invoke("index", lib["photos"], "-c", lib["col"], "--index", "hnsw")
    _failed(done, "already has a '", "index;", "--collection NEW_DIR --index hnsw")
    assert (lib["col"] / "manifest.json").read_text() == before
    _usage(invoke("index", lib["photos"], "-c", lib["col"], "--index", "bogus"), "flat, hnsw")


def test_copy_options_without_copy_are_refused(lib, tmp_path: Path) -> None:
    for option in (["--regions"], ["--copy-model", "sscd"]):
        _usage(invoke("index", lib["photos"], "-c", tmp_path / "c", *option), "--copy")
    assert not (tmp_path / "c").exists()


def test_exclude_is_remembered_and_remove_says_what_is_not_there(lib, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "thumbnails").mkdir(parents=True)
    for name in ("astronaut", "coffee", "rocket"):
        (photos / f"{name}.jpg").write_bytes((lib["photos"] / f"{name}.jpg").read_bytes())
    skimage_photo("chelsea").resize((64, 64)).save(photos / "thumbnails" / "chelsea.jpg")
    col = tmp_path / "col"
    assert json.loads(invoke("index", photos, "-c", col, "--json").stdout)["images"] == 4
    done = invoke("index", photos, "-c", col, "--exclude", "thumbnails", "--json")
    report = json.loads(done.stdout)
    assert report["removed"] == 1 and report["images"] == 3
    assert report["excludes"] == ["thumbnails"]
    again = json.loads(invoke("index", photos, "-c", col, "--json").stdout)  # remembered
    assert again["images"] == 3 and again["added"] == 0
    assert "thumbnails" in invoke("info", "-c", col).stdout

    done = invoke("remove", photos / "nothere.jpg", photos / "rocket.jpg", "-c", col, "--json")
    _failed(done, "not in the collection", "nothere.jpg")
    assert json.loads(done.stdout)["removed"] == 1
    done = invoke("remove", photos / "coffee.jpg", "-c", col, "--exclude")
    assert done.exit_code == 0, done.output
    after = json.loads(invoke("index", photos, "-c", col, "--json").stdout)
    assert after["images"] == 2 and after["added"] == 1  # rocket back, coffee stays out


# -- search ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["-k", "0"], ["-k", "greater than or equal to 1"]),
        (["-k", "-3"], ["-k"]),
        (["--expand", "-1"], ["--expand"]),
        (["--mode", "foo"], ["unknown mode 'foo'", "image, copy"]),
        (["--region", "0,0,0,0"], ["empty"]),
        (["--region", "1,2,3"], ["four numbers"]),
        (["--min-score", "2"], ["-1..1"]),
        (["--grid", "out.txt"], [".png"]),
        (["--mode", "copy", "--expand", "2"], ["--mode copy", "expansion"]),
    ],
)
def test_search_bad_values_are_usage_errors(lib, args: list[str], words: list[str]) -> None:
    _usage(invoke("search", lib["photos"] / "rocket.jpg", "-c", lib["col"], *args), *words)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--text", "bus", "--region", "0,0,10,10"], ["--region", "text query"]),
        (["--text", "bus", "--mode", "copy"], ["--mode copy"]),
        (["--text", "bus", "--verify"], ["--verify"]),
        (["--text", "bus", "--expand", "2"], ["--expand"]),
        (["--text", "bus", "--exclude-self"], ["--exclude-self"]),
        (["--not", "people"], ["--not", "--text"]),
        (["--text", ""], ["empty"]),
        (["--text", "horse:abc"], ["weight", "horse:0.5"]),
        (["--text", "horse:-1"], ["above 0", "--not"]),
        ([], ["give query images, --text, or both"]),
    ],
)
def test_search_options_that_cannot_apply_are_refused(
    lib, args: list[str], words: list[str]
) -> None:
    _usage(invoke("search", "-c", lib["col"], *args), *words)


def test_region_in_fractions_or_pixels(lib) -> None:
    query = lib["photos"] / "rocket.jpg"
    width, height = Image.open(query).size
    done = invoke("search", query, "-c", lib["col"], "--region", "0.1,0.1,0.5,0.5", "--json")
    assert done.exit_code == 0, done.output
    assert "fractions" in done.stderr
    pixels = f"{0.1 * width:.0f},{0.1 * height:.0f},{0.5 * width:.0f},{0.5 * height:.0f}"
    same = invoke("search", query, "-c", lib["col"], "--region", pixels, "--json")
    assert "pixels" in same.stderr
    assert json.loads(done.stdout)["results"][:2] == json.loads(same.stdout)["results"][:2]


def test_a_folder_or_missing_query_fails_alone(lib) -> None:
    done = invoke(
        "search", lib["photos"], "missing.jpg", lib["photos"] / "coffee.jpg", "-c", lib["col"]
    )
    _failed(done, "is a folder", "no such file")
    assert "coffee.jpg" in done.stdout and "Errno" not in done.output


def test_text_queries_say_what_they_understood(lib) -> None:
    done = invoke("search", "--text", "bus", "-c", lib["col"], "--json", "-k", "2")
    assert done.exit_code == 0, done.output
    line = json.loads(done.stdout)
    assert set(line) >= {"query", "results", "understood"}
    assert set(line["results"][0]) >= {"path", "score", "id"}
    (bus,) = line["understood"]
    assert bus["near"] and "school bus" in [c["name"] for c in bus["classes"]]
    assert "warning" not in done.stderr
    shown = invoke("search", "--text", "bus:2", "--not", "car", "-c", lib["col"], "--explain")
    assert "understood 'bus' (weight 2) as: school bus" in shown.stdout
    assert "understood not 'car'" in shown.stdout
    for far in ("xyzzyplugh", "africa"):
        done = invoke("search", "--text", far, "-c", lib["col"], "--json")
        assert done.exit_code == 0, done.output
        (term,) = json.loads(done.stdout)["understood"]
        assert term["near"] is False and far in done.stderr and "warning" in done.stderr
    _usage(invoke("search", lib["photos"] / "rocket.jpg", "-c", lib["col"], "--explain"))


def test_verify_columns_min_score_exclude_self_and_full_paths(lib, tmp_path: Path) -> None:
    deep = tmp_path / ("a folder name long enough to pass eighty columns " * 2).strip()
    deep.mkdir()
    skimage_photo("rocket").rotate(3).save(deep / "rocket-again.jpg", quality=90)
    col = tmp_path / "col"
    invoke("index", lib["photos"], deep, "-c", col)
    query = lib["photos"] / "astronaut.jpg"
    done = invoke("search", query, "-c", col, "-k", "7", "--verify")
    assert done.exit_code == 0, done.output
    header = next(line for line in done.stdout.splitlines() if "score" in line)
    assert "verified" in header and "inliers" in header
    assert str(deep / "rocket-again.jpg") in done.stdout  # piped: no column cut
    hits = json.loads(invoke("search", query, "-c", col, "--json", "--exclude-self").stdout)
    assert all(Path(r["path"]).name != "astronaut.jpg" for r in hits["results"])
    kept = json.loads(invoke("search", query, "-c", col, "--json", "--min-score", "0.3").stdout)
    assert kept["results"] and all(r["score"] >= 0.3 for r in kept["results"])


def test_grid_with_verify_and_folder_or_file(lib, tmp_path: Path) -> None:
    picture = tmp_path / "grid.png"
    query = lib["photos"] / "rocket.jpg"
    done = invoke("search", query, "-c", lib["col"], "-k", "2", "--verify", "--grid", picture)
    assert done.exit_code == 0 and Image.open(picture).width > 2 * 160
    _usage(invoke("search", query, "-c", lib["col"], "--grid", tmp_path), ".png")


# -- info, models, app options -----------------------------------------------------------------
def test_info_is_labelled_rows_and_says_what_auto_chose(lib, tmp_path: Path) -> None:
    text = invoke("info", "-c", lib["col"]).stdout
    for label in ("collection", "model", "images", "size on disk", "space image", "space text"):
        assert label in text
    assert "KB" in text and "{'" not in text and "bytes_on_disk" not in text
    col = tmp_path / "auto"
    invoke("index", lib["photos"] / "rocket.jpg", "-c", col, "--index", "auto")
    assert "index flat (chosen by auto)" in invoke("info", "-c", col).stdout
    data = json.loads(invoke("info", "-c", col, "--json").stdout)
    assert data["index"]["kind"] == "auto" and data["index"]["in_use"]["kind"] == "flat"
    assert data["bytes_on_disk"] > 0  # --json keeps its fields


def test_models_lines_are_usable_names() -> None:
    text = invoke("models").stdout
    names = [line.split()[0] for line in text.splitlines() if line and not line.startswith("Use")]
    assert "efficientnet-lite0" in names and "clip:DIR" in names and "PATH" in names
    assert "dir" not in names and "clip" not in names
    assert all("needs" in line for line in text.splitlines()[: len(names)])
    assert (
        json.loads(invoke("models", "--json").stdout)["models"][0]["name"] == "efficientnet-lite0"
    )


def test_version_and_short_help() -> None:
    done = invoke("--version")
    assert done.exit_code == 0 and done.stdout.startswith("lookalike ")
    for command in ("search", "index", "detect"):
        assert invoke(command, "-h").stdout == invoke(command, "--help").stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["eval", ".", "--layout", "nonsense"], ["unknown layout 'nonsense'", "ukbench"]),
        (["train", ".", "--out", "m", "--loss", "nope"], ["unknown loss 'nope'", "triplet"]),
        (["train", ".", "--out", "m", "--mode", "nope"], ["unknown training mode", "head"]),
        (["eval", "no/such/dataset"], ["no such file or folder"]),
        (["duplicates", "-k", "0"], ["-k"]),
        (["duplicates", "--neighbours", "0"], ["--neighbours"]),
        (["duplicates", "--apply"], ["--move-to"]),
        (["index-video", "v.mp4", "--track", "no.csv"], ["no such file"]),
        (["index-video", "v.mp4", "--track", __file__, "--every-seconds", "0"], ["more than 0"]),
        (["bogus-command"], ["No such command"]),
        (["search", "--no-such-option"], ["No such option"]),
    ],
)
def test_option_errors_exit_2(args: list[str], words: list[str]) -> None:
    _usage(invoke(*args), *words)


# -- detect ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["-k", "0"], ["-k"]),
        (["--proposals", "foo"], ["unknown proposal source 'foo'", "keypoints"]),
        (["--labels", "x.txt"], ["no such file"]),
        (["--every", "3"], ["--every-frames", "--video"]),
        (["--min-score", "5"], ["-1..1"]),
    ],
)
def test_detect_bad_values(lib, args: list[str], words: list[str]) -> None:
    _usage(invoke("detect", lib["photos"] / "rocket.jpg", "-c", lib["col"], *args), *words)


def test_detect_grid_is_a_folder_for_several_photos(lib, tmp_path: Path) -> None:
    photos = [lib["photos"] / "rocket.jpg", lib["photos"] / "coffee.jpg"]
    _usage(invoke("detect", *photos, "-c", lib["col"], "--grid", tmp_path / "x.png"), "folder")
    done = invoke("detect", *photos, "missing.jpg", "-c", lib["col"], "--grid", tmp_path / "out")
    _failed(done, "missing.jpg", "no such file")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["coffee.png", "rocket.png"]


def test_detect_with_ssd_keeps_tflite_logs_off_the_terminal(lib) -> None:
    from lookalike.detect.ssd import SSD_MODEL_FILE, objectron_dir

    if not (objectron_dir() / SSD_MODEL_FILE).is_file():
        pytest.skip("the SSD detector is not installed (make install)")
    command = [sys.executable, "-m", "lookalike", "detect", str(lib["photos"] / "rocket.jpg")]
    command += ["-c", str(lib["col"]), "--proposals", "ssd"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "TensorFlow Lite" not in done.stderr and not done.stderr.strip(), done.stderr
    loud = subprocess.run([*command, "--verbose"], capture_output=True, text=True, timeout=120)
    assert loud.returncode == 0 and "TensorFlow Lite" in loud.stderr


def test_detect_help_values_match_the_code() -> None:
    from lookalike.detect import cli
    from lookalike.detect.matcher import MIN_INLIERS
    from lookalike.detect.photo import MIN_SCORE

    assert cli.MIN_SCORE_HELP == MIN_SCORE and cli.MIN_INLIERS_HELP == MIN_INLIERS


# -- locate and maps ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def placed(lib) -> Path:
    """A collection whose photos carry positions (metadata lat/lon)."""
    from lookalike import Collection

    col = lib["root"] / "placed"
    files = sorted(lib["photos"].glob("*.jpg"))
    where = {str(f): {"lat": 48.85 + i * 1e-4, "lon": 2.35} for i, f in enumerate(files)}
    with Collection.open(col, create=True) as opened:
        opened.add(files, metadata=where)
    return col


def test_locate_names_and_map_formats(lib, placed: Path, tmp_path: Path) -> None:
    query = lib["photos"] / "coffee.jpg"
    _usage(invoke("locate", query, "-c", placed, "--map", tmp_path / "geo.jpg"), ".geojson")
    _usage(invoke("locate", query, "-c", placed, "-k", "0"), "-k")
    _usage(invoke("locate", query, "-c", placed, "--voters", "0"), "--voters")
    old = invoke("locate", query, "-c", placed, "-k", "3", "--json")
    assert old.exit_code == 0 and "deprecated" in old.stderr and "--voters" in old.stderr
    geojson = tmp_path / "geo.geojson"
    done = invoke("locate", query, "nothere.jpg", "-c", placed, "--json", "--map", geojson)
    _failed(done, "nothere.jpg", "no such file")
    answer = json.loads(done.stdout.splitlines()[0])
    assert answer["query"] == str(query) and answer["lat"] == pytest.approx(48.85, abs=1e-3)
    kinds = [f["properties"]["kind"] for f in json.loads(geojson.read_text())["features"]]
    assert kinds[0] == "reference" and "predicted" in kinds
    page = tmp_path / "geo.html"
    assert invoke("locate", query, "-c", placed, "--map", page).exit_code == 0
    text = page.read_text()
    assert "blue: predicted" in text and "green: true position" not in text  # no truth drawn


def test_duplicates_verify_shows_verified(lib, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "rocket"):
        (photos / f"{name}.jpg").write_bytes((lib["photos"] / f"{name}.jpg").read_bytes())
    edited = skimage_photo("rocket")
    edited.crop((20, 20, edited.width - 40, edited.height - 30)).save(photos / "rocket-crop.jpg")
    col = tmp_path / "col"
    assert invoke("index", photos, "-c", col, "--copy").exit_code == 0
    done = invoke("duplicates", "-c", col, "--verify")
    assert done.exit_code == 0, done.output
    header = next(line for line in done.stdout.splitlines() if "kind" in line)
    assert "verified" in header and "keypoints" in done.stdout
    old = invoke("duplicates", "-c", col, "-k", "5", "--json")
    assert old.exit_code == 0 and "--neighbours" in old.stderr
    _usage(invoke("duplicates", "-c", col, "--grid", tmp_path / "g.png"), "folder")


def test_no_command_prints_a_traceback_when_the_collection_is_missing(tmp_path: Path) -> None:
    gone = tmp_path / "none"
    for args in (["search", "x.jpg"], ["info"], ["remove", "x.jpg"], ["duplicates"]):
        _failed(invoke(*args, "-c", gone), "no collection")
    assert os.path.exists(tmp_path) and not gone.exists()
