"""Tune and measure offline text-to-image search (ConSE over EfficientNet-Lite0's ImageNet logits).

Datasets (from ``../shared/datasets``, skipped when absent):

* Tiny ImageNet val: 10,000 images of 200 classes; each class's first English name in
  ``classes.tsv`` is a query, its 50 images are the relevant ones.
* Corel-1k: 1,000 photos of 10 classes; the folder names ("beach", "buses", ...) are the queries.
  Only 3 of them are ImageNet classes at all, so this is the zero-shot test.

The logits of every image are computed once and cached as ``.npy`` (``--cache``), the class-name
embeddings too, so each variant costs a few matrix products. Prints markdown tables of mAP and
P@10 per variant, and the latency of one text query against 10,000 images.

    python benchmarks/text_search.py [--data ../shared/datasets] [--cache /tmp/lookalike-text]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lookalike.models.text import ConSE, SentenceEncoder

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Dataset:
    name: str
    logits: np.ndarray  # (n_images, 1000)
    labels: np.ndarray  # (n_images,) index into queries
    queries: list[str]


def image_logits(folder: Path, cache: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Logits, labels and class folder names of a one-folder-per-class dataset (cached)."""
    target = cache / f"{folder.name}-logits.npy"
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    paths = [f for c in classes for f in sorted((folder / c).iterdir()) if f.is_file()]
    labels = np.array([classes.index(p.parent.name) for p in paths])
    if target.exists():
        logits = np.load(target)
        if len(logits) == len(paths):
            return logits, labels, classes
    from PIL import Image

    from lookalike.models.efficientnet import EfficientNetLite

    model = EfficientNetLite("efficientnet-lite0")
    chunks = []
    start = time.perf_counter()
    for i in range(0, len(paths), 64):
        images = [Image.open(p).convert("RGB") for p in paths[i : i + 64]]
        chunks.append(model.forward(images)[1])
        print(
            f"  {folder.name}: {i + len(images)}/{len(paths)} images, "
            f"{time.perf_counter() - start:.0f} s",
            file=sys.stderr,
        )
    logits = np.concatenate(chunks).astype(np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(target, logits)
    return logits, labels, classes


def load_datasets(data: Path, cache: Path) -> list[Dataset]:
    out = []
    tiny = data / "tiny-imagenet-val"
    if tiny.is_dir():
        logits, labels, wnids = image_logits(tiny, cache)
        names = dict(
            line.split("\t", 1)
            for line in (tiny / "classes.tsv").read_text().splitlines()
            if line.strip()
        )
        queries = [names[w].split(",")[0].strip() for w in wnids]
        out.append(Dataset("Tiny ImageNet val", logits, labels, queries))
    corel = data / "corel1k"
    if corel.is_dir():
        logits, labels, folders = image_logits(corel, cache)
        out.append(Dataset("Corel-1k", logits, labels, folders))
    return out


def average_precisions(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AP of each row of ``scores`` (queries x images); query ``i`` wants images labelled ``i``."""
    order = np.argsort(-scores, axis=1, kind="stable")
    relevant = labels[order] == np.arange(len(scores))[:, None]
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, scores.shape[1] + 1)
    return (hits / ranks * relevant).sum(1) / np.maximum(relevant.sum(1), 1)


def retrieval_metrics(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """mAP and P@10 of ``scores`` (queries x images); query ``i`` wants images labelled ``i``."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    precision10 = (labels[order] == np.arange(len(scores))[:, None]).mean()
    return float(average_precisions(scores, labels).mean()), float(precision10)


@dataclass(frozen=True)
class Variant:
    """One row: a label and the keyword arguments of :class:`lookalike.models.text.ConSE`."""

    label: str
    options: dict = field(default_factory=dict)
    blend: float = 0.0  # > 0: alpha * (ConSE proper) + (1 - alpha) * (these options)

    def but(self, label: str, **options: object) -> Variant:
        return Variant(label, {**self.options, **options}, self.blend)


ENSEMBLE = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a cropped photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
)


def sweeps() -> list[tuple[str, list[Variant]]]:
    """The tables; each row changes one thing from the row its table starts with."""
    untuned = Variant(
        "untuned ConSE: T=1000, tau=1, first lemma, query as typed",
        dict(
            space="embedding",
            top=1000,
            temperature=1.0,
            lemmas="first",
            gloss=False,
            query_template="{}",
        ),
    )
    tuned = Variant(
        'ConSE proper, space defaults: + gloss, T=10, tau=2, query "a photo of {}."',
        dict(space="embedding"),
    )
    out: list[tuple[str, list[Variant]]] = []
    out.append(
        (
            "ConSE proper (space='embedding', 384-d): class-name text",
            [
                untuned,
                untuned.but('template "{}"', templates=("{}",)),
                untuned.but("all lemmas, averaged", lemmas="all"),
                untuned.but("all lemmas but Latin names, averaged", lemmas="common"),
                untuned.but("all lemmas in one text", lemmas="joined"),
                untuned.but("first lemma + gloss in one text", lemmas="gloss"),
                untuned.but("first lemma, + gloss embedding", gloss=True),
                untuned.but("8-template ensemble", templates=ENSEMBLE),
                untuned.but("8-template ensemble, all lemmas", templates=ENSEMBLE, lemmas="all"),
            ],
        )
    )
    out.append(
        (
            "ConSE proper: query text, top-T classes, temperature",
            [
                untuned.but('query "a photo of {}."', query_template="a photo of {}."),
                untuned.but('query "a photo of a {}."', query_template="a photo of a {}."),
                *(untuned.but(f"T={t}", top=t) for t in (1, 3, 5, 10, 20, 50)),
                *(
                    untuned.but(f"T=10, tau={tau}", top=10, temperature=tau)
                    for tau in (0.5, 2.0, 3.0)
                ),
                tuned,
                tuned.but("  same, T=20", top=20),
                tuned.but("  same, tau=3", temperature=3.0),
                tuned.but("  same, T=1000, tau=1", top=1000, temperature=1.0),
                tuned.but('  same, query as typed "{}"', query_template="{}"),
            ],
        )
    )
    default = Variant("shipped defaults: " + ConSE().describe() + ", first lemma + gloss")
    out.append(
        (
            "semantic query expansion (space='classes', 1000-d): class text and scoring",
            [
                default,
                default.but("no gloss", gloss=False),
                default.but("all lemmas + gloss", lemmas="all"),
                default.but("all lemmas but Latin names + gloss", lemmas="common"),
                default.but("gloss text only", lemmas="gloss", templates=("{}",), gloss=False),
                default.but("linear (cosine of w and p) instead of square roots", root=False),
                default.but('query as typed "{}"', query_template="{}"),
                default.but('query "a photo of a {}."', query_template="a photo of a {}."),
                Variant("blend: 0.1 x ConSE proper (tuned) + 0.9 x default", {}, blend=0.1),
                Variant("blend: 0.3 x ConSE proper (tuned) + 0.7 x default", {}, blend=0.3),
            ],
        )
    )
    out.append(
        (
            "semantic query expansion: K nearest classes, their temperature, image side",
            [
                *(default.but(f"K={k}", expand=k) for k in (1, 3, 5, 10, 50, 100)),
                *(default.but(f"tau_q={t}", expand_temperature=t) for t in (0.02, 0.03, 0.07, 0.1)),
                *(default.but(f"T={t}", top=t) for t in (5, 20, 100)),
                *(default.but(f"tau={t}", temperature=t) for t in (0.5, 2.0)),
            ],
        )
    )
    return out


def make_scorer(
    variant: Variant, encoder: SentenceEncoder, cache: Path
) -> Callable[[np.ndarray, Sequence[str]], np.ndarray]:
    """A function (logits, queries) -> (n_queries, n_images) scores for ``variant``."""
    conse = ConSE(encoder, cache=cache, **variant.options)

    def score(logits: np.ndarray, queries: Sequence[str]) -> np.ndarray:
        scores = conse.text_vectors(queries) @ conse.image_vectors(logits).T
        if variant.blend:
            proper = ConSE(encoder, cache=cache, space="embedding")
            other = proper.text_vectors(queries) @ proper.image_vectors(logits).T
            scores = variant.blend * other + (1 - variant.blend) * scores
        return scores

    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/lookalike-text"))
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no datasets at {args.data}")
    datasets = load_datasets(args.data, args.cache)
    encoder = SentenceEncoder()
    sizes = [f"{d.name} ({len(d.labels)} images, {len(d.queries)} queries)" for d in datasets]
    print(f"datasets: {', '.join(sizes)}\n")

    for title, sweep in sweeps():
        print(f"### {title}\n")
        print("| variant | " + " | ".join(f"{d.name} mAP | P@10" for d in datasets) + " |")
        print("|---|" + "---:|---:|" * len(datasets))
        for variant in sweep:
            scorer = make_scorer(variant, encoder, args.cache)
            cells = []
            for d in datasets:
                m, p10 = retrieval_metrics(scorer(d.logits, d.queries), d.labels)
                cells.append(f"{m:.3f} | {p10:.3f}")
            print(f"| {variant.label} | " + " | ".join(cells) + " |", flush=True)
        print()

    # Per-query AP on the zero-shot set shows which words the method cannot reach.
    corel = [d for d in datasets if d.name == "Corel-1k"]
    if corel:
        d = corel[0]
        untuned = dict(top=1000, temperature=1.0, gloss=False, query_template="{}")
        rows = [
            (
                "ConSE proper, untuned",
                ConSE(encoder, cache=args.cache, space="embedding", **untuned),
            ),
            ("ConSE proper, tuned", ConSE(encoder, cache=args.cache, space="embedding")),
            ("shipped defaults", ConSE(encoder, cache=args.cache)),
        ]
        print("### Corel-1k, AP per query\n")
        print("| variant | " + " | ".join(d.queries) + " |")
        print("|---|" + "---:|" * len(d.queries))
        for label, conse in rows:
            scores = conse.text_vectors(d.queries) @ conse.image_vectors(d.logits).T
            aps = average_precisions(scores, d.labels)
            print(f"| {label} | " + " | ".join(f"{a:.2f}" for a in aps) + " |")
        print("\nnearest classes of each query (shipped defaults):\n")
        for q in d.queries:
            names = ", ".join(f"{n} {w:.2f}" for n, w in rows[-1][1].explain(q, 4))
            print(f"- {q}: {names}")
        print()

    big = max(datasets, key=lambda d: len(d.labels))
    print(f"### latency ({len(big.labels)} images, one query at a time, median of 50)\n")
    print("| variant | image vectors from logits | text query: embed + product + top 10 |")
    print("|---|---:|---:|")
    for label, conse in [
        ("shipped defaults (1000-d)", ConSE(encoder, cache=args.cache)),
        ("ConSE proper, tuned (384-d)", ConSE(encoder, cache=args.cache, space="embedding")),
    ]:
        conse.image_vectors(big.logits[:10])  # load the class vectors first
        start = time.perf_counter()
        vectors = conse.image_vectors(big.logits)
        per_image = (time.perf_counter() - start) / len(big.logits)
        times = []
        for q in big.queries[:50]:
            start = time.perf_counter()
            scores = vectors @ conse.text_vectors([q])[0]
            np.argpartition(-scores, 10)[:10]
            times.append(time.perf_counter() - start)
        print(
            f"| {label} | {1e6 * per_image:.1f} us/image | "
            f"{1e3 * np.median(times):.1f} ms (max {1e3 * np.max(times):.1f} ms) |"
        )


if __name__ == "__main__":
    main()
