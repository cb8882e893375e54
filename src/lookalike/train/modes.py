"""The three ways to train, from the cheapest: a head on cached descriptors, the last blocks on
cached feature maps, or fine-tuning on images.

``head`` (seconds to a minute on a CPU)
    :func:`fit_head` trains :func:`~lookalike.train.network.make_head` on the base embedder's
    descriptors (:mod:`lookalike.train.features`).
``blocks`` (default: minutes on a CPU)
    :func:`fit_blocks` trains the last MBConv block(s), the 1x1 head convolution, the pooling and
    the head (:func:`~lookalike.train.network.make_blocks_net`) on the cached inputs of those
    blocks (:mod:`lookalike.train.views`: several colour/crop views per image, flipped and
    cropped again on the feature map at every step).
``finetune`` (for a GPU)
    :func:`fit_finetune` trains the last blocks of the PyTorch EfficientNet-Lite together with
    the head, on augmented crops of the images. Uses CUDA when present and warns when it is not.

All run :func:`~lookalike.train.loop.fit_model` and return the model with its best weights.

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
from lookalike.train.loop import (
    embed_rows,
    fit_model,
    seed_everything,
    start_only,
    validation_metrics,
)
from lookalike.train.network import (
    make_blocks_net,
    make_finetune_net,
    make_head,
    torch_module,
    training_device,
)
from lookalike.train.views import FUSION, BlockViews
from lookalike.train.whitening import learned_whitening

__all__ = ["augment_maps", "fit_blocks", "fit_finetune", "fit_head", "view_descriptors"]


def fit_head(
    features: NDArray[np.float32],
    labels: Sequence[str] | NDArray,
    cfg: TrainConfig | None = None,
    *,
    val_mask: NDArray[np.bool_] | None = None,
    whitening: tuple[NDArray, NDArray] | None = None,
    blend: float = math.inf,
    views: NDArray[np.float32] | None = None,
    progress: Progress | None = None,
    log: Log | None = None,
):
    """Train a projection head on precomputed features; returns ``(head, fit)``.

    ``val_mask`` marks the validation rows (default: :func:`validation_split` for
    ``cfg.goal``); ``whitening``: the head's start, when already computed from the training
    rows; ``blend``: the descriptor kept beside the head (:func:`~lookalike.train.network.
    make_head`). The similarities at the start are distilled (``cfg.distill``). ``views``:
    (training rows, views, dim) descriptors of augmented views of the training images
    (:func:`view_descriptors`); each step then takes one at random. Without them the head only
    sees the descriptors its whitening start was fitted on, which it separates perfectly when
    classes are few: nothing is mined and the loss stays at zero.

    Example:
        >>> head, fit = fit_head(x, labels, TrainConfig(mode="head", epochs=5))  # doctest: +SKIP
        >>> fit.best_epoch, fit.validation["mAP@R"]  # doctest: +SKIP
        (4, 0.41)
    """
    cfg = cfg or TrainConfig(mode="head")
    cfg.check()
    torch = torch_module()
    seed_everything(cfg.seed)
    labels = np.asarray(labels, dtype=str)
    if val_mask is None:
        val_mask = validation_split(labels, cfg.val_fraction, cfg.seed, cfg.goal)
    _, codes = np.unique(labels[~val_mask], return_inverse=True)
    device = "cpu"  # a head on cached features is faster on the CPU than the copy to a GPU
    x_train = torch.from_numpy(np.ascontiguousarray(features[~val_mask], np.float32))
    x_val = torch.from_numpy(np.ascontiguousarray(features[val_mask], np.float32))
    if cfg.init == "whitening" and whitening is None:
        whitening = learned_whitening(features[~val_mask], labels[~val_mask], cfg.dim)
    head = make_head(
        features.shape[1],
        cfg.hidden,
        cfg.dim,
        cfg.dropout,
        whitening=whitening if cfg.init == "whitening" else None,
        blend=blend,
    )
    if blend == 0:  # the start is the descriptor itself: the head is not in the embedding
        if log:
            log("the start is the descriptor itself (blend 0): there is no head to train")
        return head.eval(), start_only(
            validation_metrics(lambda: embed_rows(head, x_val, device), labels[val_mask]),
            head,
        )
    teacher = torch.from_numpy(embed_rows(head, x_train, device))
    x_views = None if views is None else torch.from_numpy(np.ascontiguousarray(views, np.float32))
    rng = np.random.default_rng(cfg.seed)

    def batch_inputs(idx: NDArray[np.intp]):
        if x_views is None:
            return x_train[idx]
        return x_views[idx, rng.integers(0, x_views.shape[1], len(idx))]

    fit = fit_model(
        head,
        batch_inputs,
        codes.astype(np.int64),
        lambda: validation_metrics(lambda: embed_rows(head, x_val, device), labels[val_mask]),
        cfg,
        device,
        progress,
        log,
        teacher=teacher,
    )
    head.load_state_dict(fit.best_state)
    head.eval()
    return head, fit


def fit_blocks(
    train: BlockViews,
    labels: Sequence[str] | NDArray,
    val: BlockViews,
    val_labels: Sequence[str] | NDArray,
    cfg: TrainConfig,
    *,
    whitening: tuple[NDArray, NDArray] | None = None,
    blend: float = math.inf,
    progress: Progress | None = None,
    log: Log | None = None,
):
    """Train the last blocks, pooling and head on cached block inputs; returns ``(model, fit)``.

    Each step takes, for each image, one of its cached views at random, mirrors the feature map
    half of the time and, for half of the batches, crops it by one cell (a zoom of about 75-80%
    of the area). Validation uses view 0 (what inference sees). The head starts from
    ``whitening`` (the learned whitening of the training images' default descriptors) and the
    start's similarities are distilled (``cfg.distill``).

    Example:
        >>> model, fit = fit_blocks(train, labels, val, val_labels, cfg)  # doctest: +SKIP
    """
    torch = torch_module()
    seed_everything(cfg.seed)
    _, codes = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    head = make_head(
        train.descriptors.shape[1],
        cfg.hidden,
        cfg.dim,
        cfg.dropout,
        whitening=whitening if cfg.init == "whitening" else None,
        blend=blend,
    )
    # channels-last convolutions ran about 20% faster on a 2-core AVX-512 CPU
    model = make_blocks_net(cfg.base, train.blocks, head, FUSION)
    model = model.to(memory_format=torch.channels_last)
    train_maps = torch.from_numpy(np.ascontiguousarray(train.maps))
    val_maps = torch.from_numpy(np.ascontiguousarray(val.maps[:, 0]))
    device = "cpu"
    count = train_maps.shape[1]
    rng = np.random.default_rng(cfg.seed)

    def embed(maps) -> NDArray[np.float32]:
        return embed_rows(_Float(model), maps, device, batch=256)

    teacher = torch.from_numpy(embed(train_maps[:, 0]))

    def batch_inputs(idx: NDArray[np.intp]):
        chosen = train_maps[idx, rng.integers(0, count, len(idx))].float()
        return augment_maps(chosen, rng).contiguous(memory_format=torch.channels_last)

    fit = fit_model(
        model,
        batch_inputs,
        codes.astype(np.int64),
        lambda: validation_metrics(lambda: embed(val_maps), np.asarray(val_labels, dtype=str)),
        cfg,
        device,
        progress,
        log,
        teacher=teacher,
    )
    model.load_state_dict(fit.best_state)
    model.eval()
    return model, fit


def view_descriptors(base: str, cached: BlockViews) -> NDArray[np.float32]:
    """(n, views, dim) default descriptors of every cached view: view 0 as cached (the int8
    network's), the others through the frozen float32 last blocks (a few ms per view)."""
    torch = torch_module()
    net = make_blocks_net(base, cached.blocks, torch.nn.Identity(), FUSION).eval()
    n, count = cached.maps.shape[:2]
    out = np.empty((n, count, cached.descriptors.shape[1]), np.float32)
    out[:, 0] = cached.descriptors
    with torch.no_grad():
        for v in range(1, count):
            for i in range(0, len(out), 256):
                maps = torch.from_numpy(cached.maps[i : i + 256, v].astype(np.float32))
                out[i : i + 256, v] = net.descriptor(maps).numpy()
    return out


class _Float:
    """``model`` applied to float16 maps (they are cached as float16, the network is float32)."""

    def __init__(self, model) -> None:
        self.model = model

    def eval(self):
        self.model.eval()
        return self

    def __call__(self, x):
        return self.model(x.float())


def augment_maps(maps, rng: np.random.Generator):
    """Feature-map augmentation: each map mirrored with probability 1/2; for half of the batches
    every map is cropped by one cell at a random corner (maps of at least 5 x 5).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> augment_maps(torch.zeros(4, 192, 9, 9), rng).shape[0]  # doctest: +SKIP
        4
    """
    torch = torch_module()
    n, _, h, w = maps.shape
    flip = torch.from_numpy(rng.random(n) < 0.5)[:, None, None, None]
    maps = torch.where(flip, maps.flip(3), maps)
    if min(h, w) >= 5 and rng.random() < 0.5:
        dy, dx = rng.integers(0, 2, n), rng.integers(0, 2, n)
        maps = torch.stack(
            [maps[i, :, dy[i] : dy[i] + h - 1, dx[i] : dx[i] + w - 1] for i in range(n)]
        )
    return maps


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
            lambda: validation_metrics(embed_val, val_codes),
            cfg,
            device,
            progress,
            log,
        )
    finally:
        pool.shutdown()
    model.load_state_dict(fit.best_state)
    return model.cpu().eval(), fit, size
