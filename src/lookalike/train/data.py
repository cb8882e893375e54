"""Labelled images to learn from, and the splits of their classes.

A dataset folder in one of the layouts of :mod:`lookalike.evaluate.datasets` (one folder per
class, or ``query/`` + ``gallery/`` with the identity as the file-name prefix) becomes
:class:`Labelled` images; :func:`split_classes` holds whole classes out (the metric-learning
protocol: test on identities training never saw), :func:`validation_split` picks the
validation images that early stopping watches.

Example:
    >>> from lookalike.train.data import load_labelled, split_classes
    >>> data = load_labelled("datasets/my-parts")  # doctest: +SKIP
    >>> held = split_classes(data.labels, 0.5, seed=0)  # doctest: +SKIP
    >>> train_data, test_data = data.take(~held), data.take(held)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from lookalike.errors import TrainError
from lookalike.evaluate.datasets import EvalSet, load_eval_set

__all__ = ["Labelled", "load_labelled", "split_classes", "validation_split"]


@dataclass(frozen=True)
class Labelled:
    """Images with an identity each; ``is_query``/``is_gallery`` say how to evaluate them."""

    paths: tuple[Path, ...]
    labels: NDArray[np.str_]
    is_query: NDArray[np.bool_]
    is_gallery: NDArray[np.bool_]
    layout: str = "folders"

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, keep: NDArray[np.bool_] | NDArray[np.intp]) -> Labelled:
        """The images selected by a mask or an index array."""
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)
        return Labelled(
            tuple(self.paths[i] for i in idx),
            self.labels[idx],
            self.is_query[idx],
            self.is_gallery[idx],
            self.layout,
        )

    @classmethod
    def from_eval_set(cls, ev: EvalSet) -> Labelled:
        return cls(
            ev.paths, np.asarray(ev.labels, dtype=str), ev.is_query, ev.is_gallery, ev.layout
        )


def load_labelled(dataset: str | Path) -> Labelled:
    """The labelled images of a dataset folder (folder per class, query/gallery or UKBench).

    Example:
        >>> load_labelled("corel1k").labels[:2].tolist()  # doctest: +SKIP
        ['africa', 'africa']
    """
    ev = load_eval_set(dataset)
    if ev.layout == "pairs":
        raise TrainError(
            f"{dataset}: a pairs CSV has no classes to learn from; use one folder per class or "
            "query/ + gallery/ with <identity>_<image> file names"
        )
    return Labelled.from_eval_set(ev)


def split_classes(
    labels: Sequence[str] | NDArray, fraction: float, seed: int = 0
) -> NDArray[np.bool_]:
    """Mask of the images whose class is among a random ``fraction`` of the classes.

    The metric-learning protocol: train on some classes, test on the others (unseen).

    Example:
        >>> split_classes(["a", "a", "b", "b"], 0.5, seed=1).tolist()
        [True, True, False, False]
    """
    labels = np.asarray(labels, dtype=str)
    classes = np.unique(labels)
    count = round(fraction * len(classes))
    if fraction > 0:
        count = min(max(count, 1), len(classes) - 1)
    held = np.random.default_rng(seed).permutation(classes)[:count]
    return np.isin(labels, held)


def validation_split(
    labels: NDArray[np.str_], fraction: float, seed: int = 0, goal: str | None = None
) -> NDArray[np.bool_]:
    """Mask of the validation images that early stopping watches.

    ``goal="seen"``: some images of each class (classes with fewer than 4 images stay whole in
    training): the validation measures new images of known identities. ``goal="unseen"``: whole
    classes (at least 2, and at least 2 are left to train on; with fewer than 4 classes, images
    as for "seen"): it measures generalising to new identities. ``None``: whole classes when there
    are 8 or more, else images.

    Example:
        >>> labels = np.repeat(["a", "b", "c", "d"], 5)
        >>> labels[validation_split(labels, 0.5, goal="unseen")].tolist().count("a") in (0, 5)
        True
    """
    labels = np.asarray(labels, dtype=str)
    classes, counts = np.unique(labels, return_counts=True)
    if fraction <= 0:
        return np.zeros(len(labels), dtype=bool)
    by_class = len(classes) >= 8 if goal is None else goal == "unseen" and len(classes) >= 4
    if by_class:
        share = min(max(fraction, 2 / len(classes)), (len(classes) - 2) / len(classes))
        return split_classes(labels, share, seed)
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label, count in zip(classes, counts, strict=True):
        if count < 4:
            continue
        take = int(min(max(round(fraction * count), 2), count - 2))
        mask[rng.permutation(np.flatnonzero(labels == label))[:take]] = True
    return mask
