"""Groups of duplicates in a collection: exact copies (one content, several files) and
near-duplicates (copy-space neighbours above a threshold, joined by union-find), each group with
a suggested original; moving the others away, and pictures of the groups.

Without a copy space, :func:`duplicates` reports exact copies only and says how to add it
(PDQ over re-decoded files would be as slow as adding the copy space, and catches less).

Example:
    >>> [g.original for g in duplicates(col)]  # doctest: +SKIP
    ['/photos/cat.jpg']
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lookalike.copies.space import COPY_SPACE, incomplete, threshold_for
from lookalike.keypoints.rerank import VERIFY_SIDE, decode_any
from lookalike.keypoints.verify import Features, extract, verify

if TYPE_CHECKING:
    from lookalike.collection import Collection

#: Candidates re-ranked by verification when ``top`` is not given.
VERIFY_TOP = 10

Progress = Callable[[int, int], None]
log = logging.getLogger("lookalike.copies")


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


class UnionFind:
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
    only exact copies are found (see :func:`how_to_add`). Images without a copy vector (an
    incomplete space) can only be exact copies; a warning on the ``lookalike`` logger says so
    and names the fix (:func:`~lookalike.copies.space.incomplete`).
    """
    files = col.catalogue.file_states()  # path -> (state, image id)
    mtime = {path: state.mtime_ns for path, (state, _) in files.items()}
    forest = UnionFind()
    edges: dict[tuple[int, int], float] = {}
    if COPY_SPACE in col.spaces():
        problem = incomplete(col)
        if problem is not None:
            log.warning("%s", problem)
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
            image = decode_any(record.paths, VERIFY_SIDE) if record else None
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
