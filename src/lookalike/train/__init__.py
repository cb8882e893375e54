"""Metric learning: train a similarity for your own images (``lookalike train``).

One module per concern, around the small core :mod:`.config` (options, result, callbacks):

- :mod:`.data`: labelled images and the splits of their classes (validation by goal);
- :mod:`.features`: the base embedder's descriptors, computed once and cached;
- :mod:`.views`: the frozen part of the base network run once: feature maps at the input of its
  last blocks, several augmented views per image, cached (``blocks`` mode);
- :mod:`.whitening` and :mod:`.network`: the closed-form start (learned whitening, or a blend
  with the descriptor), the projection head, the last blocks + pooling of ``blocks`` mode and
  the partly frozen EfficientNet-Lite of ``finetune`` mode;
- :mod:`.loop` (losses, miners, cross-batch memory, distillation, epochs, early stopping) and
  :mod:`.modes` (``blocks``, ``head``, ``finetune``);
- :mod:`.export`: the model folder; :mod:`.trainer`: :func:`train`, which ties them together
  and gives the run's verdict;
- :mod:`.evaluation`: retrieval metrics, searched as a collection searches, and the comparison
  with the default search; :mod:`.plots`: figures; :mod:`.cli`: the command.

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
    from lookalike.train.config import (
        GOALS,
        LOSSES,
        MODES,
        VERDICTS,
        TrainConfig,
        TrainError,
        TrainResult,
    )
    from lookalike.train.data import Labelled, load_labelled, split_classes, validation_split
    from lookalike.train.evaluation import (
        Comparison,
        compare,
        retrieval_metrics,
        search_metrics,
    )
    from lookalike.train.export import save_model
    from lookalike.train.features import backbone_features
    from lookalike.train.modes import fit_blocks, fit_head
    from lookalike.train.network import make_blocks_net, make_head
    from lookalike.train.trainer import train
    from lookalike.train.views import block_views
    from lookalike.train.whitening import learned_whitening

#: Each public name and the module that defines it.
_EXPORTS = {
    "GOALS": "config",
    "LOSSES": "config",
    "MODES": "config",
    "VERDICTS": "config",
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
    "search_metrics": "evaluation",
    "save_model": "export",
    "backbone_features": "features",
    "fit_blocks": "modes",
    "fit_head": "modes",
    "make_blocks_net": "network",
    "make_head": "network",
    "train": "trainer",
    "block_views": "views",
    "learned_whitening": "whitening",
}


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = [
    "GOALS",
    "LOSSES",
    "MODES",
    "VERDICTS",
    "Comparison",
    "Labelled",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "backbone_features",
    "block_views",
    "compare",
    "fit_blocks",
    "fit_head",
    "learned_whitening",
    "load_labelled",
    "make_blocks_net",
    "make_head",
    "retrieval_metrics",
    "save_model",
    "search_metrics",
    "split_classes",
    "train",
    "validation_split",
]
