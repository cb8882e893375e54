"""Learn a similarity for your own data: :func:`train`, the entry point of ``lookalike train``.

Labelled images (:mod:`lookalike.train.data`) teach a small network which images belong
together (:mod:`lookalike.train.modes`: a projection head on cached descriptors, or fine-tuning
on a GPU). A validation split is kept (held-out classes when there are enough, else held-out
images), training stops early when its mAP@R stops improving and keeps the best epoch. The
result is a model folder (:func:`~lookalike.train.export.save_model`) with ``metrics.json``
and ``curves.png`` that loads as an embedder: ``lookalike index FOLDER --model MODEL_DIR``.
Measured results: the ``train`` section of docs/benchmarks.md.

Example:
    >>> from lookalike.train.trainer import train
    >>> result = train("datasets/my-parts", "models/parts", epochs=20)  # doctest: +SKIP
    >>> result.validation["mAP@R"] > result.baseline["mAP@R"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from lookalike.errors import TrainError
from lookalike.models import load_embedder
from lookalike.train.config import Log, Progress, TrainConfig, TrainResult
from lookalike.train.data import Labelled, load_labelled, validation_split
from lookalike.train.export import save_model
from lookalike.train.features import backbone_features
from lookalike.train.loop import seed_everything, validation_metrics
from lookalike.train.modes import fit_finetune, fit_head
from lookalike.train.network import training_device

__all__ = ["train"]


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
        dataset: a dataset folder (:func:`~lookalike.train.data.load_labelled`) or already
            loaded :class:`~lookalike.train.data.Labelled` images (e.g. the training classes of
            a split).
        out_dir: the model folder to write (``config.json``, weights, ONNX, ``metrics.json``,
            ``curves.png``).
        base, loss, epochs, mode, seed: the main choices; ``config`` sets all of them and more
            (its values win over these arguments' defaults only when given).
        cache: where ``head`` mode caches backbone features (default
            :func:`~lookalike.train.features.default_cache`).
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
        model, fit, image_size = fit_finetune(data, val_mask, cfg, progress, log)
        device = training_device()
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
    return validation_metrics(lambda: features, codes.astype(np.int64))
