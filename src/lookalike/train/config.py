"""The vocabulary of a training run: its options, its result, and the progress callbacks.

The small core of :mod:`lookalike.train`: every other module of the package may import it, and
it imports none of them. :class:`TrainConfig` holds every choice of a run (all of it is written
to the model folder's ``config.json``), :class:`TrainResult` what the run did and measured.

Example:
    >>> from lookalike.train.config import TrainConfig
    >>> cfg = TrainConfig(loss="multisimilarity", epochs=10)
    >>> cfg.check()
    >>> cfg.batch_size
    128
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lookalike.errors import TrainError

__all__ = [
    "LOSSES",
    "MODES",
    "Log",
    "Progress",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "jsonable",
]

LOSSES: tuple[str, ...] = ("triplet", "multisimilarity", "arcface")
MODES: tuple[str, ...] = ("head", "finetune")

#: ``progress(stage, done, total)``: stage is "features", "epochs" or "images".
Progress = Callable[[str, int, int], None]
Log = Callable[[str], None]


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
        return jsonable(
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


def jsonable(value: object) -> object:
    """``value`` with paths as strings, NumPy scalars as Python ones, floats rounded to 6 places
    and NaN as None (JSON has no NaN).

    Example:
        >>> jsonable({"mAP": float("nan"), "n": np.int64(3), "path": Path("m")})
        {'mAP': None, 'n': 3, 'path': 'm'}
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else round(float(value), 6)
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    return value
