"""The HTML evaluation report: files written, PNGs valid, worst queries first."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from lookalike.evaluate.metrics import precision_recall_curve
from lookalike.evaluate.report import Hit, QueryResult, render_query_strip, write_report

pytest.importorskip("matplotlib")


def _image(path: Path, colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", (40, 30), colour).save(path)
    return path


@pytest.fixture
def queries(tmp_path: Path) -> list[QueryResult]:
    red = _image(tmp_path / "red.png", (255, 0, 0))
    blue = _image(tmp_path / "blue.jpg", (0, 0, 255))
    good = QueryResult(red, "reds", [Hit(red, 0.99, True), Hit(blue, 0.20, False)], score=0.9)
    bad = QueryResult(blue, "blues", [(red, 0.80, False), (blue, 0.70, True)], score=0.1)
    middling = QueryResult(red, "mid<&>", [Hit(blue, 0.5, False), Hit(red, 0.4, True)], score=0.5)
    return [good, bad, middling]


def test_report_files_and_worst_first(tmp_path: Path, queries: list[QueryResult]) -> None:
    curve = precision_recall_curve([0.9, 0.8, 0.7, 0.6], [True, False, True, False], 3)
    out = tmp_path / "report"
    index = write_report(
        out,
        {"mAP": 0.5123, "queries": 3, "model": "test"},
        {"blues": {"AP": 0.1, "P@1": 0.0}, "reds": {"AP": 0.9, "P@1": 1.0}},
        curve,
        queries,
    )
    assert index == out / "index.html"
    page = index.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    assert "0.5123" in page and "mid&lt;&amp;&gt;" in page  # numbers formatted, text escaped
    assert "http" not in page  # self-contained: nothing fetched from elsewhere

    # Every picture the page shows exists beside it and is a valid PNG.
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources == ["pr_curve.png", "query_001.png", "query_002.png", "query_003.png"]
    for name in sources:
        with Image.open(out / name) as png:
            png.verify()
            assert png.format == "PNG"

    # Worst query first: scores 0.1 (blues), 0.5 (mid), 0.9 (reds).
    headings = re.findall(r"<h3>([^<]+)<", page)
    assert [h.split(" — ")[1].strip() for h in headings] == ["blues", "mid&lt;&amp;&gt;", "reds"]
    # Per-class table: worst class (lowest AP) first.
    assert page.index("<td>blues</td>") < page.index("<td>reds</td>")


def test_report_without_curve_and_query_limit(tmp_path: Path, queries: list[QueryResult]) -> None:
    index = write_report(tmp_path, {"mAP": float("nan")}, {}, None, queries, max_queries=1)
    page = index.read_text(encoding="utf-8")
    assert "pr_curve.png" not in page and not (tmp_path / "pr_curve.png").exists()
    assert re.findall(r'<img src="([^"]+)"', page) == ["query_001.png"]
    assert "blues" in page and "reds" not in page  # only the single worst query
    assert "—" in page  # nan shown as a dash, not "nan"


def test_queries_without_score_sort_by_fraction_correct(tmp_path: Path) -> None:
    img = _image(tmp_path / "x.png", (0, 128, 0))
    all_right = QueryResult(img, "right", [(img, 0.9, True), (img, 0.8, True)])
    all_wrong = QueryResult(img, "wrong", [(img, 0.9, False), (img, 0.8, False)])
    page = write_report(tmp_path / "r", {}, {}, None, [all_right, all_wrong]).read_text()
    assert page.index("— wrong") < page.index("— right")


def test_strip_frames_results_green_and_red(tmp_path: Path) -> None:
    img = _image(tmp_path / "white.png", (255, 255, 255))
    strip = render_query_strip(
        QueryResult(img, "w", [Hit(img, 0.9, True), Hit(tmp_path / "missing.jpg", 0.1, False)]),
        side=60,
    )
    # Geometry of render_query_strip: gap 14, frame 6, cell = 60 + 12 = 72; results start after
    # the query cell and a double gap. Sample each result's left frame edge, mid-height.
    first = 14 + 72 + 28
    second = first + 72 + 14
    y = 14 + 36
    assert strip.getpixel((first + 2, y)) == (22, 163, 74)  # green: correct
    assert strip.getpixel((second + 2, y)) == (220, 38, 38)  # red: wrong (and unreadable)
    assert strip.getpixel((14 + 2, y)) == (37, 99, 235)  # blue: the query
