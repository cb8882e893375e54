"""Learn a similarity for your own data: metric learning on top of a base embedder.

Labelled images (one folder per class, or ``query/`` + ``gallery/`` with the identity as the
file-name prefix: the layouts of :mod:`..evaluate.datasets`) teach a small network which images
belong together, with the losses, miners, samplers and accuracy calculator of
pytorch-metric-learning. Two modes:

``head`` (default, fast on a CPU)
    The base embedder's descriptor (for EfficientNet-Lite: pooled features + class
    probabilities) is computed once per image and cached; a projection head
    (Linear -> BatchNorm -> ReLU -> Linear, L2-normalised) is trained on it.
``finetune`` (for a GPU)
    The last blocks of the PyTorch EfficientNet-Lite are trained together with the head, on
    augmented crops of the images. Uses CUDA when present and warns when it is not.

Both keep a validation split (held-out classes when there are enough, else held-out images),
stop early when its mAP@R stops improving and keep the best epoch. The result is a model folder
(:func:`save_model`) that loads as an embedder: ``lookalike index FOLDER --model MODEL_DIR``.

Example:
    >>> from lookalike.train.trainer import train
    >>> result = train("datasets/my-parts", "models/parts", epochs=20)  # doctest: +SKIP
    >>> result.validation["mAP@R"] > result.baseline["mAP@R"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from lookalike.errors import TrainError
from lookalike.evaluate.datasets import EvalSet, load_eval_set
from lookalike.evaluate.metrics import (
    average_precision,
    average_precision_at_r,
    cmc,
    rank_relevance,
)
from lookalike.images import ImageError, decode
from lookalike.models import Embedder, load_embedder

__all__ = [
    "LOSSES",
    "MODES",
    "Labelled",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "backbone_features",
    "fit_head",
    "load_labelled",
    "retrieval_metrics",
    "split_classes",
    "train",
]

LOSSES: tuple[str, ...] = ("triplet", "multisimilarity", "arcface")
MODES: tuple[str, ...] = ("head", "finetune")
MODEL_FORMAT = "lookalike-trained-model"
MODEL_FORMAT_VERSION = 1
RANKS: tuple[int, ...] = (1, 5, 10, 20)

#: ``progress(stage, done, total)``: stage is "features", "epochs" or "images".
Progress = Callable[[str, int, int], None]
Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# Configuration and result
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Every choice of a training run (all of it is written to the model's config.json).

    Example:
        >>> TrainConfig(loss="multisimilarity", epochs=10).batch_size
        128
    """

    base: str = "efficientnet-lite0"
    loss: str = "triplet"
    mode: str = "head"
    epochs: int = 30
    dim: int = 512
    hidden: int = 1024
    lr: float = 1e-4
    weight_decay: float = 1e-4
    dropout: float = 0.1
    init: str = "whitening"  # head: start from learned whitening ("whitening") or "random"
    batch_size: int = 128
    m_per_class: int = 4
    margin: float = 0.1
    val_fraction: float = 0.2
    patience: int = 5
    seed: int = 0
    blocks: int = 2  # finetune: how many of the last MBConv blocks are trained
    image_size: int | None = None  # finetune: training resolution (default: the base's)

    def check(self) -> None:
        if self.loss not in LOSSES:
            raise TrainError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.mode not in MODES:
            raise TrainError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.init not in ("whitening", "random"):
            raise TrainError(f"unknown init {self.init!r}: whitening or random")
        if self.epochs < 1 or self.batch_size < 2 or self.m_per_class < 2:
            raise TrainError("epochs must be >= 1, batch size >= 2 and m per class >= 2")


@dataclass
class TrainResult:
    """What a training run did and measured.

    Attributes:
        history: one dict per epoch: ``epoch``, ``loss``, ``val_mAP@R``, ``val_P@1``, ``seconds``
            (epoch 0 is the untrained head).
        baseline: validation metrics of the frozen base descriptor.
        validation: validation metrics of the best epoch.
    """

    model_dir: Path
    config: TrainConfig
    history: list[dict[str, float]]
    best_epoch: int
    baseline: dict[str, float]
    validation: dict[str, float]
    stopped_early: bool
    seconds: float
    feature_seconds: float
    device: str
    images: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready form.

        Example:
            >>> json.dumps(train("ds", "out").to_dict())  # doctest: +SKIP
        """
        return _jsonable(
            {
                "model_dir": str(self.model_dir),
                "config": asdict(self.config),
                "best_epoch": self.best_epoch,
                "stopped_early": self.stopped_early,
                "baseline": self.baseline,
                "validation": self.validation,
                "seconds": round(self.seconds, 2),
                "feature_seconds": round(self.feature_seconds, 2),
                "device": self.device,
                "images": self.images,
                "history": self.history,
            }
        )


# --------------------------------------------------------------------------------------------
# Labelled data and splits
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Labelled:
    """Images with an identity each; ``is_query``/``is_gallery`` say how to evaluate them."""

    paths: tuple[Path, ...]
    labels: NDArray[np.str_]
    is_query: NDArray[np.bool_]
    is_gallery: NDArray[np.bool_]
    layout: str = "folders"

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, keep: NDArray[np.bool_] | NDArray[np.intp]) -> Labelled:
        """The images selected by a mask or an index array."""
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)
        return Labelled(
            tuple(self.paths[i] for i in idx),
            self.labels[idx],
            self.is_query[idx],
            self.is_gallery[idx],
            self.layout,
        )

    @classmethod
    def from_eval_set(cls, ev: EvalSet) -> Labelled:
        return cls(
            ev.paths, np.asarray(ev.labels, dtype=str), ev.is_query, ev.is_gallery, ev.layout
        )


def load_labelled(dataset: str | Path) -> Labelled:
    """The labelled images of a dataset folder (folder per class, query/gallery or UKBench).

    Example:
        >>> load_labelled("corel1k").labels[:2].tolist()  # doctest: +SKIP
        ['africa', 'africa']
    """
    ev = load_eval_set(dataset)
    if ev.layout == "pairs":
        raise TrainError(
            f"{dataset}: a pairs CSV has no classes to learn from; use one folder per class or "
            "query/ + gallery/ with <identity>_<image> file names"
        )
    return Labelled.from_eval_set(ev)


def split_classes(
    labels: Sequence[str] | NDArray, fraction: float, seed: int = 0
) -> NDArray[np.bool_]:
    """Mask of the images whose class is among a random ``fraction`` of the classes.

    The metric-learning protocol: train on some classes, test on the others (unseen).

    Example:
        >>> split_classes(["a", "a", "b", "b"], 0.5, seed=1).tolist()
        [False, False, True, True]
    """
    labels = np.asarray(labels, dtype=str)
    classes = np.unique(labels)
    count = round(fraction * len(classes))
    if fraction > 0:
        count = min(max(count, 1), len(classes) - 1)
    held = np.random.default_rng(seed).permutation(classes)[:count]
    return np.isin(labels, held)


def validation_split(labels: NDArray[np.str_], fraction: float, seed: int = 0) -> NDArray[np.bool_]:
    """Mask of the validation images: whole classes when there are 8 or more (the validation then
    measures what matters, generalising to new identities), else some images of each class
    (classes with fewer than 4 images stay whole in training)."""
    classes, counts = np.unique(labels, return_counts=True)
    if fraction <= 0:
        return np.zeros(len(labels), dtype=bool)
    if len(classes) >= 8:
        return split_classes(labels, max(fraction, 2 / len(classes)), seed)
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label, count in zip(classes, counts, strict=True):
        if count < 4:
            continue
        take = int(min(max(round(fraction * count), 2), count - 2))
        mask[rng.permutation(np.flatnonzero(labels == label))[:take]] = True
    return mask


# --------------------------------------------------------------------------------------------
# Backbone features, computed once and cached
# --------------------------------------------------------------------------------------------


def default_cache() -> Path:
    """Where backbone features are cached (under ``$LOOKALIKE_CACHE`` or the user cache)."""
    from lookalike.models.efficientnet import cache_dir

    return cache_dir() / "features"


def _file_keys(paths: Sequence[Path]) -> list[str]:
    """One key per file: resolved path, size and mtime (a changed file gets a new key)."""
    keys = []
    for p in paths:
        st = os.stat(p)
        keys.append(f"{Path(p).resolve()}\0{st.st_size}\0{st.st_mtime_ns}")
    return keys


def _cache_file(cache: Path, embedder: Embedder, paths: Sequence[Path]) -> Path:
    """One cache file per embedder version and folder (the files' deepest common folder)."""
    root = os.path.commonpath([str(Path(p).resolve().parent) for p in paths]) if paths else ""
    digest = hashlib.blake2b(f"{embedder.version}\0{root}".encode(), digest_size=8).hexdigest()
    return cache / f"{Path(root).name or 'images'}-{digest}.npz"


def backbone_features(
    embedder: Embedder,
    paths: Sequence[Path],
    *,
    cache: Path | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """The embedder's descriptor of every image, and which images could be read.

    Cached in ``cache`` (default :func:`default_cache`), one file per embedder version and
    folder, a row per file keyed by its path, size and mtime: a later run over these files, or
    a subset of them (a split), embeds only new or changed ones. Unreadable images get a zero
    row and ``False``.

    Example:
        >>> x, ok = backbone_features(load_embedder("efficientnet-lite0"), paths)  # doctest: +SKIP
        >>> x.shape  # doctest: +SKIP
        (1000, 2280)
    """
    cache = default_cache() if cache is None else Path(cache)
    target = _cache_file(cache, embedder, paths)
    keys = _file_keys(paths)
    stored_keys, stored_x, stored_ok = np.zeros(0, str), None, None
    if target.exists():
        with np.load(target) as data:
            stored_keys, stored_x, stored_ok = data["keys"], data["x"], data["ok"]
    row_of = {k: i for i, k in enumerate(stored_keys.tolist())}
    x = np.zeros((len(paths), embedder.dim), np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    missing = []
    for i, key in enumerate(keys):
        if key in row_of:
            x[i], ok[i] = stored_x[row_of[key]], stored_ok[row_of[key]]
        else:
            missing.append(i)
    if progress:
        progress("features", len(paths) - len(missing), len(paths))
    if not missing:
        return x, ok

    def load(path: Path) -> Image.Image | None:
        try:
            return decode(path, min_side=embedder.input_size)
        except (ImageError, OSError):
            return None

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode") as pool:
        for start in range(0, len(missing), batch_size):
            rows = missing[start : start + batch_size]
            images = list(pool.map(load, [paths[i] for i in rows]))
            good = [r for r, im in zip(rows, images, strict=True) if im is not None]
            if good:
                x[good] = embedder.embed_images([im for im in images if im is not None])
                ok[good] = True
            if progress:
                progress("features", len(paths) - len(missing) + start + len(rows), len(paths))
    new_keys = np.asarray([keys[i] for i in missing])
    merged_x = x[missing] if stored_x is None else np.concatenate([stored_x, x[missing]])
    merged_ok = ok[missing] if stored_ok is None else np.concatenate([stored_ok, ok[missing]])
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, keys=np.concatenate([stored_keys, new_keys]), x=merged_x, ok=merged_ok)
    os.replace(tmp, target)  # atomic: a concurrent reader sees the old or the new file
    return x, ok


# --------------------------------------------------------------------------------------------
# Retrieval metrics (lookalike.evaluate.metrics), a block of queries at a time
# --------------------------------------------------------------------------------------------


def retrieval_metrics(
    vectors: NDArray[np.float32],
    labels: Sequence[str] | NDArray,
    is_query: NDArray[np.bool_] | None = None,
    is_gallery: NDArray[np.bool_] | None = None,
) -> dict[str, float]:
    """mAP, mAP@R and CMC Rank-1/5/10/20 of cosine retrieval, each query's own image excluded.

    Example:
        >>> v = np.eye(3, dtype=np.float32)[[0, 0, 1, 1]]
        >>> retrieval_metrics(v, ["a", "a", "b", "b"])["mAP@R"]
        1.0
    """
    labels = np.asarray(labels, dtype=str)
    n = len(labels)
    is_query = np.ones(n, bool) if is_query is None else np.asarray(is_query, bool)
    is_gallery = np.ones(n, bool) if is_gallery is None else np.asarray(is_gallery, bool)
    queries, gallery = np.flatnonzero(is_query), np.flatnonzero(is_gallery)
    _, codes = np.unique(labels, return_inverse=True)
    ranks = [k for k in RANKS if k <= len(gallery)]
    ap, ap_r, hits = [], [], {k: [] for k in ranks}
    rows = max(1, 2_000_000 // max(len(gallery), 1))
    for start in range(0, len(queries), rows):
        q = queries[start : start + rows]
        scores = vectors[q] @ vectors[gallery].T
        ranked, relevant = rank_relevance(
            scores, codes[q], codes[gallery], exclude=q[:, None] == gallery[None, :]
        )
        keep = relevant > 0  # queries whose class has no other image measure nothing
        ap.append(average_precision(ranked, relevant)[keep])
        ap_r.append(average_precision_at_r(ranked, relevant)[keep])
        top = ranked[keep][:, : max(ranks)]
        for k, value in cmc(top, ranks, relevant[keep]).items():
            hits[k].append((value, int(keep.sum())))
    out = {
        "mAP": _nanmean(np.concatenate(ap)),
        "mAP@R": _nanmean(np.concatenate(ap_r)),
    }
    for k in ranks:
        total = sum(c for _, c in hits[k])
        out[f"Rank-{k}"] = sum(v * c for v, c in hits[k] if c) / total if total else math.nan
    out["queries"] = int(sum(len(a) for a in ap))
    return out


def _nanmean(x: NDArray[np.float64]) -> float:
    return float(np.nanmean(x)) if x.size and not np.isnan(x).all() else math.nan


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        raise TrainError("training needs PyTorch: pip install torch") from exc
    return torch


def make_head(
    in_dim: int,
    hidden: int,
    dim: int,
    dropout: float = 0.0,
    init: tuple[NDArray[np.float32], NDArray] | None = None,
):
    """The projection head: a linear map plus a residual MLP, then unit length.

    ``embedding = normalise(W x + b + MLP(x))`` with ``MLP = Dropout -> Linear -> BatchNorm ->
    ReLU -> Linear`` (``hidden=0``: linear only). The MLP's last layer starts at zero, so an
    untrained head is the linear map; with ``init = (features, labels)`` of the training images
    that map starts as their :func:`learned_whitening`. Why: a randomly initialised head
    scrambles the backbone's geometry and overfits the training classes (measured on Tiny
    ImageNet: unseen-class mAP@R fell below the frozen backbone's), while learned whitening
    alone gains 10+ points there; the metric loss then only has to improve on it.

    Example:
        >>> make_head(2280, 1024, 256)(torch.zeros(2, 2280)).shape  # doctest: +SKIP
        torch.Size([2, 256])
    """
    torch = _torch()
    nn = torch.nn

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(in_dim, dim)
            self.mlp = None
            if hidden > 0:
                self.mlp = nn.Sequential(
                    nn.Dropout(dropout),
                    nn.Linear(in_dim, hidden),
                    nn.BatchNorm1d(hidden),
                    nn.ReLU(),
                    nn.Linear(hidden, dim),
                )
                nn.init.zeros_(self.mlp[-1].weight)
                nn.init.zeros_(self.mlp[-1].bias)

        def forward(self, x):
            z = self.linear(x)
            if self.mlp is not None:
                z = z + self.mlp(x)
            return nn.functional.normalize(z, dim=-1)

    head = Head()
    if init is not None:
        _init_whitening(head.linear, init[0], init[1], dim)
    return head


#: Shrinkage of the within-class covariance towards a multiple of the identity in
#: :func:`learned_whitening` (measured on Tiny ImageNet's unseen classes: 0.001-0.003 best).
WHITEN_SHRINK = 0.003


def learned_whitening(
    features: NDArray[np.float32],
    labels: Sequence[str] | NDArray,
    dim: int,
    shrink: float = WHITEN_SHRINK,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Supervised "learned whitening" (Radenović et al., 2018): ``(mean, projection)``.

    Whitens the within-class covariance (so that what varies inside a class counts less), then
    keeps the ``dim`` directions along which class means spread most: a closed-form metric
    learning, like LDA. ``(x - mean) @ projection`` is the projected descriptor.

    Example:
        >>> mean, proj = learned_whitening(x, labels, 512)  # doctest: +SKIP
        >>> proj.shape  # doctest: +SKIP
        (2280, 512)
    """
    x = np.asarray(features, dtype=np.float64)
    classes, codes = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    mean = x.mean(axis=0)
    class_means = np.zeros((len(classes), x.shape[1]))
    np.add.at(class_means, codes, x)
    class_means /= np.bincount(codes)[:, None]
    within = x - class_means[codes]
    d = x.shape[1]
    eigval, basis = _principal_axes(within)
    floor = max(shrink * float(eigval.sum()) / d, 1e-12)  # the shrinkage, on every direction
    scale = ((1 - shrink) * eigval + floor) ** -0.5 - floor**-0.5

    def whiten(z: NDArray[np.float64]) -> NDArray[np.float64]:
        # The symmetric whitening map of the shrunk covariance, without forming a d x d matrix.
        return ((z @ basis) * scale) @ basis.T + z * floor**-0.5

    # Then the directions along which the class means spread, and, when they are fewer than
    # ``dim``, random directions of the rest of the whitened space (a Johnson-Lindenstrauss
    # projection). Measured on Tiny ImageNet's unseen classes (mAP@R at 512-d): 0.36 this way,
    # 0.26 with the class-mean directions alone, 0.30 filling up with the whitened images'
    # principal axes (they favour strong within-class noise that shrinkage left in).
    spread = whiten(class_means - mean)
    _, singular, vt = np.linalg.svd(spread, full_matrices=False)
    axes = vt[singular > 1e-8 * max(float(singular.max()), 1e-30)][:dim]
    if len(axes) < dim:
        rest = np.random.default_rng(0).normal(size=(d, dim - len(axes)))
        rest -= axes.T @ (axes @ rest)
        axes = np.vstack([axes, np.linalg.qr(rest)[0].T])
    return mean, whiten(axes).T


def _principal_axes(
    z: NDArray[np.float64], k: int | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Eigenvalues and eigenvectors (d x k, largest first) of ``z.T @ z / n``; through the n x n
    Gram matrix when there are fewer rows than columns (a 2280 x 2280 eigh takes tens of seconds
    on a busy 2-core CPU; the Gram matrix of 36 images, milliseconds)."""
    n, d = z.shape
    if n < d:
        eigval, vec = np.linalg.eigh(z @ z.T / n)
        keep = eigval > 1e-10 * max(float(eigval.max()), 1e-30)
        eigval, axes = eigval[keep], z.T @ vec[:, keep] / np.sqrt(eigval[keep] * n)
    else:
        eigval, axes = np.linalg.eigh((z.T @ z / n).astype(np.float32))
        eigval, axes = np.maximum(eigval.astype(np.float64), 0), axes.astype(np.float64)
    order = np.argsort(eigval)[::-1][:k]
    return eigval[order], axes[:, order]


def _init_whitening(linear, features: NDArray, labels: NDArray, dim: int) -> None:
    """Set ``linear`` to the learned whitening of the training features."""
    torch = _torch()
    mean, projection = learned_whitening(features, labels, dim)
    k = projection.shape[1]
    # Scaled so that the output norm stays near 1: only its direction counts after normalising,
    # but the residual MLP and the learning rate see this scale.
    weight = torch.from_numpy((projection.T / np.sqrt(k)).astype(np.float32))
    with torch.no_grad():
        linear.weight[:k] = weight
        linear.bias[:k] = -weight @ torch.from_numpy(mean.astype(np.float32))
        if k < dim:  # fewer classes than dimensions: the rest start (almost) silent
            linear.weight[k:] *= 0.01
            linear.bias[k:] = 0


def build_loss(name: str, num_classes: int, dim: int, margin: float = 0.1):
    """``(loss, miner)`` from pytorch-metric-learning; ``miner`` is None for ArcFace.

    Example:
        >>> loss, miner = build_loss("triplet", 10, 256)  # doctest: +SKIP
    """
    from pytorch_metric_learning import losses, miners

    if name == "triplet":
        return (
            losses.TripletMarginLoss(margin=margin),
            miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard"),
        )
    if name == "multisimilarity":
        return losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), miners.MultiSimilarityMiner(
            epsilon=0.1
        )
    if name == "arcface":
        return losses.ArcFaceLoss(num_classes, dim, margin=28.6, scale=64), None
    raise TrainError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (pytorch-metric-learning's samplers draw from it) and PyTorch."""
    torch = _torch()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device() -> str:
    torch = _torch()
    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------------
# The training loop (both modes)
# --------------------------------------------------------------------------------------------


@dataclass
class _Fit:
    history: list[dict[str, float]]
    best_epoch: int
    best_state: dict
    validation: dict[str, float]
    stopped_early: bool


def _batches(labels: NDArray[np.int64], cfg: TrainConfig) -> list[NDArray[np.intp]]:
    """One epoch of batches with ``m`` images per class (pytorch-metric-learning's sampler)."""
    from pytorch_metric_learning.samplers import MPerClassSampler

    classes = len(np.unique(labels))
    m = cfg.m_per_class
    batch = min(cfg.batch_size, m * classes) // m * m
    if batch < 2 * m:
        raise TrainError(f"need at least 2 classes with images to train, found {classes}")
    length = max(batch, math.ceil(len(labels) / batch) * batch)
    sampler = MPerClassSampler(labels, m, batch_size=batch, length_before_new_iter=length)
    order = np.fromiter(iter(sampler), dtype=np.intp)
    return [order[i : i + batch] for i in range(0, len(order), batch)]


def _validate(embed: Callable[[], NDArray[np.float32]], labels: NDArray[np.int64]) -> dict:
    """mAP@R and P@1 of the validation images, all against all (AccuracyCalculator)."""
    if len(labels) == 0:
        return {"mAP@R": math.nan, "P@1": math.nan}
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(
        include=("mean_average_precision_at_r", "precision_at_1"),
        k="max_bin_count",
        device=_torch().device("cpu"),
    )
    torch = _torch()
    vectors = torch.from_numpy(np.ascontiguousarray(embed(), dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singleton classes: pml warns, they just don't count
        acc = calc.get_accuracy(vectors, torch.from_numpy(labels))
    return {"mAP@R": float(acc["mean_average_precision_at_r"]), "P@1": float(acc["precision_at_1"])}


def _fit(
    model,
    batch_inputs: Callable[[NDArray[np.intp]], object],
    labels: NDArray[np.int64],
    validate: Callable[[], dict],
    cfg: TrainConfig,
    device: str,
    progress: Progress | None,
    log: Log | None,
) -> _Fit:
    """Train ``model`` with the configured loss and miner; early stopping on validation mAP@R."""
    torch = _torch()
    loss_fn, miner = build_loss(cfg.loss, int(labels.max()) + 1, cfg.dim, cfg.margin)
    loss_fn = loss_fn.to(device)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr}]
    if any(True for _ in loss_fn.parameters()):  # ArcFace learns class centres: faster
        groups.append({"params": list(loss_fn.parameters()), "lr": cfg.lr * 10})
    optimiser = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=cfg.epochs)

    first = validate()
    history = [_epoch_row(0, math.nan, first, 0.0)]
    best = (first["mAP@R"], 0, _state(model), first)
    stale, stopped = 0, False
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        model.train()
        _freeze_norms(model)
        losses = []
        for idx in _batches(labels, cfg):
            x = batch_inputs(idx)
            y = torch.from_numpy(labels[idx]).to(device)
            embeddings = model(x)
            pairs = miner(embeddings, y) if miner is not None else None
            loss = loss_fn(embeddings, y, pairs) if pairs is not None else loss_fn(embeddings, y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        scheduler.step()
        val = validate()
        history.append(_epoch_row(epoch, np.mean(losses), val, time.perf_counter() - started))
        if log:
            log(
                f"epoch {epoch:3d}  loss {history[-1]['loss']:.4f}  "
                f"val mAP@R {val['mAP@R']:.4f}  P@1 {val['P@1']:.4f}"
            )
        if progress:
            progress("epochs", epoch, cfg.epochs)
        if not val["mAP@R"] <= best[0]:  # nan (no validation) counts as an improvement
            best, stale = (val["mAP@R"], epoch, _state(model), val), 0
        else:
            stale += 1
            if stale >= cfg.patience:
                stopped = True
                break
    return _Fit(history, best[1], best[2], best[3], stopped)


def _epoch_row(epoch: int, loss: float, val: dict, seconds: float) -> dict[str, float]:
    return {
        "epoch": epoch,
        "loss": float(loss),
        "val_mAP@R": val["mAP@R"],
        "val_P@1": val["P@1"],
        "seconds": seconds,
    }


def _state(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _freeze_norms(model) -> None:
    """Keep frozen parts (a frozen backbone's BatchNorm) in eval mode while the rest trains."""
    for module in model.modules():
        if any(True for _ in module.parameters(recurse=False)) and not any(
            p.requires_grad for p in module.parameters(recurse=False)
        ):
            module.eval()


def _embed_rows(model, x, device: str, batch: int = 1024) -> NDArray[np.float32]:
    torch = _torch()
    model.eval()
    with torch.no_grad():
        parts = [model(x[i : i + batch].to(device)).cpu().numpy() for i in range(0, len(x), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


# --------------------------------------------------------------------------------------------
# Mode "head": a projection head on cached features
# --------------------------------------------------------------------------------------------


def fit_head(
    features: NDArray[np.float32],
    labels: Sequence[str] | NDArray,
    cfg: TrainConfig | None = None,
    *,
    val_mask: NDArray[np.bool_] | None = None,
    progress: Progress | None = None,
    log: Log | None = None,
):
    """Train a projection head on precomputed features; returns ``(head, fit)``.

    ``val_mask`` marks the validation rows (default: :func:`validation_split`).

    Example:
        >>> head, fit = fit_head(x, labels, TrainConfig(epochs=5))  # doctest: +SKIP
        >>> fit.best_epoch, fit.validation["mAP@R"]  # doctest: +SKIP
        (4, 0.41)
    """
    cfg = cfg or TrainConfig()
    cfg.check()
    torch = _torch()
    seed_everything(cfg.seed)
    labels = np.asarray(labels, dtype=str)
    if val_mask is None:
        val_mask = validation_split(labels, cfg.val_fraction, cfg.seed)
    _, codes = np.unique(labels[~val_mask], return_inverse=True)
    _, val_codes = np.unique(labels[val_mask], return_inverse=True)
    device = "cpu"  # a head on cached features is faster on the CPU than the copy to a GPU
    x_train = torch.from_numpy(np.ascontiguousarray(features[~val_mask], np.float32))
    x_val = torch.from_numpy(np.ascontiguousarray(features[val_mask], np.float32))
    head = make_head(
        features.shape[1],
        cfg.hidden,
        cfg.dim,
        cfg.dropout,
        init=(features[~val_mask], labels[~val_mask]) if cfg.init == "whitening" else None,
    )
    fit = _fit(
        head,
        lambda idx: x_train[idx],
        codes.astype(np.int64),
        lambda: _validate(lambda: _embed_rows(head, x_val, device), val_codes.astype(np.int64)),
        cfg,
        device,
        progress,
        log,
    )
    head.load_state_dict(fit.best_state)
    head.eval()
    return head, fit


# --------------------------------------------------------------------------------------------
# Mode "finetune": the last blocks of the PyTorch EfficientNet-Lite and a head
# --------------------------------------------------------------------------------------------


def make_finetune_net(base: str, blocks: int, hidden: int, dim: int, dropout: float = 0.0):
    """EfficientNet-Lite with its packaged ImageNet weights, all but the last ``blocks`` MBConv
    blocks (and the final 1x1 conv) frozen, average pooling and a projection head on top."""
    torch = _torch()
    from lookalike.models.efficientnet import VARIANTS, weights_path

    if base not in VARIANTS:
        raise TrainError(f"finetune needs an EfficientNet-Lite base, not {base!r}")
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise TrainError("finetune needs efficientnet-lite-pytorch") from exc
    net = EfficientNet.from_name(base)
    net.load_state_dict(torch.load(weights_path(base), map_location="cpu", weights_only=True))
    for p in net.parameters():
        p.requires_grad = False
    trainable = [*list(net._blocks)[-blocks:], net._conv_head, net._bn1] if blocks > 0 else []
    for module in trainable:
        for p in module.parameters():
            p.requires_grad = True
    head = make_head(1280, hidden, dim, dropout)

    class Finetuned(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.head = net, head

        def forward(self, image):
            return self.head(self.net.extract_features(image).mean((2, 3)))

    return Finetuned()


def _augment(image: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """A random crop of 40-100% of the area, aspect 3/4-4/3, maybe mirrored, at ``size``."""
    w, h = image.size
    for _ in range(10):
        area = rng.uniform(0.4, 1.0) * w * h
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            image = image.crop((int(x), int(y), int(x) + cw, int(y) + ch))
            break
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image.resize((size, size), Image.Resampling.BILINEAR)


def _fit_finetune(
    data: Labelled,
    val_mask: NDArray[np.bool_],
    cfg: TrainConfig,
    progress: Progress | None,
    log: Log | None,
):
    torch = _torch()
    from lookalike.models.efficientnet import VARIANTS, preprocess

    device = _device()
    if device == "cpu":
        warnings.warn(
            "finetune runs on the CPU: expect hours on thousands of images; use a CUDA GPU or "
            "--mode head",
            stacklevel=3,
        )
    size = cfg.image_size or VARIANTS[cfg.base].input_size
    model = make_finetune_net(cfg.base, cfg.blocks, cfg.hidden, cfg.dim, cfg.dropout).to(device)
    train_paths = [p for p, v in zip(data.paths, val_mask, strict=True) if not v]
    val_paths = [p for p, v in zip(data.paths, val_mask, strict=True) if v]
    _, codes = np.unique(data.labels[~val_mask], return_inverse=True)
    _, val_codes = np.unique(data.labels[val_mask], return_inverse=True)
    rng = np.random.default_rng(cfg.seed)
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="decode")

    def batch_inputs(idx: NDArray[np.intp]):
        images = pool.map(lambda i: decode(train_paths[i], min_side=size), idx)
        crops = [_augment(im, size, rng) for im in images]
        return torch.from_numpy(preprocess(crops, size)).to(device)

    def embed_val() -> NDArray[np.float32]:
        model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(val_paths), 64):
                images = list(pool.map(lambda p: decode(p, min_side=size), val_paths[i : i + 64]))
                x = torch.from_numpy(preprocess(images, size)).to(device)
                out.append(model(x).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, cfg.dim), np.float32)

    try:
        fit = _fit(
            model,
            batch_inputs,
            codes.astype(np.int64),
            lambda: _validate(embed_val, val_codes.astype(np.int64)),
            cfg,
            device,
            progress,
            log,
        )
    finally:
        pool.shutdown()
    model.load_state_dict(fit.best_state)
    return model.cpu().eval(), fit, size


# --------------------------------------------------------------------------------------------
# Saving a model folder
# --------------------------------------------------------------------------------------------


def export_onnx(module, example, path: Path, input_name: str, dynamic: dict) -> Path:
    """Export ``module`` to ONNX (opset 17) atomically; output name ``embedding``."""
    torch = _torch()
    module = module.cpu().eval()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(tmp),
            input_names=[input_name],
            output_names=["embedding"],
            dynamic_axes={input_name: dynamic, "embedding": {0: "n"}},
            opset_version=17,
            dynamo=False,
        )
    os.replace(tmp, path)
    return path


def save_model(
    out_dir: Path,
    model,
    cfg: TrainConfig,
    base: Embedder,
    *,
    in_dim: int,
    image_size: int | None = None,
    extra: dict | None = None,
) -> Path:
    """Write the model folder: weights (``.pt``), ONNX, ``config.json``; returns the folder.

    ``head`` mode: ``head.onnx`` maps the base descriptor (``descriptor``, (n, in_dim)) to the
    embedding. ``finetune``: ``model.onnx`` maps the preprocessed image (``image``) to it.
    """
    torch = _torch()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    if cfg.mode == "head":
        torch.save(model.state_dict(), out_dir / "head.pt")
        onnx_name = "head.onnx"
        export_onnx(model, torch.zeros(2, in_dim), out_dir / onnx_name, "descriptor", {0: "n"})
        head = {
            "type": "linear+residual-mlp",
            "in_dim": in_dim,
            "hidden": cfg.hidden,
            "dim": cfg.dim,
        }
    else:
        torch.save(model.state_dict(), out_dir / "finetuned.pt")
        onnx_name = "model.onnx"
        size = image_size or base.input_size
        export_onnx(
            model,
            torch.zeros(1, 3, size, size),
            out_dir / onnx_name,
            "image",
            {0: "n", 2: "h", 3: "w"},
        )
        head = {"type": "linear+residual-mlp", "in_dim": 1280, "hidden": cfg.hidden, "dim": cfg.dim}
    config = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "mode": cfg.mode,
        "base": {"name": base.name, "version": base.version, "dim": base.dim},
        "input_size": image_size or base.input_size,
        "dim": cfg.dim,
        "head": head,
        "onnx": onnx_name,
        "training": asdict(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    (out_dir / "config.json").write_text(json.dumps(_jsonable(config), indent=2) + "\n")
    return out_dir


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def train(
    dataset: str | Path | Labelled,
    out_dir: str | Path,
    *,
    base: str = "efficientnet-lite0",
    loss: str = "triplet",
    epochs: int = 30,
    mode: str = "head",
    seed: int = 0,
    config: TrainConfig | None = None,
    cache: Path | None = None,
    progress: Progress | None = None,
    log: Log | None = None,
) -> TrainResult:
    """Train an embedding on labelled images and write it as a model folder.

    Args:
        dataset: a dataset folder (:func:`load_labelled`) or already loaded :class:`Labelled`
            images (e.g. the training classes of a split).
        out_dir: the model folder to write (``config.json``, weights, ONNX, ``metrics.json``,
            ``curves.png``).
        base, loss, epochs, mode, seed: the main choices; ``config`` sets all of them and more
            (its values win over these arguments' defaults only when given).
        cache: where ``head`` mode caches backbone features (default :func:`default_cache`).
        progress: ``progress(stage, done, total)``; log: receives one line per epoch.

    Raises:
        TrainError, DatasetError, ModelError: bad options, data or model.

    Example:
        >>> r = train("parts", "parts-model", epochs=10)  # doctest: +SKIP
        >>> load_embedder("parts-model").dim  # doctest: +SKIP
        256
    """
    started = time.perf_counter()
    cfg = config or TrainConfig(base=base, loss=loss, epochs=epochs, mode=mode, seed=seed)
    cfg.check()
    data = dataset if isinstance(dataset, Labelled) else load_labelled(dataset)
    embedder = load_embedder(cfg.base)
    out_dir = Path(out_dir)

    feature_started = time.perf_counter()
    features, ok = backbone_features(embedder, data.paths, cache=cache, progress=progress)
    feature_seconds = time.perf_counter() - feature_started
    if not ok.all():
        if log:
            log(f"{int((~ok).sum())} unreadable images left out")
        data, features = data.take(ok), features[ok]
    if len(np.unique(data.labels)) < 2:
        raise TrainError("need at least 2 classes (identities) with readable images")
    val_mask = validation_split(data.labels, cfg.val_fraction, cfg.seed)
    baseline = _frozen_metrics(features[val_mask], data.labels[val_mask])

    if cfg.mode == "head":
        model, fit = fit_head(
            features, data.labels, cfg, val_mask=val_mask, progress=progress, log=log
        )
        image_size = None
        device = "cpu"
    else:
        seed_everything(cfg.seed)
        model, fit, image_size = _fit_finetune(data, val_mask, cfg, progress, log)
        device = _device()
    images = {
        "train": int((~val_mask).sum()),
        "train_classes": len(np.unique(data.labels[~val_mask])),
        "validation": int(val_mask.sum()),
        "validation_classes": len(np.unique(data.labels[val_mask])),
    }
    source = None if isinstance(dataset, Labelled) else str(dataset)
    extra = {"dataset": source, "images": images}
    save_model(
        out_dir, model, cfg, embedder, in_dim=features.shape[1], image_size=image_size, extra=extra
    )
    result = TrainResult(
        model_dir=out_dir,
        config=cfg,
        history=fit.history,
        best_epoch=fit.best_epoch,
        baseline=baseline,
        validation=fit.validation,
        stopped_early=fit.stopped_early,
        seconds=time.perf_counter() - started,
        feature_seconds=feature_seconds,
        device=device,
        images=images,
    )
    (out_dir / "metrics.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    try:
        from lookalike.train.plots import plot_curves

        plot_curves(fit.history, out_dir / "curves.png", baseline=baseline.get("mAP@R"))
    except ImportError:  # matplotlib is optional
        pass
    return result


def _frozen_metrics(features: NDArray[np.float32], labels: NDArray[np.str_]) -> dict[str, float]:
    """Validation metrics of the frozen descriptor, computed like the trained one's."""
    if len(labels) == 0:
        return {"mAP@R": math.nan, "P@1": math.nan}
    _, codes = np.unique(labels, return_inverse=True)
    return _validate(lambda: features, codes.astype(np.int64))


def describe_device() -> str:
    """Where training would run: ``cuda (GPU name)`` or ``cpu (N cores)``."""
    torch = _torch()
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({os.cpu_count()} cores)"


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else round(float(value), 6)
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    return value


# --------------------------------------------------------------------------------------------
# Before / after on a test split
# --------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """The frozen base embedder against the trained model on the same test images.

    Attributes:
        before, after: :func:`retrieval_metrics` plus ``ms_per_image`` (batched inference,
            decoding excluded) and ``dim``.
        frozen, trained: the test images' vectors (for maps); labels, paths: the images'.
    """

    before: dict[str, float]
    after: dict[str, float]
    frozen: NDArray[np.float32]
    trained: NDArray[np.float32]
    labels: NDArray[np.str_]
    paths: tuple[Path, ...]
    device: str

    def to_dict(self) -> dict:
        return _jsonable({"before": self.before, "after": self.after, "device": self.device})


def compare(
    model_dir: str | Path,
    data: Labelled,
    *,
    cache: Path | None = None,
    progress: Progress | None = None,
    timing_images: int = 32,
) -> Comparison:
    """Retrieval metrics of the base embedder and of the trained model on ``data``.

    Queries and gallery follow ``data`` (query/gallery layout) or every image queries all the
    others (class folders), each query's own image excluded.

    Example:
        >>> c = compare("parts-model", load_labelled("parts-test"))  # doctest: +SKIP
        >>> c.after["mAP@R"] - c.before["mAP@R"]  # doctest: +SKIP
        0.07
    """
    from lookalike.models.trained import TrainedEmbedder

    trained = TrainedEmbedder(model_dir)
    base = trained.base or load_embedder(trained.config["base"]["name"])
    frozen, ok = backbone_features(base, data.paths, cache=cache, progress=progress)
    if not ok.all():
        data, frozen = data.take(ok), frozen[ok]
    if trained.mode == "head":
        after = trained.embed_descriptors(frozen)
    else:
        after, _ = backbone_features(trained, data.paths, cache=cache, progress=progress)
    sample = [decode(p, min_side=trained.input_size) for p in data.paths[:timing_images]]
    before_metrics = retrieval_metrics(frozen, data.labels, data.is_query, data.is_gallery)
    after_metrics = retrieval_metrics(after, data.labels, data.is_query, data.is_gallery)
    before_metrics |= {"dim": base.dim, "ms_per_image": ms_per_image(base, sample)}
    after_metrics |= {"dim": trained.dim, "ms_per_image": ms_per_image(trained, sample)}
    return Comparison(
        before_metrics, after_metrics, frozen, after, data.labels, data.paths, "cpu (ONNX Runtime)"
    )


def ms_per_image(embedder: Embedder, images: Sequence[Image.Image], repeats: int = 3) -> float:
    """Best-of-``repeats`` milliseconds per image of one batched ``embed_images`` call."""
    if not images:
        return math.nan
    embedder.embed_images(images[:2])  # warm-up: sessions, thread pools
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        embedder.embed_images(images)
        best = min(best, time.perf_counter() - started)
    return best * 1000 / len(images)
