"""Detection benchmark: catalogue items found inside photos, per proposal source.

Two sets:

- ``opencv-pairs`` (real): the catalogue is every image of ../shared/datasets/opencv-pairs but
  ``box_in_scene.png``; the photo is ``box_in_scene.png``, whose one catalogue item is
  ``box.png`` (ground-truth box checked by eye: 89,160,286,299; the box is partly occluded).
- synthetic Corel scenes: the catalogue is 900 Corel-1k images; each of ``--scenes`` scenes
  pastes 2-3 of them (longer side 200-380 px, rotated ±15°) without overlap onto one of the 100
  held-out Corel images enlarged to 1024x683, saved as JPEG quality 60-90.

A detection is right when its box has IoU >= 0.5 with an item's box and its first match is
that item (each item counted once). Reported per source: precision, recall, the scores of right
and wrong proposal detections (to calibrate ``detect.MIN_SCORE``) and seconds per photo.

Run: ``.venv/bin/python benchmarks/detect.py [--scenes 50] [--sources keypoints grid selective]``
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import SHARED, table, write_section

from lookalike.collection import Collection, CollectionError
from lookalike.detect import SOURCES, detect, iou

BOX_TRUTH = (89, 160, 286, 299)
WORK = Path(tempfile.gettempdir()) / "lookalike-bench-detect"


def corel_split(seed: int = 0) -> tuple[list[Path], list[Path]]:
    """(catalogue, backgrounds): 900 and 100 Corel-1k images, 10 backgrounds per class."""
    classes = sorted(p for p in (SHARED / "corel1k").iterdir() if p.is_dir())
    rng = random.Random(seed)
    catalogue, backgrounds = [], []
    for folder in classes:
        files = sorted(folder.glob("*.jpg"))
        rng.shuffle(files)
        backgrounds += files[:10]
        catalogue += files[10:]
    return catalogue, backgrounds


def make_scene(
    background: Path, items: list[Path], rng: random.Random, out: Path
) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Paste ``items`` onto the enlarged background without overlap; (item path, box) each."""
    scene = Image.open(background).convert("RGB").resize((1024, 683), Image.Resampling.BICUBIC)
    placed: list[tuple[str, tuple[int, int, int, int]]] = []
    for item_path in items:
        item = Image.open(item_path).convert("RGBA")
        side = rng.uniform(200, 380)
        scale = side / max(item.size)
        item = item.resize((round(item.width * scale), round(item.height * scale)))
        item = item.rotate(rng.uniform(-15, 15), expand=True, resample=Image.Resampling.BICUBIC)
        for _ in range(100):
            x = rng.randrange(0, scene.width - item.width)
            y = rng.randrange(0, scene.height - item.height)
            box = (x, y, x + item.width, y + item.height)
            if all(iou(box, b) == 0 for _, b in placed):
                scene.paste(item, (x, y), item)
                placed.append((str(item_path), box))
                break
    scene.save(out, quality=rng.randrange(60, 91))
    return placed


def score(found, truth) -> tuple[int, list[float], list[float]]:
    """(right detections, scores of right ones, scores of wrong ones)."""
    left = list(truth)
    right, good, bad = 0, [], []
    for d in found:
        hit = next(
            (t for t in left if iou(d.box, t[1]) >= 0.5 and Path(d.best.path) == Path(t[0])),
            None,
        )
        if hit is not None:
            left.remove(hit)
            right += 1
            good.append(d.score)
        else:
            bad.append(d.score)
    return right, good, bad


def open_cached(path: Path) -> Collection:
    """The benchmark's cached collection, rebuilt when the model's version has changed."""
    col = Collection.open(path, create=True)
    try:
        col.embedder  # noqa: B018 - the model's version is checked when it is first used
        return col
    except CollectionError:  # made by another model version: embed again
        col.close()
        shutil.rmtree(path)
        return Collection.open(path, create=True)


def run_set(col: Collection, photos: list[tuple[Path, list]], sources: list[str]) -> dict:
    results = {}
    col.embed([Image.new("RGB", (64, 64))])  # load the model before the clock runs
    for source in sources:
        right = reported = items = 0
        good, bad, seconds = [], [], []
        for photo, truth in photos:
            start = time.perf_counter()
            # Every proposal box is kept (min_score 0) so thresholds are applied afterwards.
            found = detect(col, photo, proposals=source, min_score=0.0)
            seconds.append(time.perf_counter() - start)
            r, g, b = score(found, truth)
            right, reported, items = right + r, reported + len(found), items + len(truth)
            good += g
            bad += b
        results[source] = {
            "right": right,
            "reported": reported,
            "items": items,
            "good": good,
            "bad": bad,
            "seconds": float(np.mean(seconds)),
        }
        print(source, {k: v for k, v in results[source].items() if k not in ("good", "bad")})
    return results


def at_threshold(result: dict, threshold: float) -> tuple[float, float]:
    """Precision and recall keeping detections scored at least ``threshold``."""
    right = sum(s >= threshold for s in result["good"])
    reported = right + sum(s >= threshold for s in result["bad"])
    return right / max(reported, 1), right / max(result["items"], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=50)
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    sections = []
    # -- opencv pairs (real) ------------------------------------------------------------------
    pairs = SHARED / "opencv-pairs"
    with open_cached(WORK / "pairs-col") as col:
        col.add(
            [
                p
                for p in sorted(pairs.iterdir())
                if p.suffix in (".png", ".jpg") and p.name != "box_in_scene.png"
            ]
        )
        truth = [(str(pairs / "box.png"), BOX_TRUTH)]
        pair_results = run_set(col, [(pairs / "box_in_scene.png", truth)], args.sources)
    rows = [
        [s, f"{r['right']}/{r['items']}", r["reported"], f"{r['seconds']:.2f}"]
        for s, r in pair_results.items()
    ]
    sections.append(
        "**`box.png` in `box_in_scene.png`** (catalogue: the 12 other opencv-pairs images; "
        "proposal sources without a score threshold):\n\n"
        + table(["source", "box found (IoU ≥ 0.5, right item)", "boxes reported", "s/photo"], rows)
    )
    # -- synthetic Corel scenes ---------------------------------------------------------------
    catalogue, backgrounds = corel_split()
    rng = random.Random(1)
    scenes = []
    scene_dir = WORK / "scenes"
    scene_dir.mkdir(exist_ok=True)
    for i in range(args.scenes):
        items = rng.sample(catalogue, rng.choice((2, 3)))
        out = scene_dir / f"scene{i:03d}.jpg"
        scenes.append((out, make_scene(backgrounds[i % len(backgrounds)], items, rng, out)))
    with open_cached(WORK / "corel-col") as col:
        col.add(catalogue)
        corel = run_set(col, scenes, args.sources)
    rows = []
    for source, r in corel.items():
        thresholds = [None] if source == "keypoints" else [0.0, 0.6, 0.7, 0.75, 0.8, 0.85]
        for t in thresholds:
            p, rec = at_threshold(r, t or 0.0)
            label = "verified (≥ 15 inliers)" if t is None else f"score ≥ {t}"
            rows.append([source, label, f"{p:.3f}", f"{rec:.3f}", f"{r['seconds']:.2f}"])
    items = sum(len(t) for _, t in scenes)
    sections.append(
        f"**Synthetic Corel scenes** ({args.scenes} scenes, {items} pasted items, catalogue of "
        "900 Corel-1k images; held-out backgrounds; items 200-380 px, ±15°, JPEG 60-90). "
        "Precision and recall at IoU ≥ 0.5 with the right item:\n\n"
        + table(["source", "kept", "precision", "recall", "s/photo"], rows)
    )
    for source, r in corel.items():
        if r["good"] or r["bad"]:
            sections.append(
                f"{source}: scores of right detections median "
                f"{np.median(r['good']) if r['good'] else float('nan'):.3f}, "
                f"of wrong ones median {np.median(r['bad']) if r['bad'] else float('nan'):.3f}."
            )
    sections.append(
        "Timings on a 2-core machine shared with other jobs: noisy. s/photo includes decoding, "
        "embedding and keypoint matching; catalogue keypoints are cached per file across photos."
    )
    write_section("detect", "## Detection (`lookalike detect`)\n\n" + "\n\n".join(sections))


if __name__ == "__main__":
    main()
