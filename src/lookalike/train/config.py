"""The vocabulary of a training run: its options, its result, and the progress callbacks.

The small core of :mod:`lookalike.train`: every other module of the package may import it, and
it imports none of them. :class:`TrainConfig` holds every choice of a run (all of it is written
to the model folder's ``config.json``), :class:`TrainResult` what the run did and measured.

Example:
    >>> from lookalike.train.config import TrainConfig
    >>> cfg = TrainConfig(loss="triplet", epochs=10)
    >>> cfg.check()
    >>> cfg.batch_size
    64
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lookalike.errors import TrainError

__all__ = [
    "GOALS",
    "LOSSES",
    "MODES",
    "VERDICTS",
    "Log",
    "Progress",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "jsonable",
]

LOSSES: tuple[str, ...] = ("multisimilarity", "triplet", "arcface")
MODES: tuple[str, ...] = ("blocks", "head", "finetune")
#: What early stopping watches: new images of the training classes ("seen"), or classes that
#: training never saw ("unseen").
GOALS: tuple[str, ...] = ("seen", "unseen")

#: ``progress(stage, done, total)``: stage is "features", "views", "epochs" or "images".
Progress = Callable[[str, int, int], None]
Log = Callable[[str], None]


@dataclass
class TrainConfig:
    """Every choice of a training run (all of it is written to the model's config.json).

    Example:
        >>> TrainConfig(loss="triplet", epochs=10).batch_size
        64
    """

    base: str = "efficientnet-lite0"
    loss: str = "multisimilarity"
    mode: str = "blocks"
    goal: str = "seen"
    epochs: int = 12
    dim: int = 512
    hidden: int = 1024
    lr: float = 1e-4
    weight_decay: float = 1e-4
    dropout: float = 0.1
    init: str = "whitening"  # start the head's linear map from learned whitening, or "random"
    blend: float | None = None  # descriptor beside the head, weight of the head (None: chosen)
    batch_size: int = 64
    m_per_class: int = 4
    margin: float = 0.1  # triplet: the margin between cosine distances
    memory: int = 1024  # cross-batch memory: embeddings of past batches mined with each batch
    distill: float = 1.0  # weight of the within-batch similarity distillation towards the start
    views: int = 3  # blocks, head: views cached per training image (head, 1: the descriptor)
    val_fraction: float = 0.2
    patience: int = 3
    min_delta: float = 0.001  # an epoch must beat the best validation mAP@R by this much
    seed: int = 0
    blocks: int = 1  # blocks, finetune: how many of the last MBConv blocks are trained
    image_size: int | None = None  # blocks, finetune: resolution (default: from the images)

    def check(self) -> None:
        if self.loss not in LOSSES:
            raise TrainError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.mode not in MODES:
            raise TrainError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.goal not in GOALS:
            raise TrainError(f"unknown goal {self.goal!r}; choose one of {', '.join(GOALS)}")
        if self.init not in ("whitening", "random"):
            raise TrainError(f"unknown init {self.init!r}: whitening or random")
        if self.epochs < 1 or self.batch_size < 2 or self.m_per_class < 2:
            raise TrainError("epochs must be >= 1, batch size >= 2 and m per class >= 2")
        if self.views < 1 or self.memory < 0 or self.distill < 0 or self.blocks < 0:
            raise TrainError("views must be >= 1; memory, distill and blocks >= 0")
        if self.blend is not None and not self.blend >= 0:
            raise TrainError("blend must be >= 0 (inf: the head alone; None: chosen)")


#: A run's verdict (``TrainResult.verdict``, ``metrics.json``): did training help?
VERDICTS = {
    "improved": "training improved on the whitening start and on the default search",
    "whitening-only": "no epoch improved on the closed-form start (whitening), which was kept",
    "failed-stuck": "the loss stayed at zero: nothing was mined and nothing was learned",
    "failed-below-default": "the model ends below the default search on validation",
    "unchecked": "no validation images: nothing was measured",
}


@dataclass
class TrainResult:
    """What a training run did and measured.

    Attributes:
        history: one dict per epoch: ``epoch``, ``loss``, ``mined`` (pairs or triplets per
            batch), ``val_mAP@R``, ``val_P@1``, ``seconds`` (epoch 0 is the starting point).
        baseline: validation metrics of the default search (the base descriptor, searched as a
            collection searches it: PCA past 1000 images, alpha-query expansion).
        whitening: validation metrics of the closed-form start: the learned whitening, or a
            blend of it with the descriptor (``start`` says which; chosen on validation).
        validation: validation metrics of the best epoch (searched the same way).
        verdict: a key of :data:`VERDICTS`; warnings: lines a person should read.
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
    whitening: dict[str, float] = field(default_factory=dict)
    start: dict = field(default_factory=dict)
    verdict: str = "unchecked"
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """True when the verdict is a failure (the loss stuck at zero, or below the default)."""
        return self.verdict.startswith("failed")

    def to_dict(self) -> dict:
        """JSON-ready form.

        Example:
            >>> json.dumps(train("ds", "out").to_dict())  # doctest: +SKIP
        """
        return jsonable(
            {
                "model_dir": str(self.model_dir),
                "config": asdict(self.config),
                "verdict": self.verdict,
                "verdict_text": VERDICTS.get(self.verdict, ""),
                "warnings": self.warnings,
                "best_epoch": self.best_epoch,
                "stopped_early": self.stopped_early,
                "baseline": self.baseline,
                "whitening": self.whitening,
                "start": self.start,
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
