"""Copy detection on a DISC21-style set: our SSCD models and PDQ beside pHash and immaculate.

References: a random half of Corel-1k (500) plus Tiny ImageNet distractors.
Queries: AugLy edits (1-3 chained: emoji/text overlays, crops down to 30% area, rotations,
flips, colour jitter, JPEG 10-50, blur, pixelisation, padding, scaling, greyscale) of
references, and as many edits of the other half of Corel (not indexed: negatives, which look
like the references' classes). Metrics (``evaluate.metrics``): µAP over every query's top-10
predictions ranked globally, recall@1 of positive queries, recall at 90% precision and its
threshold, images/s. immaculate (Python 3.12 venv, its CLI groups one folder) is scored on the
query-reference pairs it puts in one group: a single operating point, no ranking.

    .venv/bin/python benchmarks/copies.py [--queries 250] [--distractors 1000]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import SHARED, table, write_section

from lookalike.evaluate import metrics
from lookalike.images import decode

IMMACULATE = Path("/tmp/immvenv/bin/immaculate")


def transforms(rng: random.Random):
    import augly.image as imaugs

    def crop(im):
        area = rng.uniform(0.3, 0.8)
        w, h = im.size
        cw, ch = int(w * area**0.5), int(h * area**0.5)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        return im.crop((x, y, x + cw, y + ch))

    return {
        "emoji": lambda im: imaugs.overlay_emoji(
            im,
            opacity=1.0,
            emoji_size=rng.uniform(0.2, 0.4),
            x_pos=rng.uniform(0, 0.6),
            y_pos=rng.uniform(0, 0.6),
        ),
        "text": lambda im: imaugs.overlay_text(
            im,
            font_size=rng.uniform(0.1, 0.2),
            opacity=1.0,
            x_pos=rng.uniform(0, 0.4),
            y_pos=rng.uniform(0, 0.7),
            color=(rng.randint(0, 255), 255, rng.randint(0, 255)),
        ),
        "crop": crop,
        "rotate": lambda im: imaugs.rotate(im, degrees=rng.choice([-30, -15, 10, 20, 90])),
        "hflip": imaugs.hflip,
        "jitter": lambda im: imaugs.color_jitter(
            im,
            brightness_factor=rng.uniform(0.6, 1.4),
            contrast_factor=rng.uniform(0.6, 1.4),
            saturation_factor=rng.uniform(0.3, 1.7),
        ),
        "jpeg": lambda im: imaugs.encoding_quality(im, quality=rng.randint(10, 50)),
        "blur": lambda im: imaugs.blur(im, radius=rng.uniform(1, 3)),
        "pixel": lambda im: imaugs.pixelization(im, ratio=rng.uniform(0.3, 0.6)),
        "pad": lambda im: imaugs.pad(
            im,
            w_factor=rng.uniform(0.1, 0.3),
            h_factor=rng.uniform(0.1, 0.3),
            color=(rng.randint(0, 255),) * 3,
        ),
        "scale": lambda im: imaugs.scale(im, factor=rng.uniform(0.4, 1.5)),
        "grey": lambda im: imaugs.grayscale(im),
    }


def build_set(root: Path, n_queries: int, n_distractors: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    corel = sorted((SHARED / "corel1k").glob("*/*.jpg"))
    rng.shuffle(corel)
    indexed, held_out = corel[:500], corel[500:]
    tiny = sorted((SHARED / "tiny-imagenet-val").glob("*/*.JPEG"))
    distractors = rng.sample(tiny, min(n_distractors, len(tiny)))
    refs_dir, queries_dir = root / "refs", root / "queries"
    refs_dir.mkdir(parents=True)
    queries_dir.mkdir()
    refs = []
    for i, path in enumerate(indexed + distractors):
        target = refs_dir / f"r{i:05d}{path.suffix.lower()}"
        shutil.copy(path, target)
        refs.append(target)
    edits = transforms(rng)
    queries, truth, chains = [], [], []
    sources = [(rng_i, True) for rng_i in rng.sample(range(500), n_queries)]
    sources += [(i, False) for i in rng.sample(range(len(held_out)), n_queries)]
    for qi, (i, positive) in enumerate(sources):
        image = decode(indexed[i] if positive else held_out[i])
        names = rng.sample(sorted(edits), rng.randint(1, 3))
        for name in names:
            image = edits[name](image).convert("RGB")
        target = queries_dir / f"q{qi:05d}.jpg"
        image.save(target, quality=90)
        queries.append(target)
        truth.append(i if positive else -1)
        chains.append("+".join(names))
    return {"refs": refs, "queries": queries, "truth": np.array(truth), "chains": chains}


def score_metrics(scores: np.ndarray, truth: np.ndarray, seconds: float, n_images: int) -> dict:
    is_match = np.zeros_like(scores, bool)
    pos = truth >= 0
    is_match[np.flatnonzero(pos), truth[pos]] = True
    flat_s, flat_m, n_pos = metrics.flatten_predictions(scores, is_match, k=10)
    curve = metrics.precision_recall_curve(flat_s, flat_m, n_pos)
    recall90, threshold = metrics.recall_at_precision(curve, 0.9)
    top1 = scores[pos].argmax(axis=1) == truth[pos]
    return {
        "uAP": metrics.micro_average_precision(flat_s, flat_m, n_pos),
        "recall@1": float(top1.mean()),
        "recall@P90": recall90,
        "threshold@P90": threshold,
        "images/s": n_images / seconds,
        "seconds": seconds,
    }


def run_sscd(model: str, data: dict) -> dict:
    from lookalike.models import load_embedder

    embedder = load_embedder(model)
    embedder.embed_images([Image.new("RGB", (64, 64))])  # load the graph outside the timing
    start = time.perf_counter()

    def embed(paths):
        out = []
        for i in range(0, len(paths), 64):
            images = [decode(p, min_side=embedder.input_size) for p in paths[i : i + 64]]
            out.append(embedder.embed_images(images))
        return np.concatenate(out)

    refs, queries = embed(data["refs"]), embed(data["queries"])
    seconds = time.perf_counter() - start
    out = score_metrics(queries @ refs.T, data["truth"], seconds, len(refs) + len(queries))
    out["per_chain"] = per_chain(queries @ refs.T, data)
    return out


def per_chain(scores: np.ndarray, data: dict) -> dict:
    """recall@1 by transform (a positive query counts for each transform in its chain)."""
    hits: dict[str, list[bool]] = {}
    for s, t, chain in zip(scores, data["truth"], data["chains"], strict=True):
        if t >= 0:
            for name in chain.split("+"):
                hits.setdefault(name, []).append(bool(s.argmax() == t))
    return {k: float(np.mean(v)) for k, v in sorted(hits.items())}


def run_pdq(data: dict) -> dict:
    from lookalike.copies import phash

    start = time.perf_counter()
    refs = [phash.pdq(decode(p)).hash for p in data["refs"]]
    queries = [phash.pdq_dihedral(decode(p)) for p in data["queries"]]
    dist = np.stack([phash.dihedral_distance([v.hash for v in q], refs) for q in queries])
    seconds = time.perf_counter() - start
    return score_metrics(1 - dist / 256, data["truth"], seconds, len(refs) + len(queries))


def run_imagehash(data: dict) -> dict:
    import imagehash

    start = time.perf_counter()
    refs = np.stack([imagehash.phash(decode(p)).hash.reshape(-1) for p in data["refs"]])
    queries = np.stack([imagehash.phash(decode(p)).hash.reshape(-1) for p in data["queries"]])
    dist = (queries[:, None, :] != refs[None, :, :]).sum(axis=2)
    seconds = time.perf_counter() - start
    return score_metrics(1 - dist / 64, data["truth"], seconds, len(refs) + len(queries))


def run_immaculate(method: str, root: Path, data: dict) -> dict:
    """Groups of one folder holding refs/ and queries/; a query-ref pair in a group is a
    prediction (no scores, so one operating point)."""
    if not IMMACULATE.exists():
        return {"error": f"{IMMACULATE} missing (pyenv 3.12 venv with `pip install immaculate`)"}
    start = time.perf_counter()
    done = subprocess.run(
        [str(IMMACULATE), "--json", "--method", method, str(root)],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][-200:]}
    groups = json.loads(done.stdout)
    ref_index = {str(p.resolve()): i for i, p in enumerate(data["refs"])}
    query_index = {str(p.resolve()): i for i, p in enumerate(data["queries"])}
    predicted = set()
    for group in groups.get("exact", []) + groups.get("near", []):
        paths = [str(Path(p).resolve()) for p in group]
        for q in (query_index[p] for p in paths if p in query_index):
            predicted.update((q, ref_index[p]) for p in paths if p in ref_index)
    truth = data["truth"]
    correct = sum(1 for q, r in predicted if truth[q] == r)
    positives = int((truth >= 0).sum())
    return {
        "precision": correct / len(predicted) if predicted else float("nan"),
        "recall": correct / positives,
        "images/s": (len(data["refs"]) + len(data["queries"])) / seconds,
        "seconds": seconds,
    }


def locate_check() -> str:
    from lookalike.keypoints.verify import verify

    pairs = SHARED / "opencv-pairs"
    if not pairs.exists():
        return "opencv-pairs absent"
    result = verify(decode(pairs / "box.png"), decode(pairs / "box_in_scene.png"))
    return (
        f"box.png in box_in_scene.png: verified={result.verified}, inliers={result.inliers}, "
        f"region={result.region}"
    )


def fmt(x: object) -> str:
    if x is None:
        return "—"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=250, help="positive (and negative) queries")
    parser.add_argument("--distractors", type=int, default=1000)
    parser.add_argument("--no-peers", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="copies-bench-"))
    try:
        data = build_set(root, args.queries, args.distractors)
        n_refs, n_q = len(data["refs"]), len(data["queries"])
        print(f"{n_refs} references, {n_q} queries in {root}", flush=True)
        ours = {}
        for model in ("sscd-mobile", "sscd"):
            ours[model] = run_sscd(model, data)
            print(model, ours[model], flush=True)
        ours["PDQ (lookalike.copies.phash, dihedral)"] = run_pdq(data)
        print("pdq", ours["PDQ (lookalike.copies.phash, dihedral)"], flush=True)
        peers = {}
        if not args.no_peers:
            peers["pHash (imagehash)"] = run_imagehash(data)
            print("imagehash", peers["pHash (imagehash)"], flush=True)
            for method in ("pdq", "sscd", "sscd_distilled"):
                peers[f"immaculate --method {method}"] = run_immaculate(method, root, data)
                print(method, peers[f"immaculate --method {method}"], flush=True)
        rows = [
            [
                name,
                fmt(m["uAP"]),
                fmt(m["recall@1"]),
                fmt(m["recall@P90"]),
                fmt(m["threshold@P90"]),
                f"{m['images/s']:.1f}",
                f"{m['seconds']:.0f}",
            ]
            for name, m in {**ours, **{k: v for k, v in peers.items() if "uAP" in v}}.items()
        ]
        immaculate_rows = [
            [
                name,
                fmt(m.get("precision")),
                fmt(m.get("recall")),
                f"{m['images/s']:.1f}" if "images/s" in m else "—",
                m.get("error", ""),
            ]
            for name, m in peers.items()
            if "uAP" not in m
        ]
        chains = sorted(ours["sscd"]["per_chain"])
        chain_rows = [
            [model] + [fmt(ours[model]["per_chain"][c]) for c in chains]
            for model in ("sscd-mobile", "sscd")
        ]
        body = "\n\n".join(
            [
                "## Copy detection (DISC21-style, AugLy edits)",
                f"{n_refs} references (500 Corel-1k + {n_refs - 500} Tiny ImageNet distractors), "
                f"{n_q} queries: {n_q // 2} edited references and {n_q // 2} edited Corel images "
                "that are not indexed (negatives). Edits: 1-3 chained AugLy transforms (emoji, "
                "text, crop to 30-80% area, rotation, flip, colour jitter, JPEG 10-50, blur, "
                "pixelisation, padding, scaling, greyscale). µAP over every query's top 10 "
                "ranked globally (ISC2021); images/s counts decoding + descriptor for every "
                "reference and query (2 shared, busy cores: noisy).",
                table(
                    [
                        "method",
                        "µAP",
                        "recall@1",
                        "recall @ P90",
                        "threshold @ P90",
                        "images/s",
                        "wall s",
                    ],
                    rows,
                ),
                "immaculate (its CLI groups one folder holding references and queries; a "
                "query-reference pair in one group is a prediction, so one operating point):",
                table(["peer", "precision", "recall", "images/s", "note"], immaculate_rows)
                if immaculate_rows
                else "(peers not run)",
                "recall@1 by transform (a query counts once for each transform in its chain):",
                table(["model", *chains], chain_rows),
                f"Verification (RootSIFT + USAC, `lookalike.keypoints.verify`): {locate_check()}.",
            ]
        )
        write_section("copies", body)
        print(body)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
