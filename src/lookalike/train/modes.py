"""The two ways to train: a projection head on cached descriptors, or fine-tuning on images.

``head`` (default, fast on a CPU)
    :func:`fit_head` trains :func:`~lookalike.train.network.make_head` on the base embedder's
    descriptors (:mod:`lookalike.train.features`).
``finetune`` (for a GPU)
    :func:`fit_finetune` trains the last blocks of the PyTorch EfficientNet-Lite together with
    the head, on augmented crops of the images. Uses CUDA when present and warns when it is not.

Both run :func:`~lookalike.train.loop.fit_model` and return the model with its best weights.

Example:
    >>> from lookalike.train.config import TrainConfig
    >>> from lookalike.train.modes import fit_head
    >>> head, fit = fit_head(x, labels, TrainConfig(epochs=5))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from lookalike.images import decode
from lookalike.train.config import Log, Progress, TrainConfig
from lookalike.train.data import Labelled, validation_split
from lookalike.train.loop import embed_rows, fit_model, seed_everything, validation_metrics
from lookalike.train.network import make_finetune_net, make_head, torch_module, training_device

__all__ = ["fit_finetune", "fit_head"]


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
    torch = torch_module()
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
    fit = fit_model(
        head,
        lambda idx: x_train[idx],
        codes.astype(np.int64),
        lambda: validation_metrics(
            lambda: embed_rows(head, x_val, device), val_codes.astype(np.int64)
        ),
        cfg,
        device,
        progress,
        log,
    )
    head.load_state_dict(fit.best_state)
    head.eval()
    return head, fit


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


def fit_finetune(
    data: Labelled,
    val_mask: NDArray[np.bool_],
    cfg: TrainConfig,
    progress: Progress | None,
    log: Log | None,
):
    """Fine-tune :func:`~lookalike.train.network.make_finetune_net` on augmented crops of the
    training images (``~val_mask``); returns ``(model, fit, image_size)``.

    Example:
        >>> model, fit, size = fit_finetune(data, val_mask, cfg, None, print)  # doctest: +SKIP
    """
    torch = torch_module()
    from lookalike.models.efficientnet import VARIANTS, preprocess

    device = training_device()
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
        fit = fit_model(
            model,
            batch_inputs,
            codes.astype(np.int64),
            lambda: validation_metrics(embed_val, val_codes.astype(np.int64)),
            cfg,
            device,
            progress,
            log,
        )
    finally:
        pool.shutdown()
    model.load_state_dict(fit.best_state)
    return model.cpu().eval(), fit, size
