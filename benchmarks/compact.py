"""Compact collections (issue #19): bytes per image on disk and in RAM, open time, query time
and what is found, format 1 (float32 vectors, flat indexes, a dense 1000-d float32 text space)
against format 2 (vectors encoded as their uses need, ``auto`` indexes memory-mapped, the text
space sparse in inverted lists).

1. **Encodings** on real descriptors (the default model's 2280-d vectors of Corel-1k and Tiny
   ImageNet val, computed once and cached in bench-out/compact/): class mAP as ``lookalike
   eval`` scores it (the collection's PCA learned on the decoded vectors, alpha-query expansion,
   each image querying all others), text mAP as benchmarks/text_queries.py scores it (class
   probabilities read back from the decoded descriptors; every class name queries every
   image), the text space's sparse form (``sparse:T``: each image's T largest class scores),
   and copy detection (SSCD-mobile on benchmarks/copies.py's copy set, float32 against int8
   vectors: µAP over each query's top 10, recall@1).
2. **As shipped**: format-2 collections built from the same descriptors through the catalogue
   API (the real files' paths and states, so that ``lookalike eval`` embeds nothing) and
   evaluated by ``lookalike.evaluate.evaluate``; text mAP through ``Collection.search_text``
   over every image (the sparse index's full ranking).
3. **Upgrade**: the real format-1 collection of Tiny ImageNet val (as lookalike wrote it before
   this issue) upgraded in place: time, bytes per image before and after.
4. **Scale**: N images synthesised from the real descriptors (each between a real vector and
   one of its 10 nearest neighbours: the pooled features mixed and jittered, zeros kept; the
   class probabilities mixed, so the text side stays a real distribution), inserted through
   ``Catalogue.add_images`` in batches of 1,000 as benchmarks/backends.py does, indexed as an
   indexing run ends (PCA, every space's index, saved). Then, in a new process: open, load
   every index, answer a first image query (a vector, α-QE as shipped) and a first text query
   (``search_text``, the sentence model loaded then), then 500 image queries, 210 text-space
   vector queries (the text index alone) and the 210 texts through ``search_text`` (p50), and
   its memory (VmRSS, split into anonymous and file-backed pages, and what the process held
   before opening). Quality at scale: recall@10 of the image index against format 1's exact
   search over the float32 vectors (same PCA), for 200 of the held-out real image queries, and of
   ``search_text`` (what users call) against the dense float32 text space for the 210
   class-name text queries; beside it, the same texts re-scored: the text index's top 100
   scored exactly from their stored descriptors (what ``search_text`` did until these figures
   showed that it bought nothing, at twice the time). Format 1 runs at ``--today-n`` (its
   costs are linear in N: its indexes are flat, all in RAM) and format 2 at ``--today-n`` and
   ``--n``.

The machine is shared (2 cores, a load average of 2-12 from other jobs): times are noisy.

Usage: python benchmarks/compact.py [--n 1000000] [--today-n 100000]
       [--parts encodings,shipped,upgrade,scale] [--reuse] [--keep] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, SHARED, table, write_section

from lookalike import Collection
from lookalike.descriptors import Whitening, l2n, query_expansion
from lookalike.evaluate.datasets import load_eval_set
from lookalike.evaluate.metrics import average_precision, mean_average_precision, rank_relevance
from lookalike.index.exact import exact_search, recall_at, top_k
from lookalike.ingest import files as ingest
from lookalike.models import load_embedder
from lookalike.models.text import ConSE
from lookalike.store import FileState, NewImage
from lookalike.store.encoding import decode_vectors, encode_vector

OUT = ROOT / "bench-out" / "compact"
SETS = ("corel1k", "tiny-imagenet-val")
ENCODINGS = ("float32", "float16", "int8", "int8z")
TEXT_TOPS = (32, 64, 96, 128)
BATCH = 1_000
K = 10


# -- data ------------------------------------------------------------------------------------
def descriptors(name: str) -> tuple[object, np.ndarray]:
    """(the eval set, its images' float32 descriptors in the set's order), cached."""
    root = SHARED / name
    evalset = load_eval_set(root)
    cache = OUT / f"descriptors-{name}.npz"
    embedder = load_embedder("efficientnet-lite0")
    if cache.exists():
        data = np.load(cache)
        if str(data["version"]) == embedder.version:
            rows = {str(p): i for i, p in enumerate(data["paths"])}
            order = [rows[str(Path(p).resolve())] for p in evalset.paths]
            return evalset, data["vectors"][order]
    from lookalike.images import decode

    vectors = []
    for start in range(0, len(evalset.paths), 64):
        chunk = evalset.paths[start : start + 64]
        images = [decode(p, min_side=embedder.input_size) for p in chunk]
        vectors.append(embedder.embed_images(images))
    vectors = np.concatenate(vectors).astype(np.float32)
    OUT.mkdir(parents=True, exist_ok=True)
    paths = np.array([str(Path(p).resolve()) for p in evalset.paths])
    np.savez(cache, paths=paths, vectors=vectors, version=embedder.version)
    return evalset, vectors


def recode(vectors: np.ndarray, encoding: str) -> np.ndarray:
    """``vectors`` as the catalogue gives them back in ``encoding``."""
    return decode_vectors([encode_vector(v, encoding) for v in vectors])


def text_side(vectors: np.ndarray) -> np.ndarray:
    """The dense text-space vectors (square roots of the class probabilities) of descriptors,
    as ``Collection._text_vectors_of`` derives them."""
    probs = load_embedder("efficientnet-lite0").class_probabilities(vectors)
    return ConSE().image_vectors(np.log(np.clip(probs, 1e-30, None)))


def text_queries(root: Path, labels: list[str]) -> tuple[list[str], list[str]]:
    """(query texts, the label each is about): benchmarks/text_queries.py's."""
    from text_queries import queries_for

    return queries_for(root, labels)


# -- 1. encodings ----------------------------------------------------------------------------
def image_map(evalset, vectors: np.ndarray, expand: int = 3) -> float:
    """Class mAP as ``lookalike eval`` scores it: PCA (256-d, learned on these vectors, as the
    collection learns it) when there are 1000 or more, α-QE, all queries against the gallery."""
    if len(vectors) >= 1000:
        sample = vectors[np.linspace(0, len(vectors) - 1, min(len(vectors), 20_000)).astype(int)]
        vectors = Whitening.fit(sample, dim=256, power=0.0).apply(vectors)
    vectors = l2n(vectors)
    queries, gallery = evalset.queries, evalset.gallery
    _, codes = np.unique(np.asarray(evalset.labels, dtype=object).astype(str), return_inverse=True)
    aps = []
    for start in range(0, len(queries), 500):
        q = queries[start : start + 500]
        sims = vectors[q] @ vectors[gallery].T
        own = q[:, None] == gallery[None, :]
        sims[own] = -np.inf
        expanded = query_expansion(vectors[q], vectors[gallery], sims, top=expand)
        scores = expanded @ vectors[gallery].T
        ranked, n = rank_relevance(scores, codes[q], codes[gallery], exclude=own)
        aps.append(average_precision(ranked, n))
    return float(np.nanmean(np.concatenate(aps)))


def text_map(texts, about, labels, image_text: np.ndarray) -> float:
    """Text mAP: every query text against every image's text-space vector."""
    conse = ConSE()
    scores = conse.text_vectors(texts) @ image_text.T
    ranked, n = rank_relevance(scores, about, np.asarray(labels))
    return mean_average_precision(ranked, n)


def sparse(dense: np.ndarray, top: int) -> np.ndarray:
    return recode(dense, f"sparse:{top}")


def encodings_part() -> dict:
    out: dict = {"sets": {}}
    for name in SETS:
        if not (SHARED / name).exists():
            continue
        evalset, vectors = descriptors(name)
        texts, about = text_queries(SHARED / name, list(evalset.labels))
        rows = {}
        for encoding in ENCODINGS:
            decoded = recode(vectors, encoding)
            blob = np.mean([len(encode_vector(v, encoding)) for v in vectors[:500]])
            rows[encoding] = {
                "bytes": float(blob),
                "image_mAP": image_map(evalset, decoded),
                "text_mAP": text_map(texts, about, evalset.labels, text_side(decoded)),
            }
            print(name, encoding, rows[encoding], flush=True)
        dense = text_side(recode(vectors, "int8z"))
        tops = {}
        for top in TEXT_TOPS:
            tops[top] = {
                "bytes": float(np.mean([len(encode_vector(v, f"sparse:{top}")) for v in dense])),
                "text_mAP": text_map(texts, about, evalset.labels, sparse(dense, top)),
            }
            print(name, "sparse", top, tops[top], flush=True)
        out["sets"][name] = {"encodings": rows, "text_tops": tops}
    out["copy"] = copy_part()
    return out


def copy_part(n_queries: int = 150, n_distractors: int = 1000) -> dict:
    """SSCD-mobile copy detection, float32 against int8 vectors (benchmarks/copies.py's set)."""
    try:
        from copies import build_set, score_metrics
    except ImportError as exc:  # augly missing
        return {"error": str(exc)}
    from lookalike.images import decode

    root = Path(tempfile.mkdtemp(prefix="copyset-", dir=OUT))
    try:
        data = build_set(root, n_queries, n_distractors)
        embedder = load_embedder("sscd-mobile")

        def embed(paths):
            out = []
            for i in range(0, len(paths), 32):
                images = [decode(p, min_side=embedder.input_size) for p in paths[i : i + 32]]
                out.append(embedder.embed_images(images))
            return np.concatenate(out).astype(np.float32)

        refs, queries = embed(data["refs"]), embed(data["queries"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {"refs": len(refs), "queries": len(queries)}
    for encoding in ("float32", "int8"):
        scores = recode(queries, encoding) @ recode(refs, encoding).T
        metrics = score_metrics(scores, data["truth"], 1.0, 1)
        result[encoding] = {k: metrics[k] for k in ("uAP", "recall@1", "recall@P90")}
        print("copy", encoding, result[encoding], flush=True)
    return result


# -- 2. as shipped ---------------------------------------------------------------------------
def shipped_part() -> dict:
    from lookalike.evaluate.run import evaluate

    embedder = load_embedder("efficientnet-lite0")
    out = {}
    for name in SETS:
        if not (SHARED / name).exists():
            continue
        evalset, vectors = descriptors(name)
        path = OUT / f"shipped-{name}"
        shutil.rmtree(path, ignore_errors=True)
        text = text_side(vectors)
        with Collection.create(path, embedder=embedder) as col:
            images = []
            for i, (file, vector) in enumerate(zip(evalset.paths, vectors, strict=True)):
                resolved = str(Path(file).resolve())
                data = Path(resolved).read_bytes()
                images.append(
                    NewImage(
                        ingest.content_hash(data),
                        resolved,
                        ingest.file_state(resolved),
                        64,
                        64,
                        {"image": vector, "text": text[i]},
                    )
                )
            for start in range(0, len(images), BATCH):
                col.catalogue.add_images(images[start : start + BATCH])
            col.refit_projections()
            for space in col.spaces():
                col.index(space)
            col.save_indexes()
        result = evaluate(SHARED / name, collection=path)
        with Collection.open(path) as col:
            texts, about = text_queries(SHARED / name, list(evalset.labels))
            ids = {p: i for p, (_, i) in col.catalogue.file_states().items()}
            label_of = {
                ids[str(Path(p).resolve())]: label
                for p, label in zip(evalset.paths, evalset.labels, strict=True)
            }
            everything = len(col)
            aps = []
            for text, label in zip(texts, about, strict=True):
                hits = col.search_text(text, k=everything)
                found = np.array([label_of[h.id] == label for h in hits])
                relevant = sum(1 for v in label_of.values() if v == label)
                aps.append(average_precision(found[None], np.array([relevant]))[0])
            sizes = col.sizes()
        out[name] = {
            "image_mAP": float(result.metrics["mAP"]),
            "P@10": float(result.metrics["P@10"]),
            "text_mAP_through_index": float(np.mean(aps)),
            "disk_per_image": sizes["disk_per_image"],
            "spaces": {s: e["disk"]["per_image"] for s, e in sizes["spaces"].items()},
        }
        print(name, "shipped", out[name], flush=True)
    return out


# -- 3. upgrade ------------------------------------------------------------------------------
def upgrade_part() -> dict:
    source = OUT / "format1-tiny"
    if not source.exists():
        return {"error": f"{source} missing (a format-1 collection of tiny-imagenet-val)"}
    target = OUT / "upgrade-tiny"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    with Collection.open(target) as col:
        before = col.sizes()
        start = time.perf_counter()
        with col.writing():
            pass
        seconds = time.perf_counter() - start
        after = col.sizes()
    shutil.rmtree(target, ignore_errors=True)
    return {"images": before["images"], "seconds": seconds, "before": before, "after": after}


# -- 4. scale --------------------------------------------------------------------------------
class Synthesis:
    """N descriptors made from real ones (module docstring), in chunks, reproducibly."""

    def __init__(self, real: np.ndarray, seed: int = 1) -> None:
        embedder = load_embedder("efficientnet-lite0")
        self.features = l2n(real[:, :1280])
        self.probs = embedder.class_probabilities(real).astype(np.float32)
        self.probs /= self.probs.sum(axis=1, keepdims=True)
        self.neighbours = exact_search(real, real, 11)[1][:, 1:]
        self.seed = seed

    def chunks(self, n: int, size: int = 10_000):
        rng = np.random.default_rng(self.seed)
        for start in range(0, n, size):
            m = min(size, n - start)
            base = rng.integers(0, len(self.features), m)
            other = self.neighbours[base, rng.integers(0, 10, m)]
            t = rng.uniform(0, 0.5, (m, 1)).astype(np.float32)
            feature = (1 - t) * self.features[base] + t * self.features[other]
            feature *= np.exp(0.2 * rng.standard_normal(feature.shape)).astype(np.float32)
            probs = (1 - t) * self.probs[base] + t * self.probs[other]
            fused = np.concatenate([l2n(feature), 0.5 * np.sqrt(probs)], axis=1) / np.sqrt(1.25)
            yield start, fused.astype(np.float32)


def pre_create_format_1(path: Path) -> None:
    """A catalogue file with format 1's 4 KB pages, before the collection creates its tables."""
    import sqlite3

    path.mkdir(parents=True)
    db = sqlite3.connect(path / "catalogue.sqlite")
    db.execute("PRAGMA page_size = 4096")
    db.execute("PRAGMA journal_mode = WAL")
    db.close()


def build(path: Path, n: int, synthesis: Synthesis, fmt: int) -> dict:
    """A collection of ``n`` synthetic images in format ``fmt``; build timings."""
    shutil.rmtree(path, ignore_errors=True)
    embedder = load_embedder("efficientnet-lite0")
    if fmt == 1:
        pre_create_format_1(path)
    with Collection.create(path, embedder=embedder) as col:
        pass
    if fmt == 1:  # format 1's manifest: no encodings (float32), flat indexes
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["format_version"] = 1
        manifest["index"]["kind"] = "flat"
        for spec in manifest["spaces"].values():
            spec.pop("encoding", None)
            spec["index"] = "flat"
        (path / "manifest.json").write_text(json.dumps(manifest))
    result: dict = {"format": fmt, "n": n}
    conse = ConSE()
    with Collection.open(path, embedder=embedder) as col:
        start = time.perf_counter()
        for first, chunk in synthesis.chunks(n):
            text = conse.image_vectors(
                np.log(np.clip(embedder.class_probabilities(chunk), 1e-30, None))
            )
            for b in range(0, len(chunk), BATCH):
                col.catalogue.add_images(
                    [
                        NewImage(
                            f"{first + b + i:032x}",
                            f"/bench/photos/{(first + b + i) // 1000:04d}/{first + b + i:07d}.jpg",
                            FileState(250_000, first + b + i),
                            4032,
                            3024,
                            {"image": chunk[b + i], "text": text[b + i]},
                        )
                        for i in range(min(BATCH, len(chunk) - b))
                    ]
                )
            print(f"  {path.name}: {first + len(chunk):,} inserted", flush=True)
        result["insert_s"] = time.perf_counter() - start
        start = time.perf_counter()
        col.refit_projections()
        for space in col.spaces():
            col.index(space)
        col.save_indexes()
        result["index_s"] = time.perf_counter() - start
        result["sizes"] = col.sizes()
    return result


MEASURE = r"""
import json, sys, time
import numpy as np

def rss():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out

from lookalike import Collection
from lookalike.models import load_embedder
embedder = load_embedder("efficientnet-lite0")
image_queries = np.load(sys.argv[2])
text_queries = json.loads(open(sys.argv[3]).read())
import lookalike.index.auto, lookalike.index.ivf, lookalike.index.inverted  # as opening does
result = {"rss_before": rss()}
start = time.perf_counter()
col = Collection.open(sys.argv[1], embedder=embedder)
for space in col.spaces():
    col.index(space)
result["open_s"] = time.perf_counter() - start
col.search_vectors(image_queries[:1], 10)
result["first_image_s"] = time.perf_counter() - start
start_text = time.perf_counter()
col.search_text(text_queries[0], k=10)
result["first_text_s"] = time.perf_counter() - start_text
text_vectors = np.concatenate([col.text_query([t]) for t in text_queries])
sparse = str(col.spaces()["text"].get("encoding", "")).startswith("sparse")
image_times, text_times, full_text_times = [], [], []
found_image, found_text = [], []
for i, query in enumerate(image_queries):
    t = time.perf_counter()
    hits = col.search_vectors(query[None], 10)[0]
    image_times.append(time.perf_counter() - t)
    found_image.append([h.id for h in hits] + [-1] * (10 - len(hits)))
for i, query in enumerate(text_vectors):
    t = time.perf_counter()
    col.search_vectors(query[None], 10, space="text")
    text_times.append(time.perf_counter() - t)


def rescored(text, k=10, wanted=100):
    # search_text with the sparse index's top 100 re-scored exactly from their stored
    # descriptors (all 1000 class probabilities, at the image space's precision), as
    # TextSearch._rescored did until this benchmark showed that it bought nothing.
    query = col.text_query([text])
    ids = [h.id for h in col.search_vectors(query, wanted, space="text")[0]]
    probs = col.embedder.class_probabilities(col.catalogue.vectors("image", ids))
    scores = col.text_model.image_vectors(np.log(np.clip(probs, 1e-30, None))) @ query[0]
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


rescored_times, found_rescored = [], []
for text in text_queries:
    t = time.perf_counter()
    hits = col.search_text(text, k=10)
    full_text_times.append(time.perf_counter() - t)
    found_text.append([h.id for h in hits] + [-1] * (10 - len(hits)))
    t = time.perf_counter()
    found = rescored(text) if sparse else [h.id for h in hits]
    rescored_times.append(time.perf_counter() - t)
    found_rescored.append(found + [-1] * (10 - len(found)))
plain = []
for query in image_queries[:200]:
    hits = col.search_vectors(query[None], 10, expand=0)[0]
    plain.append([h.id for h in hits] + [-1] * (10 - len(hits)))
result["rss_after"] = rss()
result["image_ms"] = [x * 1000 for x in image_times]
result["text_ms"] = [x * 1000 for x in text_times]
result["search_text_ms"] = [x * 1000 for x in full_text_times]
result["rescored_ms"] = [x * 1000 for x in rescored_times]
result["found_image_plain"] = plain
result["found_text"] = found_text
result["found_rescored"] = found_rescored
print("RESULT " + json.dumps(result))
"""


BASELINE = r"""
import json, sys
from lookalike.models import load_embedder
from lookalike.models.text import ConSE
import lookalike.collection, lookalike.index.auto, lookalike.index.ivf, lookalike.index.inverted
embedder = load_embedder("efficientnet-lite0")
ConSE().text_vectors(["a photo"])
out = {}
for line in open("/proc/self/status"):
    key, _, value = line.partition(":")
    if key in ("VmRSS", "RssAnon", "RssFile"):
        out[key] = int(value.split()[0]) * 1024
print("RESULT " + json.dumps(out))
"""


def baseline() -> dict:
    """What a process that searches holds before any collection: libraries, the text model."""
    out = subprocess.run([sys.executable, "-c", BASELINE], capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(line[len("RESULT ") :])


def measure(path: Path, image_queries: np.ndarray, texts: list[str]) -> dict:
    """Open the collection in a new process and query it (``MEASURE``)."""
    np.save(OUT / "queries.npy", image_queries)
    (OUT / "texts.json").write_text(json.dumps(texts))
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            MEASURE,
            str(path),
            str(OUT / "queries.npy"),
            str(OUT / "texts.json"),
        ],
        capture_output=True,
        text=True,
        timeout=7200,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(out.stderr[-3000:])
    result = json.loads(line[len("RESULT ") :])
    result["rss_models"] = baseline()
    return result


def truth(path: Path, n: int, synthesis: Synthesis, image_queries: np.ndarray, texts) -> dict:
    """Format 1's answers: exact top-10 over the float32 vectors (image: in the collection's
    PCA, no expansion; text: the dense 1000-d text space)."""
    conse = ConSE()
    embedder = load_embedder("efficientnet-lite0")
    with Collection.open(path, embedder=embedder) as col:
        projected_queries = col.project(image_queries[:200])
        text_vectors = np.concatenate([col.text_query([t]) for t in texts])
        image_best = (np.full((200, K), -np.inf, np.float32), np.full((200, K), -1, np.int64))
        text_best = (np.full((len(texts), K), -np.inf, np.float32), np.full((len(texts), K), -1))
        ids = np.asarray(sorted(i for _, i in col.catalogue.file_states().values()))
        for first, chunk in synthesis.chunks(n):
            chunk_ids = ids[first : first + len(chunk)]
            dense_text = conse.image_vectors(
                np.log(np.clip(embedder.class_probabilities(chunk), 1e-30, None))
            )
            for best, scores in (
                (image_best, projected_queries @ col.project(chunk).T),
                (text_best, text_vectors @ dense_text.T),
            ):
                merged_s = np.concatenate([best[0], scores], axis=1)
                merged_i = np.concatenate([best[1], np.broadcast_to(chunk_ids, scores.shape)], 1)
                top = top_k(merged_s, K)
                best[0][:] = np.take_along_axis(merged_s, top, 1)
                best[1][:] = np.take_along_axis(merged_i, top, 1)
    return {"image": image_best[1], "text": text_best[1]}


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def scale_part(n: int, today_n: int, reuse: bool = False, keep: bool = False) -> dict:
    real_sets = [descriptors(name) for name in SETS if (SHARED / name).exists()]
    real = np.concatenate([v for _, v in real_sets])
    order = np.random.default_rng(0).permutation(len(real))
    image_queries, source = real[order[:500]], real[order[500:]]
    texts = []
    for (evalset, _), name in zip(real_sets, SETS, strict=False):
        texts += text_queries(SHARED / name, list(evalset.labels))[0]
    synthesis = Synthesis(source)
    runs = []
    for fmt, count in ((1, today_n), (2, today_n), (2, n)):
        if runs and any(r["format"] == fmt and r["n"] == count for r in runs):
            continue
        path = OUT / f"scale-f{fmt}-{count}"
        saved = OUT / f"scale-f{fmt}-{count}.json"
        if reuse and saved.exists():
            runs.append(json.loads(saved.read_text()))
            continue
        print(f"building format {fmt} at {count:,}", flush=True)
        run = build(path, count, synthesis, fmt)
        run["disk_bytes"] = size_of(path)
        run["measure"] = measure(path, image_queries, texts)
        exact = truth(path, count, synthesis, image_queries, texts)
        run["recall_image"] = recall_at(
            np.array(run["measure"].pop("found_image_plain")), exact["image"]
        )
        run["recall_text"] = recall_at(np.array(run["measure"].pop("found_text")), exact["text"])
        run["recall_text_rescored"] = recall_at(
            np.array(run["measure"].pop("found_rescored")), exact["text"]
        )
        for key in ("image_ms", "text_ms", "search_text_ms", "rescored_ms"):
            samples = run["measure"].pop(key)
            run[key.replace("_ms", "_p50_ms")] = float(np.percentile(samples, 50))
            run[key.replace("_ms", "_p99_ms")] = float(np.percentile(samples, 99))
        print(json.dumps({k: v for k, v in run.items() if k != "sizes"}), flush=True)
        saved.write_text(json.dumps(run))
        runs.append(run)
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
    return {"runs": runs, "queries": len(image_queries), "texts": len(texts)}


# -- report ----------------------------------------------------------------------------------
def kb(x: float) -> str:
    return f"{x / 1000:.2f}"


def _figure(run: dict, key: str, form: str) -> str:
    """A figure of a format-2 scale run, "-" when that run did not measure it (format 1 has
    no sparse candidates to re-score)."""
    return form.format(run[key]) if key in run and run["format"] == 2 else "-"


def quality_table(results: dict) -> str | None:
    """Every quality figure of today's defaults (format 1: float32 vectors, flat indexes, the
    dense text space) beside format 2 as shipped, and the difference."""
    enc, shipped = results.get("encodings"), results.get("shipped") or {}
    if not enc:
        return None
    rows = []
    for name, data in enc["sets"].items():
        before = data["encodings"]["float32"]
        after = shipped.get(name)
        for label, old, key in (
            ("class mAP", before["image_mAP"], "image_mAP"),
            ("text mAP", before["text_mAP"], "text_mAP_through_index"),
        ):
            new = after[key] if after else data["encodings"]["int8z"][key.split("_through")[0]]
            rows.append([name, label, f"{old:.4f}", f"{new:.4f}", f"{new - old:+.4f}"])
    copy = enc.get("copy", {})
    if "float32" in copy:
        for label, key in (("copy µAP", "uAP"), ("copy recall@1", "recall@1")):
            old, new = copy["float32"][key], copy["int8"][key]
            rows.append([copy_label(copy), label, f"{old:.4f}", f"{new:.4f}", f"{new - old:+.4f}"])
    for run in (results.get("scale") or {}).get("runs", []):
        if run["format"] == 2 and "recall_text" in run:
            rows.append(
                [
                    f"synthetic {run['n']:,}",
                    "search_text recall@10 vs dense float32",
                    "1.0000",
                    f"{run['recall_text']:.4f}",
                    f"{run['recall_text'] - 1:+.4f}",
                ]
            )
    return (
        "### Quality before and after\n\nToday's defaults before this change (format 1: "
        "float32 descriptors, flat indexes, a dense 1000-d float32 text space) and format 2 as "
        "shipped (image descriptors int8z, text space sparse:96 in inverted lists, `auto` "
        "indexes): class mAP as `lookalike eval` scores it, text mAP through "
        "`search_text` over every image (benchmarks/text_queries.py's queries), copy detection "
        "with SSCD-mobile vectors float32 against int8 (the copy space's encoding); at scale, "
        "`search_text`'s top 10 against the exact top 10 of the dense float32 text space.\n\n"
        + table(["set", "figure", "format 1", "format 2", "difference"], rows)
    )


def goals_table(results: dict) -> str | None:
    """Issue #19's goals against the largest format-2 run and format 1's run."""
    runs = (results.get("scale") or {}).get("runs", [])
    after = max((r for r in runs if r["format"] == 2), key=lambda r: r["n"], default=None)
    before = next((r for r in runs if r["format"] == 1), None)
    if after is None or before is None:
        return None
    m, n = after["measure"], after["n"]
    net = (m["rss_after"]["VmRSS"] - m["rss_models"]["VmRSS"]) / n
    rows = [
        ["disk per image, image + text spaces", "≤ 4 KB", f"{kb(after['disk_bytes'] / n)} KB"],
        [
            "RAM per image when searching (every default space loaded)",
            "≤ 1.5 KB",
            f"{kb(net)} KB (whole process {kb(m['rss_after']['VmRSS'] / n)} KB, peak "
            f"{kb(m['rss_after']['VmHWM'] / n)} KB)",
        ],
        [
            "open + first image query",
            "≤ 2 s",
            f"{m['first_image_s']:.2f} s (first text query {m['first_text_s']:.2f} s more)",
        ],
    ]
    for label, key in (
        ("image query p50", "image_p50_ms"),
        ("search_text p50", "search_text_p50_ms"),
    ):
        ratio = after[key] / before[key]
        rows.append(
            [
                f"{label} (format 1 at {before['n']:,}: {before[key]:.1f} ms)",
                "within 20%",
                f"{after[key]:.1f} ms ({ratio:.2f}x)",
            ]
        )
    return f"### Goals at {n:,} images\n\n" + table(["goal", "target", "measured"], rows)


def copy_label(copy: dict) -> str:
    return f"copies ({copy['refs']} refs, {copy['queries']} queries)"


def report(results: dict) -> str:
    parts = ["## Compact collections (format 2): bytes per image, speed, quality"]
    commands = results.get("commands", {})
    measured = [
        f"{part}: `{commands[part]}`" if part in commands else f"{part}: an earlier run"
        for part in ("encodings", "shipped", "upgrade", "scale")
        if part in results
    ]
    if measured:
        parts.append(
            "_Figures of bench-out/compact/results.json, each part measured by "
            + "; ".join(measured)
            + ". The timings on a shared machine (2 cores, other engineers' jobs running: a "
            "load average of 2-5 during the scale runs)._"
        )
    for section in (goals_table(results), quality_table(results)):
        if section:
            parts.append(section)
    enc = results.get("encodings")
    if enc:
        rows = []
        for name, data in enc["sets"].items():
            for encoding, r in data["encodings"].items():
                rows.append(
                    [
                        name,
                        encoding,
                        f"{r['bytes']:.0f}",
                        f"{r['image_mAP']:.4f}",
                        f"{r['text_mAP']:.4f}",
                    ]
                )
        parts.append(
            "### Encodings of the default descriptor (2280-d)\n\nClass mAP as `lookalike eval` "
            "scores it (PCA learned on the decoded vectors, α-QE) and text mAP as "
            "benchmarks/text_queries.py scores it (class probabilities read back from the "
            "decoded descriptor); bytes: one stored vector.\n\n"
            + table(["set", "encoding", "bytes", "image mAP", "text mAP"], rows)
        )
        rows = []
        for name, data in enc["sets"].items():
            for top, r in data["text_tops"].items():
                rows.append([name, f"sparse:{top}", f"{r['bytes']:.0f}", f"{r['text_mAP']:.4f}"])
        parts.append(
            "### The text space stored sparse (each image's T largest class scores)\n\n"
            + table(["set", "encoding", "bytes", "text mAP"], rows)
        )
        copy = enc.get("copy", {})
        if "float32" in copy:
            rows = [
                [
                    e,
                    f"{copy[e]['uAP']:.4f}",
                    f"{copy[e]['recall@1']:.4f}",
                    f"{copy[e]['recall@P90']:.4f}",
                ]
                for e in ("float32", "int8")
            ]
            parts.append(
                f"### Copy detection (SSCD-mobile, {copy['refs']} references, {copy['queries']} "
                "queries of benchmarks/copies.py's set)\n\n"
                + table(["encoding", "µAP", "recall@1", "recall@P90"], rows)
            )
    shipped = results.get("shipped")
    if shipped:
        rows = [
            [
                name,
                f"{r['image_mAP']:.4f}",
                f"{r['P@10']:.4f}",
                f"{r['text_mAP_through_index']:.4f}",
                kb(r["disk_per_image"]),
            ]
            for name, r in shipped.items()
        ]
        parts.append(
            "### As shipped (format-2 collections, `lookalike eval`; text through "
            "`search_text` over every image)\n\n"
            + table(["set", "image mAP", "P@10", "text mAP (index)", "KB/image on disk"], rows)
        )
    upgrade = results.get("upgrade")
    if upgrade and "before" in upgrade:
        b, a = upgrade["before"], upgrade["after"]
        rows = []
        for label, s in (("format 1", b), ("format 2 (upgraded)", a)):
            rows.append(
                [
                    label,
                    kb(s["disk_per_image"]),
                    kb(s["catalogue"]["bytes"] / s["images"]),
                    *[kb(s["spaces"][x]["disk"]["index"] / s["images"]) for x in ("image", "text")],
                    *[
                        kb(s["spaces"][x]["disk"]["catalogue"] / s["images"])
                        for x in ("image", "text")
                    ],
                ]
            )
        parts.append(
            f"### Upgrade in place (the real Tiny ImageNet val collection, {upgrade['images']:,} "
            f"images): {upgrade['seconds']:.1f} s\n\nKB per image.\n\n"
            + table(
                [
                    "",
                    "folder",
                    "catalogue file",
                    "image index",
                    "text index",
                    "image vectors",
                    "text vectors",
                ],
                rows,
            )
        )
    scale = results.get("scale")
    if scale:
        rows = []
        for r in scale["runs"]:
            m = r["measure"]
            after, before = m["rss_after"], m["rss_models"]
            rows.append(
                [
                    f"format {r['format']}",
                    f"{r['n']:,}",
                    kb(r["disk_bytes"] / r["n"]),
                    kb((after["VmRSS"] - before["VmRSS"]) / r["n"]),
                    kb(after["VmRSS"] / r["n"]),
                    f"{after['RssAnon'] / 2**20:.0f} / {after['RssFile'] / 2**20:.0f}",
                    f"{m['open_s']:.2f}",
                    f"{m['first_image_s']:.2f}",
                    f"{m['first_text_s']:.2f}",
                    f"{r['image_p50_ms']:.1f}",
                    f"{r['text_p50_ms']:.1f}",
                    f"{r['search_text_p50_ms']:.1f}",
                    _figure(r, "rescored_p50_ms", "{:.1f}"),
                    f"{r['recall_image']:.3f}",
                    f"{r['recall_text']:.3f}",
                    _figure(r, "recall_text_rescored", "{:.3f}"),
                    f"{r['insert_s'] / 60:.1f} + {r['index_s'] / 60:.1f}",
                ]
            )
        parts.append(
            f"### At scale (synthetic, {scale['queries']} real image queries, {scale['texts']} "
            "text queries)\n\nRAM: VmRSS of the searching process after the queries, less "
            "that of a process holding the same libraries and the text model but no collection, "
            "per image; then the whole process per image and its anonymous / file-backed "
            "(memory-mapped, reclaimable) MB. "
            "Open: open + load every index; first image: + one α-QE vector query; first "
            "text: `search_text` (sentence model loaded then). p50 over 500 image queries "
            "(α-QE, k=10), 210 text-space vector queries (the text index alone) and the same "
            "210 texts through `search_text` (the sentence model, then the index), and "
            "re-scored: the text index's top 100 scored exactly from their stored descriptors "
            "(every class probability, at the image space's precision; `search_text` did so "
            "until these figures showed it bought nothing). Recall@10 against format 1's exact "
            "answers (float32, flat; image without α-QE; text against the dense float32 text "
            "space).\n\n"
            + table(
                [
                    "",
                    "images",
                    "disk KB/img",
                    "RAM KB/img",
                    "process KB/img",
                    "anon / file MB",
                    "open s",
                    "+ first image s",
                    "first text s",
                    "image p50 ms",
                    "text index p50 ms",
                    "search_text p50 ms",
                    "re-scored p50 ms",
                    "image recall@10",
                    "search_text recall@10",
                    "re-scored recall@10",
                    "build min",
                ],
                rows,
            )
        )
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--today-n", type=int, default=100_000)
    parser.add_argument("--parts", default="encodings,shipped,upgrade,scale")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the scale runs already measured (their .json)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the scale runs' collections (to look into them)"
    )
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    saved = OUT / "results.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    if not args.report_only:
        parts = args.parts.split(",")
        command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
        results.setdefault("commands", {}).update({part: command for part in parts})
        if "encodings" in parts:
            results["encodings"] = encodings_part()
        if "shipped" in parts:
            results["shipped"] = shipped_part()
        if "upgrade" in parts:
            results["upgrade"] = upgrade_part()
        if "scale" in parts:
            results["scale"] = scale_part(args.n, args.today_n, args.reuse, args.keep)
        saved.write_text(json.dumps(results, default=float))
    body = report(results)
    print(body)
    if not args.no_write:
        write_section("compact", body)


if __name__ == "__main__":
    main()
