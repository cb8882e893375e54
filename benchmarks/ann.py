"""Approximate nearest-neighbour index kinds at 10k, 100k and 1M vectors of our descriptor.

Data. A real collection is built over ../shared/datasets/tiny-imagenet-val + corel1k (11,000
images, default model) and its stored vectors are projected as the collection does (its PCA,
256-d unit vectors): bench-out/ann/real.npy, cached. 1,000 of them are held out as queries; the
base sets are synthesised from the other 10,000 so that they keep their structure: each
synthetic vector lies on the segment between a real vector and one of its 10 nearest real
neighbours (uniform position in the first half), plus isotropic Gaussian noise whose norm is half
the median nearest-neighbour distance of the real vectors, renormalised. The ground truth is the
exact top-10 (flat search) of every query in each base set.

Measured for each kind: build time (adding, training and tuning, as a collection would),
memory per vector (the in-RAM structure plus the id map; files memory-mapped from disk are
listed apart), recall@10 against queries/s single-threaded (one query per call) and batched (all
queries in one call, 2 threads), over a sweep of each kind's search parameter, plus the point its
own tuning chose (target recall 0.95 on held-out queries made from stored vectors, see
``lookalike.index.ann``). The machine is shared (2 cores, other jobs running): timings are
noisy, and OpenMP waits passively (OMP_WAIT_POLICY=PASSIVE). At 1M only flat, hnsw and ivf-pq
run (``--big-kinds``): LSH is already far behind at 100k, and its exhaustive Hamming scan grows
linearly.

Usage: python benchmarks/ann.py [--sizes 10000,100000,1000000] [--big-kinds flat,hnsw,ivf-pq]
       [--queries 1000] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# OpenMP threads that spin while waiting collapse on a machine shared with other jobs
# (measured: a 2-thread binary search 50x slower than 1 thread); passive waiting avoids it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, SHARED, table, write_section

from lookalike.index import create_index
from lookalike.index.ann import AnnIndex, exact_search, recall_at
from lookalike.index.auto import choose_kind, default_memory_budget

OUT = ROOT / "bench-out" / "ann"
PLOT = ROOT / "docs" / "ann_recall_speed.png"
K = 10
SWEEPS = {
    "flat": [{}],
    "hnsw": [{"ef_search": ef} for ef in (16, 32, 64, 128, 256)],
    "ivf-pq": [{"nprobe": p, "rerank": r} for p, r in ((4, 4), (8, 4), (16, 8), (32, 8), (64, 16))],
    "lsh": [{"rerank": r} for r in (0, 4, 16, 64)],
}
LSH_BITS = (64, 128, 256, 512)


def real_vectors() -> np.ndarray:
    """The projected vectors of a real collection (built and cached on first use)."""
    cache = OUT / "real.npy"
    if cache.exists():
        return np.load(cache)
    from lookalike import Collection

    with Collection.open(OUT / "collection", create=True) as col:
        col.sync([SHARED / "tiny-imagenet-val", SHARED / "corel1k"])
        chunks = list(col.catalogue.iter_vectors("image"))
        vectors = col.project(np.concatenate([v for _, v in chunks]))
    np.save(cache, vectors.astype(np.float32))
    return vectors


def synthesise(real: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` unit vectors that keep the local structure of ``real`` (module docstring)."""
    rng = np.random.default_rng(seed)
    _, neighbours = exact_search(real, real, 11)
    neighbours = neighbours[:, 1:]  # without the vector itself
    nn_distance = np.linalg.norm(real - real[neighbours[:, 0]], axis=1)
    sigma = 0.5 * np.median(nn_distance) / np.sqrt(real.shape[1])
    out = np.empty((count, real.shape[1]), np.float32)
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        base = rng.integers(0, len(real), n)
        other = neighbours[base, rng.integers(0, neighbours.shape[1], n)]
        t = rng.uniform(0, 0.5, (n, 1)).astype(np.float32)
        x = real[base] + t * (real[other] - real[base])
        x += sigma * rng.standard_normal(x.shape).astype(np.float32)
        out[start : start + n] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def options_for(kind: str, bits: int | None = None) -> dict:
    return {"bits": bits} if kind == "lsh" else {}


def build(kind: str, base: np.ndarray, **options: object) -> tuple[object, float]:
    """A filled, trained and tuned index, and the seconds that took."""
    faiss.omp_set_num_threads(2)
    start = time.perf_counter()
    index = create_index(kind, base.shape[1], **options)
    for first in range(0, len(base), 100_000):
        chunk = base[first : first + 100_000]
        index.add(np.arange(first, first + len(chunk)), chunk)
    if isinstance(index, AnnIndex):
        index.maintain()
    return index, time.perf_counter() - start


def memory(index: object, count: int, folder: Path) -> tuple[float, float]:
    """(bytes per vector in RAM, bytes per vector in memory-mapped files) once saved."""
    path = folder / "i.faiss"
    index.save(path)
    files = {f.name: f.stat().st_size for f in folder.iterdir()}
    mapped = files.get("i.vectors.npy", 0)
    if getattr(index, "kind", "") == "ivf-pq":  # its inverted lists are mapped too
        ivf = index.structure
        lists = ivf.ntotal * (ivf.code_size + 8)
        ram = files["i.faiss"] - lists + files.get("i.ann.npz", 0)
        mapped += lists
    else:
        ram = sum(size for name, size in files.items() if name != "i.vectors.npy")
    for f in folder.iterdir():
        f.unlink()
    return ram / count, mapped / count


def timed_search(index: object, queries: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(ids, single-thread queries/s one at a time, batched queries/s on 2 threads)."""
    faiss.omp_set_num_threads(1)
    index.search(queries[:5], K)  # warm up
    start = time.perf_counter()
    for q in queries:
        index.search(q[None], K)
    single = len(queries) / (time.perf_counter() - start)
    faiss.omp_set_num_threads(2)
    start = time.perf_counter()
    _, ids = index.search(queries, K)
    batched = len(queries) / (time.perf_counter() - start)
    return ids, single, batched


def measure(kind, base, queries, truth, label, options) -> list[dict]:
    index, seconds = build(kind, base, **options)
    with tempfile.TemporaryDirectory() as folder:
        ram, mapped = memory(index, len(base), Path(folder))
    tuned = dict(getattr(index, "params", {}))
    rows = []
    for params in SWEEPS[kind] + [tuned]:
        if isinstance(index, AnnIndex):
            index.params = {**tuned, **params}
        ids, single, batched = timed_search(index, queries)
        rows.append(
            {
                "kind": label,
                "n": len(base),
                "params": {k: v for k, v in params.items() if k != "tuned_recall"},
                "tuned": params is tuned,
                "recall": recall_at(ids, truth),
                "ms_single": 1000 / single,
                "qps_single": single,
                "qps_batched": batched,
                "build_s": seconds,
                "ram_bytes": ram,
                "mapped_bytes": mapped,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run(sizes: list[int], big_kinds: set[str], n_queries: int) -> list[dict]:
    real = real_vectors()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(real))
    queries, source = real[order[:n_queries]], real[order[n_queries:]]
    everything = synthesise(source, max(sizes))
    results = []
    for n in sizes:
        base = everything[:n]
        truth = exact_search(base, queries, K)[1]
        for kind in ("flat", "hnsw", "ivf-pq", "lsh"):
            if n == max(sizes) and n >= 1_000_000 and kind not in big_kinds:
                continue
            for bits in LSH_BITS if kind == "lsh" else (None,):
                label = f"lsh-{bits}" if bits else kind
                results += measure(kind, base, queries, truth, label, options_for(kind, bits))
        (OUT / "results.json").write_text(json.dumps(results, indent=1))
    return results


def best_at(results: list[dict], n: int, goal: float = 0.95) -> dict | None:
    """The fastest single-thread point reaching ``goal`` recall@10 at size ``n``."""
    fit = [r for r in results if r["n"] == n and r["recall"] >= goal]
    return max(fit, key=lambda r: r["qps_single"]) if fit else None


def goals(results: list[dict]) -> list[str]:
    """The issue's goals at the largest size, checked against the measurements."""
    n = max(r["n"] for r in results)
    lines = []
    best = best_at(results, n)
    if best:
        lines.append(
            f"- recall@10 >= 0.95 at <= 2 ms/query (1 thread) at {n:,}: best is {best['kind']} "
            f"({best['params']}) with {best['recall']:.3f} at {best['ms_single']:.3f} ms: "
            + ("met" if best["ms_single"] <= 2 else "not met")
        )
    pq = [r for r in results if r["n"] == n and r["kind"] == "ivf-pq" and r["recall"] >= 0.9]
    if pq:
        fastest = min(pq, key=lambda r: r["ms_single"])
        lines.append(
            f"- ivf-pq <= 64 B/vector in RAM with recall@10 >= 0.90 after re-ranking: "
            f"{fastest['ram_bytes']:.0f} B/vector, recall {fastest['recall']:.3f} at "
            f"{fastest['params']} ({fastest['ms_single']:.3f} ms): "
            + ("met" if fastest["ram_bytes"] <= 64 else "not met")
            + f"; the full vectors for re-ranking stay on disk, memory-mapped "
            f"({fastest['mapped_bytes']:.0f} B/vector with the lists)"
        )
    builds = {r["kind"]: r["build_s"] for r in results if r["n"] == n}
    lines.append(
        f"- build at {n:,} (add + train + tune): "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in builds.items())
        + (": met (<= 10 min)" if max(builds.values()) <= 600 else ": over 10 min")
    )
    tuned = [r for r in results if r["tuned"] and r["kind"] != "flat"]
    gaps = ", ".join(f"{r['kind']}@{r['n']:,} {r['recall']:.2f}" for r in tuned)
    lines.append(
        "- self-tuning (target 0.95 on queries made from stored vectors) against the real "
        f"held-out queries: {gaps}. New images are harder queries than the collection's own "
        "vectors moved towards others, mostly for ivf-pq and lsh, whose neighbourhoods of "
        "near-ties need more re-ranked candidates; raise `target_recall` to compensate."
    )
    return lines


def plot(results: list[dict], n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in dict.fromkeys(r["kind"] for r in results if r["n"] == n):
        points = sorted(  # in order of recall: timings are too noisy to order a line by
            (r["recall"], r["qps_single"]) for r in results if r["n"] == n and r["kind"] == label
        )
        recalls, speeds = zip(*points, strict=True)
        ax.plot(speeds, recalls, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("queries/s, single thread, one query per call (log)")
    ax.set_ylabel("recall@10")
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set_title(f"{n:,} vectors, 256-d (synthesised from real descriptors)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)


def report(results: list[dict]) -> str:
    sizes = sorted({r["n"] for r in results})
    rows = []
    for r in results:
        if r["tuned"]:
            rows.append(
                [
                    f"{r['n']:,}",
                    r["kind"],
                    ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "exact",
                    f"{r['recall']:.3f}",
                    f"{r['ms_single']:.3f}",
                    f"{r['qps_batched']:,.0f}",
                    f"{r['ram_bytes']:.0f}",
                    f"{r['mapped_bytes']:.0f}",
                    f"{r['build_s']:.1f}",
                ]
            )
    sweep = [
        [
            f"{r['n']:,}",
            r["kind"],
            ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "exact",
            f"{r['recall']:.3f}",
            f"{r['ms_single']:.3f}",
            f"{r['qps_batched']:,.0f}",
        ]
        for r in results
        if not r["tuned"]
    ]
    auto_rows = []
    for n in sizes:
        chosen = choose_kind(n, 256, default_memory_budget())
        best = best_at(results, n)
        mine = best_at([r for r in results if r["kind"] == chosen], n)
        auto_rows.append(
            [
                f"{n:,}",
                chosen,
                best and f"{best['kind']} ({best['ms_single']:.3f} ms)",
                mine and f"{mine['ms_single']:.3f} ms",
                mine and best and f"{mine['ms_single'] / best['ms_single']:.2f}x",
            ]
        )
    header = ["n", "kind", "params", "recall@10", "ms/query 1 thread", "q/s batched"]
    return "\n\n".join(
        [
            "## Approximate nearest-neighbour indexes",
            __doc__.split("Usage:")[0].strip().split("\n", 1)[1].strip(),
            "### Against the goals",
            "\n".join(goals(results)),
            "### As tuned at build time (target 0.95 on held-out queries)",
            table(
                [*header, "RAM B/vector", "mapped B/vector", "build s"],
                rows,
            ),
            "### Parameter sweeps",
            table(header, sweep),
            f"![recall against speed](ann_recall_speed.png)\n\n"
            f"_Recall@10 against single-thread queries/s at {max(sizes):,} vectors._",
            "### What `auto` picks (default budget: a quarter of RAM)",
            table(
                ["n", "auto picks", "fastest kind with recall >= 0.95", "auto's kind", "ratio"],
                auto_rows,
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--big-kinds", default="flat,hnsw,ivf-pq")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="reuse results.json")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        results = json.loads((OUT / "results.json").read_text())
    else:
        sizes = [int(s) for s in args.sizes.split(",")]
        results = run(sizes, set(args.big_kinds.split(",")), args.queries)
    plot(results, max(r["n"] for r in results))
    text = report(results)
    print(text)
    if not args.no_write:
        write_section("ann", text)


if __name__ == "__main__":
    main()
