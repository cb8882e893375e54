"""Copy detection in a collection: the ``copy`` space, verified copy search, and duplicates.

A collection can hold, beside its semantic descriptor, a *copy space*: one SSCD vector per image
(``lookalike.models.sscd``), which stays close under crops, overlays, recompression and colour
edits. :func:`add_copy_space` computes it for a collection that lacks it (re-decoding the stored
files); new images then get it at indexing time. ``Collection.search(query, space="copy")``
searches it and ``verify=True`` (:func:`verify_results`) re-ranks the hits by keypoint
matching (``lookalike.verify``), giving each one ``verified``, ``inliers`` and the ``region``
of the candidate the query covers. :func:`duplicates` groups the collection's exact copies
(files with one content) and near-duplicates (copy-space k-NN above a threshold, union-find),
each group naming a suggested original.

Thresholds (cosine similarity in the copy space) are calibrated by ``benchmarks/copies.py`` on a
DISC21-style set (1000 references: 500 Corel-1k + 500 Tiny ImageNet distractors; 400 queries:
200 AugLy edits of references, 200 edits of Corel images that are not indexed):
:data:`COPY_THRESHOLDS` holds, per model, the score above which 90% of the predictions are true
copies on that set. ``sscd-mobile``: 0.68 (90% precision, recall 0.78; µAP 0.91, recall@1 1.00,
~32 images/s); ``sscd``: 0.60 (90% precision, recall 0.875; µAP 0.95, recall@1 1.00, ~7
images/s on 2 busy cores). Meta gives 0.75 for ``sscd`` at 90% precision on DISC2021, whose
negatives are harder; raise ``threshold`` for fewer false groups. ``sscd-mobile`` is the
default: it meets the goals (µAP >= 0.90, recall@1 >= 0.95) at about 4.5x the speed.

Without a copy space, :func:`duplicates` reports exact copies only and says how to add it
(PDQ over re-decoded files would be as slow as adding the copy space, and catches less).

Example:
    >>> from lookalike import Collection
    >>> col = Collection.open("photos.lookalike")  # doctest: +SKIP
    >>> add_copy_space(col, "sscd-mobile")  # doctest: +SKIP
    >>> col.search("edited.jpg", k=5, space="copy", verify=True)[0].verified  # doctest: +SKIP
    True
    >>> [g.original for g in duplicates(col)]  # doctest: +SKIP
    ['/photos/cat.jpg']
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lookalike.images import ImageError, decode
from lookalike.models import Embedder, load_embedder
from lookalike.verify import Features, extract, verify

if TYPE_CHECKING:
    from lookalike.collection import Collection, SearchResult

COPY_SPACE = "copy"
#: The copy model of ``lookalike index --copy``; see docs/benchmarks.md (section copies).
DEFAULT_COPY_MODEL = "sscd-mobile"
COPY_MODELS = ("sscd-mobile", "sscd")
#: Cosine similarity in the copy space at or above which two images are called copies:
#: 90% precision on the benchmark set (benchmarks/copies.py; recall 0.78 and 0.875).
COPY_THRESHOLDS = {"sscd": 0.60, "sscd-mobile": 0.68}
#: Candidates re-ranked by :func:`verify_results` when ``top`` is not given.
VERIFY_TOP = 10
#: Longest side images are decoded at for verification (``verify.MAX_SIDE``).
VERIFY_SIDE = 1024

Progress = Callable[[int, int], None]


def how_to_add(path: object) -> str:
    """The message for a collection without a copy space."""
    return (
        f"{path} has no copy-detection vectors; add them with `lookalike index FOLDER "
        f"--collection {path} --copy` (FOLDER: the indexed folder; only stored images are "
        "re-read) or Collection.add_copy_space()"
    )


def copy_space_spec(embedder: Embedder) -> dict:
    """The manifest entry of a copy space computed by ``embedder``."""
    return {
        "model": embedder.name,
        "version": embedder.version,
        "dim": int(embedder.dim),
        "index": "flat",
    }


def threshold_for(col: Collection) -> float:
    """The calibrated copy threshold of the collection's copy model."""
    model = col.spaces()[COPY_SPACE]["model"]
    return COPY_THRESHOLDS.get(model, COPY_THRESHOLDS["sscd"])


@dataclass
class CopySpaceReport:
    """What :func:`add_copy_space` did: images embedded, files that are gone, seconds."""

    model: str
    embedded: int = 0
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "embedded": self.embedded,
            "missing": self.missing,
            "seconds": round(self.seconds, 3),
        }


def add_copy_space(
    col: Collection,
    model: str = DEFAULT_COPY_MODEL,
    *,
    progress: Progress | None = None,
    batch_size: int = 32,
) -> CopySpaceReport:
    """Give ``col`` a copy space computed by ``model`` for every stored image (re-decoding
    its files); images none of whose files can be read are reported in ``missing`` and stay
    out of the copy space. Idempotent: only images without a copy vector are embedded.

    Raises:
        CollectionError: the collection already has a copy space of another model.
    """
    from lookalike.collection import CollectionError, _write_json, _WriteLock

    start = time.perf_counter()
    report = CopySpaceReport(model)
    existing = col.spaces().get(COPY_SPACE)
    if existing is not None and existing.get("model") != model:
        raise CollectionError(
            f"{col.path} already has a copy space of {existing.get('model')!r}, not {model!r}"
        )
    embedder = load_embedder(model)
    with _WriteLock(col.path, col), col._lock:
        if existing is None:
            col.manifest["spaces"][COPY_SPACE] = copy_space_spec(embedder)
            _write_json(col.path / "manifest.json", col.manifest)
        col._space_embedders[COPY_SPACE] = embedder
        todo = col.catalogue.ids_missing(COPY_SPACE)
        if progress:
            progress(0, len(todo))
        for start_at in range(0, len(todo), batch_size):
            ids, images = [], []
            for record in col.catalogue.images(todo[start_at : start_at + batch_size]):
                image = _decode_any(record.paths, embedder.input_size) if record else None
                if image is None:
                    report.missing.extend(record.paths if record else [])
                    continue
                ids.append(record.id)
                images.append(image)
            if ids:
                col.catalogue.put_vectors(COPY_SPACE, ids, embedder.embed_images(images))
                report.embedded += len(ids)
            if progress:
                progress(min(start_at + batch_size, len(todo)), len(todo))
        col._indexes.pop(COPY_SPACE, None)
        col.index(COPY_SPACE)  # rebuilt from the stored vectors, then saved
        col._save_indexes()
    report.seconds = time.perf_counter() - start
    return report


def _decode_any(paths: Sequence[str], min_side: int):
    """The first of ``paths`` that decodes, or None."""
    for path in paths:
        try:
            return decode(path, min_side=min_side)
        except (ImageError, OSError):
            continue
    return None


# -- verification ------------------------------------------------------------------------------
def query_features(query: object) -> Features:
    """RootSIFT features of a query (path, bytes, PIL image or pixel array), computed once."""
    if isinstance(query, np.ndarray) and query.ndim == 1:
        raise ValueError("verification needs the query image, not a vector")
    if isinstance(query, np.ndarray):
        return extract(query)
    return extract(decode(query, min_side=VERIFY_SIDE))


def verify_results(
    query: object | Features, results: list[SearchResult], *, top: int | None = None
) -> list[SearchResult]:
    """Check the first ``top`` results (all by default) by geometric verification and re-rank:
    verified hits first (by inliers, then score), then the others in score order. Each checked
    result gains ``verified``, ``inliers`` and ``region`` (x0, y0, x1, y1 in its pixels).

    Example:
        >>> hits = col.search("crop.jpg", space="copy")  # doctest: +SKIP
        >>> hits = verify_results("crop.jpg", hits)  # doctest: +SKIP
        >>> hits[0].verified, hits[0].region  # doctest: +SKIP
        (True, (120, 80, 410, 300))
    """
    features = query if isinstance(query, Features) else query_features(query)
    checked = results if top is None else results[:top]
    for result in checked:
        candidate = _decode_any(result.paths or (result.path,), VERIFY_SIDE)
        if candidate is None:
            result.verified, result.inliers, result.region = False, 0, None
            continue
        outcome = verify(features, candidate)
        result.verified = outcome.verified
        result.inliers = outcome.inliers
        result.region = outcome.region if outcome.verified else None
    ranked = sorted(
        checked,
        key=lambda r: (not r.verified, -(r.inliers or 0) if r.verified else 0, -r.score),
    )
    return ranked + list(results[len(checked) :])


# -- duplicates --------------------------------------------------------------------------------
@dataclass
class DuplicateGroup:
    """Files that hold one picture: a suggested ``original`` (most pixels, then oldest file)
    and the ``others``, each ``{"path", "id", "kind": "exact"|"near", "score", ...}``."""

    original: str
    original_id: int
    others: list[dict]

    def to_dict(self) -> dict:
        return {"original": self.original, "id": self.original_id, "others": self.others}

    @property
    def paths(self) -> list[str]:
        return [self.original, *(o["path"] for o in self.others)]


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]  # path halving
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_pairs(
    col: Collection, threshold: float, k: int, batch: int = 1024
) -> dict[tuple[int, int], float]:
    """(id_a, id_b) -> score for image pairs whose copy vectors are at least ``threshold``
    similar, from each image's ``k`` nearest neighbours (memory O(N·k), never N×N)."""
    index = col.index(COPY_SPACE)
    pairs: dict[tuple[int, int], float] = {}
    for ids, vectors in col.catalogue.iter_vectors(COPY_SPACE, batch):
        scores, found = index.search(vectors, k + 1)  # +1: an image finds itself first
        for source, row_scores, row_ids in zip(ids, scores, found, strict=True):
            for score, other in zip(row_scores, row_ids, strict=True):
                if other < 0 or other == source or score < threshold:
                    continue
                key = (int(min(source, other)), int(max(source, other)))
                pairs[key] = max(pairs.get(key, -1.0), float(score))
    return pairs


def duplicates(
    col: Collection,
    threshold: float | None = None,
    k: int = 10,
    verify_pairs: bool = False,
    progress: Progress | None = None,
) -> list[DuplicateGroup]:
    """Groups of exact copies and near-duplicates in ``col``, largest group first.

    ``threshold``: copy-space cosine similarity (default: the model's calibrated
    :data:`COPY_THRESHOLDS`); ``k``: neighbours looked at per image; ``verify_pairs``: keep a
    near pair only when keypoint matching confirms it (either way round). Without a copy space
    only exact copies are found (see :func:`how_to_add`).
    """
    files = col.catalogue.file_states()  # path -> (state, image id)
    mtime = {path: state.mtime_ns for path, (state, _) in files.items()}
    forest = _UnionFind()
    edges: dict[tuple[int, int], float] = {}
    if COPY_SPACE in col.spaces():
        threshold = threshold_for(col) if threshold is None else threshold
        edges = near_pairs(col, threshold, k)
        if verify_pairs:
            edges = _verified(col, edges, progress)
        for a, b in edges:
            forest.union(a, b)
    image_files: dict[int, list[str]] = {}
    for path, (_, image_id) in files.items():
        image_files.setdefault(image_id, []).append(path)
    members: dict[int, list[int]] = {}
    for image_id, paths in image_files.items():
        if len(paths) > 1 or image_id in forest.parent:
            members.setdefault(forest.find(image_id), []).append(image_id)
    best_score: dict[int, float] = {}
    for (a, b), score in edges.items():
        best_score[a] = max(best_score.get(a, -1.0), score)
        best_score[b] = max(best_score.get(b, -1.0), score)
    groups = []
    for ids in members.values():
        records = {r.id: r for r in col.catalogue.images(ids) if r is not None}
        groups.append(_group(records, image_files, mtime, best_score))
    return sorted(groups, key=lambda g: (-len(g.others), g.original))


def _group(records, image_files, mtime, best_score) -> DuplicateGroup:
    # Most pixels first, then the oldest file: an original is rarely smaller than its copies.
    candidates = [
        (-(r.width * r.height), mtime.get(p, 0), p, r.id)
        for r in records.values()
        for p in image_files.get(r.id, [])
    ]
    candidates.sort()
    _, _, original, original_id = candidates[0]
    others = []
    for _, _, path, image_id in candidates[1:]:
        record = records[image_id]
        if image_id == original_id:
            others.append({"path": path, "id": image_id, "kind": "exact", "score": 1.0})
        else:
            others.append(
                {
                    "path": path,
                    "id": image_id,
                    "kind": "near",
                    "score": round(best_score.get(image_id, 0.0), 6),
                    "width": record.width,
                    "height": record.height,
                }
            )
    return DuplicateGroup(original, original_id, others)


def _verified(
    col: Collection, edges: dict[tuple[int, int], float], progress: Progress | None
) -> dict[tuple[int, int], float]:
    features: dict[int, Features | None] = {}

    def features_of(image_id: int) -> Features | None:
        if image_id not in features:
            record = col.get(image_id)
            image = _decode_any(record.paths, VERIFY_SIDE) if record else None
            features[image_id] = extract(image) if image is not None else None
        return features[image_id]

    kept = {}
    for done, ((a, b), score) in enumerate(sorted(edges.items()), 1):
        fa, fb = features_of(a), features_of(b)
        # A crop verifies as query -> candidate only; try both directions.
        if (
            fa is not None
            and fb is not None
            and (verify(fa, fb).verified or verify(fb, fa).verified)
        ):
            kept[(a, b)] = score
        if progress:
            progress(done, len(edges))
    return kept


def move_duplicates(
    groups: Sequence[DuplicateGroup], destination: str | Path, *, apply: bool = False
) -> list[tuple[str, str]]:
    """Plan (and with ``apply``, do) moving every group's non-original files into
    ``destination``, keeping names unique; never deletes. Returns (source, target) pairs.
    The collection notices the moves at its next ``index`` of the folder."""
    destination = Path(destination).expanduser().resolve()
    taken: set[str] = set()
    moves = []
    for group in groups:
        for other in group.others:
            source = Path(other["path"])
            target = destination / source.name
            n = 1
            while str(target) in taken or target.exists():
                target = destination / f"{source.stem}-{n}{source.suffix}"
                n += 1
            taken.add(str(target))
            moves.append((str(source), str(target)))
    if apply:
        destination.mkdir(parents=True, exist_ok=True)
        for source, target in moves:
            if os.path.exists(source):
                shutil.move(source, target)
    return moves


def duplicate_grids(
    groups: Sequence[DuplicateGroup], folder: str | Path, per_file: int = 20
) -> list[Path]:
    """PNG pictures of the groups (one row each: the original framed blue, then the others)."""
    from lookalike.grid import QUERY, Tile, render

    folder = Path(folder)
    written = []
    for start in range(0, len(groups), per_file):
        rows = [
            [Tile(g.original, "original", Path(g.original).name, frame=QUERY)]
            + [
                Tile(o["path"], f"{o['kind']} {o['score']:.3f}", Path(o["path"]).name)
                for o in g.others
            ]
            for g in groups[start : start + per_file]
        ]
        written.append(render(rows, folder / f"duplicates-{start // per_file + 1:03d}.png"))
    return written
