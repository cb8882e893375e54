"""Retrieval quality of embeddings, and the default search against a trained model.

:func:`retrieval_metrics` scores cosine retrieval (mAP, mAP@R, CMC Rank-k) with
:mod:`lookalike.evaluate.metrics`, a block of queries at a time; :func:`search_metrics` scores
the same vectors searched as a collection searches them (PCA learned on the gallery once it
holds ``REDUCE_MIN_IMAGES`` images, then alpha-query expansion over the first ``EXPAND``
results: :mod:`lookalike.collection.manifest`). :func:`compare` measures a trained model folder
against the default search (the base descriptor, searched that way) and against its
learned-whitening start, on the same test images (``lookalike train --eval``). Measured results:
the ``train`` section of docs/benchmarks.md.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from lookalike.collection.manifest import EXPAND, PCA_SAMPLE, REDUCE_DIM, REDUCE_MIN_IMAGES
from lookalike.descriptors import Whitening, l2n, query_expansion
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
from lookalike.train.whitening import start_vectors

__all__ = [
    "RANKS",
    "Comparison",
    "collection_search",
    "compare",
    "load_whitening",
    "ms_per_image",
    "retrieval_metrics",
    "search_metrics",
]

RANKS: tuple[int, ...] = (1, 5, 10, 20)


def retrieval_metrics(
    vectors: NDArray[np.float32],
    labels: Sequence[str] | NDArray,
    is_query: NDArray[np.bool_] | None = None,
    is_gallery: NDArray[np.bool_] | None = None,
    query_vectors: NDArray[np.float32] | None = None,
) -> dict[str, float]:
    """mAP, mAP@R and CMC Rank-1/5/10/20 of cosine retrieval, each query's own image excluded.

    ``query_vectors`` (one row per query, in order): search with these instead of the queries'
    own rows of ``vectors`` (e.g. expanded queries, :func:`search_metrics`).

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
        found = vectors[q] if query_vectors is None else query_vectors[start : start + rows]
        scores = found @ vectors[gallery].T
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


def collection_search(
    vectors: NDArray[np.float32],
    is_query: NDArray[np.bool_] | None = None,
    is_gallery: NDArray[np.bool_] | None = None,
    *,
    reduce: int = REDUCE_DIM,
    expand: int = EXPAND,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """``vectors`` as a collection of the gallery images would search them: ``(projected,
    queries)``, where ``projected`` are all rows in the index's coordinates (a PCA to ``reduce``
    dimensions learned on the gallery once it holds ``REDUCE_MIN_IMAGES`` images, as
    :meth:`~lookalike.collection.Collection.refit_projections` does) and ``queries`` the query
    rows after alpha-query expansion over their first ``expand`` results (own image excluded),
    as :meth:`~lookalike.collection.Collection.search_vectors` does.

    Example:
        >>> v = np.eye(3, dtype=np.float32)[[0, 0, 1, 1]]
        >>> projected, queries = collection_search(v)
        >>> queries.shape
        (4, 3)
    """
    v = l2n(vectors)
    n = len(v)
    is_query = np.ones(n, bool) if is_query is None else np.asarray(is_query, bool)
    is_gallery = np.ones(n, bool) if is_gallery is None else np.asarray(is_gallery, bool)
    queries, gallery = np.flatnonzero(is_query), np.flatnonzero(is_gallery)
    if reduce and len(gallery) >= REDUCE_MIN_IMAGES and v.shape[1] > reduce:
        sample = gallery
        if len(sample) > PCA_SAMPLE:
            sample = np.random.default_rng(0).choice(gallery, PCA_SAMPLE, replace=False)
        v = Whitening.fit(v[sample], dim=reduce, power=0.0).apply(v)
    q = v[queries]
    if expand and len(gallery):
        rows = max(1, 2_000_000 // len(gallery))
        parts = []
        for start in range(0, len(queries), rows):
            block = queries[start : start + rows]
            sims = v[block] @ v[gallery].T
            sims[block[:, None] == gallery[None, :]] = -np.inf  # a query is not its own result
            parts.append(query_expansion(v[block], v[gallery], sims, top=expand))
        q = np.concatenate(parts)
    return v, q


def search_metrics(
    vectors: NDArray[np.float32],
    labels: Sequence[str] | NDArray,
    is_query: NDArray[np.bool_] | None = None,
    is_gallery: NDArray[np.bool_] | None = None,
) -> dict[str, float]:
    """:func:`retrieval_metrics` of ``vectors`` searched as a collection searches them
    (:func:`collection_search`: PCA learned on the gallery past 1000 images, alpha-query
    expansion).

    Example:
        >>> v = np.eye(3, dtype=np.float32)[[0, 0, 1, 1]]
        >>> search_metrics(v, ["a", "a", "b", "b"])["mAP@R"]
        1.0
    """
    projected, queries = collection_search(vectors, is_query, is_gallery)
    return retrieval_metrics(projected, labels, is_query, is_gallery, query_vectors=queries)


@dataclass
class Comparison:
    """The default search, the learned-whitening start and the trained model on the same test
    images, each searched as a collection searches it (:func:`search_metrics`).

    Attributes:
        before: the default search (the base descriptor, PCA past 1000 images, query expansion);
        whitening: the learned-whitening head alone on the base descriptor (empty when the model
            folder has no ``whitening.npz``); after: the trained model. Each holds
            :func:`search_metrics` plus ``ms_per_image`` (batched inference, decoding excluded)
            and ``dim``.
        raw: the same three by plain cosine (no PCA, no expansion), mAP and mAP@R.
        frozen, trained: the test images' vectors (for maps); labels, paths: the images'.
    """

    before: dict[str, float]
    after: dict[str, float]
    frozen: NDArray[np.float32]
    trained: NDArray[np.float32]
    labels: NDArray[np.str_]
    paths: tuple[Path, ...]
    device: str
    whitening: dict[str, float] = field(default_factory=dict)
    raw: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return jsonable(
            {
                "before": self.before,
                "whitening": self.whitening,
                "after": self.after,
                "raw": self.raw,
                "search": "as a collection searches: PCA to "
                f"{REDUCE_DIM} learned on the gallery past {REDUCE_MIN_IMAGES} images, "
                f"alpha-query expansion over {EXPAND} results",
                "device": self.device,
            }
        )


def load_whitening(model_dir: str | Path) -> tuple[NDArray, NDArray, float] | None:
    """``(mean, projection, blend)``: the closed-form start saved in a model folder, or None."""
    path = Path(model_dir) / "whitening.npz"
    if not path.exists():
        return None
    with np.load(path) as data:
        blend = float(data["blend"]) if "blend" in data.files else math.inf
        return data["mean"], data["projection"], blend


def compare(
    model_dir: str | Path,
    data: Labelled,
    *,
    cache: Path | None = None,
    progress: Progress | None = None,
    timing_images: int = 32,
) -> Comparison:
    """Retrieval metrics of the default search, the whitening start and the trained model on
    ``data``, each searched as a collection searches it.

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
    layout = (data.labels, data.is_query, data.is_gallery)
    base_ms = ms_per_image(base, sample)
    before = search_metrics(frozen, *layout) | {"dim": base.dim, "ms_per_image": base_ms}
    after_metrics = search_metrics(after, *layout)
    after_metrics |= {"dim": trained.dim, "ms_per_image": ms_per_image(trained, sample)}
    raw = {"default": _short(retrieval_metrics(frozen, *layout))}
    raw["trained"] = _short(retrieval_metrics(after, *layout))
    whitening: dict[str, float] = {}
    start = load_whitening(model_dir)
    if start is not None:
        whitened = start_vectors(frozen, start[:2], start[2])
        whitening = search_metrics(whitened, *layout)
        whitening |= {"dim": int(whitened.shape[1]), "ms_per_image": base_ms}
        raw["whitening"] = _short(retrieval_metrics(whitened, *layout))
    return Comparison(
        before,
        after_metrics,
        frozen,
        after,
        data.labels,
        data.paths,
        "cpu (ONNX Runtime)",
        whitening,
        raw,
    )


def _short(metrics: dict[str, float]) -> dict[str, float]:
    return {k: metrics[k] for k in ("mAP", "mAP@R", "Rank-1")}


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
