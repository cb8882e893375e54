"""Metric learning: train a similarity for your own images (``lookalike train``).

One module per concern, around the small core :mod:`.config` (options, result, callbacks):

- :mod:`.data`: labelled images and the splits of their classes;
- :mod:`.features`: the base embedder's descriptors, computed once and cached;
- :mod:`.whitening` and :mod:`.network`: the projection head (started from learned whitening)
  and the partly frozen EfficientNet-Lite of ``finetune`` mode;
- :mod:`.loop` (loss, miner, sampler, epochs, early stopping) and :mod:`.modes` (``head``,
  ``finetune``);
- :mod:`.export`: the model folder; :mod:`.trainer`: :func:`train`, which ties them together;
- :mod:`.evaluation`: retrieval metrics and the before/after comparison; :mod:`.plots`: figures;
  :mod:`.cli`: the command.

The names below load on first use, so that ``lookalike --help`` and the other commands start
without NumPy, PyTorch or the models. Measured results: the ``train`` section of
docs/benchmarks.md.

Example:
    >>> from lookalike.train import compare, load_labelled, train
    >>> result = train("datasets/my-parts", "models/parts", epochs=20)  # doctest: +SKIP
    >>> compare("models/parts", load_labelled("datasets/my-parts-test")).after  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lookalike.train.config import LOSSES, MODES, TrainConfig, TrainError, TrainResult
    from lookalike.train.data import Labelled, load_labelled, split_classes, validation_split
    from lookalike.train.evaluation import Comparison, compare, retrieval_metrics
    from lookalike.train.export import save_model
    from lookalike.train.features import backbone_features
    from lookalike.train.modes import fit_head
    from lookalike.train.network import make_head
    from lookalike.train.trainer import train
    from lookalike.train.whitening import learned_whitening

#: Each public name and the module that defines it.
_EXPORTS = {
    "LOSSES": "config",
    "MODES": "config",
    "TrainConfig": "config",
    "TrainError": "config",
    "TrainResult": "config",
    "Labelled": "data",
    "load_labelled": "data",
    "split_classes": "data",
    "validation_split": "data",
    "Comparison": "evaluation",
    "compare": "evaluation",
    "retrieval_metrics": "evaluation",
    "save_model": "export",
    "backbone_features": "features",
    "fit_head": "modes",
    "make_head": "network",
    "train": "trainer",
    "learned_whitening": "whitening",
}


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = [
    "LOSSES",
    "MODES",
    "Comparison",
    "Labelled",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "backbone_features",
    "compare",
    "fit_head",
    "learned_whitening",
    "load_labelled",
    "make_head",
    "retrieval_metrics",
    "save_model",
    "split_classes",
    "train",
    "validation_split",
]
