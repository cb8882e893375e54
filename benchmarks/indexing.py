"""Indexing throughput, query latency and retrieval quality of the default collection.

Measures, on ../shared/datasets/corel1k (1000 JPEGs, 384x256):
- end-to-end indexing images/s (stat + read + hash + decode + embed + store), beside the model's
  own batch forward speed on pre-decoded inputs;
- the same on 200 large photos (Corel images upscaled to 4000x3000 JPEG);
- query latency (decode + embed + search + catalogue lookup) at 1k and 100k vectors, p50/p99;
- retrieval quality (each image queries the other 999): mAP, P@10, P@20, beside a colour
  histogram baseline computed here.

Usage: python benchmarks/indexing.py [--out bench-out] [--no-write]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import SHARED, percentile_ms, table, write_section

from lookalike import Collection
from lookalike.evaluate.metrics import mean_average_precision, precision_at_k, rank_relevance
from lookalike.evaluate.run import evaluate
from lookalike.images import decode
from lookalike.models import load_embedder
from lookalike.models.efficientnet import preprocess
from lookalike.store import FileState, NewImage


def corel_files(root: Path) -> tuple[list[Path], np.ndarray]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    labels = np.array([p.parent.name for p in files])
    return files, labels


def index_run(folder: Path, target: Path, embedder) -> tuple[Collection, float, int]:
    shutil.rmtree(target, ignore_errors=True)
    col = Collection.create(target, embedder=embedder)
    start = time.perf_counter()
    report = col.sync([folder])
    seconds = time.perf_counter() - start
    return col, seconds, report.added


def forward_speed(embedder, files: list[Path], batch: int = 32) -> float:
    """Images/s of the network alone, on inputs decoded and resized beforehand."""
    images = [decode(p, min_side=embedder.input_size) for p in files]
    tensors = [
        preprocess(images[i : i + batch], embedder.input_size) for i in range(0, len(images), batch)
    ]
    session = embedder.session
    session.run(None, {"image": tensors[0]})
    start = time.perf_counter()
    for x in tensors:
        session.run(None, {"image": x})
    return len(images) / (time.perf_counter() - start)


def make_large(files: list[Path], folder: Path, count: int = 200) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(files[:: max(1, len(files) // count)][:count]):
        target = folder / f"large_{i:03d}.jpg"
        if not target.exists():
            Image.open(src).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC).save(
                target, quality=90
            )
    return folder


def latency(col: Collection, queries: list[Path], repeats: int = 1) -> tuple[float, float]:
    col.search(queries[0], k=10)  # warm
    samples = []
    for _ in range(repeats):
        for q in queries:
            start = time.perf_counter()
            col.search(q, k=10)
            samples.append(time.perf_counter() - start)
    return percentile_ms(samples, 50), percentile_ms(samples, 99)


def grow_to(col: Collection, total: int, seed: int = 0) -> None:
    """Add synthetic vectors (real ones plus noise, renormalised) until the collection has
    ``total`` images, through the catalogue like real images, then rebuild the index."""
    rng = np.random.default_rng(seed)
    base = np.concatenate([v for _, v in col.catalogue.iter_vectors("image")])
    n, batch = len(col), 5000
    while n < total:
        m = min(batch, total - n)
        v = base[rng.integers(0, len(base), m)] + rng.normal(scale=0.03, size=(m, base.shape[1]))
        v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
        col.catalogue.add_images(
            [
                NewImage(
                    f"synthetic-{n + i}",
                    f"/synthetic/{n + i}.jpg",
                    FileState(0, 0),
                    1,
                    1,
                    {"image": v[i]},
                )
                for i in range(m)
            ]
        )
        n += m
    col._indexes.clear()
    col.refit_projections()  # as an indexing run would once the collection has grown


def colour_histograms(files: list[Path], bins: int = 8) -> np.ndarray:
    """Joint RGB histograms (bins^3), Hellinger-normalised so that cosine = Bhattacharyya."""
    out = np.empty((len(files), bins**3), np.float32)
    for i, p in enumerate(files):
        a = np.asarray(decode(p)).reshape(-1, 3) // (256 // bins)
        h = np.bincount((a[:, 0] * bins + a[:, 1]) * bins + a[:, 2], minlength=bins**3).astype(
            np.float32
        )
        out[i] = np.sqrt(h / h.sum())
    return out


def histogram_quality(vectors: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    scores = vectors @ vectors.T
    rel, n = rank_relevance(scores, labels, labels, exclude=np.eye(len(labels), dtype=bool))
    return {
        "mAP": mean_average_precision(rel, n),
        "P@10": precision_at_k(rel, 10),
        "P@20": precision_at_k(rel, 20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--model", default="efficientnet-lite0")
    args = parser.parse_args()
    corel = SHARED / "corel1k"
    if not corel.exists():
        sys.exit(f"{corel} is absent: nothing to measure")
    files, labels = corel_files(corel)

    start = time.perf_counter()
    embedder = load_embedder(args.model)
    embedder.embed_images([Image.new("RGB", (64, 64))])
    load_s = time.perf_counter() - start

    col, seconds, added = index_run(corel, args.out / "corel", embedder)
    e2e = added / seconds
    fwd = forward_speed(embedder, files)
    print(f"corel: {added} images in {seconds:.1f}s = {e2e:.1f}/s; forward alone {fwd:.1f}/s")

    large = make_large(files, args.out / "large-src")
    _, large_s, large_n = index_run(large, args.out / "large", embedder)
    print(f"large: {large_n} images in {large_s:.1f}s = {large_n / large_s:.1f}/s")

    rng = np.random.default_rng(0)
    queries = [files[i] for i in rng.choice(len(files), 100, replace=False)]
    p50_1k, p99_1k = latency(col, queries)
    # Through `lookalike eval` on the same collection: the search space (PCA) and query
    # expansion the collection applies, nothing embedded again.
    result = evaluate(corel, collection=col.path, embedder=embedder)
    ours = {k: result.metrics[k] for k in ("mAP", "P@10", "P@20")}
    start = time.perf_counter()
    hist = histogram_quality(colour_histograms(files), labels)
    hist_s = time.perf_counter() - start

    grow_to(col, 100_000)
    col.index()
    p50_100k, p99_100k = latency(col, queries)
    print(
        f"latency 1k p50 {p50_1k:.1f} p99 {p99_1k:.1f}; 100k p50 {p50_100k:.1f} p99 {p99_100k:.1f}"
    )
    print(f"quality ours {ours}; colour histogram {hist}")

    body = "\n\n".join(
        [
            f"## Indexing and search ({args.model}, flat index)",
            table(
                ["what", "figure", "goal"],
                [
                    [
                        "Corel-1k end to end (decode + embed + store)",
                        f"**{e2e:.1f} images/s**",
                        "≥ 80",
                    ],
                    ["model forward alone, batch 32, pre-decoded", f"{fwd:.1f} images/s", ""],
                    ["end to end / forward alone", f"{e2e / fwd:.0%}", "≥ 80%"],
                    ["200 photos of 4000x3000 end to end", f"{large_n / large_s:.1f} images/s", ""],
                    ["model load (first call, ONNX cached)", f"{load_s:.2f} s", ""],
                    [
                        "query latency at 1k images, p50 / p99",
                        f"{p50_1k:.1f} / {p99_1k:.1f} ms",
                        "p50 ≤ 40",
                    ],
                    [
                        "query latency at 100k images, p50 / p99",
                        f"{p50_100k:.1f} / {p99_100k:.1f} ms",
                        "p50 ≤ 40",
                    ],
                ],
            ),
            "Query latency includes decoding the query file, embedding it, the search and the "
            "catalogue lookup of the 10 results. The 100k collection holds the 1000 Corel images "
            "plus 99,000 synthetic vectors (real ones plus noise) stored through the catalogue.",
            "### Retrieval quality on Corel-1k (each image queries the other 999)",
            table(
                ["descriptor", "mAP", "P@10", "P@20"],
                [
                    [
                        args.model + " (default)",
                        f"{ours['mAP']:.3f}",
                        f"{ours['P@10']:.3f}",
                        f"{ours['P@20']:.3f}",
                    ],
                    [
                        f"colour histogram 8x8x8, Hellinger ({hist_s:.0f} s)",
                        f"{hist['mAP']:.3f}",
                        f"{hist['P@10']:.3f}",
                        f"{hist['P@20']:.3f}",
                    ],
                ],
            ),
        ]
    )
    if not args.no_write:
        write_section("indexing", body)
    print(body)


if __name__ == "__main__":
    main()
