"""Learn a similarity for your own data: :func:`train`, the entry point of ``lookalike train``.

Labelled images (:mod:`lookalike.train.data`) teach a small network which images belong
together (:mod:`lookalike.train.modes`: the last blocks of the base network on cached feature
maps, a projection head on cached descriptors, or fine-tuning on a GPU). A validation split is
kept (``goal="seen"``: other images of the training classes; ``"unseen"``: held-out classes);
training stops early when its mAP@R stops improving and keeps the best epoch. Every figure is
measured as a collection searches (PCA past 1000 images, alpha-query expansion), against two
references on the same validation images: the **default search** (the base descriptor) and the
**whitening only** start (learned whitening of the training descriptors, the head's epoch 0).

The run ends with a **verdict** (:data:`~lookalike.train.config.VERDICTS`): ``improved``,
``whitening-only`` (no epoch beat the start), ``failed-stuck`` (the loss stayed at zero: nothing
was mined) or ``failed-below-default`` (the kept model is worse than the default search on
validation). Failures are logged as a warning and written to ``metrics.json`` and
``config.json``; the folder is still written, so that it can be inspected. The result is a
model folder (:func:`~lookalike.train.export.save_model`) with ``metrics.json`` and
``curves.png`` that loads as an embedder: ``lookalike index FOLDER --model MODEL_DIR``.
Measured results: the ``train`` section of docs/benchmarks.md.

Example:
    >>> from lookalike.train.trainer import train
    >>> result = train("datasets/my-parts", "models/parts", epochs=20)  # doctest: +SKIP
    >>> result.verdict, result.validation["mAP@R"] > result.baseline["mAP@R"]  # doctest: +SKIP
    ('improved', True)
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
from lookalike.train.loop import Fit, seed_everything, validation_metrics
from lookalike.train.modes import fit_blocks, fit_finetune, fit_head, view_descriptors
from lookalike.train.network import training_device
from lookalike.train.views import block_views, choose_input_size
from lookalike.train.whitening import BLENDS, blend_name, learned_whitening, start_vectors

__all__ = ["train"]


def train(
    dataset: str | Path | Labelled,
    out_dir: str | Path,
    *,
    base: str = "efficientnet-lite0",
    loss: str = "multisimilarity",
    epochs: int = 12,
    mode: str = "blocks",
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
        out_dir: the model folder to write (``config.json``, weights, ONNX, ``whitening.npz``,
            ``metrics.json``, ``curves.png``).
        base, loss, epochs, mode, seed: the main choices; ``config`` sets all of them and more
            (when given, its values are used and these arguments are ignored).
        cache: where descriptors and block inputs are cached (default
            :func:`~lookalike.train.features.default_cache`).
        progress: ``progress(stage, done, total)``; log: receives one line per epoch, and the
            warnings.

    Raises:
        TrainError, DatasetError, ModelError: bad options, data or model.

    Example:
        >>> r = train("parts", "parts-model", epochs=10)  # doctest: +SKIP
        >>> r.verdict  # doctest: +SKIP
        'improved'
    """
    started = time.perf_counter()
    cfg = config or TrainConfig(base=base, loss=loss, epochs=epochs, mode=mode, seed=seed)
    cfg.check()
    data = dataset if isinstance(dataset, Labelled) else load_labelled(dataset)
    embedder = load_embedder(cfg.base)
    out_dir = Path(out_dir)
    val_mask = validation_split(data.labels, cfg.val_fraction, cfg.seed, cfg.goal)

    feature_started = time.perf_counter()
    views = val_views = train_views = None
    if cfg.mode == "blocks" or (cfg.mode == "head" and cfg.views > 1):
        size = cfg.image_size or choose_input_size(cfg.base, data.paths)
        options = {"size": size, "blocks": cfg.blocks, "seed": cfg.seed, "cache": cache}
        paths = np.asarray(data.paths, dtype=object)
        views = block_views(
            cfg.base, list(paths[~val_mask]), views=cfg.views, progress=progress, **options
        )
        val_views = block_views(cfg.base, list(paths[val_mask]), views=1, **options)
        features = np.zeros((len(data), views.descriptors.shape[1]), np.float32)
        ok = np.zeros(len(data), dtype=bool)
        features[~val_mask], ok[~val_mask] = views.descriptors, views.ok
        features[val_mask], ok[val_mask] = val_views.descriptors, val_views.ok
        views, val_views = views.take(views.ok), val_views.take(val_views.ok)
        if cfg.mode == "head":  # augmented views' descriptors, through the frozen last blocks
            train_views = view_descriptors(cfg.base, views)
    else:
        features, ok = backbone_features(embedder, data.paths, cache=cache, progress=progress)
    feature_seconds = time.perf_counter() - feature_started
    if not ok.all():
        if log:
            log(f"{int((~ok).sum())} unreadable images left out")
        data, features, val_mask = data.take(ok), features[ok], val_mask[ok]
    if len(np.unique(data.labels[~val_mask])) < 2:
        raise TrainError("need at least 2 classes (identities) with readable training images")
    train_labels, val_labels = data.labels[~val_mask], data.labels[val_mask]
    baseline = _metrics(features[val_mask], val_labels)
    whitening, blend, start = None, math.inf, {}
    start_metrics: dict[str, float] = {}
    if cfg.init == "whitening":
        whitening = learned_whitening(features[~val_mask], train_labels, cfg.dim)
        blend, start_metrics, start = _choose_start(features[val_mask], val_labels, whitening, cfg)
    if log:
        kept = start_metrics.get("mAP@R", math.nan)
        log(
            f"validation ({cfg.goal} classes, {int(val_mask.sum())} images): default search "
            f"mAP@R {baseline['mAP@R']:.4f}, start ({blend_name(blend)}) {kept:.4f}"
        )

    image_size, channels, device = None, None, "cpu"
    if cfg.mode == "head":
        model, fit = fit_head(
            features, data.labels, cfg, val_mask=val_mask, whitening=whitening, blend=blend,
            views=train_views, progress=progress, log=log,
        )  # fmt: skip
    elif cfg.mode == "blocks":
        model, fit = fit_blocks(
            views, train_labels, val_views, val_labels, cfg, whitening=whitening, blend=blend,
            progress=progress, log=log,
        )  # fmt: skip
        image_size, channels = views.size, views.maps.shape[2]
    else:
        seed_everything(cfg.seed)
        model, fit, image_size = fit_finetune(data, val_mask, cfg, progress, log)
        device = training_device()
    start_name = start.get("name", "initial head")
    verdict, warnings = _verdict(fit, baseline, start_name, bool(val_mask.any()))
    for line in warnings:
        if log:
            log(f"warning: {line}")
    images = {
        "train": int((~val_mask).sum()),
        "train_classes": len(np.unique(train_labels)),
        "validation": int(val_mask.sum()),
        "validation_classes": len(np.unique(val_labels)),
    }
    source = None if isinstance(dataset, Labelled) else str(dataset)
    extra = {"dataset": source, "images": images, "verdict": verdict, "start": start}
    save_model(
        out_dir, model, cfg, embedder, in_dim=features.shape[1], image_size=image_size,
        extra=extra, whitening=whitening, channels=channels, blend=blend,
    )  # fmt: skip
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
        whitening=start_metrics,
        start=start,
        verdict=verdict,
        warnings=warnings,
    )
    (out_dir / "metrics.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    try:
        from lookalike.train.plots import plot_curves

        plot_curves(
            fit.history,
            out_dir / "curves.png",
            baseline=baseline.get("mAP@R"),
            whitening=start_metrics.get("mAP@R"),
        )
    except ImportError:  # matplotlib is optional
        pass
    return result


def _choose_start(
    features: NDArray[np.float32],
    labels: NDArray[np.str_],
    whitening: tuple[NDArray, NDArray],
    cfg: TrainConfig,
) -> tuple[float, dict[str, float], dict]:
    """The blend of descriptor and whitening the model starts from (``cfg.blend``, else the
    best of :data:`~lookalike.train.whitening.BLENDS` on validation; ties go to the whitening
    for the "seen" goal, to the descriptor for "unseen"), its validation metrics, and a record
    of the choice for metrics.json."""
    choices = [cfg.blend] if cfg.blend is not None else list(BLENDS)
    if cfg.goal == "unseen":
        choices.reverse()
    tried = {b: _metrics(start_vectors(features, whitening, b), labels) for b in choices}
    best = choices[0]
    for b in choices[1:]:
        if tried[b]["mAP@R"] > tried[best]["mAP@R"]:
            best = b
    record = {
        "blend": None if math.isinf(best) else best,
        "name": blend_name(best),
        "tried": {blend_name(b): m["mAP@R"] for b, m in tried.items()},
    }
    return best, tried[best], record


def _metrics(vectors: NDArray[np.float32], labels: NDArray[np.str_]) -> dict[str, float]:
    """Validation metrics of fixed vectors, computed like the trained model's."""
    return validation_metrics(lambda: vectors, labels)


def _verdict(
    fit: Fit, baseline: dict[str, float], start_name: str, validated: bool
) -> tuple[str, list[str]]:
    """The run's verdict and the warnings a person should read."""
    if fit.stuck:
        return "failed-stuck", [
            "training failed: the loss stayed at zero (nothing was mined, so nothing was "
            "learned); the model written is its starting point. Try --loss triplet, more "
            "views, or more images per class"
        ]
    if not validated:
        return "unchecked", ["no validation images: the model was not measured"]
    best, default = fit.validation["mAP@R"], baseline["mAP@R"]
    if best < default:
        return "failed-below-default", [
            f"training failed: validation mAP@R {best:.4f} is below the default search's "
            f"{default:.4f}; index with the default model instead"
        ]
    if fit.best_epoch == 0:
        return "whitening-only", [
            f"no epoch beat the starting point (validation mAP@R {best:.4f}, default search "
            f"{default:.4f}): the model written is its closed-form start ({start_name})"
        ]
    return "improved", []
