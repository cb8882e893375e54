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

from lookalike.descriptors import (
    Whitening,
    fuse,
    gem,
    hellinger_probs,
    query_expansion,
)
from lookalike.evaluate.datasets import load_eval_set
from lookalike.evaluate.metrics import (
    mean_average_precision,
    mean_average_precision_at_r,
    precision_at_k,
    rank_relevance,
    ukbench_score,
)
from lookalike.evaluate.run import evaluate
from lookalike.images import decode
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


class MissingFeaturesError(Exception):
    """A variant needs features that are not cached for this data set (see --full)."""


def pca(x: np.ndarray, dim: int = 256) -> np.ndarray:
    return Whitening.fit(x, dim=dim, power=0.0).apply(x)


# name -> (relative indexing cost: sum of (side/224)^2 over forward passes, QE top, builder)
VARIANTS: dict[str, tuple[float, int, Callable[[Callable], np.ndarray]]] = {
    "avg 224 crop (baseline)": (1.0, 0, lambda f: l2(f(224, "crop")["avg"])),
    "GeM p=3, 224": (1.0, 0, lambda f: l2(f(224, "crop")["gem3"])),
    "class probabilities alone (Hellinger), 224": (
        1.0,
        0,
        lambda f: hellinger_probs(f(224, "crop")["logits"]),
    ),
    "avg 224, whole image (no crop)": (1.0, 0, lambda f: l2(f(224, "full")["avg"])),
    "avg 288": (1.65, 0, lambda f: l2(f(288, "crop")["avg"])),
    "avg 320": (2.04, 0, lambda f: l2(f(320, "crop")["avg"])),
    "avg multi-scale 224+320": (
        3.04,
        0,
        lambda f: l2(l2(f(224, "crop")["avg"]) + l2(f(320, "crop")["avg"])),
    ),
    "avg 224 + PCA-whitening 256 (full)": (
        1.0,
        0,
        lambda f: Whitening.fit(l2(f(224, "crop")["avg"]), dim=256, power=0.5).apply(
            l2(f(224, "crop")["avg"])
        ),
    ),
    "avg 224 + α-QE 3": (1.0, 3, lambda f: l2(f(224, "crop")["avg"])),
    "fused avg+probs w=0.5, 224": (
        1.0,
        0,
        lambda f: fuse(f(224, "crop")["avg"], f(224, "crop")["logits"], 0.5),
    ),
    "fused w=0.5, 288": (
        1.65,
        0,
        lambda f: fuse(f(288, "crop")["avg"], f(288, "crop")["logits"], 0.5),
    ),
    "fused w=0.5, 288 + PCA 256": (
        1.65,
        0,
        lambda f: pca(fuse(f(288, "crop")["avg"], f(288, "crop")["logits"], 0.5)),
    ),
    "fused w=0.5, 288 + PCA 256 + α-QE 3 (fp32)": (
        1.65,
        3,
        lambda f: pca(fuse(f(288, "crop")["avg"], f(288, "crop")["logits"], 0.5)),
    ),
    "fused w=0.5, 320 + PCA 256 + α-QE 3 (fp32)": (
        2.04,
        3,
        lambda f: pca(fuse(f(320, "crop")["avg"], f(320, "crop")["logits"], 0.5)),
    ),
}
DEFAULT_ROW = "**default: int8, 288, fused w=0.5 + PCA 256 + α-QE 3** (`lookalike eval`)"


def default_row(root: Path) -> tuple[dict[str, float], float]:
    """The shipped default, measured end to end by `lookalike eval` (its cached collection)."""
    result = evaluate(root)
    metrics = dict(result.metrics)
    speed = result.indexing.get("images_per_second") or float("nan")
    return metrics, float(speed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--datasets", nargs="+", default=["corel1k", "ukbench-sample", "tiny-imagenet-val"]
    )
    parser.add_argument("--cache", type=Path, default=Path("bench-out/features"))
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument(
        "--full",
        action="store_true",
        help="compute every input size for every data set (Tiny ImageNet: 224 and 320 only "
        "without it, to keep the run short)",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    results: dict[str, dict[str, dict[str, float]]] = {}
    present = []
    default_speed = {}
    for dataset in args.datasets:
        root = SHARED / dataset
        if not root.exists():
            print(f"skip {dataset}: absent")
            continue
        present.append(dataset)
        evalset = load_eval_set(root)
        paths = [Path(p) for p in evalset.paths]
        labels = np.asarray(evalset.labels)
        limited = dataset.startswith("tiny") and not args.full

        def feats(size: int, mode: str, _d=dataset, _p=paths, _lim=limited) -> dict:
            if _lim and (size, mode) not in {(224, "crop"), (320, "crop")}:
                raise MissingFeaturesError
            return features(_d, _p, size, mode, args.cache, args.model)

        for name, (_, qe, build) in VARIANTS.items():
            try:
                vectors = build(feats)
            except MissingFeaturesError:
                continue
            uk = dataset.startswith("ukbench")
            results.setdefault(name, {})[dataset] = score(vectors, labels, uk, qe)
            print(dataset, name, results[name][dataset], flush=True)
        metrics, default_speed[dataset] = default_row(root)
        results.setdefault(DEFAULT_ROW, {})[dataset] = metrics
        print(dataset, "default", metrics, flush=True)

    header = ["descriptor", "indexing cost"]
    for dataset in present:
        header += [f"{dataset} mAP", "P@10", "N-S" if dataset.startswith("ukbench") else "mAP@R"]
    rows = []
    for name, by_dataset in results.items():
        cost = f"{VARIANTS[name][0]:.2f}x" if name in VARIANTS else "1.65x (int8: ~1x)"
        row: list[object] = [name, cost]
        for dataset in present:
            r = by_dataset.get(dataset)
            if r is None:
                row += ["—", "—", "—"]
                continue
            third = r["N-S"] if dataset.startswith("ukbench") else r["mAP@R"]
            row += [f"{r['mAP']:.3f}", f"{r['P@10']:.3f}", f"{third:.3f}"]
        rows.append(row)
    speeds = ", ".join(f"{d}: {v:.0f} images/s" for d, v in default_speed.items())
    body = "\n\n".join(
        [
            f"## Descriptor variants ({args.model})",
            "Every image queries all the others, itself excluded (UKBench: N-S, 4.0 is "
            "perfect). Rows above the last use fp32 network outputs cached per input size; "
            "PCA and α-QE are learned/applied on the data set itself, as a collection does. "
            "Indexing cost is the network's work per image relative to one pass at 224 px. "
            "The last row is the shipped default measured end to end by `lookalike eval` "
            f"(indexing speed in that run: {speeds}; the machine was shared, see "
            "the indexing section for clean timings). — = not computed (Tiny ImageNet is "
            "cached at 224 and 320 px only; `--full` computes the rest).",
            table(header, rows),
        ]
    )
    if not args.no_write:
        write_section("descriptors", body)
    print(body)


if __name__ == "__main__":
    main()
