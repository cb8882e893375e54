"""Does a learned head beat the frozen backbone? Metric learning's standard protocols.

- **Unseen classes** (the metric-learning protocol, Musgrave et al. 2020): train on half of the
  classes, test on the other half, which training never saw.
- **Same classes** (like a catalogue of known identities): train on half of each class's images,
  test on the other half.

The backbone is the default embedder (int8 EfficientNet-Lite0 at 288 px, avg-pooled features
fused with class probabilities, 2280-d); its descriptors are computed once and cached under
``bench-out/train/features``. Test images query each other (the query's own image excluded),
scored by raw cosine for both models (no PCA or query expansion, unlike a collection's search).

Usage: python benchmarks/train.py [--datasets tiny-imagenet-val corel1k] [--losses triplet]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import SHARED, table, write_section

from lookalike.models import load_embedder
from lookalike.train import (
    TrainConfig,
    backbone_features,
    fit_head,
    load_labelled,
    make_head,
    retrieval_metrics,
    split_classes,
    validation_split,
)
from lookalike.train.loop import embed_rows

OUT = Path(__file__).resolve().parents[1] / "bench-out" / "train"


def images_split(labels: np.ndarray, seed: int) -> np.ndarray:
    """Half of each class's images (the test half of the same-classes protocol)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        mask[rows[: len(rows) // 2]] = True
    return mask


def run_protocol(
    x: np.ndarray, labels: np.ndarray, test: np.ndarray, cfg: TrainConfig, same_classes: bool
) -> dict:
    """Train on ``~test`` rows, score frozen and trained on ``test`` rows."""
    import torch

    train_x, train_labels = x[~test], labels[~test]
    if same_classes:  # validation: other images of the training classes, as the test will be
        val = images_split(train_labels, cfg.seed + 1) & (
            np.random.default_rng(cfg.seed).random(len(train_labels)) < 0.4
        )
    else:
        val = validation_split(train_labels, cfg.val_fraction, cfg.seed)
    started = time.perf_counter()
    head, fit = fit_head(train_x, train_labels, cfg, val_mask=val)
    seconds = time.perf_counter() - started
    trained = embed_rows(head, torch.from_numpy(x[test]), "cpu")
    # The head's starting point: learned whitening of the training features, no loss yet.
    start = make_head(x.shape[1], 0, cfg.dim, init=(train_x[~val], train_labels[~val]))
    whitened = embed_rows(start, torch.from_numpy(x[test]), "cpu")
    return {
        "frozen": retrieval_metrics(x[test], labels[test]),
        "whitened": retrieval_metrics(whitened, labels[test]),
        "trained": retrieval_metrics(trained, labels[test]),
        "seconds": seconds,
        "best_epoch": fit.best_epoch,
        "epochs": len(fit.history) - 1,
        "train_images": int((~test).sum()),
        "train_classes": len(np.unique(train_labels)),
        "test_images": int(test.sum()),
        "test_classes": len(np.unique(labels[test])),
        "history": fit.history,
        "head": head,
    }


def draw_map(x: np.ndarray, labels: np.ndarray, test: np.ndarray, head, name: str) -> str:
    import torch

    from lookalike.train.plots import plot_embedding_map

    shown = np.isin(labels, np.unique(labels[test])[:10]) & test
    after = embed_rows(head, torch.from_numpy(x[shown]), "cpu")
    return plot_embedding_map(x[shown], after, labels[shown], OUT / f"{name}-map.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", default=["tiny-imagenet-val", "corel1k"])
    parser.add_argument("--losses", nargs="+", default=["triplet"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    embedder = load_embedder("efficientnet-lite0")
    rows, notes = [], []
    for dataset in args.datasets:
        data = load_labelled(SHARED / dataset)
        started = time.perf_counter()
        x, ok = backbone_features(embedder, data.paths, cache=OUT / "features")
        labels = data.labels[ok]
        x = x[ok]
        print(f"{dataset}: {len(x)} images, features {time.perf_counter() - started:.0f} s")
        for loss in args.losses:
            for protocol in ("unseen classes", "same classes"):
                same = protocol == "same classes"
                test = (
                    images_split(labels, args.seed)
                    if same
                    else split_classes(labels, 0.5, args.seed)
                )
                cfg = TrainConfig(loss=loss, epochs=args.epochs, seed=args.seed)
                r = run_protocol(x, labels, test, cfg, same)
                f, w, t = r["frozen"], r["whitened"], r["trained"]
                print(
                    f"  {loss} {protocol}: mAP@R {f['mAP@R']:.4f} -> {t['mAP@R']:.4f}, "
                    f"Rank-1 {f['Rank-1']:.4f} -> {t['Rank-1']:.4f}, {r['seconds']:.0f} s",
                    flush=True,
                )
                rows.append(
                    [
                        dataset,
                        protocol,
                        loss,
                        f"{r['train_classes']} / {r['train_images']}",
                        f"{r['test_classes']} / {r['test_images']}",
                        f"{f['mAP@R']:.4f}",
                        f"{w['mAP@R']:.4f}",
                        f"{t['mAP@R']:.4f}",
                        f"{100 * (t['mAP@R'] - f['mAP@R']):+.1f}",
                        f"{f['Rank-1']:.4f}",
                        f"{t['Rank-1']:.4f}",
                        f"{f['mAP']:.4f}",
                        f"{t['mAP']:.4f}",
                        f"{r['seconds']:.0f}",
                        f"{r['best_epoch']} / {r['epochs']}",
                    ]
                )
                if dataset == "tiny-imagenet-val" and not same and loss == args.losses[0]:
                    method = draw_map(x, labels, test, r["head"], "tiny-unseen")
                    notes.append(
                        f"2-D map of 10 unseen Tiny ImageNet classes before/after ({method}): "
                        "`bench-out/train/tiny-unseen-map.png`."
                    )
    body = "\n\n".join(
        [
            "## Learned similarity: projection head (`lookalike train --mode head`)",
            "A head on the frozen default descriptor (int8 EfficientNet-Lite0, avg-pool + class "
            "probabilities, 2280-d): a linear map 2280→512 initialised with supervised *learned "
            "whitening* of the training features (Radenović et al. 2018: whiten the within-class "
            "covariance, keep the directions along which class means spread, fill up to 512 with "
            "random directions of the rest of the whitened space; closed form) plus "
            "a residual MLP (→1024, BatchNorm, ReLU, →512, starting at zero), L2-normalised, then "
            "trained with pytorch-metric-learning: TripletMarginLoss (margin 0.1) with a "
            "semi-hard TripletMarginMiner, MPerClassSampler (4 per class, batch 128), AdamW lr "
            "1e-4 with cosine decay, early stopping on validation mAP@R (patience 5; "
            "validation = 20% of the training classes, or for the same-classes protocol other "
            "images of the training classes). Test images query each other (own image "
            "excluded), raw cosine for both (a collection would add PCA and query expansion). "
            "Train time is the head alone on cached features, learned whitening included "
            "(computing the features is a one-off: the 10k Tiny ImageNet images took 162 s). "
            "Timings are noisy: 2 cores shared with other jobs.",
            "**Reading it.** Where best epoch is 0, early stopping kept the head's starting point: "
            "the gain is that of the closed-form learned whitening, and the triplet epochs after "
            "it did not raise validation mAP@R. During development, a randomly initialised "
            "head trained with the same loss fell *below* the frozen backbone on unseen Tiny "
            "ImageNet classes (mAP@R 0.14 vs 0.18 with the descriptor of that day), hence the "
            "whitening start. On Corel-1k's unseen classes (5 training classes) there is "
            "nothing to gain: the frozen descriptor is already at 0.95.",
            table(
                [
                    "dataset",
                    "protocol",
                    "loss",
                    "train classes / images",
                    "test classes / images",
                    "frozen mAP@R",
                    "learned whitening mAP@R",
                    "trained head mAP@R",
                    "Δ mAP@R (points)",
                    "frozen Rank-1",
                    "trained Rank-1",
                    "frozen mAP",
                    "trained mAP",
                    "train s",
                    "best / run epochs",
                ],
                rows,
            ),
            *notes,
        ]
    )
    write_section("train", body)


if __name__ == "__main__":
    main()
