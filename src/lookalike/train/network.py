"""The networks that are trained: the projection head, and a partly frozen EfficientNet-Lite.

``head`` mode trains :func:`make_head` on cached descriptors (a linear map started from
:func:`~lookalike.train.whitening.learned_whitening` plus a residual MLP, L2-normalised);
``finetune`` mode trains :func:`make_finetune_net`, the last blocks of the PyTorch
EfficientNet-Lite with such a head on top. PyTorch is imported on first use.

Example:
    >>> import torch
    >>> from lookalike.train.network import make_head
    >>> make_head(2280, 1024, 256)(torch.zeros(2, 2280)).shape  # doctest: +SKIP
    torch.Size([2, 256])
"""

from __future__ import annotations

import os

import numpy as np
from numpy.typing import NDArray

from lookalike.errors import TrainError
from lookalike.train.whitening import learned_whitening

__all__ = [
    "describe_device",
    "make_finetune_net",
    "make_head",
    "torch_module",
    "training_device",
]


def torch_module():
    """The ``torch`` module, imported on first use (a :class:`TrainError` when it is missing)."""
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
    that map starts as their :func:`~lookalike.train.whitening.learned_whitening`. Why: a
    randomly initialised head scrambles the backbone's geometry and overfits the training
    classes, while learned whitening alone beats the frozen backbone on unseen classes (the
    ``train`` section of docs/benchmarks.md); the metric loss then only has to improve on it.

    Example:
        >>> make_head(2280, 1024, 256)(torch.zeros(2, 2280)).shape  # doctest: +SKIP
        torch.Size([2, 256])
    """
    torch = torch_module()
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


def _init_whitening(linear, features: NDArray, labels: NDArray, dim: int) -> None:
    """Set ``linear`` to the learned whitening of the training features."""
    torch = torch_module()
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


def make_finetune_net(base: str, blocks: int, hidden: int, dim: int, dropout: float = 0.0):
    """EfficientNet-Lite with its packaged ImageNet weights, all but the last ``blocks`` MBConv
    blocks (and the final 1x1 conv) frozen, average pooling and a projection head on top."""
    torch = torch_module()
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


def training_device() -> str:
    """``"cuda"`` when PyTorch sees a GPU, else ``"cpu"``."""
    torch = torch_module()
    return "cuda" if torch.cuda.is_available() else "cpu"


def describe_device() -> str:
    """Where training would run: ``cuda (GPU name)`` or ``cpu (N cores)``."""
    torch = torch_module()
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({os.cpu_count()} cores)"
