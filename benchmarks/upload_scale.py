"""Upload throughput against collection size: one-image ``Collection.add`` calls (what the REST
server does per upload, model embedding included) into collections of 1,000 and 100,000
images, as lookalike makes them (after: each index's changes appended to a log beside it,
``lookalike.index.log``, and the catalogue read for the files given only) and as it made them
before issue #15 item 14 (every index written whole, the catalogue read whole at each write).

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
save), then ``--uploads`` timed uploads, those of every size and mode interleaved one by one
(so that the load of the shared machine weighs on each alike; *before*'s after the others'):
*after* (lookalike as it is), *after, header pass scoped* (and a stand-in, in this script
only, for the one catalogue read an upload still makes over the whole collection: the header
pass's scan for images without header info, ``read_headers``, remembered after its first
call: ``HeaderPass``), *before* (stand-ins for the code before: every index and the files
beside it written whole at each write, as ``save`` did before logs, and ``Indexer.run``
reading every file's state, ``enable_text`` listing every image without a text vector:
``WholeReads``). Saving is timed per space; "rest" is the catalogue, decoding and the rest of
``add``. The machine is shared (2 cores, other jobs running): the load average is given per
row.

Usage: python benchmarks/upload_scale.py [--sizes 1000,100000] [--uploads 60] [--index KIND]
       [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
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
from lookalike.index import log as index_log
from lookalike.index.log import save_index
from lookalike.ingest.exif import empty_info
from lookalike.store import FileState, NewImage, SQLiteCatalogue

OUT = ROOT / "bench-out" / "upload_scale"
BATCH = 1_000
REAL = 1_000
HEADERS = "after, header pass scoped"
MODES = ("after", HEADERS, "before")


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


class WholeReads:
    """The catalogue reads an upload made before issue #15 item 14, for *before*: every file's
    state and every skipped file's (``Indexer.run`` now reads those of the files given only)
    and every image without a text vector (``enable_text`` now checks the images added since
    its last check only)."""

    def __init__(self) -> None:
        self.on = False
        me = self
        states_of, skips_of = SQLiteCatalogue.file_states_of, SQLiteCatalogue.skipped_states_of
        missing_after = SQLiteCatalogue.ids_missing_after

        def whole_states_of(cat, paths):
            if not me.on:
                return states_of(cat, paths)
            every = cat.file_states()
            return {p: every[p] for p in paths if p in every}

        def whole_skips_of(cat, paths):
            if not me.on:
                return skips_of(cat, paths)
            every = cat.skipped_states()
            return {p: every[p] for p in paths if p in every}

        def whole_missing_after(cat, space, after):
            if not me.on:
                return missing_after(cat, space, after)
            return cat.ids_missing(space), after  # every image checked, at every call

        SQLiteCatalogue.file_states_of = whole_states_of
        SQLiteCatalogue.skipped_states_of = whole_skips_of
        SQLiteCatalogue.ids_missing_after = whole_missing_after


class HeaderPass:
    """A stand-in for a fix outside this item's files (``collection.metadata.read_headers``;
    not in lookalike yet), to see what it would give: the header pass's scan for images
    without header info (``ids_without_info``, O(collection)) made once per collection, as
    if it remembered where it stopped."""

    def __init__(self) -> None:
        self.on = False
        me, done = self, set()
        read_headers = CollectionClass.read_headers

        def once(col, *args, **kwargs):
            if me.on and id(col) in done:
                return False  # the caller ignores what it returns
            done.add(id(col))
            return read_headers(col, *args, **kwargs)

        CollectionClass.read_headers = once


class Row:
    """The uploads of one mode into one collection, timed one at a time (the rows of every
    size and mode are interleaved, upload by upload, so that the load of the shared machine
    weighs on each alike); :meth:`result` gives the figures of the row."""

    def __init__(
        self,
        col: Collection,
        files: list[Path],
        timers: Timers,
        mode: str,
        stand_ins: tuple[WholeReads, HeaderPass],
    ) -> None:
        self.col, self.files, self.timers, self.mode = col, files, timers, mode
        self.stand_ins = stand_ins
        self.times: list[float] = []
        self.embed = 0.0
        self.saves: dict[str, float] = {}
        self.loads: list[float] = []
        self.grown: dict[str, int] = {}  # bytes appended to each space's log

    @contextlib.contextmanager
    def _mode(self):
        whole, headers = self.stand_ins
        self.timers.save = whole_save if self.mode == "before" else save_index
        whole.on, headers.on = self.mode == "before", self.mode == HEADERS
        self.timers.reset()
        try:
            yield
        finally:
            self.timers.save = save_index
            whole.on = headers.on = False

    def warm(self) -> None:
        """One upload: the model and the indexes loaded, a first save."""
        with self._mode():
            self.col.add([self.files[0]])

    def upload(self, i: int) -> None:
        """Time the upload of the ``i``-th file (1 and on)."""
        with self._mode():
            self.loads.append(os.getloadavg()[0])
            logs = {space: log_bytes(self.col, space) for space in self.col.spaces()}
            t = time.perf_counter()
            report = self.col.add([self.files[i]])
            self.times.append(time.perf_counter() - t)
            assert report.added == 1, report
            for space, before in logs.items():  # a compaction (or *before*) empties it
                grown = max(log_bytes(self.col, space) - before, 0)
                self.grown[space] = self.grown.get(space, 0) + grown
            self.embed += self.timers.embed
            for space, seconds in self.timers.saves.items():
                self.saves[space] = self.saves.get(space, 0.0) + seconds

    def result(self) -> dict:
        col, n, total = self.col, len(self.times), sum(self.times)
        index_dir = col.path / "index"
        record = {space: grown / n for space, grown in self.grown.items()}
        compact_every = {
            space: index_log.Journal.log_limit(
                index_log.Binding(Path(), b"", (index_dir / f"{space}.faiss").stat().st_size, 0, 0)
            )
            / size
            for space, size in record.items()
            if size > 0 and self.mode != "before"
        }
        saved = sum(self.saves.values())
        return {
            "mode": self.mode,
            "images": len(col),
            "uploads": n,
            "per_s": n / total,
            "p50_ms": percentile_ms(self.times, 50),
            "p99_ms": percentile_ms(self.times, 99),
            "embed_ms": 1000 * self.embed / n,
            "save_ms": {space: 1000 * t / n for space, t in self.saves.items()},
            "other_ms": 1000 * (total - self.embed - saved) / n,
            "load": float(np.mean(self.loads)),
            "kinds": {space: kind_of(col.index(space)) for space in col.spaces()},
            "index_mib": sum(f.stat().st_size for f in index_dir.iterdir() if f.is_file()) / 2**20,
            "log_kib": sum(record.values()) / 2**10 if self.mode != "before" else 0.0,
            "record_bytes": record if self.mode != "before" else {},
            "compact_every": compact_every,
        }


def log_bytes(col: Collection, space: str) -> int:
    """The size of the log of ``space``'s index (0: none)."""
    file = index_log.log_file(col.path / "index" / f"{space}.faiss")
    return file.stat().st_size if file.exists() else 0


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
            f"{r['index_mib']:,.0f} / {r['log_kib']:,.1f}",
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
        "index files MiB / log KiB per upload",
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
                        "; written whole in both: its kind keeps no log."
                        if kind.split(" > ")[-1] == "milvus"
                        else "."
                    )
                )
        lines.append(
            f"- the goal (issue #15): uploads/s at {large:,} images at least 80% of that at "
            f"{small:,}."
        )
        for size in (small, large):
            a, b, c = (by.get((size, mode)) for mode in ("before", "after", HEADERS))
            if a and b and c:
                lines.append(
                    f"- the rest of an upload at {size:,} images: {a['other_ms']:.0f} ms "
                    f"before, {b['other_ms']:.0f} ms after, {c['other_ms']:.0f} ms with the "
                    "header pass scoped too."
                )
        for size in (small, large):
            row = by.get((size, "after"))
            if row and row.get("compact_every"):
                parts = [
                    f"{space} {row['record_bytes'][space] / 1024:.1f} KiB (compacted every "
                    f"~{row['compact_every'][space]:,.0f} uploads)"
                    for space in sorted(row.get("compact_every", {}))
                ]
                lines.append(
                    f"- the log's growth per upload at {size:,} images: " + ", ".join(parts) + "."
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
        + "index's size (at least 1 MiB).\n"
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
    timers, stand_ins = Timers(), (WholeReads(), HeaderPass())
    build_s, rows = {}, {}
    with contextlib.ExitStack() as stack:
        for s, size in enumerate(sizes):
            path = OUT / f"collection-{size}"
            base = synthesise(real, size, seed=size)
            build_s[size] = build(path, base, embedder, args.index)
            del base
            print(f"{size:,} images built in {build_s[size]:.0f} s", flush=True)
            stack.callback(shutil.rmtree, path, ignore_errors=True)
            col = stack.enter_context(Collection.open(path, embedder=embedder))
            for m, mode in enumerate(MODES):
                first = (len(MODES) * s + m) * per_run
                row = Row(col, pictures[first : first + per_run], timers, mode, stand_ins)
                row.warm()
                rows[(size, mode)] = row
        # *before* last: the hundreds of MB it writes per upload at 100,000 images would be
        # flushed to disk during the others' (an ``os.replace`` waits for a file's blocks)
        for phase in ([m for m in MODES if m != "before"], ["before"]):
            os.sync()
            for i in range(1, per_run):  # every row's i-th upload, then the next
                for (_, mode), row in rows.items():
                    if mode in phase:
                        row.upload(i)
        results = []
        for (size, _), row in rows.items():
            results.append({**row.result(), "size": size})
            print(json.dumps(results[-1]), flush=True)
    (OUT / f"results-{args.sizes}.json").write_text(
        json.dumps({"results": results, "build_s": build_s, "argv": sys.argv})
    )
    text = report(results, build_s)
    print(text)
    if not args.no_write:
        write_section("upload-scale", text)


if __name__ == "__main__":
    main()
