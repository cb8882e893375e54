"""Text-to-image search as shipped: through a collection built with the default model.

For Tiny ImageNet val (each of the 200 class names — the first name in ``classes.tsv`` — queries
the 10,000 images) and Corel-1k (the 10 folder names query the 1,000 photos), using the
collections that ``lookalike eval`` caches (built first if missing). The class probabilities are
read back from the stored descriptors, so the variants below cost no network run:

- untuned ConSE: all 1000 classes at temperature 1, the bare class name, the query as typed;
- ConSE tuned (sentence-embedding space, top 10 classes, temperature 2, gloss, templates);
- the default: semantic query expansion in the class space (``models/text.py``), also run end
  to end through ``Collection.search_text`` for its latency.

It also times the sentence encoder alone (``SentenceEncoder``, ONNX Runtime on one thread, as
shipped) on queries of 1 to 8 words, one at a time and 32 at once; ``--encoder-only`` runs just
that (no data sets needed).

Usage: python benchmarks/text_queries.py [--no-write] [--encoder-only]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import SHARED, percentile_ms, table, write_section

from lookalike import Collection
from lookalike.evaluate.datasets import load_eval_set
from lookalike.evaluate.metrics import mean_average_precision, precision_at_k, rank_relevance
from lookalike.evaluate.run import cache_collection_path, evaluate
from lookalike.models import load_embedder
from lookalike.models.text import ConSE, SentenceEncoder


def collection_for(root: Path) -> Path:
    embedder = load_embedder("efficientnet-lite0")
    path = cache_collection_path(root, embedder.name, embedder.version)
    if not (path / "manifest.json").exists():
        evaluate(root)  # builds and caches it
    return path


def queries_for(root: Path, labels: list[str]) -> tuple[list[str], list[str]]:
    """(query texts, the label each one is about)."""
    classes = sorted(set(labels))
    names_file = root / "classes.tsv"
    if names_file.exists():
        names = dict(line.split("\t", 1) for line in names_file.read_text().splitlines() if line)
        return [names[c].split(",")[0].strip() for c in classes], classes
    return classes, classes


def encoder_latency(repeats: int = 30) -> str:
    """Median times of the sentence encoder on short queries (tokenizing included)."""
    encoder = SentenceEncoder()
    text = "a red double decker bus parked by the old stone bridge at sunset"
    words = text.split(" ")
    queries = [" ".join(words[:n]) for n in range(1, 9)]
    batch = [" ".join(words[i % 5 : i % 5 + 1 + i % 8]) for i in range(32)]
    encoder.encode(queries)  # warm: exported if needed, session created
    single, batched = [], []
    for _ in range(repeats):
        for query in queries:
            start = time.perf_counter()
            encoder.encode([query])
            single.append(time.perf_counter() - start)
        start = time.perf_counter()
        encoder.encode(batch)
        batched.append(time.perf_counter() - start)
    return (
        f"Sentence encoder alone (ONNX Runtime, 1 thread, tokenizing included): a query of 1-8 "
        f"words p50 {percentile_ms(single, 50):.1f} ms (p90 {percentile_ms(single, 90):.1f} ms); "
        f"32 such queries at once p50 {percentile_ms(batched, 50):.1f} ms."
    )


def scores_of(probs: np.ndarray, conse: ConSE, texts: list[str]) -> np.ndarray:
    images = conse.image_vectors(np.log(np.clip(probs, 1e-30, None)))
    return conse.text_vectors(texts) @ images.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--encoder-only", action="store_true", help="time the encoder only")
    args = parser.parse_args()
    encoder = encoder_latency()
    print(encoder, flush=True)
    if args.encoder_only:
        return
    variants = {
        "untuned ConSE (1000 classes, τ=1, bare names)": ConSE(
            space="embedding",
            top=1000,
            temperature=1.0,
            templates=("{}",),
            gloss=False,
            query_template="{}",
        ),
        "ConSE tuned (top 10, τ=2, gloss, templates)": ConSE(space="embedding"),
        "**default: semantic query expansion (class space)**": ConSE(),
    }
    results: dict[str, dict[str, tuple[float, float]]] = {}
    latency: dict[str, tuple[float, float]] = {}
    sets = []
    for name in ("tiny-imagenet-val", "corel1k"):
        root = SHARED / name
        if not root.exists():
            continue
        sets.append(name)
        evalset = load_eval_set(root)
        with Collection.open(collection_for(root)) as col:
            ids = {p: i for p, (_, i) in col.catalogue.file_states().items()}
            image_ids = [ids[str(Path(p).resolve())] for p in evalset.paths]
            stored = col.catalogue.vectors("image", image_ids)
            probs = col.embedder.class_probabilities(stored)
            texts, about = queries_for(root, list(evalset.labels))
            for title, conse in variants.items():
                scores = scores_of(probs, conse, texts)
                rel, n = rank_relevance(scores, about, np.asarray(evalset.labels))
                results.setdefault(title, {})[name] = (
                    mean_average_precision(rel, n),
                    precision_at_k(rel, 10),
                )
                print(name, title, results[title][name], flush=True)
            col.enable_text()  # as `lookalike index` does: (re)derive the text space if stale
            col.search_text(texts[0], k=10)  # warm: sentence model and class names loaded
            samples = []
            for text in texts[:50]:
                start = time.perf_counter()
                col.search_text(text, k=10)
                samples.append(time.perf_counter() - start)
            latency[name] = (percentile_ms(samples, 50), percentile_ms(samples, 99))

    header = ["text model"] + [f"{s} {m}" for s in sets for m in ("mAP", "P@10")]
    rows = [
        [title] + [f"{by[s][i]:.3f}" for s in sets for i in (0, 1)] for title, by in results.items()
    ]
    lat = ", ".join(
        f"{s} ({n}): p50 {a:.1f} ms, p99 {b:.1f} ms"
        for s, (a, b) in latency.items()
        for n in [{"tiny-imagenet-val": "10,000 images", "corel1k": "1,000"}[s]]
    )
    body = "\n\n".join(
        [
            "## Text search, offline (default model, through the collection)",
            "Zero-shot: every class name queries all images; relevant = that class. The class "
            "probabilities come from the stored descriptors of the `lookalike eval` collections "
            "(int8 EfficientNet-Lite0), so this is what `lookalike search --text` ranks. Goals: "
            "mAP ≥ 0.50 on Tiny ImageNet, ≥ 0.80 on Corel-1k.",
            table(header, rows),
            "Latency of `Collection.search_text` (embed the query + search the text index): "
            f"{lat}.",
            encoder,
        ]
    )
    if not args.no_write:
        write_section("text", body)
    print(body)


if __name__ == "__main__":
    main()
