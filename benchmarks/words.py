"""Measure finding pictures by their words (lookalike.words) against Tesseract, side by side.

The set (``words_data.py``, one seed): words and short phrases rendered onto Corel-1k photos
(fonts, 12-120 px, colours, +-15 degree rotations, perspective, blur, JPEG 35-95, busy and plain
backgrounds) plus untouched photos without text (none from the buses class, whose photos carry
real signs); and the real photos of ``opencv-pairs`` (a cookie box, alone and in a scene).

For each engine, on the same images in one run:

* **word recall** by ink height: a drawn word counts as read when, folded (case, accents), it
  is one of the words of a line read in its image or part of a line read with its spaces lost;
* **search**: every distinct phrase drawn is a query (typed folded, as a person would); images
  are ranked by ``lookalike.words.search.rank_images`` over the engine's lines stored in a
  words store (FTS5 trigram candidates, then the scores of ``words.match``); P@1 and mAP,
  by the smallest text height among the relevant images;
* **false matches**: images without text with any line read, and queries whose top 5 holds an
  image without text;
* **cost**: milliseconds per image (one at a time) with and without text; images/s in batches.

``--corel`` also indexes Corel-1k into a new collection and then reads its words (lookalike's
indexing rate with and without ``--words``). ``--sweep`` compares reader settings on a smaller
set. Writes the section "words" of docs/benchmarks.md.

    python benchmarks/words.py [--text 240 --none 120] [--sweep] [--corel] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import words_data
from _report import SHARED, table, write_section
from PIL import Image

from lookalike.words.match import Query, fold, words_of
from lookalike.words.ocr import Line, Reader, ReaderSettings
from lookalike.words.search import rank_images
from lookalike.words.store import ImageWords, SQLiteWords

#: The real photos with text and what a person would search them by.
REAL_QUERIES = {
    "bastoncini": {"box.png", "box_in_scene.png"},
    "pan ducale": {"box.png", "box_in_scene.png"},
    "basmati": {"box_in_scene.png"},
    "almond cookies": {"box.png"},
}
BINS = ((12, 20), (20, 40), (40, 80), (80, 121))


# -- engines --------------------------------------------------------------------------------
class Engine:
    name = ""

    def read(self, images: list[Image.Image]) -> list[list[Line]]:
        raise NotImplementedError


class Lookalike(Engine):
    def __init__(self, settings: ReaderSettings | None = None, name: str = "lookalike") -> None:
        self.reader = Reader(settings)
        self.name = name

    def read(self, images):
        return self.reader.read(images)


class Tesseract(Engine):
    """Tesseract 5 (LSTM, English) through pytesseract, its default page segmentation (3):
    words grouped into its lines. (Mode 11, sparse text, read the same on the images tried.)"""

    name = "tesseract"

    def __init__(self) -> None:
        import pytesseract

        self.api = pytesseract
        self.version = str(pytesseract.get_tesseract_version()).split()[0]

    def read(self, images):
        return [self._one(image) for image in images]

    def _one(self, image: Image.Image) -> list[Line]:
        data = self.api.image_to_data(image, output_type=self.api.Output.DICT)
        lines: dict[tuple, list[int]] = {}
        for i, text in enumerate(data["text"]):
            if text.strip() and float(data["conf"][i]) >= 0:
                lines.setdefault(
                    (data["block_num"][i], data["par_num"][i], data["line_num"][i]), []
                )
                lines[(data["block_num"][i], data["par_num"][i], data["line_num"][i])].append(i)
        out = []
        for members in lines.values():
            text = " ".join(data["text"][i] for i in members)
            confidence = float(np.mean([float(data["conf"][i]) for i in members])) / 100
            if confidence < 0.5:
                continue
            x0 = min(data["left"][i] for i in members)
            y0 = min(data["top"][i] for i in members)
            x1 = max(data["left"][i] + data["width"][i] for i in members)
            y1 = max(data["top"][i] + data["height"][i] for i in members)
            out.append(Line(text, confidence, ((x0, y0), (x1, y0), (x1, y1), (x0, y1))))
        return out


# -- measuring ------------------------------------------------------------------------------
@dataclass
class Outcome:
    engine: str
    lines: dict[str, list[Line]] = field(default_factory=dict)
    ms_text: list[float] = field(default_factory=list)
    ms_none: list[float] = field(default_factory=list)
    cpu_text: list[float] = field(default_factory=list)  # CPU ms, child processes included
    cpu_none: list[float] = field(default_factory=list)
    batched_ips: float = 0.0


def run_engine(engine: Engine, folder: Path, samples, batch: bool) -> Outcome:
    out = Outcome(engine.name)
    images = {s.name: Image.open(folder / s.name).convert("RGB") for s in samples}
    engine.read([next(iter(images.values()))])  # warm up
    for sample in samples:
        start, cpu = time.perf_counter(), _cpu()
        out.lines[sample.name] = engine.read([images[sample.name]])[0]
        spent, cpu = (time.perf_counter() - start) * 1000, (_cpu() - cpu) * 1000
        (out.ms_none if sample.kind == "none" else out.ms_text).append(spent)
        (out.cpu_none if sample.kind == "none" else out.cpu_text).append(cpu)
    if batch:
        names = [s.name for s in samples]
        start = time.perf_counter()
        for b in range(0, len(names), 16):
            engine.read([images[n] for n in names[b : b + 16]])
        out.batched_ips = len(names) / (time.perf_counter() - start)
    return out


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _read_words(lines: list[Line]) -> tuple[set[str], list[str]]:
    words: set[str] = set()
    joined = []
    for line in lines:
        words.update(words_of(line.text))
        joined.append(fold(line.text).replace(" ", ""))
    return words, joined


def recall_by_height(outcome: Outcome, samples) -> dict[tuple[int, int], tuple[int, int]]:
    found = {b: [0, 0] for b in BINS}
    for sample in samples:
        words, joined = _read_words(outcome.lines[sample.name])
        for text in sample.texts:
            b = next(b for b in BINS if b[0] <= text.height < b[1])
            for word in fold(text.phrase).split():
                found[b][1] += 1
                found[b][0] += word in words or any(word in j for j in joined)
    return {b: (v[0], v[1]) for b, v in found.items()}


def queries_of(samples) -> dict[str, tuple[set[str], int]]:
    """Each distinct phrase (folded): the images showing it, and its smallest height there."""
    out: dict[str, tuple[set[str], int]] = {}
    for sample in samples:
        for text in sample.texts:
            q = fold(text.phrase)
            names, low = out.get(q, (set(), 10**6))
            names.add(sample.name)
            out[q] = (names, min(low, text.height))
    return out


def search_quality(outcome: Outcome, samples, queries, tmp: Path) -> dict:
    """Rank the images for every query through a real words store of the engine's lines."""
    names = [s.name for s in samples]
    none = {s.name for s in samples if s.kind == "none"}
    store = SQLiteWords(tmp / f"{outcome.engine}-{time.monotonic_ns()}.sqlite")
    store.put(
        [ImageWords(i, str(i), outcome.lines[n]) for i, n in enumerate(names)], outcome.engine
    )
    per_query = []
    false_top5 = 0
    for q, (relevant, low) in queries.items():
        scored = rank_images(store, Query.parse(q))
        ranked = [names[i] for i in sorted(scored, key=lambda i: (-scored[i][0], i))]
        hits, precisions = 0, []
        for rank, name in enumerate(ranked, 1):
            if name in relevant:
                hits += 1
                precisions.append(hits / rank)
        ap = sum(precisions) / len(relevant)
        p1 = 1.0 if ranked and ranked[0] in relevant else 0.0
        false_top5 += any(n in none for n in ranked[:5])
        per_query.append((low, p1, ap))
    store.close()
    out = {}
    for label, keep in (
        (">=20 px", lambda h: h >= 20),
        ("12-20 px", lambda h: h < 20),
        ("all", lambda h: True),
    ):
        chosen = [(p, a) for h, p, a in per_query if keep(h)]
        out[label] = (
            float(np.mean([p for p, _ in chosen])) if chosen else float("nan"),
            float(np.mean([a for _, a in chosen])) if chosen else float("nan"),
            len(chosen),
        )
    out["false_top5"] = false_top5 / max(1, len(per_query))
    out["none_with_lines"] = sum(1 for n in none if outcome.lines[n]) / max(1, len(none))
    return out


def real_photos(engines: list[Engine], tmp: Path) -> list[list[object]]:
    folder = SHARED / "opencv-pairs"
    if not folder.exists():
        return []
    files = sorted(p for p in folder.iterdir() if p.suffix in (".png", ".jpg"))
    rows = []
    for engine in engines:
        lines = {p.name: engine.read([Image.open(p).convert("RGB")])[0] for p in files}
        names = [p.name for p in files]
        store = SQLiteWords(tmp / f"real-{engine.name}-{time.monotonic_ns()}.sqlite")
        store.put([ImageWords(i, str(i), lines[n]) for i, n in enumerate(names)], engine.name)
        p1s, aps = [], []
        for q, relevant in REAL_QUERIES.items():
            scored = rank_images(store, Query.parse(q))
            ranked = [names[i] for i in sorted(scored, key=lambda i: (-scored[i][0], i))]
            hits, precisions = 0, []
            for rank, name in enumerate(ranked, 1):
                if name in relevant:
                    hits += 1
                    precisions.append(hits / rank)
            aps.append(sum(precisions) / len(relevant))
            p1s.append(1.0 if ranked and ranked[0] in relevant else 0.0)
        store.close()
        read = "; ".join(
            f"{n}: " + " / ".join(ln.text for ln in lines[n][:6]) for n in names if lines[n]
        )
        rows.append([engine.name, f"{np.mean(p1s):.2f}", f"{np.mean(aps):.2f}", read[:300]])
    return rows


def corel_indexing(tmp: Path) -> list[list[object]]:
    """Index Corel-1k into a new collection, then read its words: images/s of each step."""
    from lookalike.collection import Collection
    from lookalike.words import add_words

    folder = SHARED / "corel1k"
    if not folder.exists():
        return []
    with Collection.open(tmp / "corel", create=True) as col:
        start = time.perf_counter()
        report = col.sync([folder])
        index_s = time.perf_counter() - start
        words = add_words(col)
        n = len(col)
    total = index_s + words.seconds
    return [
        ["index (embedding)", n, f"{index_s:.1f}", f"{report.embedded / index_s:.1f}"],
        ["words (add_words)", words.read, f"{words.seconds:.1f}", f"{words.images_per_second:.1f}"],
        ["index --words (both)", n, f"{total:.1f}", f"{n / total:.1f}"],
        [f"images with text found: {words.with_text}, lines: {words.lines}", "", "", ""],
    ]


def describe(outcome: Outcome, samples, queries, tmp: Path) -> list[object]:
    recall = recall_by_height(outcome, samples)
    quality = search_quality(outcome, samples, queries, tmp)

    def median(values: list[float]) -> str:
        return f"{statistics.median(values):.0f}" if values else "-"

    return [
        outcome.engine,
        *(f"{recall[b][0] / max(1, recall[b][1]):.2f}" for b in BINS),
        "{:.2f} / {:.2f}".format(*quality[">=20 px"][:2]),
        "{:.2f} / {:.2f}".format(*quality["12-20 px"][:2]),
        f"{quality['none_with_lines']:.2f}",
        f"{quality['false_top5']:.2f}",
        f"{median(outcome.ms_text)} ({median(outcome.cpu_text)})",
        f"{median(outcome.ms_none)} ({median(outcome.cpu_none)})",
        f"{outcome.batched_ips:.1f}" if outcome.batched_ips else "-",
    ]


HEADER = [
    "engine",
    *(f"recall {a}-{b - 1 if b > 100 else b} px" for a, b in BINS),
    "P@1 / mAP >=20 px",
    "P@1 / mAP 12-20 px",
    "no-text images with lines",
    "queries with a no-text image in top 5",
    "ms/image text (CPU)",
    "ms/image no text (CPU)",
    "images/s (batches of 16)",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=int, default=240, help="images with text")
    parser.add_argument("--none", type=int, default=120, help="images without text")
    parser.add_argument("--set", type=Path, default=None, help="where the set is written")
    parser.add_argument("--sweep", action="store_true", help="compare reader settings")
    parser.add_argument("--corel", action="store_true", help="index Corel-1k with words")
    parser.add_argument("--no-tesseract", action="store_true")
    parser.add_argument("--no-main", action="store_true", help="only --sweep / --corel")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lookalike-words-"))
    folder = args.set or tmp / "set"
    photos = [p for p in (SHARED / "corel1k").rglob("*.jpg") if p.parent.name != "buses"]
    if (folder / "truth.json").exists():
        samples = words_data.load(folder)
    else:
        samples = words_data.build(folder, photos, n_text=args.text, n_none=args.none)
    queries = queries_of(samples)
    n_text = sum(1 for s in samples if s.kind != "none")
    print(
        f"set: {n_text} images with text, {len(samples) - n_text} without, {len(queries)} queries"
    )
    sections = []

    engines: list[Engine] = [] if args.no_main else [Lookalike()]
    if not args.no_tesseract and not args.no_main:
        try:
            engines.append(Tesseract())
        except Exception as exc:  # not installed: say so in the report
            print(f"tesseract unavailable: {exc}")
    rows = []
    for engine in engines:
        outcome = run_engine(engine, folder, samples, batch=isinstance(engine, Lookalike))
        rows.append(describe(outcome, samples, queries, tmp))
        print(table(HEADER, rows[-1:]), flush=True)
    tess = next((e for e in engines if isinstance(e, Tesseract)), None)
    if rows:
        sections.append(
            f"Set: {n_text} photos with rendered text ({len(queries)} distinct phrases as "
            f"queries) and {len(samples) - n_text} Corel photos without text; "
            "`benchmarks/words_data.py` (seed 21). Engines: lookalike (PP-OCRv4 via "
            "rapidocr-onnxruntime, `ReaderSettings()` defaults) and Tesseract "
            f"{tess.version if tess else '(not installed)'} (LSTM, eng, `image_to_data`, lines "
            "of confidence >= 0.5), both ranked by the same words store and scores.\n\n"
            + table(HEADER, rows)
        )
    real = real_photos(engines, tmp) if engines else []
    if real:
        sections.append(
            "Real photos (opencv-pairs, 12 images; queries "
            + ", ".join(f"`{q}`" for q in REAL_QUERIES)
            + "):\n\n"
            + table(["engine", "P@1", "mAP", "what it read"], real)
        )
        print(sections[-1], flush=True)
    if args.sweep:
        small = [s for s in samples if s.kind == "none"][:40]
        small += [s for s in samples if s.kind != "none"][:100]
        small_queries = queries_of(small)
        variants = {
            "own size only (no upscale)": ReaderSettings(min_det_side=32),
            "default: upscale to 640 when seen": ReaderSettings(),
            "always upscale to 640": ReaderSettings(upscale_when_seen=False),
            "upscale to 960 when seen (x2.5 max)": ReaderSettings(
                min_det_side=960, max_upscale=2.5
            ),
            "box_thresh 0.6": ReaderSettings(box_thresh=0.6),
            "unclip 2.0": ReaderSettings(unclip_ratio=2.0),
        }
        sweep_rows = []
        for label, settings in variants.items():
            outcome = run_engine(Lookalike(settings, label), folder, small, batch=False)
            sweep_rows.append(describe(outcome, small, small_queries, tmp))
            print(table(HEADER, sweep_rows[-1:]), flush=True)
        sections.append(
            f"Reader settings ({len(small)} images of the set, one at a time):\n\n"
            + table(HEADER, sweep_rows)
        )
    if args.corel:
        corel = corel_indexing(tmp)
        if corel:
            sections.append(
                "Corel-1k into a new collection, then its words (`add_words`, batches of 16):\n\n"
                + table(["step", "images", "seconds", "images/s"], corel)
            )
            print(sections[-1], flush=True)
    body = "## Finding pictures by their words (`search --words`)\n\n" + "\n\n".join(sections)
    if not args.no_write:
        write_section("words", body)
    print(body)


if __name__ == "__main__":
    main()
