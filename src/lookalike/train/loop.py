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
import warnings
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
    "seed_everything",
    "validation_metrics",
]


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
    torch = torch_module()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Fit:
    """What :func:`fit_model` did: one history row per epoch (epoch 0: before training), the
    best epoch, its weights and validation metrics, and whether early stopping ended the run."""

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


def validation_metrics(embed: Callable[[], NDArray[np.float32]], labels: NDArray[np.int64]) -> dict:
    """mAP@R and P@1 of the validation images, all against all (AccuracyCalculator)."""
    if len(labels) == 0:
        return {"mAP@R": math.nan, "P@1": math.nan}
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(
        include=("mean_average_precision_at_r", "precision_at_1"),
        k="max_bin_count",
        device=torch_module().device("cpu"),
    )
    torch = torch_module()
    vectors = torch.from_numpy(np.ascontiguousarray(embed(), dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singleton classes: pml warns, they just don't count
        acc = calc.get_accuracy(vectors, torch.from_numpy(labels))
    return {"mAP@R": float(acc["mean_average_precision_at_r"]), "P@1": float(acc["precision_at_1"])}


def fit_model(
    model,
    batch_inputs: Callable[[NDArray[np.intp]], object],
    labels: NDArray[np.int64],
    validate: Callable[[], dict],
    cfg: TrainConfig,
    device: str,
    progress: Progress | None,
    log: Log | None,
) -> Fit:
    """Train ``model`` with the configured loss and miner; early stopping on validation mAP@R."""
    torch = torch_module()
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
    return Fit(history, best[1], best[2], best[3], stopped)


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
