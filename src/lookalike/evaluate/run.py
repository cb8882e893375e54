"""Measure how well a model retrieves on a labelled evaluation set: ``lookalike eval``.

:func:`evaluate` loads an evaluation set (:mod:`.datasets`), makes sure every image of it
is embedded through a :class:`~lookalike.collection.core.Collection`, scores every query against the
gallery by inner product (cosine similarity: the vectors are L2-normalised), and computes the
metrics of :mod:`lookalike.evaluate.metrics`. This module only orchestrates; the maths live there.

Embeddings are cached: without ``collection=``, a collection under the user cache folder (one per
dataset path and model) holds them, so a second evaluation of the same data embeds nothing. With
``collection=``, that folder is created if missing and otherwise extended incrementally.

Scores are computed a block of queries at a time, so a 10k x 10k evaluation never holds the full
float64 score matrix (800 MB); only the per-query results and the top-20 relevance are kept.

Example:
    >>> from lookalike.evaluate.run import evaluate
    >>> result = evaluate("datasets/corel1k")  # doctest: +SKIP
    >>> round(result.metrics["mAP"], 3), round(result.metrics["P@10"], 3)  # doctest: +SKIP
    (0.73, 0.92)
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from lookalike.collection import DEFAULT_MODEL, IMAGE_SPACE, Collection
from lookalike.descriptors import query_expansion
from lookalike.errors import EvalError
from lookalike.evaluate.datasets import EvalSet, load_eval_set
from lookalike.evaluate.metrics import (
    CMC_RANKS,
    PrecisionRecallCurve,
    average_precision,
    average_precision_at_r,
    cmc,
    flatten_predictions,
    micro_average_precision,
    precision_at_k,
    precision_recall_curve,
    r_precision,
    rank_relevance,
    recall_at_k,
    recall_at_precision,
    ukbench_score,
)
from lookalike.evaluate.report import Hit, QueryResult
from lookalike.models import Embedder, load_embedder

__all__ = ["EvalError", "EvalResult", "cache_collection_path", "evaluate"]

Progress = Callable[[int, int], None]

PRECISION_KS: tuple[int, ...] = (1, 5, 10, 20)
RECALL_KS: tuple[int, ...] = (1, 5, 10)
#: Columns of each query's ranking kept after scoring: enough for every P@k, Recall@k and CMC.
TOP_KEPT = max(*PRECISION_KS, *RECALL_KS, *CMC_RANKS)
#: Score-matrix cells per block (about 32 MB as float64): bounds the memory of ranking.
BLOCK_CELLS = 4_000_000
#: Up to this many query-gallery pairs, the precision-recall curve ranks every pair; above it,
#: each query's best ``BLOCK_CELLS // n_queries`` results (a search engine's top-k).
PR_ALL_PAIRS = 4_000_000
#: Query images timed through ``Collection.search`` for the latency figures.
LATENCY_QUERIES = 50
#: Results shown for each of the worst queries.
WORST_HITS = 8


@dataclass
class EvalResult:
    """What :func:`evaluate` measured.

    Attributes:
        metrics: metric name -> value, ``nan`` where undefined (see :attr:`to_dict`).
        per_class: label -> ``{"mAP", "P@10", "queries"}`` (empty for the pairs layout).
        indexing: this run's embedding: ``embedded``, ``seconds``, ``images_per_second``,
            ``note``.
        latency: ``queries``, ``p50_ms``, ``p99_ms`` of ``Collection.search`` (embedding included).
        worst: the queries with the lowest AP, worst first, with their top results.
        pr_curve: precision-recall over the flattened query-gallery predictions.
    """

    dataset: str
    layout: str
    model: str
    collection: str
    images: int
    queries: int
    gallery: int
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    indexing: dict[str, object]
    latency: dict[str, object]
    device: str
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    worst: list[QueryResult] = field(default_factory=list)
    pr_curve: PrecisionRecallCurve | None = None
    pr_predictions: str = ""

    def summary(self) -> dict[str, object]:
        """The report's summary table: the metrics, then what was measured and how fast.

        Example:
            >>> evaluate("corel1k").summary()["P@10"]  # doctest: +SKIP
            0.9216
        """
        out: dict[str, object] = dict(self.metrics)
        out |= {
            "dataset": self.dataset,
            "layout": self.layout,
            "model": self.model,
            "images": self.images,
            "queries": self.queries,
            "gallery": self.gallery,
            "unreadable images": len(self.skipped),
            "indexing": self.indexing["note"],
            "query latency p50 (ms)": self.latency["p50_ms"],
            "query latency p99 (ms)": self.latency["p99_ms"],
            "device": self.device,
            "PR curve from": self.pr_predictions,
            "collection": self.collection,
        }
        return out

    def to_dict(self) -> dict:
        """The JSON form (``nan`` becomes ``null``); the PR curve is left out, hits included.

        Example:
            >>> json.dumps(evaluate("ukbench-sample").to_dict())  # doctest: +SKIP
        """
        return _jsonable(
            {
                "dataset": self.dataset,
                "layout": self.layout,
                "model": self.model,
                "collection": self.collection,
                "images": self.images,
                "queries": self.queries,
                "gallery": self.gallery,
                "metrics": self.metrics,
                "per_class": self.per_class,
                "indexing": self.indexing,
                "latency": self.latency,
                "device": self.device,
                "seconds": round(self.seconds, 3),
                "pr_predictions": self.pr_predictions,
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                "worst": [
                    {
                        "query": str(q.query),
                        "label": q.label,
                        "ap": q.score,
                        "hits": [
                            {"path": str(h.path), "score": h.score, "correct": h.correct}
                            for h in q.hits
                        ],
                    }
                    for q in self.worst
                ],
            }
        )


def cache_collection_path(dataset: str | Path, model: str, version: str = "") -> Path:
    """The cache collection for ``dataset``: one per (resolved path, model, model version).

    Under ``$LOOKALIKE_EVAL_CACHE`` if set, else the user cache folder's ``lookalike/eval``.

    Example:
        >>> cache_collection_path("/data/corel1k", "efficientnet-lite0").name  # doctest: +SKIP
        'corel1k-efficientnet-lite0-5d41402abc4b'
    """
    resolved = Path(dataset).expanduser().resolve()
    key = f"{resolved}\0{model}\0{version}"
    digest = hashlib.blake2b(key.encode(), digest_size=6).hexdigest()
    env = os.environ.get("LOOKALIKE_EVAL_CACHE")
    if env:
        root = Path(env)
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("lookalike")) / "eval"
    return root / f"{resolved.stem or 'dataset'}-{model}-{digest}"


def evaluate(
    dataset: str | Path,
    *,
    collection: str | Path | None = None,
    model: str | None = None,
    layout: str | None = None,
    progress: Progress | None = None,
    worst: int = 25,
    embedder: Embedder | None = None,
) -> EvalResult:
    """Evaluate retrieval on the evaluation set at ``dataset``.

    Args:
        dataset: a folder (or pairs CSV) in one of :data:`lookalike.evaluate.datasets.LAYOUTS`.
        collection: collection folder that holds the embeddings: created if missing, extended
            if present (only new or changed files are embedded). Default: a cache collection
            keyed by dataset path and model (:func:`cache_collection_path`).
        model: the model; default: the given collection's model, else ``efficientnet-lite0``.
        layout: the dataset layout; detected when None.
        progress: ``progress(done, total)`` while embedding.
        worst: how many of the worst queries to keep, with their top results.
        embedder: an already loaded embedder of ``model`` (saves loading it again).

    Raises:
        DatasetError: the dataset is not a usable evaluation set.
        CollectionError: the collection was built with another model, or is busy.
        EvalError: no image of the dataset could be read, or no query is left.

    Example:
        >>> r = evaluate("ukbench-sample", collection="/tmp/ukb.lookalike")  # doctest: +SKIP
        >>> r.metrics["N-S"], r.indexing["embedded"]  # doctest: +SKIP
        (3.64, 56)
    """
    started = time.perf_counter()
    ev = load_eval_set(dataset, layout)
    if collection is None:
        model = model or (embedder.name if embedder is not None else DEFAULT_MODEL)
        embedder = embedder or load_embedder(model)  # cheap: the network loads on first use
        # Keyed by the model's version too: a new descriptor gets a new cache, never an error.
        collection = cache_collection_path(dataset, model, embedder.version)
    with Collection.open(collection, create=True, model=model, embedder=embedder) as col:
        report = col.add([str(p) for p in ev.paths], progress=progress)
        if report.interrupted:  # what was embedded is committed: the next run resumes
            raise KeyboardInterrupt
        ids, kept = _image_ids(col, ev)
        skipped = [
            (str(ev.paths[i]), _skip_reason(report, ev.paths[i])) for i in np.flatnonzero(~kept)
        ]
        if not kept.all():
            ev = _subset(ev, kept)
            ids = ids[kept]
        if len(ev) == 0:
            raise EvalError(f"{dataset}: none of its images could be read")
        if not ev.is_query.any() or not ev.is_gallery.any():
            raise EvalError(f"{dataset}: no readable query or no readable gallery image left")
        # Score in the coordinates the collection searches in (its PCA, when learned) and with
        # its query expansion, so that eval measures what `search` does.
        vectors = col.project(_vectors(col, ids))
        expand = int(col.spaces()[IMAGE_SPACE].get("expand", 0))
        latency = _latency(col, [ev.paths[i] for i in ev.queries])
        device = _device(col)
        model_name = col.model_name
        collection_path = str(col.path)

    as_query = vectors.copy()  # the queries as search sends them to the index
    if expand:
        as_query[ev.queries] = _expand_queries(
            vectors[ev.queries], vectors[ev.gallery], ev.queries, ev.gallery, expand
        )
    scored = _score(ev, as_query, vectors)
    result = EvalResult(
        dataset=str(dataset),
        layout=ev.layout,
        model=model_name,
        collection=collection_path,
        images=len(ev),
        queries=int(ev.is_query.sum()),
        gallery=int(ev.is_gallery.sum()),
        metrics=_summary_metrics(ev, scored),
        per_class=_per_class(ev, scored),
        indexing=_indexing(report, len(ev)),
        latency=latency,
        device=device,
        skipped=skipped,
        worst=_worst(ev, as_query, vectors, scored, worst),
        pr_curve=scored.curve,
        pr_predictions=scored.pr_predictions,
    )
    result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------


def _image_ids(col: Collection, ev: EvalSet) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Image id of each dataset file (identical files share one), and which files have one."""
    states = col.catalogue.file_states()
    ids = np.full(len(ev), -1, dtype=np.int64)
    for i, path in enumerate(ev.paths):
        known = states.get(str(Path(path).expanduser().resolve()))
        if known is not None:
            ids[i] = known[1]
    return ids, ids >= 0


def _vectors(col: Collection, ids: NDArray[np.int64]) -> NDArray[np.float32]:
    """The stored vector of each id, in order (fetched once per distinct id)."""
    unique, inverse = np.unique(ids, return_inverse=True)
    # Batches stay below SQLite's limit on bound parameters (999 in older builds).
    parts = [
        col.catalogue.vectors(IMAGE_SPACE, unique[i : i + 900].tolist())
        for i in range(0, len(unique), 900)
    ]
    return np.concatenate(parts)[inverse].astype(np.float32, copy=False)


def _skip_reason(report, path: Path) -> str:
    resolved = str(Path(path).expanduser().resolve())
    return next((r for p, r in report.skipped if p == resolved), "not indexed")


def _subset(ev: EvalSet, keep: NDArray[np.bool_]) -> EvalSet:
    """``ev`` without the images that ``keep`` drops (unreadable files), pairs renumbered."""
    new_index = np.cumsum(keep) - 1
    pairs = tuple(
        (int(new_index[q]), int(new_index[g])) for q, g in ev.pairs if keep[q] and keep[g]
    )
    return EvalSet(
        ev.layout,
        ev.root,
        tuple(p for p, k in zip(ev.paths, keep, strict=True) if k),
        tuple(lab for lab, k in zip(ev.labels, keep, strict=True) if k),
        ev.is_query[keep],
        ev.is_gallery[keep],
        pairs,
    )


def _indexing(report, images: int) -> dict[str, object]:
    if report.embedded == 0:
        note = f"nothing to embed: all {images} images were already in the collection"
    else:
        note = (
            f"embedded {report.embedded} images in {report.seconds:.1f} s "
            f"({report.images_per_second:.1f} images/s)"
        )
    return {
        "embedded": report.embedded,
        "linked_duplicates": len(report.duplicates),
        "unchanged": report.unchanged,
        "seconds": round(report.seconds, 3),
        "images_per_second": round(report.images_per_second, 2) if report.embedded else None,
        "note": note,
    }


def _latency(col: Collection, queries: list[Path]) -> dict[str, object]:
    """p50 / p99 of ``Collection.search`` on up to 50 query images, model already loaded."""
    if not queries:
        return {"queries": 0, "p50_ms": None, "p99_ms": None}
    picks = np.unique(np.linspace(0, len(queries) - 1, LATENCY_QUERIES).round().astype(int))
    col.search(queries[picks[0]], k=10)  # warm-up: loads the model and the index
    times = []
    for i in picks:
        start = time.perf_counter()
        col.search(queries[i], k=10)
        times.append((time.perf_counter() - start) * 1000)
    return {
        "queries": len(times),
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p99_ms": round(float(np.percentile(times, 99)), 2),
        "index_size": len(col),
    }


def _device(col: Collection) -> str:
    """Where the model ran: the ONNX Runtime providers (when known) and the CPU."""
    session = getattr(col.embedder, "session", None)
    try:
        providers = ", ".join(session.get_providers()) if session is not None else "unknown"
    except AttributeError:
        providers = "unknown"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    gpu = "GPU" if "CUDA" in providers or "ROCM" in providers else "CPU"
    return f"{gpu}: {providers} on {cpu} ({os.cpu_count()} cores)"


# --------------------------------------------------------------------------------------------
# Scoring, a block of queries at a time
# --------------------------------------------------------------------------------------------


@dataclass
class _Scored:
    """Per-query results of ranking every query against the gallery."""

    ap: NDArray[np.float64]
    ap_at_r: NDArray[np.float64]
    num_relevant: NDArray[np.int64]
    top: NDArray[np.bool_]  # (n_queries, TOP_KEPT or gallery size) ranked relevance
    r_precision: float
    curve: PrecisionRecallCurve | None
    pr_predictions: str
    predictions: tuple[NDArray[np.float64], NDArray[np.bool_]]  # flat (scores, is_match)
    num_positives: int


def _score(ev: EvalSet, as_query: NDArray[np.float32], vectors: NDArray[np.float32]) -> _Scored:
    queries, gallery = ev.queries, ev.gallery
    qv, gv = as_query[queries], vectors[gallery]
    n_q, n_g = len(queries), len(gallery)
    # Integer label codes compare much faster than strings over a 10k x 10k block.
    _, codes = np.unique(np.asarray(ev.labels, dtype=object).astype(str), return_inverse=True)
    pair_relevance = ev.relevance() if ev.layout == "pairs" else None
    kept = min(n_g, TOP_KEPT)
    rows = max(1, min(1024, BLOCK_CELLS // max(n_g, 1)))
    pr_k = None if n_q * n_g <= PR_ALL_PAIRS else max(1, PR_ALL_PAIRS // n_q)

    ap = np.empty(n_q)
    ap_r = np.empty(n_q)
    num_rel = np.empty(n_q, dtype=np.int64)
    top = np.zeros((n_q, kept), dtype=bool)
    rp_sum, rp_count, positives = 0.0, 0, 0
    flat_scores, flat_match = [], []
    for start in range(0, n_q, rows):
        block = slice(start, min(start + rows, n_q))
        scores = qv[block] @ gv.T
        excluded = queries[block, None] == gallery[None, :]
        if pair_relevance is None:
            ranked, n = rank_relevance(
                scores, codes[queries[block]], codes[gallery], exclude=excluded
            )
            match = (codes[queries[block], None] == codes[gallery][None, :]) & ~excluded
        else:
            match = pair_relevance[block]
            ranked, n = _rank_by_mask(scores, match, excluded)
        ap[block] = average_precision(ranked, n)
        ap_r[block] = average_precision_at_r(ranked, n)
        num_rel[block] = n
        top[block] = ranked[:, :kept]
        defined = int((n > 0).sum())
        if defined:  # r_precision averages a block; weight it to average over all queries
            rp_sum += r_precision(ranked, n) * defined
            rp_count += defined
        # The query itself is no prediction: -inf drops it from a top-k and is filtered after.
        s, m, npos = flatten_predictions(np.where(excluded, -np.inf, scores), match, k=pr_k)
        finite = np.isfinite(s)
        flat_scores.append(s[finite])
        flat_match.append(m[finite])
        positives += npos
    predictions = (np.concatenate(flat_scores), np.concatenate(flat_match))
    curve = precision_recall_curve(*predictions, positives) if positives else None
    described = "every query-gallery pair" if pr_k is None else f"each query's top {pr_k}"
    return _Scored(
        ap=ap,
        ap_at_r=ap_r,
        num_relevant=num_rel,
        top=top,
        r_precision=rp_sum / rp_count if rp_count else math.nan,
        curve=curve,
        pr_predictions=described,
        predictions=predictions,
        num_positives=positives,
    )


def _expand_queries(
    qv: NDArray[np.float32],
    gv: NDArray[np.float32],
    queries: NDArray[np.int64],
    gallery: NDArray[np.int64],
    top: int,
) -> NDArray[np.float32]:
    """α-query expansion as search applies it, each query's own gallery entry left out."""
    out = np.empty_like(qv)
    for start in range(0, len(qv), 1024):
        block = slice(start, start + 1024)
        sims = qv[block] @ gv.T
        sims[queries[block, None] == gallery[None, :]] = -np.inf
        out[block] = query_expansion(qv[block], gv, sims, top=top)
    return out


def _rank_by_mask(
    scores: NDArray[np.float32], match: NDArray[np.bool_], excluded: NDArray[np.bool_]
) -> tuple[NDArray[np.bool_], NDArray[np.int64]]:
    """:func:`rank_relevance` for relevance given as a mask (pairs) instead of labels.

    Each row is ranked on its own with the mask row as gallery "labels" and True as the query's,
    so that the ranking and tie rules stay those of :mod:`lookalike.evaluate.metrics`.
    """
    ranked = np.empty_like(match)
    n = np.empty(len(match), dtype=np.int64)
    for i in range(len(match)):
        r, c = rank_relevance(scores[i : i + 1], [True], match[i], exclude=excluded[i : i + 1])
        ranked[i], n[i] = r[0], c[0]
    return ranked, n


def _mean(values: NDArray[np.float64]) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def _summary_metrics(ev: EvalSet, s: _Scored) -> dict[str, float]:
    width = s.top.shape[1]
    pairs = ev.layout == "pairs"
    metrics: dict[str, float] = {"mAP": _mean(s.ap)}
    if not pairs:  # with one reference per query, P@k and mAP@R say little about copies
        metrics["mAP@R"] = _mean(s.ap_at_r)
        for k in PRECISION_KS:
            if k <= width:
                metrics[f"P@{k}"] = precision_at_k(s.top, k, s.num_relevant)
    for k in RECALL_KS:
        metrics[f"Recall@{k}"] = recall_at_k(s.top, k, s.num_relevant)
    if not pairs:
        ranks = [k for k in CMC_RANKS if k <= width]
        for k, value in cmc(s.top, ranks, s.num_relevant).items():
            metrics[f"CMC@{k}"] = value
        metrics["R-precision"] = s.r_precision
    if ev.layout == "ukbench" and width >= 3:
        metrics["N-S"] = ukbench_score(s.top)
    if pairs and s.curve is not None:
        metrics["micro-AP"] = micro_average_precision(*s.predictions, s.num_positives)
        recall, threshold = recall_at_precision(s.curve, 0.9)
        metrics["Recall@P90"] = recall
        metrics["threshold@P90"] = math.nan if threshold is None else threshold
    return metrics


def _per_class(ev: EvalSet, s: _Scored) -> dict[str, dict[str, float]]:
    """mAP and P@10 of each label's queries (none for pairs: there a label is one reference)."""
    if ev.layout == "pairs":
        return {}
    labels = np.asarray([ev.labels[i] for i in ev.queries], dtype=object)
    k = min(10, s.top.shape[1])
    out: dict[str, dict[str, float]] = {}
    for label in sorted(set(labels.tolist())):
        rows = labels == label
        out[label] = {
            "mAP": _mean(s.ap[rows]),
            f"P@{k}": precision_at_k(s.top[rows], k, s.num_relevant[rows]),
            "queries": int(rows.sum()),
        }
    return out


def _worst(
    ev: EvalSet,
    as_query: NDArray[np.float32],
    vectors: NDArray[np.float32],
    s: _Scored,
    count: int,
) -> list[QueryResult]:
    """The ``count`` queries with the lowest AP, with their top results (self excluded)."""
    if count <= 0:
        return []
    queries, gallery = ev.queries, ev.gallery
    defined = np.flatnonzero(~np.isnan(s.ap))
    order = defined[np.argsort(s.ap[defined], kind="stable")][:count]
    relevance_rows = ev.relevance()[order] if ev.layout == "pairs" else None
    gallery_vectors = vectors[gallery]  # one copy, not one per query
    out = []
    for pos, row in enumerate(order):
        q = queries[row]
        scores = gallery_vectors @ as_query[q]
        scores[gallery == q] = -np.inf
        best = np.argsort(-scores, kind="stable")[:WORST_HITS]
        best = best[np.isfinite(scores[best])]
        if relevance_rows is None:
            correct = [ev.labels[gallery[j]] == ev.labels[q] for j in best]
        else:
            correct = relevance_rows[pos, best].tolist()
        hits = [
            Hit(str(ev.paths[gallery[j]]), float(scores[j]), bool(c))
            for j, c in zip(best, correct, strict=True)
        ]
        out.append(QueryResult(str(ev.paths[q]), ev.labels[q], hits, score=float(s.ap[row])))
    return out


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else round(float(value), 6)
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    return value
