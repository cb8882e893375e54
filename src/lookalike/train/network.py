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

import math
import os

import numpy as np
from numpy.typing import NDArray

from lookalike.errors import TrainError
from lookalike.train.whitening import learned_whitening

__all__ = [
    "describe_device",
    "make_blocks_net",
    "make_finetune_net",
    "make_head",
    "make_prefix_net",
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
    whitening: tuple[NDArray, NDArray] | None = None,
    blend: float = math.inf,
):
    """The projection head: a linear map plus a residual MLP, then unit length; optionally
    side by side with its (unit) input.

    ``embedding = normalise(W x + b + MLP(x))`` with ``MLP = Dropout -> Linear -> BatchNorm ->
    ReLU -> Linear`` (``hidden=0``: linear only). The MLP's last layer starts at zero, so an
    untrained head is the linear map; with ``init = (features, labels)`` of the training images
    that map starts as their :func:`~lookalike.train.whitening.learned_whitening` (or as
    ``whitening = (mean, projection)``, already computed). Why: a
    randomly initialised head scrambles the backbone's geometry and overfits the training
    classes, while learned whitening alone beats the frozen backbone on unseen classes (the
    ``train`` section of docs/benchmarks.md); the metric loss then only has to improve on it.

    ``blend`` keeps the input next to the head: the embedding is ``normalise([x / |x|,
    blend * h])`` with ``h`` the head's unit output, so that the cosine of two embeddings is
    ``(cos_input + blend^2 cos_head) / (1 + blend^2)``: ``inf`` (default) is the head alone
    (``dim`` values), ``0`` the input alone (``in_dim`` values; the head is unused), anything
    between both (``in_dim + dim``). Where the whitening start is worse than the descriptor it
    starts from (few training classes; classes unlike the training ones), a finite blend keeps
    the descriptor's geometry: :func:`~lookalike.train.trainer.train` picks it on validation.

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

            self.blend = float(blend)
            self.out_dim = dim if math.isinf(blend) else in_dim if blend == 0 else in_dim + dim

        def forward(self, x):
            unit = nn.functional.normalize
            if self.blend == 0:
                return unit(x, dim=-1)
            z = self.linear(x)
            if self.mlp is not None:
                z = z + self.mlp(x)
            z = unit(z, dim=-1)
            if math.isinf(self.blend):
                return z
            return unit(torch.cat([unit(x, dim=-1), self.blend * z], dim=-1), dim=-1)

    head = Head()
    if whitening is None and init is not None:
        whitening = learned_whitening(init[0], init[1], dim)
    if whitening is not None:
        _init_whitening(head.linear, whitening[0], whitening[1], dim)
    return head


def _init_whitening(linear, mean: NDArray, projection: NDArray, dim: int) -> None:
    """Set ``linear`` to a learned whitening ``(x - mean) @ projection``."""
    torch = torch_module()
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


def _pretrained(base: str):
    """The PyTorch EfficientNet-Lite ``base`` with its packaged ImageNet weights, in eval mode."""
    torch = torch_module()
    from lookalike.models.efficientnet import VARIANTS, weights_path

    if base not in VARIANTS:
        raise TrainError(f"this mode needs an EfficientNet-Lite base, not {base!r}")
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise TrainError("this mode needs efficientnet-lite-pytorch") from exc
    net = EfficientNet.from_name(base)
    net.load_state_dict(torch.load(weights_path(base), map_location="cpu", weights_only=True))
    return net.eval()


def make_blocks_net(base: str, blocks: int, head, fusion: float = 0.5):
    """The last ``blocks`` MBConv blocks of EfficientNet-Lite (pretrained), its 1x1 head
    convolution, a GeM pooling that starts as average pooling (its power is learned), the frozen
    ImageNet classifier for the class-probability half of the default descriptor, then ``head``.

    Its input is the cached block input (:mod:`lookalike.train.views`); untrained, it computes
    the default descriptor (:meth:`descriptor`, up to float precision) and ``head`` of it.
    BatchNorm statistics stay frozen (batches are small and hold few classes).

    Example:
        >>> head = make_head(2280, 0, 256)  # doctest: +SKIP
        >>> net = make_blocks_net("efficientnet-lite0", 1, head)  # doctest: +SKIP
        >>> net(torch.zeros(2, 192, 7, 7)).shape  # doctest: +SKIP
        torch.Size([2, 256])
    """
    torch = torch_module()
    nn = torch.nn
    net = _pretrained(base)
    count = len(net._blocks)
    if not 0 <= blocks <= count:
        raise TrainError(f"{base} has {count} blocks: --blocks must be 0-{count}")
    first = count - blocks
    drop_rate = float(net._global_params.drop_connect_rate or 0.0)

    class BlocksNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(list(net._blocks)[first:])
            self.conv_head, self.bn1, self.act = net._conv_head, net._bn1, net._swish
            self.gem_p = nn.Parameter(torch.tensor(1.0))
            self.fc = net._fc
            for p in self.fc.parameters():
                p.requires_grad = False
            self.head = head
            self.fusion = fusion
            self.out_dim = getattr(head, "out_dim", None)

        def train(self, mode: bool = True):
            super().train(mode)
            for module in self.modules():  # frozen BatchNorm statistics
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
            return self

        def feature_map(self, x):
            """The last feature map (after the 1x1 head convolution) of block inputs ``x``."""
            for i, block in enumerate(self.blocks):
                x = block(x, drop_connect_rate=drop_rate * (first + i) / count)
            return self.act(self.bn1(self.conv_head(x)))

        def descriptor(self, x):
            return self.pooled(self.feature_map(x))

        def pooled(self, x):
            """The fused descriptor of a last feature map: GeM, class probabilities, unit."""
            p = self.gem_p.clamp(1.0, 8.0)
            pooled = x.clamp(min=1e-6).pow(p).mean((2, 3)).pow(1.0 / p)
            probs = torch.sqrt(torch.softmax(self.fc(pooled), dim=-1) + 1e-12)
            unit = nn.functional.normalize
            fused = torch.cat([unit(pooled, dim=-1), self.fusion * unit(probs, dim=-1)], 1)
            return unit(fused, dim=-1)

        def forward(self, x):
            return self.head(self.descriptor(x))

    return BlocksNet()


def make_prefix_net(base: str, blocks: int):
    """The frozen float32 part of EfficientNet-Lite before its last ``blocks`` blocks: image ->
    block input (what :mod:`lookalike.train.views` caches from the int8 network; for pictures
    such as Grad-CAM, where gradients must flow)."""
    torch = torch_module()
    net = _pretrained(base)
    first = len(net._blocks) - blocks

    class Prefix(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, image):
            x = self.net._swish(self.net._bn0(self.net._conv_stem(image)))
            for block in list(self.net._blocks)[:first]:
                x = block(x)
            return x

    return Prefix().eval()


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
