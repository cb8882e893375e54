"""The training loop shared by both modes: loss and miner, sampler, epochs, early stopping.

:func:`fit_model` trains any PyTorch module on batches with ``m`` images per class (the
losses, miners, sampler and accuracy calculator of pytorch-metric-learning), measures the
validation mAP@R after every epoch and keeps the best epoch's weights.

Example:
    >>> from lookalike.train.loop import build_loss, fit_model
    >>> loss, miner = build_loss("triplet", num_classes=10, dim=256)  # doctest: +SKIP
    >>> batch = lambda idx: x[idx]
    >>> fit = fit_model(head, batch, codes, validate, cfg, "cpu", None, None)  # doctest: +SKIP
    >>> fit.best_epoch  # doctest: +SKIP
    4
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lookalike.errors import TrainError
from lookalike.train.config import LOSSES, Log, Progress, TrainConfig
from lookalike.train.network import torch_module

__all__ = [
    "Fit",
    "build_loss",
    "embed_rows",
    "fit_model",
    "mined_count",
    "seed_everything",
    "start_only",
    "validation_metrics",
]


def build_loss(
    name: str, num_classes: int, dim: int, margin: float = 0.1, memory: int = 0
) -> tuple[object, object | None]:
    """``(loss, miner)`` from pytorch-metric-learning; ``miner`` is None when the loss mines for
    itself (``memory`` > 0: a CrossBatchMemory holding the last ``memory`` embeddings, mined
    with each batch) or needs no mining (ArcFace).

    - ``multisimilarity``: MultiSimilarityLoss (alpha 2, beta 50, base 0.5) on the pairs of a
      MultiSimilarityMiner (epsilon 0.1);
    - ``triplet``: TripletMarginLoss (``margin``) on batch-hard triplets (each anchor's farthest
      positive and nearest negative: there is always one per anchor with a positive);
    - ``arcface``: ArcFaceLoss (class centres are learned; no memory).

    Example:
        >>> loss, miner = build_loss("triplet", 10, 256)  # doctest: +SKIP
    """
    from pytorch_metric_learning import losses, miners

    if name == "triplet":
        loss, miner = losses.TripletMarginLoss(margin=margin), miners.BatchHardMiner()
    elif name == "multisimilarity":
        loss = losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
        miner = miners.MultiSimilarityMiner(epsilon=0.1)
    elif name == "arcface":
        return losses.ArcFaceLoss(num_classes, dim, margin=28.6, scale=64), None
    else:
        raise TrainError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    counting = _CountingMiner(miner)
    if memory > 0:
        return losses.CrossBatchMemory(loss, dim, memory_size=memory, miner=counting), None
    return loss, counting


class _CountingMiner:
    """A miner that counts what it finds (pairs or triplets), so that a run knows when nothing
    was mined (the loss is then zero and nothing is learned)."""

    def __init__(self, miner) -> None:
        self.miner = miner
        self.found = 0

    def __call__(self, *args):
        found = self.miner(*args)
        self.found += len(found[0]) + (len(found[2]) if len(found) == 4 else 0)
        return found


def mined_count(loss_fn, miner) -> int:
    """Pairs or triplets mined so far by the miner of :func:`build_loss`'s pair (-1: no miner)."""
    counting = miner if miner is not None else getattr(loss_fn, "miner", None)
    return counting.found if isinstance(counting, _CountingMiner) else -1


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (pytorch-metric-learning's samplers draw from it) and PyTorch."""
    torch = torch_module()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Fit:
    """What :func:`fit_model` did: one history row per epoch (epoch 0: before training), the
    best epoch, its weights and validation metrics, whether early stopping ended the run, and
    whether the loss stayed at zero (nothing mined: nothing learned)."""

    history: list[dict[str, float]]
    best_epoch: int
    best_state: dict
    validation: dict[str, float]
    stopped_early: bool
    stuck: bool = False


def start_only(validation: dict, model) -> Fit:
    """The :class:`Fit` of a run that trains nothing: its start, measured, is the result."""
    return Fit(
        [_epoch_row(0, math.nan, math.nan, validation, 0.0)], 0, _state(model), validation, False
    )


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


def validation_metrics(embed: Callable[[], NDArray[np.float32]], labels: NDArray) -> dict:
    """mAP@R, P@1 (Rank-1) and mAP of the validation images, all against all, searched as a
    collection searches them (:func:`~lookalike.train.evaluation.search_metrics`: PCA past 1000
    images, alpha-query expansion), so that a model is judged as it will be used."""
    if len(labels) == 0:
        return {"mAP@R": math.nan, "P@1": math.nan, "mAP": math.nan}
    from lookalike.train.evaluation import search_metrics

    found = search_metrics(np.asarray(embed(), dtype=np.float32), np.asarray(labels))
    return {"mAP@R": found["mAP@R"], "P@1": found["Rank-1"], "mAP": found["mAP"]}


def fit_model(
    model,
    batch_inputs: Callable[[NDArray[np.intp]], object],
    labels: NDArray[np.int64],
    validate: Callable[[], dict],
    cfg: TrainConfig,
    device: str,
    progress: Progress | None,
    log: Log | None,
    teacher=None,
) -> Fit:
    """Train ``model`` with the configured loss and miner; early stopping on validation mAP@R.

    ``teacher``: (n, dim) embeddings of the training rows at the start (a tensor); with
    ``cfg.distill`` > 0 each batch's cosine similarity matrix is pulled towards the teacher's
    (mean squared difference), which keeps what the starting point knew about classes training
    never sees. Epoch 0 is the starting point; it is kept when no epoch beats it by
    ``cfg.min_delta`` (a saturated or tiny validation set must not pass noise off as a gain).
    """
    torch = torch_module()
    batch = min(cfg.batch_size, cfg.m_per_class * len(np.unique(labels)))
    memory = max(cfg.memory, batch) if cfg.memory and cfg.loss != "arcface" else 0
    dim = int(getattr(model, "out_dim", cfg.dim))
    loss_fn, miner = build_loss(cfg.loss, int(labels.max()) + 1, dim, cfg.margin, memory)
    loss_fn = loss_fn.to(device)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in trainable if not n.endswith("gem_p")], "lr": cfg.lr}]
    pooling = [p for n, p in trainable if n.endswith("gem_p")]
    if pooling:  # one scalar: it may move faster than the weights
        groups.append({"params": pooling, "lr": cfg.lr * 100, "weight_decay": 0.0})
    centres = [p for p in loss_fn.parameters() if p.requires_grad]
    if centres:  # ArcFace learns class centres: faster
        groups.append({"params": centres, "lr": cfg.lr * 10})
    optimiser = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=cfg.epochs)
    distill = cfg.distill if teacher is not None else 0.0

    first = validate()
    history = [_epoch_row(0, math.nan, math.nan, first, 0.0)]
    best = (first["mAP@R"], 0, _state(model), first)
    stale, stopped, zero_epochs = 0, False, 0
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        model.train()
        _freeze_norms(model)
        losses, batches, mined_before = [], 0, mined_count(loss_fn, miner)
        for idx in _batches(labels, cfg):
            x = batch_inputs(idx)
            y = torch.from_numpy(labels[idx]).to(device)
            embeddings = model(x)
            pairs = miner(embeddings, y) if miner is not None else None
            loss = loss_fn(embeddings, y, pairs) if pairs is not None else loss_fn(embeddings, y)
            total = loss
            if distill:
                target = teacher[idx].to(device)
                gap = embeddings @ embeddings.T - target @ target.T
                total = total + distill * gap.pow(2).mean()
            optimiser.zero_grad()
            total.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            batches += 1
        scheduler.step()
        mined = mined_count(loss_fn, miner)
        per_batch = (mined - mined_before) / max(batches, 1) if mined >= 0 else math.nan
        val = validate()
        mean_loss = float(np.mean(losses)) if losses else math.nan
        history.append(_epoch_row(epoch, mean_loss, per_batch, val, time.perf_counter() - started))
        zero_epochs = zero_epochs + 1 if not mean_loss > 1e-7 else 0
        if log:
            log(
                f"epoch {epoch:3d}  loss {mean_loss:.4f}  mined/batch {per_batch:.0f}  "
                f"val mAP@R {val['mAP@R']:.4f}  Rank-1 {val['P@1']:.4f}"
            )
        if progress:
            progress("epochs", epoch, cfg.epochs)
        # nan (no validation) counts as an improvement; a gain within noise does not
        if not val["mAP@R"] <= best[0] + cfg.min_delta:
            best, stale = (val["mAP@R"], epoch, _state(model), val), 0
        else:
            stale += 1
        if zero_epochs >= min(cfg.patience, 2) and zero_epochs == epoch:
            stopped = True  # the loss has been zero from the start: nothing will be learned
            break
        if stale >= cfg.patience:
            stopped = True
            break
    stuck = zero_epochs == len(history) - 1
    return Fit(history, best[1], best[2], best[3], stopped, stuck)


def _epoch_row(
    epoch: int, loss: float, mined: float, val: dict, seconds: float
) -> dict[str, float]:
    return {
        "epoch": epoch,
        "loss": float(loss),
        "mined": float(mined),
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


def embed_rows(model, x, device: str, batch: int = 1024) -> NDArray[np.float32]:
    """``model``'s embeddings of the rows of the tensor ``x``, in eval mode, ``batch`` at a time.

    Example:
        >>> embed_rows(head, torch.from_numpy(features), "cpu").shape  # doctest: +SKIP
        (1000, 512)
    """
    torch = torch_module()
    model.eval()
    with torch.no_grad():
        parts = [model(x[i : i + batch].to(device)).cpu().numpy() for i in range(0, len(x), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
