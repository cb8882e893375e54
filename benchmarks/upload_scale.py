"""Upload throughput against collection size: one-image ``Collection.add`` calls (what the REST
server does per upload, model embedding included) into collections of 1,000 and 100,000
images, with every index written whole at each write (before) and with the changes appended
to a log beside it (after: ``lookalike.index.log``).

Data. Real descriptors (default model, full 2280-d) of 1,000 images of
../shared/datasets/tiny-imagenet-val, embedded through a collection and read back from its
catalogue (cached in bench-out/upload_scale/real.npy); the N images of each collection are
synthesised from them with benchmarks/ann.py's ``synthesise`` and inserted through
``Catalogue.add_images`` in batches of 1,000 (image and text vectors, made-up paths and
hashes), as benchmarks/backends.py does; the end of an indexing run follows (PCA learned,
indexes built and saved). The uploads are real JPEGs of ../shared/datasets/corel1k (384x256,
~30 KB), a different file for every call.

Method. Each collection (the default index kinds, or ``--index``) is opened again, as a
server worker holds it; per mode, one upload warms it up (model and indexes loaded, a first
save), then ``--uploads`` timed uploads: *after* (the log), *after, scoped reads* (the log, and
a stand-in, in this script only, for three fixes outside the index: the catalogue reads an
upload makes that cost O(collection), ``ScopedReads``), *before* (every index and the files
beside it written whole at each write, as ``save`` did before logs). Saving is timed per
space; "rest" is the catalogue, decoding and the rest of ``add``. The machine is shared
(2 cores, other jobs running): the load average is given per row.

Usage: python benchmarks/upload_scale.py [--sizes 1000,100000] [--uploads 60] [--index KIND]
       [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, SHARED, percentile_ms, table, write_section
from ann import synthesise

from lookalike import Collection
from lookalike.collection import spaces as spaces_module
from lookalike.collection.core import Collection as CollectionClass
from lookalike.collection.pipeline import Indexer
from lookalike.index.log import save_index
from lookalike.ingest.exif import empty_info
from lookalike.store import FileState, NewImage, SQLiteCatalogue
from lookalike.store.base import path_to_store

OUT = ROOT / "bench-out" / "upload_scale"
BATCH = 1_000
REAL = 1_000
MODES = ("after", "after, scoped reads", "before")


def real_descriptors(embedder) -> np.ndarray:
    """Full descriptors of REAL tiny-imagenet-val images, embedded once through a collection."""
    cache = OUT / "real.npy"
    if cache.exists():
        return np.load(cache)
    files = sorted((SHARED / "tiny-imagenet-val").rglob("*.JPEG"))[::10][:REAL]
    folder = OUT / "real-collection"
    shutil.rmtree(folder, ignore_errors=True)
    with Collection.create(folder, embedder=embedder) as col:
        col.add(files)
        vectors = np.concatenate([v for _, v in col.catalogue.iter_vectors("image")])
    shutil.rmtree(folder, ignore_errors=True)
    np.save(cache, vectors.astype(np.float32))
    return vectors


def build(path: Path, base: np.ndarray, embedder, index: str | None) -> float:
    """A collection of ``len(base)`` images inserted through the catalogue, its PCA learned and
    its indexes built and saved as at the end of an indexing run; seconds."""
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    options = {"index": index} if index else {}
    with Collection.create(path, embedder=embedder, **options) as col:
        for first in range(0, len(base), BATCH):
            chunk = np.asarray(base[first : first + BATCH])
            vectors = col.complete_vectors([{"image": v} for v in chunk])  # + the text space
            col.catalogue.add_images(
                [
                    NewImage(
                        f"{first + i:032x}",
                        f"/bench/{first + i:07d}.jpg",
                        FileState(100_000, first + i),
                        640,
                        480,
                        {space: v[i] for space, v in vectors.items()},
                        info=empty_info("none"),  # as if its header had been read
                    )
                    for i in range(len(chunk))
                ]
            )
        col.refit_projections()
        for space in col.spaces():
            col.index(space)
        col.save_indexes()
    return time.perf_counter() - start


def whole_save(index, path: Path, generation: int) -> None:
    """Saving as before logs: every index (and the one it wraps) written whole at each write,
    with the files beside it (the PCA, an approximate kind's vectors and ids)."""
    node = index
    while node is not None:
        journal = getattr(node, "journal", None)
        if journal is not None:
            journal.forget()  # then ``save`` writes the base whole
        node = getattr(node, "inner", None)
    index.save(path)


class Timers:
    """Seconds spent embedding and saving each space's index, summed over calls; ``save`` is
    how indexes are saved (``log.save_index``, or :func:`whole_save`)."""

    def __init__(self) -> None:
        self.embed = 0.0
        self.saves: dict[str, float] = {}
        self.save = save_index
        embed = CollectionClass.embed_images

        def timed_embed(col, *args, **kwargs):
            start = time.perf_counter()
            try:
                return embed(col, *args, **kwargs)
            finally:
                self.embed += time.perf_counter() - start

        def timed_save(index, path: Path, generation: int) -> None:
            start = time.perf_counter()
            try:
                self.save(index, path, generation)
            finally:
                space = Path(path).stem
                self.saves[space] = self.saves.get(space, 0.0) + time.perf_counter() - start

        CollectionClass.embed_images = timed_embed
        spaces_module.save_index = timed_save

    def reset(self) -> None:
        self.embed, self.saves = 0.0, {}


def kind_of(index) -> str:
    """What an index is, wrappers included: ``PCA 256 > auto > ivf``."""
    parts = []
    while index is not None:
        if hasattr(index, "projection"):
            parts.append(f"PCA {index.projection.dim}")
        else:
            parts.append(index.kind)
        index = getattr(index, "inner", None)
    return " > ".join(parts)


class ScopedReads:
    """A stand-in for fixes outside the index (not in lookalike yet), to see what they would
    give: the three catalogue reads an ``add`` makes that cost O(collection) answered in
    O(files added): ``file_states`` of the files given only (``Indexer.run`` reads every
    file's), the text space's completeness (``enable_text`` lists the images without a text
    vector) and the header pass (``read_headers`` scans for images without header info)
    remembered after the first call."""

    def __init__(self) -> None:
        self.on = False
        self.scope: list[str] | None = None
        run, states = Indexer.run, SQLiteCatalogue.file_states
        enable_text, read_headers = CollectionClass.enable_text, CollectionClass.read_headers
        me = self

        def scoped_run(indexer, files, prune, progress):
            me.scope = list(files) if me.on and not prune else None
            try:
                return run(indexer, files, prune, progress)
            finally:
                me.scope = None

        def scoped_states(cat):
            if me.scope is None:
                return states(cat)
            out = {}
            for first in range(0, len(me.scope), 500):
                chunk = [path_to_store(p) for p in me.scope[first : first + 500]]
                with cat._lock:
                    rows = cat._db.execute(
                        "SELECT path, size, mtime_ns, image_id FROM files WHERE path IN "
                        f"({','.join('?' * len(chunk))})",
                        chunk,
                    ).fetchall()
                out.update({p: (FileState(s, m), i) for p, s, m, i in rows})
            return out

        def once(method, done: set):
            def call(col, *args, **kwargs):
                if me.on and id(col) in done:
                    return False  # the caller ignores what these two return
                done.add(id(col))
                return method(col, *args, **kwargs)

            return call

        Indexer.run = scoped_run
        SQLiteCatalogue.file_states = scoped_states
        CollectionClass.enable_text = once(enable_text, set())
        CollectionClass.read_headers = once(read_headers, set())


def uploads(
    col: Collection, files: list[Path], timers: Timers, mode: str, scoped: ScopedReads
) -> dict:
    """Time one ``add`` per file; the figures of one row."""
    timers.save = whole_save if mode == "before" else save_index
    scoped.on = mode == "after, scoped reads"
    try:
        col.add([files[0]])  # warm-up: the model and the indexes loaded, a first save
        timers.reset()
        load = os.getloadavg()[0]
        times = []
        start = time.perf_counter()
        for file in files[1:]:
            t = time.perf_counter()
            report = col.add([file])
            times.append(time.perf_counter() - t)
            assert report.added == 1, report
        total = time.perf_counter() - start
    finally:
        timers.save = save_index
        scoped.on = False
    n = len(times)
    index_dir = col.path / "index"
    saved = sum(timers.saves.values())
    return {
        "mode": mode,
        "images": len(col),
        "uploads": n,
        "per_s": n / total,
        "p50_ms": percentile_ms(times, 50),
        "p99_ms": percentile_ms(times, 99),
        "embed_ms": 1000 * timers.embed / n,
        "save_ms": {space: 1000 * t / n for space, t in timers.saves.items()},
        "other_ms": 1000 * (total - timers.embed - saved) / n,
        "load": (load + os.getloadavg()[0]) / 2,
        "kinds": {space: kind_of(col.index(space)) for space in col.spaces()},
        "index_mib": sum(f.stat().st_size for f in index_dir.iterdir() if f.is_file()) / 2**20,
        "log_kib": sum(f.stat().st_size for f in index_dir.glob("*.log")) / 2**10,
    }


def report(results: list[dict], build_s: dict[int, float]) -> str:
    spaces = sorted({space for r in results for space in r["save_ms"]})
    rows = [
        [
            f"{r['size']:,}",
            r["mode"],
            r["uploads"],
            f"{r['per_s']:.1f}",
            f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f}",
            f"{r['embed_ms']:.0f}",
            *(f"{r['save_ms'].get(space, 0):.1f}" for space in spaces),
            f"{r['other_ms']:.0f}",
            f"{r['index_mib']:,.0f} / {r['log_kib']:,.0f}",
            f"{r['load']:.1f}",
        ]
        for r in results
    ]
    header = [
        "images",
        "index saves",
        "uploads",
        "uploads/s",
        "ms per upload p50 / p99",
        "embedding ms",
        *(f"saving {space} ms" for space in spaces),
        "rest ms",
        "index files MiB / log KiB",
        "load avg",
    ]
    by = {(r["size"], r["mode"]): r for r in results}
    lines = ["Indexes (kind chosen, wrappers first):"]
    for size in sorted(build_s):
        row = next((r for r in results if r["size"] == size), None)
        if row:
            kinds = "; ".join(f"{space}: {kind}" for space, kind in row["kinds"].items())
            lines.append(f"- {size:,} images: {kinds}")
    lines += ["", "Reading the table:", ""]
    sizes = sorted(build_s)
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        for mode in MODES:
            a, b = by.get((small, mode)), by.get((large, mode))
            if a and b:
                lines.append(
                    f"- {mode}: {b['per_s']:.1f} uploads/s at {large:,} images against "
                    f"{a['per_s']:.1f} at {small:,} ({b['per_s'] / a['per_s']:.0%}); saving the "
                    f"indexes {sum(b['save_ms'].values()):.1f} ms per upload against "
                    f"{sum(a['save_ms'].values()):.1f}."
                )
        for space in spaces:
            cells = {
                (size, mode): by[(size, mode)]["save_ms"].get(space, 0.0)
                for size in (small, large)
                for mode in ("before", "after")
                if (size, mode) in by
            }
            if len(cells) == 4:
                kind = by[(large, "after")]["kinds"].get(space, "?")
                lines.append(
                    f"- saving `{space}` per upload: {cells[(small, 'before')]:.1f} -> "
                    f"{cells[(small, 'after')]:.1f} ms at {small:,} images, "
                    f"{cells[(large, 'before')]:.1f} -> {cells[(large, 'after')]:.1f} ms at "
                    f"{large:,} (before -> after)"
                    + (
                        "; written whole in both: its kind keeps no log yet."
                        if kind.split(" > ")[-1] in ("inverted", "milvus")
                        else "."
                    )
                )
        a, b = by.get((large, "after")), by.get((large, "after, scoped reads"))
        if a and b:
            lines.append(
                f"- the rest of an upload at {large:,} images: {a['other_ms']:.0f} ms, "
                f"{b['other_ms']:.0f} ms with the catalogue reads scoped (stand-in: "
                "``Indexer.run`` reading every file's state, ``enable_text`` listing the images "
                "without a text vector, the header pass scanning for images without header "
                "info; none is an index's)."
            )
    doc = (__doc__ or "").split("\n\n")
    return (
        "## Upload throughput against collection size (incremental index saves)\n\n"
        + "\n\n".join(doc[1:3])
        + "\n\n"
        + table(header, rows)
        + "\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "Building the collections (catalogue inserts, PCA, indexes built and saved whole): "
        + ", ".join(f"{n:,} images {s:.0f} s" for n, s in sorted(build_s.items()))
        + ". A log is compacted (its index written whole again) once it passes half the "
        + "index's size (at least 1 MiB): at 100,000 images, after tens of thousands of uploads.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", default="1000,100000")
    parser.add_argument("--uploads", type=int, default=60)
    parser.add_argument("--index", default=None, help="index kind (default: the collection's)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the section from the last results at --sizes",
    )
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        saved = json.loads((OUT / f"results-{args.sizes}.json").read_text())
        sys.argv = saved.get("argv", sys.argv)  # the section names the run's command
        text = report(saved["results"], {int(n): s for n, s in saved["build_s"].items()})
        print(text)
        if not args.no_write:
            write_section("upload-scale", text)
        return
    from lookalike.models import load_embedder

    embedder = load_embedder("efficientnet-lite0")
    real = real_descriptors(embedder)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    pictures = sorted((SHARED / "corel1k").rglob("*.jpg"))
    rng = np.random.default_rng(0)
    pictures = [pictures[i] for i in rng.permutation(len(pictures))]
    per_run = args.uploads + 1
    if len(MODES) * per_run * len(sizes) > len(pictures):
        raise SystemExit(f"--uploads {args.uploads}: corel1k has {len(pictures)} pictures")
    timers, scoped = Timers(), ScopedReads()
    results, build_s = [], {}
    for s, size in enumerate(sizes):
        path = OUT / f"collection-{size}"
        base = synthesise(real, size, seed=size)
        build_s[size] = build(path, base, embedder, args.index)
        del base
        print(f"{size:,} images built in {build_s[size]:.0f} s", flush=True)
        with Collection.open(path, embedder=embedder) as col:
            for m, mode in enumerate(MODES):
                first = (len(MODES) * s + m) * per_run
                row = uploads(col, pictures[first : first + per_run], timers, mode, scoped)
                row["size"] = size
                results.append(row)
                print(json.dumps(row), flush=True)
        shutil.rmtree(path, ignore_errors=True)
    (OUT / f"results-{args.sizes}.json").write_text(
        json.dumps({"results": results, "build_s": build_s, "argv": sys.argv})
    )
    text = report(results, build_s)
    print(text)
    if not args.no_write:
        write_section("upload-scale", text)


if __name__ == "__main__":
    main()
