"""Copy detection on a DISC21-hard set: what lookalike's copy search should default to.

The set (``copies_hard_data.py``, seeded, cached under ``bench-out/copies_hard/<set>/``):
20,000 references (Corel-1k, gopro-walk frames, UKBench views, Tiny ImageNet val upscaled to
256-320 px, and 2x2 collages of other Tiny ImageNet images as distractors), 1,200 test queries
and a separate 400-query calibration split, half of each with no original indexed. Query tiers:
*ordinary* (1-3 AugLy edits), *hard-crop* (10-40% of the area kept, then 1-2 edits), *overlay*
(the copy pasted small into another photo or a screenshot, or a photo / big emoji / text pasted
over it), *heavy* (3-5 strong edits). Some negatives are near-misses: another frame of the
video or another view of a UKBench object whose sibling is indexed.

Methods, all on the same set in one run (hyper-parameters are chosen on the calibration split,
figures are on the test split):

- lookalike's default copy space (``sscd-mobile``, 288x288 squashed, cosine) and plain SSCD int8
  cosine (short side 288, aspect kept) as the baseline;
- preprocessing: both models, squashed vs aspect kept, N in {224, 288, 320} (on a subset of
  the references, each variant against the same subset);
- score normalisation (Pizzi et al. 2022 §4.2): ``s - β·s(q, k-th background neighbour)``;
- region descriptors: the query's 4 corner windows + centre, the references' likewise;
- keypoint verification (``lookalike.keypoints.verify``) of the top N folded into one score by a
  logistic model fitted on the calibration split;
- PDQ (``lookalike.copies.phash``) as an exact-match first pass.

Metrics (``lookalike.evaluate.metrics``): µAP over each query's top 10 ranked globally (ISC2021),
µAP of top-1 predictions only, recall@1 of positive queries, recall at 90% precision and its
threshold, per tier and overall.

    .venv/bin/python benchmarks/copies_hard.py [--small]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
import copies_hard_data as hd
from _report import table, write_section
from copies_hard_embed import Engine

from lookalike.evaluate import metrics

K = 10  # predictions per query (ISC2021)
#: SSCD int8 variants of the preprocessing sweep (each costs a pass of the int8 ResNet-50 over
#: the subset; sscd-mobile runs all six).
SSCD_SWEEP = {(224, False), (288, False), (320, False), (288, True)}
TIER_NAMES = list(hd.TIERS)


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def top_k(scores: np.ndarray, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k best (ids, scores), best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


def evaluate(ids: np.ndarray, scores: np.ndarray, truth: np.ndarray) -> dict:
    """µAP (top 10 and top 1), recall@1, recall and threshold at 90% precision."""
    match = ids == truth[:, None]
    pos = truth >= 0
    n_pos = int(pos.sum())
    out = {}
    for name, k in (("uAP", K), ("uAP@1", 1)):
        s, m = scores[:, :k].reshape(-1), match[:, :k].reshape(-1)
        out[name] = metrics.micro_average_precision(s, m, n_pos)
        if k == K:
            curve = metrics.precision_recall_curve(s, m, n_pos)
            out["R@P90"], out["thr@P90"] = metrics.recall_at_precision(curve, 0.9)
    out["recall@1"] = float(match[pos, 0].mean()) if n_pos else float("nan")
    return out


class Evaluator:
    """Scores rankings of the test queries overall and per tier."""

    def __init__(self, data: dict, qidx: np.ndarray) -> None:
        qs = [data["queries"][i] for i in qidx]
        self.truth = np.array([q["truth"] for q in qs])
        self.tiers = np.array([q["tier"] for q in qs])
        self.near = np.array([q["note"] == "near-miss" for q in qs])

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> dict:
        out = evaluate(ids, scores, self.truth)
        for tier in TIER_NAMES:
            sel = self.tiers == tier
            out[tier] = evaluate(ids[sel], scores[sel], self.truth[sel])
        thr = out["thr@P90"]
        out["near-miss FP"] = (
            float((scores[self.near, 0] >= thr).mean()) if thr is not None else 0.0
        )
        return out


# --------------------------------------------------------------------------------------------
# descriptors
# --------------------------------------------------------------------------------------------


class Vectors:
    """Descriptors of the set's images for one (model, N, square) variant, through the cache."""

    def __init__(self, items: hd.Items, cache_dir: Path) -> None:
        self.items = items
        self.cache_dir = cache_dir
        self.engines: dict[str, Engine] = {}

    def engine(self, model: str) -> Engine:
        if model not in self.engines:
            self.engines[model] = Engine(model, self.cache_dir)
        return self.engines[model]

    def get(self, model: str, n: int, square: bool, keys: list[str], label: str = "") -> np.ndarray:
        items = self.items
        return self.engine(model).embed(
            keys,
            [items.size(k) for k in keys],
            items.load,
            n,
            square,
            ids=[items.cache_id(k) for k in keys],
            label=label,
        )


def windows(size: tuple[int, int], side: float) -> list[tuple[int, int, int, int]]:
    """The 4 corner windows and the centre one, each ``side`` of the width and height."""
    w, h = size
    cw, ch = max(8, round(w * side)), max(8, round(h * side))
    xs, ys = (0, w - cw, (w - cw) // 2), (0, h - ch, (h - ch) // 2)
    return [
        (xs[a], ys[b], xs[a] + cw, ys[b] + ch) for a, b in ((0, 0), (1, 0), (0, 1), (1, 1), (2, 2))
    ]


class RegionItems:
    """Items whose images are windows of another item: key "<base>#<j>"."""

    def __init__(self, items: hd.Items, side: float) -> None:
        self.items = items
        self.side = side

    def keys(self, base: list[str]) -> list[str]:
        return [f"{b}#{self.side:g}#{j}" for b in base for j in range(5)]

    def cache_id(self, key: str) -> str:
        base, rest = key.split("#", 1)
        return f"{self.items.cache_id(base)}#{rest}"

    def _box(self, key: str) -> tuple[str, tuple[int, int, int, int]]:
        base, _, j = key.split("#")
        return base, windows(self.items.size(base), self.side)[int(j)]

    def size(self, key: str) -> tuple[int, int]:
        _, (x0, y0, x1, y1) = self._box(key)
        return x1 - x0, y1 - y0

    def load(self, key: str) -> Image.Image:
        base, box = self._box(key)
        return self.items.load(base).crop(box)


def region_vectors(vec: Vectors, model, n, square, base: list[str], side: float) -> np.ndarray:
    """(len(base), 5, 512): the windows' descriptors."""
    ri = RegionItems(vec.items, side)
    keys = ri.keys(base)
    out = vec.engine(model).embed(
        keys,
        [ri.size(k) for k in keys],
        ri.load,
        n,
        square,
        ids=[ri.cache_id(k) for k in keys],
        label="regions",
    )
    return out.reshape(len(base), 5, -1)


# --------------------------------------------------------------------------------------------
# score normalisation
# --------------------------------------------------------------------------------------------


def kth_background(q: np.ndarray, bg: np.ndarray, k: int) -> np.ndarray:
    """Each row's similarity to its k-th nearest background image."""
    s = q @ bg.T
    return -np.partition(-s, k - 1, axis=1)[:, k - 1]


# --------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------


class Verifier:
    """RootSIFT + USAC verification of (query, reference) pairs, cached on disk.

    Each pair gets (verified, inliers, region area fraction of the reference, mirrored,
    seconds): when the query does not verify against one of the first ``mirror_top``
    candidates, its mirror image is tried too (SIFT is not mirror invariant)."""

    def __init__(self, items: hd.Items, path: Path, mirror_top: int = 1) -> None:
        self.items = items
        self.path = path
        self.mirror_top = mirror_top
        self.pairs: dict[str, list] = json.loads(path.read_text()) if path.exists() else {}
        self._refs: dict[str, object] = {}
        self._dirty = 0

    def run(self, qkey: str, rkeys: list[str]) -> list[list]:
        from lookalike.keypoints.verify import extract, verify

        todo = [r for r in rkeys if f"{qkey}:{r}" not in self.pairs]
        if todo:
            start = time.perf_counter()
            image = self.items.load(qkey)
            qf = extract(image)
            if f"{qkey}:" not in self.pairs:
                self.pairs[f"{qkey}:"] = time.perf_counter() - start
            mirrored = None
            for rank, r in enumerate(rkeys):
                if r not in todo:
                    continue
                start = time.perf_counter()
                rf = self._refs.get(r)
                if rf is None:
                    rf = extract(self.items.load(r))
                    if len(self._refs) > 3000:
                        self._refs.clear()
                    self._refs[r] = rf
                res, flipped = verify(qf, rf), False
                if not res.verified and rank < self.mirror_top:
                    if mirrored is None:
                        mirrored = extract(ImageOps.mirror(image))
                    alt = verify(mirrored, rf)
                    if alt.verified:
                        res, flipped = alt, True
                area = 0.0
                if res.verified and res.region is not None:
                    x0, y0, x1, y1 = res.region
                    w, h = rf.size
                    area = (x1 - x0) * (y1 - y0) / max(1, w * h)
                seconds = time.perf_counter() - start
                self.pairs[f"{qkey}:{r}"] = [
                    bool(res.verified),
                    int(res.inliers),
                    area,
                    flipped,
                    seconds,
                ]
            self._dirty += len(todo)
            if self._dirty > 500:
                self.save()
        return [self.pairs[f"{qkey}:{r}"] for r in rkeys]

    def save(self) -> None:
        if self._dirty:
            self.path.write_text(json.dumps(self.pairs))
            self._dirty = 0

    def ms(self, qkey: str, rkeys: list[str]) -> float:
        """Milliseconds to verify ``rkeys`` for ``qkey``: the query's features, then each
        candidate decoded, its features extracted and matched (mirror retried on failure)."""
        return 1000 * (self.pairs[f"{qkey}:"] + sum(self.pairs[f"{qkey}:{r}"][4] for r in rkeys))


def pair_features(cos, ncos, ver) -> np.ndarray:
    """Features of the calibrated score: cosine, normalised cosine, verified (0/1),
    min(inliers, 60)/60 when verified (else 0), region area fraction when verified (else 0)."""
    v = np.array([p[0] for p in ver], np.float64)
    inl = np.array([min(p[1], 60) / 60 for p in ver], np.float64) * v
    area = np.array([p[2] for p in ver], np.float64) * v
    return np.column_stack([cos, ncos, v, inl, area])


FEATURES = ["cosine", "normalised cosine", "verified", "min(inliers,60)/60", "region area"]


def fit_logistic(x: np.ndarray, y: np.ndarray):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=10.0, max_iter=2000)
    model.fit(x, y)
    return model


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


# --------------------------------------------------------------------------------------------
# timings
# --------------------------------------------------------------------------------------------


def latency_query_embed(engine: Engine, items: hd.Items, keys: list[str], n, square) -> float:
    """p50 ms to embed one query image (decode + resize + network, batch of 1)."""
    engine.forward([items.load(keys[0])], n, square)
    times = []
    for k in keys:
        start = time.perf_counter()
        engine.forward([items.load(k)], n, square)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def latency_search(refs: np.ndarray, queries: np.ndarray, bg: np.ndarray | None, k_bg: int):
    """p50 ms per query for a flat inner-product search of the references (FAISS, one query at
    a time, top 10), plus the background search of normalisation when ``bg`` is given."""
    import faiss

    index = faiss.IndexFlatIP(refs.shape[1])
    index.add(np.ascontiguousarray(refs, np.float32))
    bg_index = None
    if bg is not None:
        bg_index = faiss.IndexFlatIP(bg.shape[1])
        bg_index.add(np.ascontiguousarray(bg, np.float32))
    times = []
    for q in queries:
        q = np.ascontiguousarray(q[None], np.float32)
        start = time.perf_counter()
        d, _ = index.search(q, K)
        if bg_index is not None:
            b, _ = bg_index.search(q, k_bg)
            d = d - b[:, -1:]
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


def fmt(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return "nan" if np.isnan(x) else f"{x:.3f}"
    return str(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="2,000 references, 420 queries")
    parser.add_argument(
        "--sweep-refs",
        type=int,
        default=3000,
        help="references (originals + random distractors) of the subset on "
        "which preprocessing variants and reference regions are compared",
    )
    parser.add_argument(
        "--no-sweep",
        action="store_true",
        help="skip the preprocessing sweep (and the regions) on the subset",
    )
    parser.add_argument(
        "--no-alt", action="store_true", help="skip the other resizing at 288 on the whole set"
    )
    parser.add_argument(
        "--base",
        choices=("short", "square"),
        default="square",
        help="the SSCD int8 resizing at 288 that normalisation, PDQ and verification build on",
    )
    parser.add_argument(
        "--region-refs",
        type=int,
        default=500,
        help="references (originals first) of the region-descriptor subset",
    )
    parser.add_argument("--no-regions", action="store_true")
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument(
        "--verify-depth",
        type=int,
        default=10,
        choices=(3, 5, 10),
        help="candidates verified per query (N up to this is reported)",
    )
    parser.add_argument(
        "--region-size", type=int, default=224, help="short side windows are embedded at"
    )
    parser.add_argument("--no-pdq", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not write the doc section")
    args = parser.parse_args()
    name = "small" if args.small else "full"
    wall = time.perf_counter()
    data = hd.build(name)
    items = hd.Items(data)
    out_dir = hd.OUT / name
    vec = Vectors(items, out_dir / "emb")
    queries = data["queries"]
    test = np.array([i for i, q in enumerate(queries) if q["split"] == "test"])
    calib = np.array([i for i, q in enumerate(queries) if q["split"] == "calib"])
    truth_all = np.array([q["truth"] for q in queries])
    ev_test = Evaluator(data, test)
    ev_calib = Evaluator(data, calib)
    ref_keys, bg_keys = items.keys("r"), items.keys("b")
    q_keys = items.keys("q")
    n_refs = len(ref_keys)
    print(
        f"{name}: {n_refs} refs, {len(test)} test + {len(calib)} calib queries, "
        f"{len(bg_keys)} background",
        flush=True,
    )
    results: dict[str, dict] = {}  # row name -> test metrics
    info: dict = {}  # what the report needs to say
    notes: dict[str, str] = {}

    def run_cosine(model, n, square, label):
        r = vec.get(model, n, square, ref_keys, "refs")
        q = vec.get(model, n, square, q_keys, "queries")
        s = q @ r.T
        ids, sc = top_k(s)
        results[label] = ev_test(ids[test], sc[test])
        print(
            label, {k: v for k, v in results[label].items() if not isinstance(v, dict)}, flush=True
        )
        return r, q, s

    # (a) lookalike's default and the plain SSCD int8 baseline -------------------------------
    default_label = "lookalike default: sscd-mobile, 288x288 squashed, cosine"
    base_label = "baseline: SSCD int8, short side 288, cosine"
    check = check_default(vec, items, ref_keys[:6] + q_keys[:6])
    notes["check"] = check
    print(check, flush=True)
    _, q_def, s_def = run_cosine("sscd-mobile", 288, True, default_label)
    r_base, q_base, s_base = run_cosine("sscd", 288, False, base_label)
    # the other resizing at 288 for both models: on the whole set, since square references
    # (Tiny ImageNet, collages) share their vectors between the two
    square_label = "SSCD int8, 288x288 squashed, cosine"
    if not args.no_alt or args.base == "square":
        r_sq, q_sq, s_sq = run_cosine("sscd", 288, True, square_label)
    if not args.no_alt:
        run_cosine("sscd-mobile", 288, False, "sscd-mobile, short side 288, cosine")
    # the SSCD int8 variant every later step builds on
    base_square = args.base == "square"
    if base_square:
        r_base, q_base, s_base = r_sq, q_sq, s_sq
    info["base"] = f"SSCD int8, {'288x288 squashed' if base_square else 'short side 288'}"
    b_base = vec.get("sscd", 288, base_square, bg_keys, "background")

    # (b) preprocessing on a subset of the references -----------------------------------------
    sweep_rows = []
    sub = None
    if not args.no_sweep:
        rng = np.random.default_rng(hd.SEED)
        originals = sorted({int(t) for t in truth_all if t >= 0})
        rest = np.setdiff1d(np.arange(n_refs), originals)
        extra = max(0, min(args.sweep_refs, n_refs) - len(originals))
        sub = np.sort(np.concatenate([originals, rng.choice(rest, extra, replace=False)]))
        remap = -np.ones(n_refs, int)
        remap[sub] = np.arange(len(sub))
        sub_truth = np.where(truth_all >= 0, remap[np.maximum(truth_all, 0)], -1)
        ev_sub = Evaluator(
            {"queries": [dict(q, truth=int(t)) for q, t in zip(queries, sub_truth, strict=True)]},
            test,
        )
        sub_keys = [ref_keys[i] for i in sub]
        test_keys = [q_keys[i] for i in test]
        for model in ("sscd-mobile", "sscd"):
            for square in (True, False):
                for n in (224, 288, 320):
                    if model == "sscd" and (n, square) not in SSCD_SWEEP:
                        continue
                    r = vec.get(model, n, square, sub_keys, f"sweep refs {n}")
                    q = vec.get(model, n, square, test_keys, f"sweep queries {n}")
                    ids, sc = top_k(q @ r.T)
                    m = ev_sub(ids, sc)
                    rate = vec.engine(model).rate(n, square)
                    sweep_rows.append((model, "squashed" if square else "aspect kept", n, m, rate))
                    print("sweep", model, square, n, fmt(m["uAP"]), fmt(m["R@P90"]), flush=True)

    # (c) score normalisation ------------------------------------------------------------------
    # Chosen on the calibration split: background size, k, β; query side or both sides.
    norm_grid = []
    bg_sizes = sorted({min(300, len(bg_keys)), len(bg_keys)})
    ids_c, sc_c = top_k(s_base[calib])
    for m_bg in bg_sizes:
        for k in (1, 3, 10):
            bq = kth_background(q_base, b_base[:m_bg], k)
            for beta in (0.5, 0.75, 1.0, 1.25):
                sc = sc_c - beta * bq[calib, None]
                m = ev_calib(ids_c, sc)
                norm_grid.append(((m_bg, k, beta), m["uAP"], m["R@P90"]))
    best_norm = max(norm_grid, key=lambda t: t[1] + t[2])[0]
    m_bg, k_bg, beta = best_norm
    bq_base = kth_background(q_base, b_base[:m_bg], k_bg)
    ids_b, sc_b = top_k(s_base)
    norm_label = f"+ normalisation (background {m_bg}, k={k_bg}, β={beta})"
    results[norm_label] = ev_test(ids_b[test], sc_b[test] - beta * bq_base[test, None])
    # both sides: s - β/2 (b_q + b_r)
    br = kth_background(r_base, b_base[:m_bg], k_bg)
    s_qr = s_base - beta / 2 * (bq_base[:, None] + br[None, :])
    ids_qr, sc_qr = top_k(s_qr)
    results[f"+ normalisation, query and reference sides (k={k_bg}, β={beta})"] = ev_test(
        ids_qr[test], sc_qr[test]
    )
    # the default model with the same normalisation
    b_def = vec.get("sscd-mobile", 288, True, bg_keys, "background")
    bq_def = kth_background(q_def, b_def[:m_bg], k_bg)
    ids_d, sc_d = top_k(s_def)
    results[f"default + normalisation (k={k_bg}, β={beta})"] = ev_test(
        ids_d[test], sc_d[test] - beta * bq_def[test, None]
    )
    # the collection itself as the background: the query's k-th result in the index
    self_grid = []
    for k in (5, 10):
        for b in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0):
            m = ev_calib(ids_c, sc_c - b * sc_c[:, k - 1 : k])
            self_grid.append(((k, b), m["uAP"] + m["R@P90"]))
    (k_self, beta_self), self_best = max(self_grid, key=lambda t: t[1])
    self_label = f"+ self-normalisation (s − β·(result #k of the query), k={k_self}, β={beta_self})"
    results[self_label] = ev_test(
        ids_b[test], sc_b[test] - beta_self * sc_b[test, k_self - 1 : k_self]
    )
    ids_dc, sc_dc = ids_d[calib], sc_d[calib]
    k_d, beta_d = max(
        ((k, b) for k in (5, 10) for b in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)),
        key=lambda kb: sum(
            ev_calib(ids_dc, sc_dc - kb[1] * sc_dc[:, kb[0] - 1 : kb[0]])[x]
            for x in ("uAP", "R@P90")
        ),
    )
    results[f"default + self-normalisation (k={k_d}, β={beta_d})"] = ev_test(
        ids_d[test], sc_d[test] - beta_d * sc_d[test, k_d - 1 : k_d]
    )
    notes["self"] = (
        "Self-normalisation needs no background set: the query's k-th search "
        "result in the collection stands for it (k and β chosen on calibration "
        "among k in {5, 10}, β in 0.5-2; k below 5 would eat into groups of "
        "copies of one picture)"
    )
    # the normalisation the later steps build on: whichever did better on calibration
    bg_best = max(t[1] + t[2] for t in norm_grid)
    if self_best >= bg_best:
        offset = beta_self * sc_b[:, k_self - 1]
        norm_desc = f"s − {beta_self}·(the score of the query's result #{k_self})"
    else:
        offset = beta * bq_base
        norm_desc = (
            f"s − {beta}·(the query's similarity to its neighbour #{k_bg} among {m_bg} "
            "background images)"
        )
    info["norm"] = norm_desc
    notes["norm choice"] = (
        f"Normalisation used by the later rows (regions, PDQ, calibrated scores): {norm_desc}, "
        f"the better on the calibration split (µAP + R@P90 there: background {bg_best:.3f}, "
        f"self {self_best:.3f})"
    )
    for label in list(results)[-5:]:
        print(label, fmt(results[label]["uAP"]), fmt(results[label]["R@P90"]), flush=True)

    # operating points at 90% precision, thresholds chosen on the calibration split
    operating: dict[str, tuple] = {}
    for label, sc_all in (
        (f"cosine, {info['base']}", sc_b),
        (f"normalised cosine (k={k_bg}, β={beta})", sc_b - beta * bq_base[:, None]),
        (
            f"self-normalised cosine (k={k_self}, β={beta_self})",
            sc_b - beta_self * sc_b[:, k_self - 1 : k_self],
        ),
        ("cosine, sscd-mobile squashed 288 (default)", sc_d),
    ):
        ids_all = ids_d if "default" in label else ids_b
        thr = ev_calib(ids_all[calib], sc_all[calib])["thr@P90"]
        operating[label] = (thr, operating_point(ids_all[test], sc_all[test], truth_all[test], thr))

    # (d) region descriptors --------------------------------------------------------------------
    region_rows = []
    notes_sizes = info
    notes_sizes.update(sweep=len(sub) if sub is not None else 0, region_size=args.region_size)
    if not args.no_regions and sub is not None:
        # Query windows (all queries) and reference windows (the sweep subset), SSCD int8 at the
        # baseline's preprocessing; combined as max(full, best window pair - δ), δ from calib.
        notes_sizes["sweep"] = len(sub)
        # the region subset: the sweep subset's first --region-refs references, originals
        # of every positive kept
        originals = {int(t) for t in truth_all if t >= 0}
        others = [i for i in sub if i not in originals]
        keep = max(0, args.region_refs - len(originals))
        sub = np.array(sorted(originals | set(others[:keep])))
        remap = -np.ones(n_refs, int)
        remap[sub] = np.arange(len(sub))
        sub_truth = np.where(truth_all >= 0, remap[np.maximum(truth_all, 0)], -1)
        ev_sub = Evaluator(
            {"queries": [dict(q, truth=int(t)) for q, t in zip(queries, sub_truth, strict=True)]},
            test,
        )
        sub_keys = [ref_keys[i] for i in sub]
        notes_sizes["regions"] = len(sub)
        qreg = region_vectors(vec, "sscd", args.region_size, False, q_keys, 0.6)
        rreg = region_vectors(vec, "sscd", args.region_size, False, sub_keys, 0.55)
        r_sub = r_base[sub]
        s_full = q_base @ r_sub.T - offset[:, None]
        s_qwin = np.max(np.stack([qreg[:, j] @ r_sub.T for j in range(5)]), axis=0)
        s_qwin -= offset[:, None]
        s_rwin = np.max(np.stack([q_base @ rreg[:, j].T for j in range(5)]), axis=0)
        s_rwin -= offset[:, None]
        sub_truth_all = sub_truth
        ev_sub_c = Evaluator(
            {
                "queries": [
                    dict(q, truth=int(t)) for q, t in zip(queries, sub_truth_all, strict=True)
                ]
            },
            calib,
        )
        for label, extra_s in (
            ("query windows", s_qwin),
            ("reference windows", s_rwin),
            ("both", np.maximum(s_qwin, s_rwin)),
        ):
            best = None
            for delta in (0.0, 0.05, 0.1, 0.15, 0.2, 0.3):
                comb = np.maximum(s_full, extra_s - delta)
                ids, sc = top_k(comb[calib])
                m = ev_sub_c(ids, sc)
                if best is None or m["uAP"] + m["R@P90"] > best[1]:
                    best = (delta, m["uAP"] + m["R@P90"])
            comb = np.maximum(s_full, extra_s - best[0])
            ids, sc = top_k(comb[test])
            region_rows.append((label, best[0], ev_sub(ids, sc)))
        ids, sc = top_k(s_full[test])
        region_rows.insert(0, ("none (normalised cosine)", None, ev_sub(ids, sc)))
        for row in region_rows:
            print("regions", row[0], row[1], fmt(row[2]["uAP"]), fmt(row[2]["R@P90"]), flush=True)

    # (f) PDQ as an exact-match first pass -----------------------------------------------------
    if not args.no_pdq:
        pdq_hits = pdq_first_pass(items, ref_keys, q_keys, out_dir / "pdq.npz")
        sc = sc_b - offset[:, None]
        ids2, sc2 = ids_b.copy(), sc.copy()
        for qi, (ri, dist) in pdq_hits.items():
            if dist <= 31:
                others = [j for j, r in enumerate(ids2[qi]) if r != ri][: K - 1]
                row = [ri, *ids2[qi][others]]
                scores = [10.0 - dist / 256, *sc2[qi][others]]
                ids2[qi], sc2[qi] = row, scores
        results["+ normalisation + PDQ exact-match first pass"] = ev_test(ids2[test], sc2[test])
        n_hit = sum(1 for qi in test if qi in pdq_hits and pdq_hits[qi][1] <= 31)
        notes["pdq"] = f"{n_hit} test queries have a PDQ match (≤31 bits, dihedral)"

    # (e) verification folded into a calibrated score -------------------------------------------
    verify_rows = []
    coefficients = {}
    if not args.no_verify:
        verifier = Verifier(items, out_dir / "verify.json")
        ncos_all = sc_b - offset[:, None]
        depth = args.verify_depth
        ver: dict[int, list] = {}
        t0 = time.perf_counter()
        for j, qi in enumerate(np.concatenate([calib, test])):
            ver[int(qi)] = verifier.run(q_keys[qi], [ref_keys[r] for r in ids_b[qi, :depth]])
            if j % 100 == 0:
                print(f"  verified {j} queries ({time.perf_counter() - t0:.0f} s)", flush=True)
        verifier.save()

        def feats(qs, n_ver):
            x, y = [], []
            for qi in qs:
                v = [ver[qi][r] if r < n_ver else [False, 0, 0.0, False, 0.0] for r in range(K)]
                x.append(pair_features(sc_b[qi], ncos_all[qi], v))
                y.append(ids_b[qi] == truth_all[qi])
            return np.stack(x), np.stack(y)

        # the no-verification model (cosine, normalised cosine) for ranks beyond N
        xc, yc = feats(calib, 0)
        nov = fit_logistic(xc.reshape(-1, 5)[:, :2], yc.reshape(-1))
        coefficients["no verification"] = (nov.intercept_[0], nov.coef_[0][:2])
        xt, _ = feats(test, 0)
        p = nov.predict_proba(xt.reshape(-1, 5)[:, :2])[:, 1].reshape(len(test), K)
        verify_rows.append(
            ("calibrated, no verification", evaluate_resorted(ev_test, ids_b[test], p))
        )
        for n_ver in [n for n in (3, 5, 10) if n <= depth]:
            xc, yc = feats(calib, n_ver)
            rank = np.arange(K) < n_ver
            model = fit_logistic(xc[:, rank].reshape(-1, 5), yc[:, rank].reshape(-1))
            coefficients[f"N={n_ver}"] = (model.intercept_[0], model.coef_[0])
            xt, _ = feats(test, n_ver)
            p = np.empty((len(test), K))
            p[:, rank] = model.predict_proba(xt[:, rank].reshape(-1, 5))[:, 1].reshape(
                len(test), -1
            )
            if (~rank).any():
                p[:, ~rank] = nov.predict_proba(xt[:, ~rank].reshape(-1, 5)[:, :2])[:, 1].reshape(
                    len(test), -1
                )
            m = evaluate_resorted(ev_test, ids_b[test], p)
            m["ms"] = float(
                np.median(
                    [
                        verifier.ms(q_keys[qi], [ref_keys[r] for r in ids_b[qi, :n_ver]])
                        for qi in test
                    ]
                )
            )
            verify_rows.append((f"verification top {n_ver}, logistic", m))
            # the hand-made rule, for comparison
            bonus = np.where(xt[:, :, 2] > 0, 0.3 * xt[:, :, 3], -0.3) * rank
            verify_rows.append(
                (
                    f"verification top {n_ver}, cos + 0.3·inl/60 or -0.3 (issue #17)",
                    evaluate_resorted(ev_test, ids_b[test], sc_b[test] + bonus),
                )
            )
            print("verify", n_ver, fmt(m["uAP"]), fmt(m["R@P90"]), flush=True)
            # the threshold for 90% precision, chosen on the calibration split
            pc = np.empty((len(calib), K))
            pc[:, rank] = model.predict_proba(xc[:, rank].reshape(-1, 5))[:, 1].reshape(
                len(calib), -1
            )
            if (~rank).any():
                pc[:, ~rank] = nov.predict_proba(xc[:, ~rank].reshape(-1, 5)[:, :2])[:, 1].reshape(
                    len(calib), -1
                )
            thr = evaluate_resorted(ev_calib, ids_b[calib], pc)["thr@P90"]
            operating[f"P(copy), verification top {n_ver}"] = (
                thr,
                operating_point(ids_b[test], p, truth_all[test], thr),
            )

    # timings ----------------------------------------------------------------------------------
    timing = {}
    sample = [q_keys[i] for i in test[:40]]
    for model, n, square in (("sscd-mobile", 288, True), ("sscd", 288, base_square)):
        eng = vec.engine(model)
        timing[(model, n, square)] = {
            "images/s": eng.rate(n, square),
            "query embed ms": latency_query_embed(eng, items, sample, n, square),
        }
    timing["search ms"] = latency_search(r_base, q_base[test[:300]], None, 0)
    timing["search+norm ms"] = latency_search(r_base, q_base[test[:300]], b_base[:m_bg], k_bg)

    for engine in vec.engines.values():
        engine.save()
    seconds = time.perf_counter() - wall
    info["operating"] = operating
    notes["operating"] = (
        "Thresholds for 90% precision chosen on the calibration split, applied "
        "to the test split (precision / recall there): "
        + "; ".join(
            f"{label} ≥ {fmt(thr)}: {fmt(pr[0])} / {fmt(pr[1])}"
            for label, (thr, pr) in operating.items()
        )
    )
    report(
        args,
        data,
        results,
        sweep_rows,
        region_rows,
        verify_rows,
        coefficients,
        timing,
        notes,
        norm_grid,
        best_norm,
        seconds,
        notes_sizes,
    )


def operating_point(ids, scores, truth, thr) -> tuple[float, float]:
    """(precision, recall) of accepting every top-10 prediction scoring at least ``thr``."""
    if thr is None:
        return float("nan"), 0.0
    keep = scores >= thr
    hits = (ids == truth[:, None]) & keep
    n_pos = int((truth >= 0).sum())
    return float(hits.sum() / max(1, keep.sum())), float(hits.sum() / max(1, n_pos))


def evaluate_resorted(ev: Evaluator, ids: np.ndarray, scores: np.ndarray) -> dict:
    order = np.argsort(-scores, axis=1, kind="stable")
    return ev(np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1))


def check_default(vec: Vectors, items: hd.Items, keys: list[str]) -> str:
    """The cached sscd-mobile 288 squashed vectors equal lookalike's own embedder's."""
    from lookalike.models import load_embedder

    embedder = load_embedder("sscd-mobile")
    ours = vec.get("sscd-mobile", 288, True, keys)
    theirs = embedder.embed_images([items.load(k) for k in keys])
    diff = float(np.abs(ours - theirs).max())
    return (
        f"lookalike's `load_embedder('sscd-mobile')` and the benchmark's session agree "
        f"(largest difference {diff:.1e} over {len(keys)} images)"
    )


def pdq_first_pass(items, ref_keys, q_keys, path: Path) -> dict[int, tuple[int, int]]:
    """Each query's nearest reference by dihedral PDQ distance: {query: (ref, bits)}."""
    from lookalike.copies import phash

    if path.exists():
        z = np.load(path)
        refs, qs = z["refs"], z["queries"]
    else:
        refs = np.stack([np.frombuffer(phash.pdq(items.load(k)).hash, np.uint8) for k in ref_keys])
        qs = np.stack(
            [
                np.stack(
                    [np.frombuffer(v.hash, np.uint8) for v in phash.pdq_dihedral(items.load(k))]
                )
                for k in q_keys
            ]
        )
        np.savez(path, refs=refs, queries=qs)
    out = {}
    ref_list = [bytes(r) for r in refs]
    for qi in range(len(q_keys)):
        dist = phash.dihedral_distance([bytes(v) for v in qs[qi]], ref_list)
        ri = int(np.argmin(dist))
        out[qi] = (ri, int(dist[ri]))
    return out


def tier_cell(m: dict) -> str:
    return f"{m['uAP']:.3f} / {m['recall@1']:.3f} / {m['R@P90']:.3f}"


def composition(data: dict) -> str:
    from collections import Counter

    refs = Counter(data["ref_source"])
    qs = data["queries"]
    lines = []
    for split in ("test", "calib"):
        sel = [q for q in qs if q["split"] == split]
        pos = Counter(q["tier"] for q in sel if q["truth"] >= 0)
        neg = Counter(q["tier"] for q in sel if q["truth"] < 0)
        near = sum(q["note"] == "near-miss" for q in sel)
        lines.append(
            f"{split}: {len(sel)} queries, positives "
            + ", ".join(f"{t} {pos[t]}" for t in TIER_NAMES)
            + "; negatives "
            + ", ".join(f"{t} {neg[t]}" for t in TIER_NAMES)
            + f" (of which {near} near-misses: gopro frames 20-25 frames (0.7-0.8 s) from an "
            "indexed one, other UKBench views of an indexed object)"
        )
    return (
        f"{len(data['refs'])} references: "
        + ", ".join(f"{v} {k}" for k, v in refs.most_common())
        + f" (Tiny ImageNet upscaled to 256-320 px; collages are 2x2 of other Tiny ImageNet "
        f"images, distractors only). Background pool for normalisation: {len(data['bg'])} "
        "Tiny ImageNet + Corel images never indexed or queried. "
        + " ".join(s[0].upper() + s[1:] + "." for s in lines)
    )


def report(
    args,
    data,
    results,
    sweep_rows,
    region_rows,
    verify_rows,
    coefficients,
    timing,
    notes,
    norm_grid,
    best_norm,
    seconds,
    sizes,
) -> None:
    head = ["method", "µAP", "µAP top-1", "recall@1", "R@P90", "thr@P90", "near-miss FP@thr"]
    rows = [
        [
            name,
            fmt(m["uAP"]),
            fmt(m["uAP@1"]),
            fmt(m["recall@1"]),
            fmt(m["R@P90"]),
            fmt(m["thr@P90"]),
            fmt(m["near-miss FP"]),
        ]
        for name, m in results.items()
    ]
    rows += [
        [
            name,
            fmt(m["uAP"]),
            fmt(m["uAP@1"]),
            fmt(m["recall@1"]),
            fmt(m["R@P90"]),
            fmt(m["thr@P90"]),
            fmt(m["near-miss FP"]),
        ]
        for name, m in verify_rows
    ]
    tiers = [
        [name] + [tier_cell(m[t]) for t in TIER_NAMES]
        for name, m in list(results.items()) + list(verify_rows)
    ]
    parts = [
        "## Copy detection, DISC21-hard (`benchmarks/copies_hard.py`)",
        composition(data),
        "Figures are on the test split; every choice (normalisation's background size, k and β, "
        "the region margin δ, the logistic models) was made on the calibration split. µAP ranks "
        "every test query's top 10 globally (ISC2021); µAP top-1 keeps each query's best one; "
        "recall@1 is over positive queries; R@P90 is the recall at 90% precision and thr@P90 "
        "the score giving it; near-miss FP@thr: share of near-miss negatives whose best score "
        "reaches thr@P90. Rows starting with “+” build on " + sizes["base"] + ".",
        table(head, rows),
        "Per tier (µAP / recall@1 / R@P90):",
        table(["method", *TIER_NAMES], tiers),
    ]
    extras = []
    if sweep_rows:
        extras += [
            f"Preprocessing, on a subset of {sizes['sweep']} references (every positive's original "
            "plus random distractors) against the same test queries; plain cosine. images/s: "
            "decode + resize + network, batches of one shape (2 shared cores).",
            table(
                ["model", "resize", "N", "µAP", "recall@1", "R@P90", "images/s"],
                [
                    [
                        mo,
                        rs,
                        n,
                        fmt(m["uAP"]),
                        fmt(m["recall@1"]),
                        fmt(m["R@P90"]),
                        fmt(rate) if rate else "—",
                    ]
                    for mo, rs, n, m, rate in sweep_rows
                ],
            ),
        ]
    if region_rows:
        extras += [
            f"Region descriptors (full images: {sizes['base']}; windows: SSCD int8 at short "
            f"side {sizes['region_size']}; normalised: {sizes['norm']}) on a "
            f"{sizes.get('regions')}-reference subset (every positive's original plus "
            "distractors): the query's 4 corner windows and centre window (60% of each "
            "side) and/or the references' (55%), scored max(full, best window pair − δ)."
            " Memory: 2 KB per image per 512-d float32 vector, 6 vectors per image "
            "with reference windows (12 KB, 6x the embedding work at indexing); query windows "
            "cost 5 more embeddings per query.",
            table(
                ["windows", "δ", "µAP", "recall@1", "R@P90", "thr@P90"],
                [
                    [
                        lab,
                        fmt(d),
                        fmt(m["uAP"]),
                        fmt(m["recall@1"]),
                        fmt(m["R@P90"]),
                        fmt(m["thr@P90"]),
                    ]
                    for lab, d, m in region_rows
                ],
            ),
        ]
    extras_path = hd.OUT / "small" / "extras.json"
    if args.small:
        extras_path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "parts": extras}))
        parts += extras
    elif extras:
        parts += extras
    elif extras_path.exists():
        saved = json.loads(extras_path.read_text())
        parts += [
            f"From the `--small` run ({saved['date']}; 2,000 references, 300 test and "
            "120 calibration queries drawn the same way), where every SSCD variant and "
            "region scheme was affordable on 2 shared cores:"
        ] + saved["parts"]
    if coefficients:
        coef_rows = []
        for name, (b0, w) in coefficients.items():
            coef_rows.append([name, f"{b0:+.3f}"] + [f"{x:+.3f}" for x in w] + ["—"] * (5 - len(w)))
        parts += [
            "Calibrated score P(copy) = σ(b + w·x), fitted (scikit-learn logistic regression, "
            "C=10) on the calibration split's top-10 pairs; x = (cosine, normalised cosine "
            f"{sizes['norm']}, verified 0/1, min(inliers, 60)/60 if verified "
            "else 0, area fraction of the reference inside the verified region else 0). Ranks "
            "below N use the no-verification model. Verification is RootSIFT + USAC "
            "(`lookalike.keypoints.verify`, defaults), retried with the mirrored query when the "
            "first candidate fails; ms/query is its p50 (query features + each candidate decoded, "
            "extracted, matched).",
            table(["model", "b", *FEATURES], coef_rows),
            "Verification cost (p50 ms per query): "
            + ", ".join(
                f"{name.split(',')[0]}: {fmt(m.get('ms'))}" for name, m in verify_rows if "ms" in m
            )
            + ".",
        ]
    ver_log = [(name, m) for name, m in verify_rows if name.endswith("logistic")]
    if ver_log:
        best_u = max(m["uAP"] for _, m in ver_log)
        chosen, cm = next((nm, m) for nm, m in ver_log if m["uAP"] >= best_u - 0.01)
        n_rec = int(chosen.split("top ")[1].split(",")[0])
        b0, w = coefficients[f"N={n_rec}"]
        thr, (prec, rec) = sizes["operating"][f"P(copy), verification top {n_rec}"]
        nb0, nw = coefficients["no verification"]
        parts.append(
            "**Recommended from this run** (the smallest verification depth within 0.01 µAP of "
            f"the best): normalisation {sizes['norm']}; verify the top {n_rec} "
            f"(µAP {cm['uAP']:.3f}, recall@1 {cm['recall@1']:.3f}, R@P90 {cm['R@P90']:.3f}, "
            f"p50 {fmt(cm.get('ms'))} ms per query); score P(copy) = σ({b0:+.3f} "
            + " ".join(f"{x:+.3f}·{f}" for x, f in zip(w, FEATURES, strict=True))
            + f"), copies at P(copy) ≥ {fmt(thr)} (90% precision on calibration; test "
            f"precision {prec:.3f}, recall {rec:.3f}); below rank {n_rec}, and without "
            f"verification, P(copy) = σ({nb0:+.3f} {nw[0]:+.3f}·cosine "
            f"{nw[1]:+.3f}·normalised cosine)."
        )
    t_rows = []
    for key, val in timing.items():
        if isinstance(key, tuple):
            model, n, square = key
            t_rows.append(
                [
                    f"{model} {'squashed' if square else 'short side'} {n}",
                    fmt(val["images/s"]),
                    fmt(val["query embed ms"]),
                ]
            )
    parts += [
        "Embedding (2 shared cores; images/s over the whole set in batches; query: one image, "
        "p50):",
        table(["model", "images/s (indexing)", "ms per query embedding (p50)"], t_rows),
        f"Search of {len(data['refs'])} references, exact inner product (FAISS flat), one "
        f"query at a time, top 10: p50 {timing['search ms']:.2f} ms; with the normalisation's "
        f"background search: {timing['search+norm ms']:.2f} ms.",
    ]
    parts += [f"{v}." if not v.endswith(".") else v for v in notes.values()]
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    parts.append(
        f"This run took {seconds / 60:.0f} min, reusing the vectors and verification results "
        "cached by earlier runs under bench-out/copies_hard/ (from scratch, embedding the set "
        "took about 2 h of the shared cores); `uptime` at the end: "
        f"{load}. Timings are noisy: other engineers share the 2 cores."
    )
    body = "\n\n".join(parts)
    (hd.OUT / ("small" if args.small else "full") / "report.md").write_text(body)
    print(body)
    if not args.no_write:
        write_section("copies-hard", body)


if __name__ == "__main__":
    main()
