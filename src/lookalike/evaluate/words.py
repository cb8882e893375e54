"""Measure how well words written in the pictures find them: ``lookalike eval --task words``.

:func:`evaluate_words` loads a words set (:func:`lookalike.evaluate.datasets.load_words`: a CSV
``path,words`` beside the images), makes sure every image is in a collection and its words are
read (:func:`lookalike.words.add_words`), then searches each distinct word of the ground truth
with :func:`lookalike.words.search_words`, as ``search --words`` does, and scores the ranking:
an image is a correct answer when the ground truth says it shows the word.

Metrics (averaged over the words): ``mAP`` (over each word's first :data:`RANKED` results),
``P@1``, ``Recall@10`` (a correct image among the first 10, as for the image tasks), ``found@10``
(the share of the images showing the word that are among its first 10) and, in ``latency``,
the milliseconds per word query.

Without ``collection=`` a cache collection (as for the image tasks) holds the images and their
words, read on the first run. A collection given with ``collection=`` is created when missing;
one that already holds images must have its words read (``lookalike words``): reading them here
would read every image of it, not only the set's.

Example:
    >>> from lookalike.evaluate.words import evaluate_words
    >>> result = evaluate_words("signs/")  # doctest: +SKIP
    >>> result.metrics["P@1"], result.latency["mean_ms"]  # doctest: +SKIP
    (0.95, 4.1)
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lookalike.collection import DEFAULT_MODEL, Collection
from lookalike.errors import EvalError
from lookalike.evaluate.datasets import load_words
from lookalike.evaluate.metrics import average_precision, precision_at_k, recall_at_k
from lookalike.evaluate.run import EvalResult, cache_collection_path
from lookalike.models import Embedder, load_embedder
from lookalike.words import add_words, has_words, how_to_add, search_words

__all__ = ["RANKED", "evaluate_words"]

Progress = Callable[[int, int], None]

#: Results of each word query that are scored (mAP is computed over them).
RANKED = 100


def evaluate_words(
    dataset: str | Path,
    *,
    collection: str | Path | None = None,
    model: str | None = None,
    progress: Progress | None = None,
    embedder: Embedder | None = None,
    reader=None,
) -> EvalResult:
    """Evaluate finding images by the words in them on the words set at ``dataset``.

    Args:
        dataset: a folder holding ``words.csv``, or that CSV (see ``load_words``).
        collection: a new collection, or one whose words were read (``lookalike words``): the
            set's images are added to it and their words read. Default: a cache collection per
            dataset and model, its words read on the first run.
        model: the model of a new collection (the images are embedded too, as in any collection).
        progress: ``progress(done, total)`` while embedding, then while reading words.
        embedder: an already loaded embedder of ``model``.
        reader: an already loaded ``lookalike.words.Reader``.

    Raises:
        DatasetError: the dataset is not a words set.
        EvalError: the given collection has images but no words read (the message says how to
            add them), or none of the images could be read.
        ModelError: the OCR engine is not installed.
    """
    started = time.perf_counter()
    ws = load_words(dataset)
    given = collection is not None
    if collection is None:
        model = model or (embedder.name if embedder is not None else DEFAULT_MODEL)
        embedder = embedder or load_embedder(model)
        collection = cache_collection_path(dataset, model, embedder.version)
    with Collection.open(collection, create=True, model=model, embedder=embedder) as col:
        if given and len(col) and not has_words(col):
            raise EvalError(how_to_add(col.path))
        added = col.add([str(p) for p in ws.paths], progress=progress)
        if added.interrupted:
            raise KeyboardInterrupt
        read = add_words(col, progress=progress, reader=reader)
        if read.interrupted:
            raise KeyboardInterrupt
        states = col.catalogue.file_states()
        ids = [states.get(str(p), (None, None))[1] for p in ws.paths]
        skipped = [
            (str(p), next((r for q, r in added.skipped if q == str(p)), "not indexed"))
            for p, i in zip(ws.paths, ids, strict=True)
            if i is None
        ]
        shown: dict[int, set[str]] = {}  # identical files are one image: their words merged
        for image_id, words in zip(ids, ws.words, strict=True):
            if image_id is not None:
                shown.setdefault(image_id, set()).update(words)
        if not shown:
            raise EvalError(f"{dataset}: none of its images could be read")
        per_word, times = _search_every_word(col, shown)
        model_name, collection_path = col.model_name, str(col.path)

    ranked = np.array([row for row, _ in per_word.values()], dtype=bool).reshape(-1, RANKED)
    relevant = np.array([n for _, n in per_word.values()], dtype=np.int64)
    ap = average_precision(ranked, relevant) if len(ranked) else np.array([])
    metrics = {
        "mAP": float(np.mean(ap)) if len(ap) else math.nan,
        "P@1": precision_at_k(ranked, 1, relevant) if len(ranked) else math.nan,
        "Recall@10": recall_at_k(ranked, 10, relevant) if len(ranked) else math.nan,
        "found@10": float(np.mean(ranked[:, :10].sum(1) / relevant)) if len(ranked) else math.nan,
    }
    per_class = {
        word: {
            "mAP": float(ap[i]),
            "P@1": float(row[0]),
            "found@10": sum(row[:10]) / n,
            "images": int(n),
        }
        for i, (word, (row, n)) in enumerate(per_word.items())
    }
    result = EvalResult(
        dataset=str(dataset),
        layout="words",
        model=model_name,
        collection=collection_path,
        images=len(shown),
        queries=len(per_word),
        gallery=len(shown),
        metrics=metrics,
        per_class=per_class,
        indexing=_indexing(added, read),
        latency=_latency(times, len(shown)),
        device=f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)",
        skipped=skipped,
        pr_predictions="",
    )
    result.seconds = time.perf_counter() - started
    return result


def _search_every_word(
    col: Collection, shown: dict[int, set[str]]
) -> tuple[dict[str, tuple[list[bool], int]], list[float]]:
    """Each word -> (whether each of its first RANKED results shows it, how many images do),
    with the milliseconds of each search. Images of the collection outside the set are left
    out of the rankings."""
    words = sorted({w for ws in shown.values() for w in ws})
    outside = max(0, len(col) - len(shown))
    per_word: dict[str, tuple[list[bool], int]] = {}
    times: list[float] = []
    for word in words:
        start = time.perf_counter()
        hits = search_words(col, word, RANKED + outside)
        times.append((time.perf_counter() - start) * 1000)
        row = [word in shown[h.id] for h in hits if h.id in shown][:RANKED]
        row += [False] * (RANKED - len(row))
        per_word[word] = (row, sum(1 for ws in shown.values() if word in ws))
    return per_word, times


def _indexing(added, read) -> dict[str, object]:
    embedded = (
        f"embedded {added.embedded} images in {added.seconds:.1f} s"
        if added.embedded
        else "nothing to embed"
    )
    words = (
        f"read the words of {read.read} images ({read.with_text} with text) in "
        f"{read.seconds:.1f} s ({read.images_per_second:.1f} images/s)"
        if read.read
        else "every image's words were already read"
    )
    return {
        "embedded": added.embedded,
        "words_read": read.read,
        "with_text": read.with_text,
        "seconds": round(added.seconds + read.seconds, 3),
        "images_per_second": round(read.images_per_second, 2) if read.read else None,
        "note": f"{embedded}; {words}",
    }


def _latency(times: list[float], images: int) -> dict[str, object]:
    if not times:
        return {"queries": 0, "mean_ms": None, "p50_ms": None, "p99_ms": None}
    return {
        "queries": len(times),
        "mean_ms": round(float(np.mean(times)), 2),
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p99_ms": round(float(np.percentile(times, 99)), 2),
        "index_size": images,
        "note": "word searches (search_words)",
    }
