"""Does training beat the default search? ``lookalike train`` on three shared data sets.

Protocols (metric learning's, with the test searched as a collection searches):

- **Same classes** (a catalogue of known identities): train on half of each class's images, test
  on the other half (validation: other images of the training classes, ``--goal seen``).
- **Unseen classes** (Musgrave et al. 2020): train on half of the classes, test on the others
  (validation: held-out training classes, ``--goal unseen``).
- **gopro-walk** as re-identification: the clip's 315 frames, placed along the route with
  ``gps.csv``; a *place* (identity) is one metre of the route. Gallery: even frames; queries:
  odd frames after a realistic perturbation (exposure, blur, crop, rotation, JPEG). Same places:
  train on every fourth frame, test on the others; unseen places: train on the first half of the
  route, test on the second (one metre apart).

Rows: the **default search** (the base descriptor, PCA to 256 learned on the gallery once it
holds 1000 images, alpha-query expansion over 3 results), the **whitening only** start (the
closed form the head starts from), ``--mode head``, ``--mode blocks`` (the default), and the full
``--mode finetune`` (not run without a GPU). Every trained model is searched the same way.

Usage: python benchmarks/train.py [--datasets corel1k tiny-imagenet-val gopro-walk]
           [--modes blocks head] [--epochs 12]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import SHARED, table, write_section

from lookalike.train import TrainConfig, compare, load_labelled, split_classes, train
from lookalike.train.data import Labelled

OUT = Path(__file__).resolve().parents[1] / "bench-out" / "train"
PLACE_M = 1.0  # gopro-walk: metres of route per identity
SEED = 8


def images_split(labels: np.ndarray, seed: int) -> np.ndarray:
    """Half of each class's images (the test half of the same-classes protocol)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        mask[rows[: len(rows) // 2]] = True
    return mask


def perturb(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A second pass along the route: exposure, blur, 85-95% crop, +-3 degrees, JPEG 50-85."""
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.85, 1.15))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    w, h = image.size
    keep = rng.uniform(0.85, 0.95)
    cw, ch = int(w * keep), int(h * keep)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    image = image.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BILINEAR)
    image = image.rotate(rng.uniform(-3, 3), resample=Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(50, 86)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def gopro_sets(root: Path) -> dict[str, tuple[Path, Path]]:
    """The gopro-walk frames written as train (a folder per place) and test (query/ + gallery/,
    ``<place>_<frame>.jpg``) sets, for both protocols; ``{protocol: (train, test)}``."""
    from lookalike.geo.frames import iter_frames
    from lookalike.geo.tracks import read_csv

    data = SHARED / "gopro-walk"
    if (root / "done").exists():
        return _gopro_layout(root)
    shutil.rmtree(root, ignore_errors=True)
    track = read_csv(data / "gps.csv")
    frames = list(iter_frames(data / "max-heromode.mp4"))
    times = np.array([t for t, _ in frames])
    start, end = track.span
    metres = track.distance_along(np.clip(times, start, end))
    place = (metres // PLACE_M).astype(int)
    half = metres.max() / 2
    rng = np.random.default_rng(SEED)
    for n, (_, frame) in enumerate(frames):
        name = f"p{place[n]:02d}_f{n:03d}.jpg"
        image = perturb(frame, rng) if n % 2 else frame
        role = "query" if n % 2 else "gallery"
        targets = []
        # same places: every fourth frame trains; the rest is the test
        targets.append(root / "same" / ("train" if n % 4 == 0 else "test") / role)
        if metres[n] < half - PLACE_M / 2 and n % 2 == 0:
            targets.append(root / "unseen" / "train" / role)
        elif metres[n] >= half + PLACE_M / 2:
            targets.append(root / "unseen" / "test" / role)
        for folder in targets:
            if folder.parent.name == "train":  # training sets: a folder per place
                folder = folder.parent / f"p{place[n]:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / name, quality=92)
    (root / "done").write_text("ok\n")
    return _gopro_layout(root)


def _gopro_layout(root: Path) -> dict[str, tuple[Path, Path]]:
    return {p: (root / p / "train", root / p / "test") for p in ("same", "unseen")}


def protocols(dataset: str, seed: int) -> list[tuple[str, Labelled, Labelled]]:
    """``(protocol, train, test)`` for a data set."""
    if dataset == "gopro-walk":
        sets = gopro_sets(OUT / "gopro")
        return [
            ("same places", load_labelled(sets["same"][0]), load_labelled(sets["same"][1])),
            ("unseen places", load_labelled(sets["unseen"][0]), load_labelled(sets["unseen"][1])),
        ]
    data = load_labelled(SHARED / dataset)
    same = images_split(data.labels, seed)
    unseen = split_classes(data.labels, 0.5, seed)
    return [
        ("same classes", data.take(~same), data.take(same)),
        ("unseen classes", data.take(~unseen), data.take(unseen)),
    ]


def _f(value: float) -> str:
    return (
        "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
    )


def _d(after: float, before: float) -> str:
    return f"{100 * (after - before):+.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--datasets", nargs="+", default=["corel1k", "tiny-imagenet-val", "gopro-walk"]
    )
    parser.add_argument("--modes", nargs="+", default=["blocks", "head"])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print, leave the docs alone")
    parser.add_argument(
        "--render", action="store_true", help="rewrite the section from the last results.json"
    )
    args = parser.parse_args()
    if args.render:
        saved = json.loads((OUT / "results.json").read_text())
        sys.argv = saved.get("argv", sys.argv)  # the command that measured the figures
        write_section("train", _section(saved["rows"], saved["goals"], args, saved["total"]))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    cache = OUT / "features"
    rows, goals, started_all = [], [], time.perf_counter()
    for dataset in args.datasets:
        for protocol, train_data, test_data in protocols(dataset, args.seed):
            goal = "seen" if protocol.startswith("same") else "unseen"
            split = (
                f"{len(np.unique(train_data.labels))} / {len(train_data)} → "
                f"{len(np.unique(test_data.labels))} / {len(test_data)}"
            )
            reference = None
            for mode in args.modes:
                cfg = TrainConfig(mode=mode, goal=goal, epochs=args.epochs, seed=args.seed)
                name = f"{dataset}-{protocol.replace(' ', '-')}-{mode}"
                started = time.perf_counter()
                result = train(
                    train_data, OUT / "models" / name, config=cfg, cache=cache,
                    log=lambda line, n=name: print(f"  [{n}] {line}", flush=True),
                )  # fmt: skip
                seconds = time.perf_counter() - started
                c = compare(result.model_dir, test_data, cache=cache)
                if reference is None:  # the same for every mode: the base descriptor
                    reference = c
                    b, w = c.before, c.whitening
                    rows.append(
                        [dataset, protocol, split, "default search", _f(b["mAP@R"]), "",
                         _f(b["Rank-1"]), _f(b["mAP"]), "—", f"{b['ms_per_image']:.1f}", "—", ""]
                    )  # fmt: skip
                    rows.append(
                        [dataset, protocol, split, f"whitening only ({result.start['name']})",
                         _f(w["mAP@R"]), _d(w["mAP@R"], b["mAP@R"]), _f(w["Rank-1"]),
                         _f(w["mAP"]), "—", f"{w['ms_per_image']:.1f}", "0 (closed form)", ""]
                    )  # fmt: skip
                b, a = reference.before, c.after
                epochs = f"{result.best_epoch} / {len(result.history) - 1}"
                rows.append(
                    [dataset, protocol, split, mode, _f(a["mAP@R"]), _d(a["mAP@R"], b["mAP@R"]),
                     _f(a["Rank-1"]), _f(a["mAP"]), f"{seconds:.0f} ({result.feature_seconds:.0f})",
                     f"{a['ms_per_image']:.1f}", epochs, result.verdict]
                )  # fmt: skip
                goals.append(
                    (dataset, protocol, mode, goal, b, a, result, seconds, len(train_data))
                )
                print(
                    f"{dataset} {protocol} {mode}: mAP@R {b['mAP@R']:.4f} -> {a['mAP@R']:.4f}, "
                    f"Rank-1 {b['Rank-1']:.4f} -> {a['Rank-1']:.4f}, best epoch "
                    f"{result.best_epoch}, {result.verdict}, {seconds:.0f} s",
                    flush=True,
                )
            rows.append(
                [dataset, protocol, split, "finetune (whole network on images)", "not run: no GPU",
                 "", "", "", "", "", "", ""]
            )  # fmt: skip
    total = time.perf_counter() - started_all
    (OUT / "results.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "goals": [_goal_json(g) for g in goals],
                "total": total,
                "argv": sys.argv,
            }
        )
    )
    body = _section(rows, goals, args, total)
    print(body)
    if not args.no_write:
        write_section("train", body)


READING = """**Reading it.**

- *Where the gain comes from.* On Tiny ImageNet the closed-form start (learned whitening of the
  training descriptors, beside the descriptor itself as validation chose) already adds 10-11
  points of mAP@R. Training the last block adds 6.2 more on the same classes (0.332 → 0.394,
  Rank-1 0.574 → 0.624, best epoch 12 of 12: it was still learning) and keeps the start's gain on
  unseen classes (+0.3 point, best epoch 1). The head alone, on a frozen descriptor, adds
  nothing on Tiny ImageNet (verdict `whitening-only`: no epoch beat the start by the 0.001 that
  early stopping asks; the start is what is written) and 0.7 point on Corel.
- *Corel-1k, same classes*: +6.0 points is 60% of the way to a perfect 1.0; +0.10 over a default
  of 0.90 would need better than perfect retrieval. *Unseen classes*: 5 training classes, and a
  validation of 2 held-out classes where the default already scores 0.9998, so nothing can show a
  gain: the start chosen is the descriptor itself and the model stays within 0.1 point of the
  default (the last block in float32 instead of int8).
- *gopro-walk*: 69-79 training frames and validation sets of 20-28 frames (2 per place) cannot
  resolve a gain, so no epoch is kept. On the same places, the whitening start chosen on those
  28 frames raises mAP@R by 1.4 points but lowers Rank-1 by 3 (a small validation set picks a
  start that does not generalise); on unseen places the start is the descriptor, as the default.
- *Verdicts*: no run failed (no loss stuck at zero; none below the default search on its
  validation). Mining works: about 10-40 thousand multi-similarity pairs per batch against the
  memory on Tiny ImageNet, up to a hundred on Corel's easy classes (the `mined` column of each
  model's `metrics.json` history).
- *Time*: the 10-minute goal for 5,000 images (4,000 trained on, 1,000 validating) is met. In
  this run (load average about 1; the block inputs of the views were cached by a run a few
  minutes before, hence the seconds in brackets) the same classes took 4.1 min and the unseen
  ones 1.4 min; that earlier run, caching the 3 views itself (61 s), took 5.0 and 2.0 min. Under a
  load average of 7-9 from other jobs, an earlier session measured 11.2 min. ms / image is just
  as noisy; the blocks model (int8 prefix + float32 last block, one ONNX graph) runs at about the
  default descriptor's time."""


def _goal_json(goal: tuple) -> list:
    dataset, protocol, mode, kind, before, after, result, seconds, n = goal
    keep = ("mAP@R", "Rank-1", "mAP")
    return [
        dataset, protocol, mode, kind, {k: before[k] for k in keep},
        {k: after[k] for k in keep}, {"best_epoch": result.best_epoch}, seconds, n,
    ]  # fmt: skip


def _section(rows: list, goals: list, args, total: float) -> str:
    header = [
        "dataset", "protocol", "train → test (classes / images)", "model", "mAP@R",
        "Δ mAP@R vs default (points)", "Rank-1", "mAP", "train s (features/views)",
        "ms / image", "best / run epochs", "verdict",
    ]  # fmt: skip
    rows = [
        [*r[:3], f"whitening only, start: {r[3][16:-1]}", *r[4:]]
        if r[3].startswith("whitening only (")
        else r
        for r in rows
    ]
    checks = []
    for dataset, protocol, mode, goal, b, a, result, seconds, n in goals:
        best_epoch = result["best_epoch"] if isinstance(result, dict) else result.best_epoch
        gain = a["mAP@R"] - b["mAP@R"]
        if goal == "seen":
            ok = gain >= 0.10 and a["Rank-1"] > b["Rank-1"]
            want = "mAP@R ≥ +0.10 and Rank-1 up"
        else:
            ok = gain >= -0.005
            want = "mAP@R within 0.005 of the default"
        epoch_ok = best_epoch != 0
        checks.append(
            f"- {dataset}, {protocol}, {mode}: {want}: {'met' if ok else 'not met'} "
            f"({100 * gain:+.1f} points, Rank-1 {b['Rank-1']:.4f} → {a['Rank-1']:.4f}); "
            f"best epoch {best_epoch} ({'met' if epoch_ok else 'not met'})"
            + (f"; {seconds / 60:.1f} min for {n} images" if mode == "blocks" else "")
        )
    return "\n\n".join(
        [
            "## Learned similarity (`lookalike train`)",
            "`--mode blocks` (the default) trains the last MBConv block of EfficientNet-Lite0 "
            "(192→320 channels), its 1×1 head convolution (→1280), a GeM pooling that starts as "
            "average pooling, and a head, on the block's input cached once per image (the int8 "
            "network of the default descriptor cut before that block; 3 views per training "
            "image: the inference view and 2 random crops of 35-100% with colour jitter; at "
            "every step a random view, mirrored half of the time and, for half of the batches, "
            "cropped by one cell of the feature map). `--mode head` trains only the head, on the "
            "default descriptors of the same views (view 0: the int8 network's; the others "
            "through the frozen last block); it runs after `blocks` and reuses its cache. The "
            "head: a linear map started from supervised learned "
            "whitening of the training descriptors (Radenović et al. 2018) plus a residual MLP "
            "started at zero; beside it the descriptor itself when validation prefers a blend "
            "(cosine = (cos descriptor + β² cos head)/(1 + β²), β from {∞, 2, 1, 0.5, 0}). "
            "Loss: multi-similarity (α 2, β 50, base 0.5) on multi-similarity-mined pairs "
            "against a cross-batch memory of the last 1024 embeddings, 4 images per class and "
            "64 per batch, plus the mean squared difference between the batch's cosine matrix "
            "and the start's (distillation, weight 1), AdamW lr 1e-4 with cosine decay, early "
            "stopping on validation mAP@R (patience 3; 20% of the training images of each class "
            "for same classes, 20% of the training classes for unseen ones). Every figure, "
            "validation included, is measured as a collection searches: PCA to 256 learned on "
            "the gallery once it holds 1000 images (Tiny ImageNet's test halves; not Corel's or "
            "gopro-walk's), then α-query expansion over 3 results; each query's own image "
            "excluded. Tiny ImageNet's 64-px images run at 224 px (the base's native size), the "
            "others at 288 px. Times: the whole `train` call (caching included), on 2 CPU cores "
            "shared with other jobs (noisy); ms / image: embedding one image, batched (the "
            "blocks model is one ONNX graph: the int8 prefix and the trained float32 block).",
            table(header, rows),
            READING,
            "**Against the goals** (same classes: mAP@R at least +0.10 over the default search "
            "and Rank-1 up; unseen classes: within 0.005 mAP@R of it; best epoch not 0; blocks "
            "mode at most 10 minutes for 5,000 images):",
            "\n".join(checks),
            f"Whole run: {total / 60:.0f} min.",
        ]
    )


if __name__ == "__main__":
    main()
