"""Retrieval quality of embeddings, and the base embedder against a trained model.

:func:`retrieval_metrics` scores cosine retrieval (mAP, mAP@R, CMC Rank-k) with
:mod:`lookalike.evaluate.metrics`, a block of queries at a time; :func:`compare` measures a
trained model folder and its frozen base on the same test images (``lookalike train --eval``).
Measured results: the ``train`` section of docs/benchmarks.md.

Example:
    >>> import numpy as np
    >>> from lookalike.train.evaluation import retrieval_metrics
    >>> v = np.eye(3, dtype=np.float32)[[0, 0, 1, 1]]
    >>> retrieval_metrics(v, ["a", "a", "b", "b"])["mAP@R"]
    1.0
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from lookalike.evaluate.metrics import (
    average_precision,
    average_precision_at_r,
    cmc,
    rank_relevance,
)
from lookalike.images import decode
from lookalike.models import Embedder, load_embedder
from lookalike.train.config import Progress, jsonable
from lookalike.train.data import Labelled
from lookalike.train.features import backbone_features

__all__ = ["RANKS", "Comparison", "compare", "ms_per_image", "retrieval_metrics"]

RANKS: tuple[int, ...] = (1, 5, 10, 20)


def retrieval_metrics(
    vectors: NDArray[np.float32],
    labels: Sequence[str] | NDArray,
    is_query: NDArray[np.bool_] | None = None,
    is_gallery: NDArray[np.bool_] | None = None,
) -> dict[str, float]:
    """mAP, mAP@R and CMC Rank-1/5/10/20 of cosine retrieval, each query's own image excluded.

    Example:
        >>> v = np.eye(3, dtype=np.float32)[[0, 0, 1, 1]]
        >>> retrieval_metrics(v, ["a", "a", "b", "b"])["mAP@R"]
        1.0
    """
    labels = np.asarray(labels, dtype=str)
    n = len(labels)
    is_query = np.ones(n, bool) if is_query is None else np.asarray(is_query, bool)
    is_gallery = np.ones(n, bool) if is_gallery is None else np.asarray(is_gallery, bool)
    queries, gallery = np.flatnonzero(is_query), np.flatnonzero(is_gallery)
    _, codes = np.unique(labels, return_inverse=True)
    ranks = [k for k in RANKS if k <= len(gallery)]
    ap, ap_r, hits = [], [], {k: [] for k in ranks}
    rows = max(1, 2_000_000 // max(len(gallery), 1))
    for start in range(0, len(queries), rows):
        q = queries[start : start + rows]
        scores = vectors[q] @ vectors[gallery].T
        ranked, relevant = rank_relevance(
            scores, codes[q], codes[gallery], exclude=q[:, None] == gallery[None, :]
        )
        keep = relevant > 0  # queries whose class has no other image measure nothing
        ap.append(average_precision(ranked, relevant)[keep])
        ap_r.append(average_precision_at_r(ranked, relevant)[keep])
        top = ranked[keep][:, : max(ranks)]
        for k, value in cmc(top, ranks, relevant[keep]).items():
            hits[k].append((value, int(keep.sum())))
    out = {
        "mAP": _nanmean(np.concatenate(ap)),
        "mAP@R": _nanmean(np.concatenate(ap_r)),
    }
    for k in ranks:
        total = sum(c for _, c in hits[k])
        out[f"Rank-{k}"] = sum(v * c for v, c in hits[k] if c) / total if total else math.nan
    out["queries"] = int(sum(len(a) for a in ap))
    return out


def _nanmean(x: NDArray[np.float64]) -> float:
    return float(np.nanmean(x)) if x.size and not np.isnan(x).all() else math.nan


@dataclass
class Comparison:
    """The frozen base embedder against the trained model on the same test images.

    Attributes:
        before, after: :func:`retrieval_metrics` plus ``ms_per_image`` (batched inference,
            decoding excluded) and ``dim``.
        frozen, trained: the test images' vectors (for maps); labels, paths: the images'.
    """

    before: dict[str, float]
    after: dict[str, float]
    frozen: NDArray[np.float32]
    trained: NDArray[np.float32]
    labels: NDArray[np.str_]
    paths: tuple[Path, ...]
    device: str

    def to_dict(self) -> dict:
        return jsonable({"before": self.before, "after": self.after, "device": self.device})


def compare(
    model_dir: str | Path,
    data: Labelled,
    *,
    cache: Path | None = None,
    progress: Progress | None = None,
    timing_images: int = 32,
) -> Comparison:
    """Retrieval metrics of the base embedder and of the trained model on ``data``.

    Queries and gallery follow ``data`` (query/gallery layout) or every image queries all the
    others (class folders), each query's own image excluded.

    Example:
        >>> c = compare("parts-model", load_labelled("parts-test"))  # doctest: +SKIP
        >>> c.after["mAP@R"] - c.before["mAP@R"]  # doctest: +SKIP
        0.07
    """
    from lookalike.models.trained import TrainedEmbedder

    trained = TrainedEmbedder(model_dir)
    base = trained.base or load_embedder(trained.config["base"]["name"])
    frozen, ok = backbone_features(base, data.paths, cache=cache, progress=progress)
    if not ok.all():
        data, frozen = data.take(ok), frozen[ok]
    if trained.mode == "head":
        after = trained.embed_descriptors(frozen)
    else:
        after, _ = backbone_features(trained, data.paths, cache=cache, progress=progress)
    sample = [decode(p, min_side=trained.input_size) for p in data.paths[:timing_images]]
    before_metrics = retrieval_metrics(frozen, data.labels, data.is_query, data.is_gallery)
    after_metrics = retrieval_metrics(after, data.labels, data.is_query, data.is_gallery)
    before_metrics |= {"dim": base.dim, "ms_per_image": ms_per_image(base, sample)}
    after_metrics |= {"dim": trained.dim, "ms_per_image": ms_per_image(trained, sample)}
    return Comparison(
        before_metrics, after_metrics, frozen, after, data.labels, data.paths, "cpu (ONNX Runtime)"
    )


def ms_per_image(embedder: Embedder, images: Sequence[Image.Image], repeats: int = 3) -> float:
    """Best-of-``repeats`` milliseconds per image of one batched ``embed_images`` call."""
    if not images:
        return math.nan
    embedder.embed_images(images[:2])  # warm-up: sessions, thread pools
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        embedder.embed_images(images)
        best = min(best, time.perf_counter() - started)
    return best * 1000 / len(images)
