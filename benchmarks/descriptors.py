"""Which global descriptor should be the default? Measure, don't assume.

For Corel-1k, UKBench (sample) and Tiny ImageNet val, the network's outputs are computed once per
input size and cached (``bench-out/features``); then each descriptor variant is scored with the
same protocol (every image queries all others, itself excluded): mAP, P@10, mAP@R, UKBench N-S.

Variants: average vs GeM pooling; single vs multi-scale; centre crop vs the whole image;
PCA-whitening learned on the collection itself; the classifier's probabilities alone or fused
with the pooled feature; α-query expansion. Costs: images/s of indexing implied by the number of
forward passes, and query-side cost of re-ranking.

Usage: python benchmarks/descriptors.py [--datasets corel1k ukbench-sample tiny-imagenet-val]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import SHARED, table, write_section

from lookalike.datasets import load_eval_set
from lookalike.descriptors import (
    Whitening,
    fuse,
    gem,
    hellinger_probs,
    query_expansion,
)
from lookalike.images import decode
from lookalike.metrics import (
    mean_average_precision,
    mean_average_precision_at_r,
    precision_at_k,
    rank_relevance,
    ukbench_score,
)
from lookalike.models.efficientnet import EfficientNetLite, preprocess_full
from lookalike.models.efficientnet import preprocess as preprocess_crop


def features(
    dataset: str, paths: list[Path], size: int, mode: str, cache: Path, model: str
) -> dict:
    """avg, gem3 and logits for every image at one input size, cached as .npz."""
    target = cache / f"{dataset}-{model}-{size}-{mode}.npz"
    if target.exists():
        return dict(np.load(target))
    embedder = EfficientNetLite(model)
    session = embedder.session
    avg, gem3, logits = [], [], []
    start = time.perf_counter()
    batch = 32
    for i in range(0, len(paths), batch):
        images = [decode(p, min_side=size) for p in paths[i : i + batch]]
        groups: dict[tuple[int, int], list[int]] = {}
        if mode == "crop":
            tensors = [(list(range(len(images))), preprocess_crop(images, size))]
        elif mode == "squash":  # whole image resized to a square, aspect ratio ignored
            squares = [im.resize((size, size), Image.Resampling.BILINEAR) for im in images]
            tensors = [(list(range(len(images))), preprocess_crop(squares, size))]
        else:  # whole image, shorter side = size; batch by shape
            for j, im in enumerate(images):
                groups.setdefault(im.size, []).append(j)
            tensors = [
                (idx, preprocess_full([images[j] for j in idx], size)) for idx in groups.values()
            ]
        out_avg = np.zeros((len(images), 1280), np.float32)
        out_gem = np.zeros((len(images), 1280), np.float32)
        out_log = np.zeros((len(images), 1000), np.float32)
        for idx, x in tensors:
            fmap, lg = session.run(None, {"image": x})
            out_avg[idx] = gem(fmap, 1.0)
            out_gem[idx] = gem(fmap, 3.0)
            out_log[idx] = lg
        avg.append(out_avg)
        gem3.append(out_gem)
        logits.append(out_log)
    seconds = time.perf_counter() - start
    data = {
        "avg": np.concatenate(avg),
        "gem3": np.concatenate(gem3),
        "logits": np.concatenate(logits),
        "seconds": np.array(seconds),
    }
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(target, **data)
    print(f"  {dataset} {size} {mode}: {len(paths)} images in {seconds:.0f}s", flush=True)
    return data


def l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def score(vectors: np.ndarray, labels: np.ndarray, ukbench: bool, qe: int = 0) -> dict[str, float]:
    sims = vectors @ vectors.T
    if qe:
        masked = sims.copy()
        np.fill_diagonal(masked, -np.inf)
        sims = query_expansion(vectors, vectors, masked, top=qe) @ vectors.T
    rel, n = rank_relevance(sims, labels, labels, exclude=np.eye(len(labels), dtype=bool))
    out = {
        "mAP": mean_average_precision(rel, n),
        "P@10": precision_at_k(rel, 10),
        "mAP@R": mean_average_precision_at_r(rel, n),
    }
    if ukbench:
        out["N-S"] = ukbench_score(rel)
    return out


def variants(feats: Callable[[int, str], dict]) -> dict[str, tuple[np.ndarray, int, int]]:
    """name -> (descriptors, forward passes per image, query expansion top-k)."""
    f224 = feats(224, "crop")
    out: dict[str, tuple[np.ndarray, int, int]] = {
        "avg 224 crop (baseline)": (l2(f224["avg"]), 1, 0),
        "GeM p=3 224 crop": (l2(f224["gem3"]), 1, 0),
        "probabilities (Hellinger)": (hellinger_probs(f224["logits"]), 1, 0),
    }
    full = feats(224, "full")
    out["avg 224 whole image"] = (l2(full["avg"]), 1, 0)
    f320 = feats(320, "crop")
    out["avg 320 crop"] = (l2(f320["avg"]), 1, 0)
    f160 = feats(160, "crop")
    out["avg multi-scale 160+224+320"] = (
        l2(l2(f160["avg"]) + l2(f224["avg"]) + l2(f320["avg"])),
        3,
        0,
    )
    out["avg 224+320"] = (l2(l2(f224["avg"]) + l2(f320["avg"])), 2, 0)
    base = l2(f224["avg"])
    for dim in (256, 512):
        w = Whitening.fit(base, dim=dim)
        out[f"avg 224 + PCA-whitening {dim}"] = (w.apply(base), 1, 0)
    for weight in (0.5, 1.0):
        out[f"fused avg+probs w={weight}"] = (fuse(base, f224["logits"], weight), 1, 0)
    fused = fuse(base, f224["logits"], 1.0)
    w = Whitening.fit(fused, dim=512)
    out["fused w=1 + whitening 512"] = (w.apply(fused), 1, 0)
    out["fused w=1 + α-QE top-3"] = (fused, 1, 3)
    out["avg 224 + α-QE top-3"] = (base, 1, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--datasets", nargs="+", default=["corel1k", "ukbench-sample", "tiny-imagenet-val"]
    )
    parser.add_argument("--cache", type=Path, default=Path("bench-out/features"))
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    results: dict[str, dict[str, dict[str, float]]] = {}
    passes: dict[str, int] = {}
    speed: dict[str, float] = {}
    for dataset in args.datasets:
        root = SHARED / dataset
        if not root.exists():
            print(f"skip {dataset}: absent")
            continue
        evalset = load_eval_set(root)
        paths = [Path(p) for p in evalset.paths]
        labels = np.asarray(evalset.labels)

        def feats(size: int, mode: str, _d=dataset, _p=paths) -> dict:
            return features(_d, _p, size, mode, args.cache, args.model)

        speed[dataset] = len(paths) / float(feats(224, "crop")["seconds"])
        for name, (vectors, n_pass, qe) in variants(feats).items():
            results.setdefault(name, {})[dataset] = score(
                vectors, labels, dataset.startswith("ukbench"), qe
            )
            passes[name] = n_pass
            print(dataset, name, results[name][dataset], flush=True)

    header = ["descriptor", "forward passes"]
    for dataset in speed:
        header += [f"{dataset} mAP", f"{dataset} P@10"]
        if dataset.startswith("ukbench"):
            header += ["N-S"]
        else:
            header += [f"{dataset} mAP@R"]
    rows = []
    for name, by_dataset in results.items():
        row: list[object] = [name, passes[name]]
        for dataset in speed:
            r = by_dataset.get(dataset, {})
            row += [f"{r.get('mAP', float('nan')):.3f}", f"{r.get('P@10', float('nan')):.3f}"]
            row += [f"{r['N-S']:.2f}" if "N-S" in r else f"{r.get('mAP@R', float('nan')):.3f}"]
        rows.append(row)
    speeds = ", ".join(f"{d}: {s:.0f} images/s" for d, s in speed.items())
    body = "\n\n".join(
        [
            f"## Descriptor variants ({args.model})",
            "Every image queries all the others, itself excluded. Forward passes per image scale "
            f"the indexing cost; one pass at 224 px ran at {speeds} (network + decoding, "
            "single process, this machine).",
            table(header, rows),
        ]
    )
    if not args.no_write:
        write_section("descriptors", body)
    print(body)


if __name__ == "__main__":
    main()
