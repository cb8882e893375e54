"""Groups of duplicates in a collection: exact copies (one content, several files) and
near-duplicates (copy-space neighbours above a threshold, joined by union-find), each group with
a suggested original; decisions that stick, moving the others away, and pictures of the groups.

Without a copy space, :func:`duplicates` reports exact copies only and says how to add it
(PDQ over re-decoded files would be as slow as adding the copy space, and catches less).

**Decisions** (:func:`decide` by file, :func:`decide_ids` by image id as the REST API names
images) are kept in the collection's catalogue (the ``meta`` entry ``duplicates.decisions``,
SQLite and PostgreSQL alike) by content hash, so they survive re-indexing, moves and renames,
and every later run respects them:

- ``distinct`` on a pair of files: those two pictures are not duplicates (their edge is dropped
  before the groups are formed; two files of one content: those identical files are meant);
  on one file: every pair of its current group;
- ``keep`` on a file: it is the original of whatever group it is in (a later ``keep`` in that
  group replaces it);
- ``forget``: the decisions naming these files are dropped.

**Moves** (:func:`move_duplicates`) keep the collection true: each moved file's path is
renamed in the catalogue (``Catalogue.rename_files``, one transaction per batch right after the
batch's files moved), folders below the collection's common root are kept under the
destination, files already under the destination are left where they are, and the result says
what happened to each file (moved, missing, failed), so a dry run lists exactly what ``apply``
will do and a second ``apply`` moves nothing and says so.

Example:
    >>> [g.original for g in duplicates(col)]  # doctest: +SKIP
    ['/photos/cat.jpg']
    >>> decide(col, "keep", ["/photos/cat-large.jpg"])  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from lookalike.copies.scoring import NORMALISER_SLACK, calibration_of, check
from lookalike.copies.space import COPY_SPACE, incomplete, threshold_for
from lookalike.errors import CollectionError
from lookalike.keypoints.rerank import VERIFY_SIDE, decode_any
from lookalike.keypoints.verify import Features, extract
from lookalike.store import FileState

if TYPE_CHECKING:
    from lookalike.collection import Collection

#: Candidates re-ranked by verification when ``top`` is not given.
VERIFY_TOP = 10
#: A verified pair is a copy when this share of one maps inside the other: edited copies,
#: crops and overlays sit at 0.97-1.0; other shots of one scene (Corel's series: a facade from
#: two places, a herd twice) at 0.3-0.95 (docs/benchmarks.md, section duplicates-lookalikes).
CONTAINED = 0.97

Progress = Callable[[int, int], None]
log = logging.getLogger("lookalike.copies")


#: The catalogue ``meta`` key holding the decisions.
DECISIONS_KEY = "duplicates.decisions"
ACTIONS = ("distinct", "keep", "forget")


@dataclass
class DuplicateGroup:
    """Files that hold one picture: a suggested ``original`` (most pixels, then oldest file;
    ``decided`` when a ``keep`` decision chose it) and the ``others``, each
    ``{"path", "id", "kind": "exact"|"near", "score", ...}``."""

    original: str
    original_id: int
    others: list[dict]
    decided: bool = False

    def to_dict(self) -> dict:
        out = {"original": self.original, "id": self.original_id, "others": self.others}
        if self.decided:
            out["decided"] = "keep"
        return out

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
) -> dict[tuple[int, int], Pair]:
    """(id_a, id_b) -> :class:`Pair` for the image pairs whose copy score P(copy)
    (:mod:`lookalike.copies.scoring`: each image is a query, normalised by its own result #k)
    is at least ``threshold``, from each image's ``k`` nearest neighbours (memory O(N·k),
    never N×N)."""
    cal = calibration_of(col)
    index = col.index(COPY_SPACE)
    depth = max(k, cal.rank + NORMALISER_SLACK) + 1  # +1: an image finds itself first
    pairs: dict[tuple[int, int], Pair] = {}
    for ids, vectors in col.catalogue.iter_vectors(COPY_SPACE, batch):
        scores, found = index.search(vectors, depth)
        for source, row_scores, row_ids in zip(ids, scores, found, strict=True):
            keep = (row_ids >= 0) & (row_ids != source)
            cosines, others = row_scores[keep], row_ids[keep]
            kth = cal.kth(cosines)
            for cosine, other, p in zip(
                cosines[:k], others[:k], cal.probability(cosines[:k], kth), strict=True
            ):
                if p < threshold:
                    continue
                key = (int(min(source, other)), int(max(source, other)))
                seen = pairs.get(key)
                if seen is None or p > seen.score:
                    pairs[key] = Pair(float(p), float(cosine), kth, int(source))
    return pairs


@dataclass
class Pair:
    """A candidate pair of copies: its P(copy) ``score``, the raw ``cosine``, the normaliser
    ``kth`` of the image it was seen from (``query``), and, once checked, keypoint evidence."""

    score: float
    cosine: float
    kth: float
    query: int
    verified: bool | None = None
    inliers: int = 0


def duplicates(
    col: Collection,
    threshold: float | None = None,
    k: int = 10,
    verify_pairs: bool = False,
    progress: Progress | None = None,
    *,
    decided: bool = True,
) -> list[DuplicateGroup]:
    """Groups of exact copies and near-duplicates in ``col``, largest group first.

    Near duplicates are pairs whose copy score P(copy) (:mod:`lookalike.copies.scoring`, the
    score a copy search gives) reaches ``threshold`` (default: the model's calibrated threshold,
    90% precision on the hard set: :func:`~lookalike.copies.space.threshold_for`). A picture with
    many look-alikes (a folder of dinosaur photos) is normalised by them and does not group
    with them. ``k``: neighbours looked at per image. ``verify_pairs``: each such pair is also
    checked by keypoint matching (both ways) and kept only when confirmed as a copy (matched,
    and one lying wholly inside the other: :data:`CONTAINED`), its score then the verified
    model's. Verification confirms here, it never adds: photos of one scene (a facade shot
    twice, a meadow in a burst) match by keypoints too, and groups must hold copies
    (docs/benchmarks.md, section ``duplicates-lookalikes``). Without a copy space
    only exact copies are found (see :func:`how_to_add`). Images without a copy vector (an
    incomplete space) can only be exact copies; a warning on the ``lookalike`` logger says so
    and names the fix (:func:`~lookalike.copies.space.incomplete`). The stored decisions
    (:func:`decide`) are respected unless ``decided=False``.
    """
    files = col.catalogue.file_states()  # path -> (state, image id)
    mtime = {path: state.mtime_ns for path, (state, _) in files.items()}
    forest = UnionFind()
    edges: dict[tuple[int, int], Pair] = {}
    if COPY_SPACE in col.spaces():
        problem = incomplete(col)
        if problem is not None:
            log.warning("%s", problem)
        threshold = threshold_for(col) if threshold is None else threshold
        edges = near_pairs(col, threshold, k)
    image_files: dict[int, list[str]] = {}
    for path, (_, image_id) in files.items():
        image_files.setdefault(image_id, []).append(path)
    choices = Decisions.load(col) if decided else Decisions()
    hashes: dict[int, str] = {}
    if not choices.empty:
        involved = {i for pair in edges for i in pair}
        involved |= {i for i, paths in image_files.items() if len(paths) > 1}
        hashes = _hashes_of(col, involved)
        edges = {
            (a, b): pair
            for (a, b), pair in edges.items()
            if not choices.distinct_pair(hashes.get(a, ""), hashes.get(b, ""))
        }
    if verify_pairs:
        edges = _verified(col, edges, progress)
    for a, b in edges:
        forest.union(a, b)
    members: dict[int, list[int]] = {}
    for image_id, paths in image_files.items():
        exact = len(paths) > 1 and not choices.distinct_pair(
            hashes.get(image_id, ""), hashes.get(image_id, "")
        )
        if exact or image_id in forest.parent:
            members.setdefault(forest.find(image_id), []).append(image_id)
    best_score: dict[int, float] = {}
    for (a, b), pair in edges.items():
        best_score[a] = max(best_score.get(a, -1.0), pair.score)
        best_score[b] = max(best_score.get(b, -1.0), pair.score)
    groups = []
    for ids in members.values():
        records = {r.id: r for r in col.catalogue.images(ids) if r is not None}
        groups.append(_group(records, image_files, mtime, best_score, choices))
    return sorted(groups, key=lambda g: (-len(g.others), g.original))


def _hashes_of(col: Collection, ids: Iterable[int]) -> dict[int, str]:
    ids = sorted(ids)
    out: dict[int, str] = {}
    for start in range(0, len(ids), 1000):
        for record in col.catalogue.images(ids[start : start + 1000]):
            if record is not None:
                out[record.id] = record.content_hash
    return out


def _group(records, image_files, mtime, best_score, choices=None) -> DuplicateGroup:
    # Most pixels first, then the oldest file: an original is rarely smaller than its copies.
    # A ``keep`` decision comes before all of them.
    kept = choices.kept if choices is not None else {}
    candidates = [
        (
            0 if kept.get(r.content_hash) == p else 1 if r.content_hash in kept else 2,
            -(r.width * r.height),
            mtime.get(p, 0),
            p,
            r.id,
        )
        for r in records.values()
        for p in image_files.get(r.id, [])
    ]
    candidates.sort()
    decided_original = candidates[0][0] < 2
    _, _, _, original, original_id = candidates[0]
    others = []
    for _, _, _, path, image_id in candidates[1:]:
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
    return DuplicateGroup(original, original_id, others, decided_original)


# -- decisions that stick ---------------------------------------------------------------------
@dataclass
class Decisions:
    """The decisions kept in a collection: ``distinct`` pairs of content hashes (one hash
    twice: identical files that are meant) and ``kept`` originals (content hash -> the file
    to keep, "" for any file of that content)."""

    distinct: set[tuple[str, str]] = field(default_factory=set)
    kept: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.distinct and not self.kept

    def distinct_pair(self, a: str, b: str) -> bool:
        return bool(a and b) and (min(a, b), max(a, b)) in self.distinct

    @classmethod
    def load(cls, col: Collection) -> Decisions:
        text = col.catalogue.get_meta(DECISIONS_KEY)
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            {(min(a, b), max(a, b)) for a, b in data.get("distinct", [])},
            dict(data.get("keep", {})),
        )

    def save(self, col: Collection) -> None:
        data = {
            "version": 1,
            "distinct": sorted([a, b] for a, b in self.distinct),
            "keep": dict(sorted(self.kept.items())),
        }
        col.catalogue.set_meta(DECISIONS_KEY, json.dumps(data))

    def to_list(self, col: Collection) -> list[dict]:
        """The decisions with the files that hold each content now."""
        by_hash: dict[str, list[str]] = {}
        for content in {h for pair in self.distinct for h in pair} | set(self.kept):
            image_id = col.catalogue.image_id_by_hash(content)
            record = col.catalogue.images([image_id])[0] if image_id is not None else None
            if record is not None:
                by_hash[content] = list(record.paths)
        out = [
            {
                "decision": "distinct",
                "contents": [a] if a == b else [a, b],
                "files": sorted({*by_hash.get(a, []), *by_hash.get(b, [])}),
            }
            for a, b in sorted(self.distinct)
        ]
        out += [
            {"decision": "keep", "contents": [h], "files": [p] if p else by_hash.get(h, [])}
            for h, p in sorted(self.kept.items())
        ]
        return out


class DecisionError(CollectionError, ValueError):
    """A decision that cannot be recorded as asked: an unknown action, the wrong number of
    files or images, one the collection does not hold, or a file in no group."""


def decide(
    col: Collection,
    action: str,
    paths: Sequence[str | Path],
    *,
    threshold: float | None = None,
    k: int = 10,
) -> Decisions:
    """Record a decision about duplicates, kept in the collection (see the module docstring):
    ``"distinct"`` with two files (that pair) or one (its current group), ``"keep"`` with one
    file, ``"forget"`` with any files (their decisions dropped). Returns every decision.
    ``threshold`` and ``k``: how the current group of a file is found (as :func:`duplicates`).

    Raises:
        DecisionError: a file the collection does not hold, or the wrong number of files.

    Example:
        >>> decide(col, "distinct", ["/p/a.jpg", "/p/a-crop.jpg"])  # doctest: +SKIP
    """
    check_decision(action, len(paths), "files")
    with col.writing():
        known = col.catalogue.file_states()
        files = [_known_path(p, known) for p in paths]
        unknown = [f for f in files if f not in known]
        if unknown:
            raise DecisionError(f"not in {col.path}: {', '.join(unknown[:3])}")
        ids = [known[f][1] for f in files]
        return _record(col, action, ids, files, threshold, k)


def decide_ids(
    col: Collection,
    action: str,
    ids: Sequence[int],
    *,
    threshold: float | None = None,
    k: int = 10,
) -> Decisions:
    """:func:`decide` by image ids (as the REST API names images): ``"distinct"`` with two
    images (that pair) or one (its current group), ``"keep"`` with one image (any file of it
    is the original), ``"forget"`` with any images. Returns every decision.

    Raises:
        DecisionError: an id the collection does not hold, or the wrong number of ids.

    Example:
        >>> decide_ids(col, "keep", [7])  # doctest: +SKIP
    """
    check_decision(action, len(ids), "images")
    ids = [int(i) for i in ids]
    if action == "distinct" and len(set(ids)) < len(ids):
        raise DecisionError("distinct: name two different images (a pair) or one (its group)")
    with col.writing():
        records = col.catalogue.images(ids)
        unknown = [str(i) for i, r in zip(ids, records, strict=True) if r is None]
        if unknown:
            raise DecisionError(f"no image {', '.join(unknown[:3])} in {col.path}")
        return _record(col, action, ids, [""] * len(ids), threshold, k)


def check_decision(action: str, count: int, what: str) -> None:
    """The rules every decision follows (an action of :data:`ACTIONS`, how many files or
    images it names: ``what``), checked before anything is read.

    Raises:
        DecisionError: a rule broken.
    """
    if action not in ACTIONS:
        raise DecisionError(f"a decision is one of {', '.join(ACTIONS)}, not {action!r}")
    if not count:
        raise DecisionError(f"{action}: name the {what} it is about")
    if action == "keep" and count != 1:
        raise DecisionError(f"keep: name the one {what[:-1]} to keep")
    if action == "distinct" and count > 2:
        raise DecisionError(f"distinct: name two {what} (a pair) or one (its group)")


def _record(
    col: Collection,
    action: str,
    ids: list[int],
    files: list[str],
    threshold: float | None,
    k: int,
) -> Decisions:
    """Record ``action`` on the images ``ids`` (``files``: the file meant of each, "" for any
    of its files); called inside ``col.writing()``, the rules checked."""
    hashes = _hashes_of(col, ids)
    content = [hashes[i] for i in ids]
    choices = Decisions.load(col)

    def group_of() -> DuplicateGroup | None:
        return next((g for g in duplicates(col, threshold, k) if ids[0] in _ids_of(g)), None)

    if action == "keep":
        # One original per group: a new choice replaces the group's earlier one.
        group = group_of()
        if group is not None:
            for other in _hashes_of(col, _ids_of(group)).values():
                choices.kept.pop(other, None)
        choices.kept[content[0]] = files[0]
    elif action == "forget":
        gone = set(content)
        choices.distinct = {p for p in choices.distinct if not (set(p) & gone)}
        choices.kept = {h: p for h, p in choices.kept.items() if h not in gone}
    elif len(ids) == 2:
        a, b = content
        choices.distinct.add((min(a, b), max(a, b)))
    else:
        group = group_of()
        if group is None:
            raise DecisionError(f"{files[0] or f'image {ids[0]}'} is in no group of duplicates")
        members = sorted(_hashes_of(col, _ids_of(group)).values())
        for i, a in enumerate(members):
            for b in members[i:]:
                choices.distinct.add((a, b))
    choices.save(col)
    return choices


def _ids_of(group: DuplicateGroup) -> set[int]:
    return {group.original_id, *(o["id"] for o in group.others)}


def decisions_by_id(col: Collection, choices: Decisions | None = None) -> list[dict]:
    """The decisions as image ids (as the REST API names images): ``{"decision": "distinct",
    "images": [a, b]}`` per pair of images, ``{"decision": "keep", "images": [id]}`` per
    chosen original. Decisions about images no longer held, and about identical files of one
    image, are left out."""
    choices = Decisions.load(col) if choices is None else choices
    contents = {h for pair in choices.distinct for h in pair} | set(choices.kept)
    ids = {h: col.catalogue.image_id_by_hash(h) for h in sorted(contents)}
    out = []
    for a, b in sorted(choices.distinct):
        if a != b and ids[a] is not None and ids[b] is not None:
            out.append({"decision": "distinct", "images": sorted([ids[a], ids[b]])})
    out.sort(key=lambda d: d["images"])
    out += [
        {"decision": "keep", "images": [ids[h]]}
        for h in sorted(choices.kept, key=lambda h: ids[h] or 0)
        if ids[h] is not None
    ]
    return out


def _known_path(path: str | Path, known: dict) -> str:
    """``path`` as the collection records it: absolute as given (a file reached through a
    link keeps the path walked), else with links resolved."""
    text = str(path)
    if "://" in text:
        return text
    given = os.path.abspath(os.path.expanduser(text))
    return given if given in known else str(Path(given).resolve())


def export(groups: Sequence[DuplicateGroup], decisions: list[dict], fmt: str) -> str:
    """The groups and decisions as ``json`` (one object) or ``csv`` (one row per file:
    ``group, role, path, id, kind, score, decided``, then one row per decision)."""
    if fmt == "json":
        return json.dumps({"groups": [g.to_dict() for g in groups], "decisions": decisions})
    if fmt != "csv":
        raise CollectionError(f"export as csv or json, not {fmt!r}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["group", "role", "path", "id", "kind", "score", "decided"])
    for n, group in enumerate(groups, 1):
        decided = "keep" if group.decided else ""
        writer.writerow([n, "original", group.original, group.original_id, "", "", decided])
        for other in group.others:
            row = [n, "copy", other["path"], other["id"], other["kind"], other["score"], ""]
            writer.writerow(row)
    for decision in decisions:
        for path in decision["files"] or [""]:
            writer.writerow(["", "decision", path, "", "", "", decision["decision"]])
    return buffer.getvalue()


def _verified(
    col: Collection,
    edges: dict[tuple[int, int], Pair],
    progress: Progress | None,
) -> dict[tuple[int, int], Pair]:
    """The pairs keypoint matching confirms as copies, checked both ways (a crop verifies as
    query -> original only): matched, and one lying wholly inside the other
    (:data:`CONTAINED`); scored by the verified model the better way."""
    cal = calibration_of(col)
    features: dict[int, Features | None] = {}

    def features_of(image_id: int) -> Features | None:
        if image_id not in features:
            record = col.get(image_id)
            image = decode_any(record.paths, VERIFY_SIDE) if record else None
            features[image_id] = extract(image) if image is not None else None
        return features[image_id]

    kept = {}
    for done, ((a, b), pair) in enumerate(sorted(edges.items()), 1):
        best = None
        for query, candidate in ((a, b), (b, a)):
            fq, fc = features_of(query), features_of(candidate)
            if fq is None or fc is None:
                continue
            outcome = check(fq, fc)
            score = cal.verified_probability(
                pair.cosine, pair.kth, outcome.verified, outcome.inliers, outcome.area
            )
            copy = outcome.verified and outcome.contained >= CONTAINED
            if copy and (best is None or score > best[0]):
                best = (score, outcome)
        if best is not None:
            score, outcome = best
            kept[(a, b)] = replace(pair, score=score, verified=True, inliers=outcome.inliers)
        if progress:
            progress(done, len(edges))
    return kept


@dataclass
class Move:
    """One file of a move plan: ``status`` is ``planned`` (dry run), ``moved``, ``missing``
    (the file is not there any more), ``here`` (already under the destination), ``remote``
    (an ``s3://`` object: not moved) or ``failed`` (``reason`` says why)."""

    source: str
    target: str
    status: str = "planned"
    reason: str = ""

    def to_dict(self) -> dict:
        out = {"from": self.source, "to": self.target, "status": self.status}
        if self.reason:
            out["reason"] = self.reason
        return out


def move_duplicates(
    col: Collection | None,
    groups: Sequence[DuplicateGroup],
    destination: str | Path,
    *,
    apply: bool = False,
    root: str | Path | None = None,
    batch: int = 64,
) -> list[Move]:
    """Plan (and with ``apply``, do) moving every group's non-original files into
    ``destination``, keeping their folders below ``root`` (default: the common folder of the
    collection's files) and names unique; never deletes. Each batch of moved files is renamed in
    the collection's catalogue right after it moved (one transaction), so the collection keeps
    pointing at the files. Returns one :class:`Move` per file, saying what happened."""
    destination = Path(destination).expanduser().resolve()
    local = [o["path"] for g in groups for o in g.others if "://" not in o["path"]]
    if root is None:
        known = [
            p for p in (col.catalogue.file_states() if col is not None else {}) if "://" not in p
        ]
        everything = known or local
        root = os.path.commonpath([os.path.dirname(p) for p in everything]) if everything else "/"
    root = Path(root)
    taken: set[str] = set()
    moves: list[Move] = []
    for group in groups:
        for other in group.others:
            source = other["path"]
            if "://" in source:
                moves.append(Move(source, "", "remote", "an object store's file is not moved"))
                continue
            path = Path(source)
            if path == destination or destination in path.parents:
                moves.append(Move(source, source, "here"))
                continue
            if not os.path.lexists(source):
                moves.append(Move(source, "", "missing", "no such file (moved or deleted?)"))
                continue
            try:
                relative = path.relative_to(root)
            except ValueError:
                relative = Path(path.name)
            target = destination / relative
            n = 1
            while str(target) in taken or os.path.lexists(target):
                target = target.with_name(f"{path.stem}-{n}{path.suffix}")
                n += 1
            taken.add(str(target))
            moves.append(Move(source, str(target)))
    if apply:
        planned = [m for m in moves if m.status == "planned"]
        if col is None:
            for move in planned:
                _move_file(move)
        else:
            with col.writing():
                for start in range(0, len(planned), batch):
                    done = []
                    try:
                        for move in planned[start : start + batch]:
                            if _move_file(move):
                                st = os.stat(move.target)
                                done.append(
                                    (
                                        move.source,
                                        move.target,
                                        FileState(st.st_size, st.st_mtime_ns),
                                    )
                                )
                    finally:
                        if done:
                            col.catalogue.rename_files(done)
    return moves


def _move_file(move: Move) -> bool:
    """Move one file (a rename, or a copy then delete across file systems)."""
    try:
        Path(move.target).parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(move.target):
            raise FileExistsError(f"{move.target} exists")
        shutil.move(move.source, move.target)
    except OSError as exc:
        move.status, move.reason = "failed", str(exc.strerror or exc)
        return False
    move.status = "moved"
    return True


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
