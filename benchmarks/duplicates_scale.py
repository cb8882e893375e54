"""`duplicates` on a 10,000-image collection: time to add the copy space and to group.

Takes the Tiny ImageNet val collection that `lookalike eval` caches (built if missing), copies
its folder (so the cache stays as it was), adds the copy-detection space (re-decoding every file
with the default copy model), then runs `Collection.duplicates()`. Tiny ImageNet val holds no
planted copies, so the groups it finds are what the threshold lets through on unrelated
64-px images: a measure of false groups, reported too. Goal: under 5 minutes in all.

Usage: python benchmarks/duplicates_scale.py [--no-write]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import SHARED, table, write_section

from lookalike import Collection
from lookalike.copies.space import DEFAULT_COPY_MODEL
from lookalike.evaluate.run import cache_collection_path, evaluate
from lookalike.models import load_embedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    root = SHARED / "tiny-imagenet-val"
    if not root.exists():
        sys.exit(f"{root} is absent")
    embedder = load_embedder("efficientnet-lite0")
    source = cache_collection_path(root, embedder.name, embedder.version)
    if not (source / "manifest.json").exists():
        evaluate(root)
    target = args.out / "dup10k"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".lock"))
    with Collection.open(target) as col:
        images = len(col)
        start = time.perf_counter()
        report = col.add_copy_space(DEFAULT_COPY_MODEL)
        embed_s = time.perf_counter() - start
        start = time.perf_counter()
        groups = col.duplicates()
        group_s = time.perf_counter() - start
    in_groups = sum(1 + len(g.others) for g in groups)
    rows = [
        [
            f"add the copy space ({DEFAULT_COPY_MODEL})",
            f"{embed_s:.0f} s",
            f"{report.embedded / embed_s:.0f} images/s",
        ],
        [
            "group duplicates (k-NN, union-find)",
            f"{group_s:.1f} s",
            f"{images / group_s:.0f} images/s",
        ],
        ["total", f"**{embed_s + group_s:.0f} s**", "goal < 300 s"],
    ]
    body = "\n\n".join(
        [
            f"## Duplicates at 10,000 images (Tiny ImageNet val, {images} images)",
            table(["step", "time", "speed"], rows),
            f"Groups found: {len(groups)} ({in_groups} images). Tiny ImageNet val has no planted "
            "copies, so these are near-identical pictures in the data set or false groups at "
            "the calibrated threshold.",
        ]
    )
    if not args.no_write:
        write_section("duplicates-scale", body)
    print(body)


if __name__ == "__main__":
    main()
