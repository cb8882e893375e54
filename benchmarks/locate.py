"""Locating frames along a route: the gopro-walk clip (10.5 s, 315 frames, ~13 m, GPS in gps.csv).

Protocol (issue 8): index one frame in ten with its position from gps.csv; query every other
frame (the odd ones, none of them indexed) after a realistic perturbation (exposure, blur, small
crop and rotation, JPEG) standing in for a second pass. Reported: error in metres (median, 90th
percentile), recall within 1 m and 2 m, how often the truth lies inside the uncertainty radius;
for the similarity-weighted neighbours (independent and as a sequence) against the seed project's
approach (regressing position from descriptors), for float32, float16, 8-bit and PQ codes; and
the time to index the clip and to locate one frame.

    .venv/bin/python benchmarks/locate.py [--map bench-out/locate.html]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import SHARED, table, write_section

from lookalike import Collection
from lookalike.collection import IMAGE_SPACE
from lookalike.descriptors import l2n
from lookalike.geo.frames import index_video, iter_frames, video_info
from lookalike.geo.locate import SMOOTH_WINDOW, TEMPERATURE, locate, locate_hits
from lookalike.geo.maps import write_map
from lookalike.geo.tracks import haversine, read_csv, to_local

DATA = SHARED / "gopro-walk"
K = 10
SEED = 8
STORAGE_HEADER = [
    "vectors stored as",
    "bytes/frame",
    "GB per 1M frames (RAM, code + id)",
    "median m",
    "p90 m",
    "≤ 1 m",
    "sequence median m",
    "sequence p90 m",
]


def perturb(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A second pass: exposure +-30%, blur, 85-95% crop, +-3 degree rotation, JPEG 50-85."""
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.85, 1.15))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    w, h = image.size
    keep = rng.uniform(0.85, 0.95)
    cw, ch = int(w * keep), int(h * keep)
    x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    image = image.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BILINEAR)
    image = image.rotate(rng.uniform(-3, 3), resample=Image.Resampling.BILINEAR, expand=False)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(50, 86)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def errors_row(name: str, errors: np.ndarray, radius: np.ndarray | None = None) -> list:
    covered = f"{np.mean(errors <= radius):.0%}" if radius is not None else "—"
    return [
        name,
        f"{np.median(errors):.2f}",
        f"{np.percentile(errors, 90):.2f}",
        f"{np.mean(errors <= 1.0):.0%}",
        f"{np.mean(errors <= 2.0):.0%}",
        covered,
    ]


@dataclass
class Hit:
    """The part of a ``SearchResult`` that ``locate_hits`` reads."""

    id: int
    path: str
    score: float
    metadata: dict


class Run:
    """The clip indexed one frame in ten, the perturbed queries, and their true positions."""

    def __init__(self, folder: Path) -> None:
        self.video, self.track = DATA / "max-heromode.mp4", read_csv(DATA / "gps.csv")
        self.info = video_info(self.video)
        start = time.perf_counter()
        self.frames = list(iter_frames(self.video))
        self.decode_seconds = time.perf_counter() - start
        times = np.array([t for t, _ in self.frames])
        self.col = Collection.open(folder / "walk", create=True)
        self.col.embedder  # noqa: B018 - load the model outside the timing
        start = time.perf_counter()
        self.report = index_video(self.col, self.video, self.track, every=10 / self.info["fps"])
        self.index_seconds = time.perf_counter() - start
        self.records = sorted(self.col.records(), key=lambda r: r.metadata["time"])
        ids = [r.id for r in self.records]
        self.ref_vectors = self.col.catalogue.vectors(IMAGE_SPACE, ids)
        self.ref_lat = np.array([r.metadata["lat"] for r in self.records])
        self.ref_lon = np.array([r.metadata["lon"] for r in self.records])
        rng = np.random.default_rng(SEED)
        self.query_index = np.arange(1, len(self.frames), 2)  # odd frames: none is indexed
        self.queries = [perturb(self.frames[i][1], rng) for i in self.query_index]
        start = time.perf_counter()
        self.query_vectors = self.col.embed(self.queries)
        self.embed_seconds = (time.perf_counter() - start) / len(self.queries)
        lat, lon = self.track.at(times[self.query_index], tolerance=1.0)
        self.truth_lat, self.truth_lon = lat, lon
        self.origin = (float(self.track.lat[0]), float(self.track.lon[0]))
        self.truth_xy = to_local(lat, lon, *self.origin)
        # PQ/PCA training data that cannot memorise the indexed frames: the other even frames,
        # as they are, mirrored and perturbed.
        held_out = [f for n, (_, f) in enumerate(self.frames) if n % 2 == 0 and n % 10]
        mirrored = [f.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for f in held_out]
        perturbed = [perturb(f, rng) for f in held_out + mirrored]
        self.train_vectors = self.col.embed(held_out + mirrored + perturbed)

    def errors(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        return haversine(lat, lon, self.truth_lat, self.truth_lon)

    def hits(self, scores: np.ndarray, rows: np.ndarray) -> list[list[Hit]]:
        """Search results from (n, k) scores and row numbers into the indexed frames."""
        return [
            [
                Hit(self.records[j].id, self.records[j].path, float(s), self.records[j].metadata)
                for s, j in zip(score_row, row, strict=True)
            ]
            for score_row, row in zip(scores, rows, strict=True)
        ]

    def located(self, hits: list, **options: object) -> tuple[np.ndarray, np.ndarray]:
        labels = [f"frame {i}" for i in self.query_index]
        found = locate_hits(hits, labels, **options)
        lat, lon = np.array([x.lat for x in found]), np.array([x.lon for x in found])
        return self.errors(lat, lon), np.array([x.radius_m for x in found])


def methods(run: Run) -> list[list]:
    """Similarity-weighted neighbours (independent, sequence) against top-1 and regression."""
    rows = []
    hits = run.col.search_vectors(run.query_vectors, K, expand=0)
    top1 = np.array([[h[0].metadata["lat"], h[0].metadata["lon"]] for h in hits])
    rows.append(errors_row("top-1 neighbour's position", run.errors(top1[:, 0], top1[:, 1])))
    for temperature in (0.005, TEMPERATURE, 0.02, 0.05):
        name = f"k={K} weighted, T={temperature}" + (
            " **(default)**" if temperature == TEMPERATURE else ""
        )
        rows.append(errors_row(name, *run.located(hits, temperature=temperature)))
    expanded = run.col.search_vectors(run.query_vectors, K, expand=3)
    rows.append(errors_row(f"k={K}, T={TEMPERATURE}, query expansion 3", *run.located(expanded)))
    rows.append(
        errors_row("sequence: Viterbi only", *run.located(hits, sequence=True, smooth_window=1))
    )
    errors, radius = run.located(hits, sequence=True)
    rows.append(
        errors_row(f"sequence: Viterbi + median of {SMOOTH_WINDOW} **(default)**", errors, radius)
    )
    located = locate_hits(hits, ["q"] * len(hits))
    xy = to_local([x.lat for x in located], [x.lon for x in located], *run.origin)
    half = SMOOTH_WINDOW // 2
    smoothed = np.stack([np.median(xy[max(0, i - half) : i + half + 1], 0) for i in range(len(xy))])
    rows.append(
        errors_row(
            f"sequence: median of {SMOOTH_WINDOW} only",
            np.linalg.norm(smoothed - run.truth_xy, axis=1),
        )
    )
    from sklearn.linear_model import Ridge
    from sklearn.neural_network import MLPRegressor

    ref_xy = to_local(run.ref_lat, run.ref_lon, *run.origin)
    for name, model in (
        ("ridge regression (alpha=1)", Ridge(alpha=1.0)),
        ("ridge regression (alpha=0.01)", Ridge(alpha=0.01)),
        (
            "MLP regressor (256 hidden)",
            MLPRegressor(hidden_layer_sizes=(256,), max_iter=3000, random_state=0),
        ),
    ):
        model.fit(run.ref_vectors, ref_xy)
        predicted = model.predict(run.query_vectors)
        rows.append(errors_row(f"seed: {name}", np.linalg.norm(predicted - run.truth_xy, axis=1)))
    return rows


def storage(run: Run) -> list[list]:
    """Bytes per frame and locating error for each way of storing the vectors."""
    import faiss

    db, queries, train = run.ref_vectors, run.query_vectors, run.train_vectors
    dim = db.shape[1]
    pca = faiss.PCAMatrix(dim, 256)
    pca.train(train)

    def exact(stored: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = q @ stored.T
        rows = np.argsort(-scores, axis=1)[:, :K]
        return np.take_along_axis(scores, rows, 1), rows

    def coded(
        index: faiss.Index, q: np.ndarray, stored: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        index.train(train if index.d == dim else l2n(pca.apply(train)))
        index.add(stored)
        return index.search(np.ascontiguousarray(q, dtype=np.float32), K)

    reduced_db, reduced_q = l2n(pca.apply(db)), l2n(pca.apply(queries))
    variants = [
        (f"float32 ({dim}-d, as stored)", 4 * dim, lambda: exact(db, queries)),
        ("float16", 2 * dim, lambda: exact(db.astype(np.float16).astype(np.float32), queries)),
        (
            "8-bit scalar quantiser",
            dim,
            lambda: coded(
                faiss.IndexScalarQuantizer(
                    dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
                ),
                queries,
                db,
            ),
        ),
        (
            "PCA-256 float32 (the collection past 1000 images)",
            4 * 256,
            lambda: exact(reduced_db, reduced_q),
        ),
    ]
    for target in (128, 64, 32):
        m = max(d for d in range(1, target + 1) if dim % d == 0)  # PQ needs M to divide dim
        variants.append(
            (
                f"PQ {m}x8 bits",
                m,
                lambda m=m: coded(
                    faiss.IndexPQ(dim, m, 8, faiss.METRIC_INNER_PRODUCT), queries, db
                ),
            )
        )
    for m in (64, 32, 16):
        variants.append(
            (
                f"PCA-256 + PQ {m}x8 bits",
                m,
                lambda m=m: coded(
                    faiss.IndexPQ(256, m, 8, faiss.METRIC_INNER_PRODUCT), reduced_q, reduced_db
                ),
            )
        )
    rows = []
    for name, size, search in variants:
        scores, found = search()
        hits = run.hits(scores, found)
        alone, _ = run.located(hits)
        together, _ = run.located(hits, sequence=True)
        # In RAM per frame: the code plus the 8-byte id of an IndexIDMap.
        million_gb = (size + 8) * 1e6 / 1e9
        rows.append([name, size, f"{million_gb:.2f}", *_stats(alone), *_stats(together)[:2]])
    return rows


def _stats(errors: np.ndarray) -> list[str]:
    return [
        f"{np.median(errors):.2f}",
        f"{np.percentile(errors, 90):.2f}",
        f"{np.mean(errors <= 1):.0%}",
    ]


def locate_latency(run: Run, folder: Path, repeats: int = 20) -> float:
    """Median seconds for ``locate`` of one JPEG file: decode, embed, search, estimate."""
    samples = []
    for n in range(repeats):
        path = folder / f"q{n}.jpg"
        run.queries[n * 7 % len(run.queries)].save(path, quality=90)
        start = time.perf_counter()
        locate(run.col, [path])
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", type=Path, help="write a map of the predictions (HTML or PNG)")
    parser.add_argument("--no-write", action="store_true", help="print, do not update the doc")
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"dataset not found: {DATA}")
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(Path(tmp))
        method_rows = methods(run)
        storage_rows = storage(run)
        latency = locate_latency(run, Path(tmp))
        if args.map:
            hits = run.col.search_vectors(run.query_vectors, K, expand=0)
            labels = [f"frame {i}" for i in run.query_index]
            found = locate_hits(hits, labels, sequence=True)
            truth = list(zip(run.truth_lat, run.truth_lon, strict=True))
            write_map(args.map, run.ref_lat, run.ref_lon, predicted=found, truth=truth,
                      title="gopro-walk: every other frame located (sequence)")  # fmt: skip
        spacing = float(
            np.median(
                haversine(run.ref_lat[:-1], run.ref_lon[:-1], run.ref_lat[1:], run.ref_lon[1:])
            )
        )
        run.col.close()
    default_median = float(next(r[1] for r in method_rows if r[0].endswith("**(default)**")))
    goal = "met" if default_median <= 0.5 else "missed"
    seed_best = min(float(r[1]) for r in method_rows if r[0].startswith("seed"))
    seed_ratio = seed_best / default_median
    fits = ", ".join(r[0] for r in storage_rows if float(r[2]) <= 2.0)
    too_big = ", ".join(r[0] for r in storage_rows if float(r[2]) > 2.0)
    header = ["method", "median m", "p90 m", "≤ 1 m", "≤ 2 m", "truth within radius"]
    body = f"""
### Locating frames along a route (gopro-walk)

`max-heromode.mp4` ({run.info["duration"]:.1f} s, {len(run.frames)} frames,
{run.track.length_m():.1f} m walked, GPS from `gps.csv`). Indexed: one frame in ten
({run.report.kept} frames, median {spacing:.2f} m apart) with positions interpolated from the
track. Queries: the {len(run.query_index)} odd frames (none indexed), each perturbed as a second
pass would be: exposure ×0.7–1.3, contrast ×0.85–1.15, Gaussian blur 0.3–1.5 px, crop to 85–95 %
and resize back, rotation ±3°, JPEG quality 50–85 (seed {SEED}). Error = great-circle distance
to the GPS position at the query frame's time. Model {run.col.model_name} ({run.col.dim}-d), k = {K}
neighbours, no query expansion unless stated.

{table(header, method_rows)}

- **Median error {default_median:.2f} m (goal ≤ 0.5 m: {goal}).**
  The similarity-weighted, outlier-rejecting estimate has a median error below the spacing of
  the indexed frames. Over the sequence, the running median cuts the 90th percentile by a
  quarter; the Viterbi pass adds little on this clip (its candidates are already consistent).
- **The seed project's approach, regressing (east, north) from the descriptor, is
  {seed_ratio:.0f}× worse at best** ({seed_best:.2f} m median) with 32 training frames: a
  regressor must learn the route from a handful of examples, while nearest neighbours only need
  the frames to look alike. Kept: nearest neighbours.
- "truth within radius": how often the true position lies inside the reported uncertainty radius
  (1.5 × the inliers' weighted RMS spread; the factor was set on this clip).
- Query expansion (the collection's default for search) does not help locating, so `locate`
  turns it off.

**Compact storage.** The same queries, with the 32 indexed vectors stored in compressed form
(scores from FAISS on the codes, asymmetric: queries stay float). PCA and PQ codebooks were
trained on {len(run.train_vectors)} vectors of frames neither indexed nor queried (the other even
frames, as they are, mirrored and perturbed), so that they cannot memorise the indexed ones.

{table(STORAGE_HEADER, storage_rows)}

- Fit a million frames in 2 GB of RAM: {fits}. Too big: {too_big}. The frames' metadata
  lives in SQLite on disk, not in RAM.
- Note: the collection today holds float32 vectors in its catalogue and, past 1000 images, a
  PCA-256 float32 index in RAM (1 KB/frame); a PQ index kind is not wired into `Collection` yet.

**Time** (2 shared CPU cores, noisy): decoding all {len(run.frames)} frames
{run.decode_seconds:.1f} s; `index_video` one frame in ten (decode, JPEG, embed, commit)
{run.index_seconds:.1f} s; embedding a query {run.embed_seconds * 1000:.0f} ms (batched);
`locate` of one JPEG file end to end {latency * 1000:.0f} ms (median of 20).
"""
    print(body)
    if not args.no_write:
        write_section("locate", body)


if __name__ == "__main__":
    main()
