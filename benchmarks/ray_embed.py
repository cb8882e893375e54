"""Bulk embedding with Ray Data: 1 worker against 2 workers, beside the plain ``lookalike index``.

On ../shared/datasets (Corel-1k's 1000 photos of 384x256 plus the first Tiny ImageNet
validation images of 64x64, 2000 files by default), measures wall time and images/s of:
- ``bulk.embed_with_ray`` (read + hash + decode + embed in Ray actors, shards written) with 1
  and with 2 workers on one local Ray of 2 CPUs (started once, its start-up timed apart);
  the runs alternate (1, 2, 1, 2, ...) so that a change in the machine's load hits both;
- ``bulk.index_with_ray`` end to end (Ray embedding + merging into a new collection), 2 workers;
- ``Collection.sync`` into a new collection: the plain ``lookalike index`` path (decoding
  threads + ONNX Runtime on every core), for comparison.
The load average is recorded before every run: the machine has 2 cores shared with other jobs.

Usage: python benchmarks/ray_embed.py [--count 2000] [--rounds 2] [--out bench-out/ray]
       [--no-write]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import SHARED, table, write_section

from lookalike import Collection, bulk
from lookalike.models import load_embedder


def dataset_files(count: int) -> list[Path]:
    corel = sorted((SHARED / "corel1k").rglob("*.jpg"))
    tiny = sorted(
        p for p in (SHARED / "tiny-imagenet-val").rglob("*") if p.suffix.lower() == ".jpeg"
    )
    files = (corel + tiny)[:count]
    if len(files) < count:
        raise SystemExit(f"only {len(files)} images under {SHARED}")
    return files


def link_folder(files: list[Path], folder: Path) -> Path:
    """A folder of symlinks to ``files``, so that every run indexes the same set."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i, file in enumerate(files):
        (folder / f"{i:05d}{file.suffix.lower()}").symlink_to(file)
    return folder


def load() -> float:
    return os.getloadavg()[0]


def _spin(queue, seconds: float) -> None:
    """One process embedding a fixed batch with a 1-thread model for ``seconds``."""
    from lookalike.images import bundled_photo

    embedder = load_embedder("efficientnet-lite0", threads=1)
    batch = [embedder.prepare(bundled_photo("coffee"))] * 16
    embedder.embed_prepared(batch)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        embedder.embed_prepared(batch)
        done += len(batch)
    queue.put(done / (time.perf_counter() - start))


def spare_core(rounds: int, seconds: float = 6.0) -> dict[int, float]:
    """Control without Ray: images/s of 1 against 2 processes each running the model on one
    thread (median over rounds). Equal totals mean the machine had no idle core to give."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    totals: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(rounds):
        for procs in (1, 2):
            queue = ctx.Queue()
            workers = [ctx.Process(target=_spin, args=(queue, seconds)) for _ in range(procs)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            totals[procs].append(sum(queue.get() for _ in workers))
    return {k: statistics.median(v) for k, v in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-out/ray"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    if not SHARED.exists():
        raise SystemExit(f"{SHARED} is not available")
    import ray

    files = dataset_files(args.count)
    folder = link_folder(files, args.out / "images")
    for file in files:  # warm the page cache: every run reads from memory
        file.read_bytes()
    embedder = load_embedder("efficientnet-lite0")
    n = len(files)
    rows: list[list[object]] = []
    times: dict[int, list[float]] = {1: [], 2: []}
    rates: dict[int, list[float]] = {1: [], 2: []}

    control = spare_core(args.rounds)
    print("control", control, flush=True)
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - start

    def timed(label: str, run) -> tuple[float, float]:
        """Run ``run(progress)``; a row with wall time, images/s, and images/s from the first
        result on (without the start-up: actors and model loading)."""
        seen: list[tuple[float, int]] = []

        def progress(done: int, _total: int) -> None:
            if done:
                seen.append((time.perf_counter(), done))

        before = load()
        t0 = time.perf_counter()
        run(progress)
        seconds = time.perf_counter() - t0
        steady = float("nan")
        if len(seen) > 1 and seen[-1][0] > seen[0][0]:
            steady = (seen[-1][1] - seen[0][1]) / (seen[-1][0] - seen[0][0])
        row = [label, n, f"{seconds:.1f}", f"{n / seconds:.1f}", f"{steady:.1f}", f"{before:.1f}"]
        rows.append(row)
        print(row, flush=True)
        return seconds, steady

    for _ in range(args.rounds):
        for workers in (1, 2):
            seconds, steady = timed(
                f"embed_with_ray, {workers} worker{'s' if workers > 1 else ''}",
                lambda progress, w=workers: bulk.embed_with_ray(
                    [folder], embedder.name, args.out / f"shards-{w}", workers=w, progress=progress
                ),
            )
            times[workers].append(seconds)
            rates[workers].append(steady)

    def ray_index(progress) -> None:
        target = args.out / "col-ray"
        shutil.rmtree(target, ignore_errors=True)
        with Collection.create(target, embedder=embedder) as col:
            report = bulk.index_with_ray(col, [folder], workers=2, progress=progress)
            assert report.added > 0.95 * n, report.to_dict()

    timed("index --ray local --workers 2 (embed + merge)", ray_index)
    ray.shutdown()

    def plain_index(progress) -> None:
        target = args.out / "col-plain"
        shutil.rmtree(target, ignore_errors=True)
        with Collection.create(target, embedder=embedder) as col:
            report = col.sync([folder], progress=progress)
            assert report.added > 0.95 * n, report.to_dict()

    plain = timed("plain index (threads, no Ray)", plain_index)[0]

    one, two = statistics.median(times[1]), statistics.median(times[2])
    body = (
        "### Ray bulk embedding (`lookalike index --ray`)\n\n"
        f"{n} images: Corel-1k (384x256 JPEG) and Tiny ImageNet validation (64x64), read from "
        "the page cache. Each Ray run starts its actors and loads the model in each "
        f"(included); the local Ray itself took {ray_start:.1f} s to start (not included). "
        "Wall times on a 2-core machine shared with other jobs: the load average before "
        "each run is shown; with more runnable threads than cores, a run with more processes "
        "also gets a larger share of the CPU, so treat the ratios as rough.\n\n"
        + table(
            ["run", "images", "seconds", "images/s", "images/s after 1st result", "load avg"],
            rows,
        )
        + f"\n\nMedian of {args.rounds} runs each: 1 worker {one:.1f} s, 2 workers {two:.1f} s, "
        f"a speed-up of **{one / two:.2f}x** with 2 workers; after the first result (actors "
        f"started, model loaded) {statistics.median(rates[1]):.1f} against "
        f"{statistics.median(rates[2]):.1f} images/s, "
        f"**{statistics.median(rates[2]) / statistics.median(rates[1]):.2f}x**. "
        f"Control without Ray (the same model on one thread in 1 against 2 plain processes, "
        f"{args.rounds} rounds): {control[1]:.1f} against {control[2]:.1f} images/s, "
        f"{control[2] / control[1]:.2f}x: what the machine could give a second worker then. "
        "The plain path (no Ray: decoding threads and one ONNX Runtime session on every core) "
        f"took {plain:.1f} s, {plain / two:.2f}x the time of 2 Ray workers. Ray is meant for "
        "more cores than one machine has (`--ray auto` or `--ray ray://HOST:10001` on a "
        "cluster whose workers can read the paths, e.g. `s3://` URIs).\n"
    )
    print(body)
    if not args.no_write:
        write_section("ray", body)


if __name__ == "__main__":
    main()
