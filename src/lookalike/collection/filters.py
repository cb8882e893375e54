"""Filters of a search: which images may be found, in the user's words, turned into catalogue
conditions (``lookalike.store.query``) that select the allowed ids in one database query.

A filter is a mapping (the Python API's and the REST API's ``where``), a list of ``KEY=VALUE``
texts (the CLI's repeatable ``--where``), or both mixed in a mapping under ``"where"``:

================== ================================================ =============================
key                value                                            means
================== ================================================ =============================
``taken_after``    ``2021``, ``2021-05``, ``2021-05-01``,           taken at or after (wall-clock
                   ``2021-05-01T10:00``, ``...+02:00``, a datetime  time where it was taken; with
                                                                    a zone: the instant)
``taken_before``   the same                                         taken before
``near``           ``[lat, lon, km]`` or ``"lat,lon,km"``           within km of the point (GPS)
``camera``         text                                             in the camera's make + model
``lens``           text                                             in the lens name
``folder`` (``in``) a folder                                        a file of it is under it
``ids``            image ids                                        only these images
``metadata``       ``{key: value}``                                 user metadata equal to value
``width`` ...      number or ``">=1000"``                           a stored column (``COLUMNS``)
any other key      value                                            user metadata equal to value
================== ================================================ =============================

Texts (``--where``) are ``KEY=VALUE``, ``KEY!=VALUE`` or ``KEY<VALUE`` (``<=``, ``>``, ``>=``
for numbers and times), with the keys above (``taken>=2021-05-01`` is ``taken_after``) and any
user metadata key; a value is JSON when it parses (``5``, ``true``), else text, and ``=``
matches both (``sku=123`` finds ``123`` and ``"123"``).

Example:
    >>> [(c.field, c.op, c.value) for c in conditions({"camera": "canon", "sku": "A-12"})]
    [('camera', 'contains', 'canon'), ('meta:sku', '=', 'A-12')]
    >>> conditions(["width>=1000"])
    [Condition(field='width', op='>=', value=1000.0)]

**Searching among the selected images** (:func:`search_selected`; ``collection.search`` calls
it): the plan follows how many images the filter allows, as measured at 100,000 images
(docs/benchmarks.md, section ``filters``):

- **few** (their vectors at most :data:`SCAN_BYTES`: 8,192 256-d vectors): all of them scored
  exactly, one matrix product, from their vectors gathered once from the index and kept with
  the :class:`Selection` (the next query with the same filter gathers nothing);
- **most** (at least :data:`POST_FILTER_FROM` of an approximate index): the index searched
  without the filter for ``POST_DEPTH * k / selectivity`` results, of which the allowed ones
  are kept (a row still short of ``k``: the index's own filtered search);
- **in between**, and for ``flat``: the index's own filtered search (a FAISS id selector, its
  parameters widened by the selectivity).

A :class:`Selections` keeps the selections of the last filters (their ids and gathered
vectors) until the catalogue changes: the next page, or the next query, with the same filter
costs no SQL and no gathering.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

from lookalike.errors import FilterError
from lookalike.index.ann import AnnIndex
from lookalike.index.exact import top_k
from lookalike.index.projected import ProjectedIndex
from lookalike.store.query import Condition

__all__ = [
    "COLUMNS",
    "Condition",
    "FilterError",
    "Selection",
    "Selections",
    "Where",
    "conditions",
    "parse_near",
    "parse_time",
    "plan",
    "search_selected",
]

#: Stored columns a filter may name directly (else a key is user metadata).
COLUMNS = {
    "camera_make": "text",
    "camera_model": "text",
    "lens": "text",
    "taken_source": "text",
    "width": "number",
    "height": "number",
    "bytes": "number",
}
#: Keys of the filter itself.
KEYS = ("taken_after", "taken_before", "near", "camera", "lens", "folder", "in", "ids", "path")
Where = Mapping[str, object] | Iterable[str] | Iterable[Condition] | str | None
_TEXT = re.compile(r"^\s*([^=!<>]+?)\s*(=|!=|<=|>=|<|>)\s*(.*?)\s*$")


def conditions(where: Where) -> list[Condition]:
    """The catalogue conditions of a filter (empty when there is none).

    Raises:
        FilterError: a key, value or text that cannot be understood (the message says which).
    """
    if where is None:
        return []
    if isinstance(where, str):
        return [_text(where)]
    if isinstance(where, Condition):
        return [where]
    if isinstance(where, Mapping):
        out: list[Condition] = []
        for key, value in where.items():
            out += _entry(str(key), value)
        return out
    out = []
    for item in where:
        if isinstance(item, Condition):
            out.append(item)
        elif isinstance(item, str):
            out.append(_text(item))
        else:
            raise FilterError(f"a filter is KEY=VALUE text or a mapping, not {item!r}")
    return out


def _entry(key: str, value: object) -> list[Condition]:
    if value is None:
        return []
    if key == "where":  # a mapping that also carries --where texts
        return conditions(value if not isinstance(value, str) else [value])  # type: ignore[arg-type]
    if key == "metadata":
        if not isinstance(value, Mapping):
            raise FilterError("metadata: give a mapping of keys to values")
        return [Condition(f"meta:{k}", "=", v) for k, v in value.items()]
    if key in ("taken_after", "taken_before"):
        field, seconds = parse_time(value, key)
        return [Condition(field, ">=" if key == "taken_after" else "<", seconds)]
    if key == "near":
        return [Condition("near", "within", parse_near(value))]
    if key in ("camera", "lens"):
        text = str(value).strip()
        if not text:
            raise FilterError(f"{key}: give some text to look for")
        return [Condition(key if key == "camera" else "lens", "contains", text)]
    if key in ("folder", "in"):
        return [Condition("folder", "under", folder_of(value))]
    if key == "path":
        return [Condition("path", "=", str(Path(str(value)).expanduser().resolve()))]
    if key == "ids":
        try:
            ids = [int(i) for i in value]  # type: ignore[union-attr]
        except (TypeError, ValueError) as exc:
            raise FilterError("ids: give a list of image ids") from exc
        return [Condition("id", "in", ids)]
    if key in COLUMNS:
        if isinstance(value, str) and _TEXT.match(f"{key}{value}") and value[:1] in "<>!=":
            return [_text(f"{key}{value}")]
        return [_column(key, "=", value)]
    return [Condition(f"meta:{key}", "=", value)]


def _text(text: str) -> Condition:
    """One ``KEY OP VALUE`` text."""
    match = _TEXT.match(text)
    if not match or not match.group(1):
        raise FilterError(f"cannot read the filter {text!r}: write KEY=VALUE (or !=, <, <=, >, >=)")
    key, op, raw = match.group(1), match.group(2), match.group(3)
    if key in ("taken", "taken_at", "taken_after", "taken_before"):
        if key == "taken_after" and op == "=":
            op = ">="
        if key == "taken_before" and op == "=":
            op = "<"
        if op not in ("<", "<=", ">", ">="):
            raise FilterError(f"{text!r}: compare a taken time with <, <=, > or >=")
        field, seconds = parse_time(raw, key)
        return Condition(field, op, seconds)
    if key in ("near", "camera", "lens", "folder", "in", "path"):
        if op != "=":
            raise FilterError(f"{text!r}: {key} takes =")
        return _entry(key, raw)[0]
    value = _value(raw)
    if key in COLUMNS:
        return _column(key, op, value)
    if op in ("<", "<=", ">", ">=") and not isinstance(value, int | float):
        raise FilterError(f"{text!r}: < and > compare numbers")
    return Condition(f"meta:{key}", op, value)


def _column(key: str, op: str, value: object) -> Condition:
    if COLUMNS[key] == "number":
        try:
            return Condition(key, op, float(value))  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise FilterError(f"{key}: give a number, not {value!r}") from exc
    if op not in ("=", "!="):
        raise FilterError(f"{key}: compare text with = or !=")
    return Condition(key, op, str(value))


def _value(raw: str) -> object:
    """A text value: JSON when it parses as a number, true/false/null or a quoted string."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, bool | int | float | str) else raw


def parse_time(value: object, what: str = "taken") -> tuple[str, float]:
    """(``"taken_at"`` or ``"taken_utc"``, seconds) of a time filter: wall-clock seconds for a
    time without a zone, seconds UTC for one with a zone (or a number: seconds UTC).

    Example:
        >>> parse_time("2021-05-01")
        ('taken_at', 1619827200.0)
        >>> parse_time("2021-05-01T10:00+02:00")
        ('taken_utc', 1619856000.0)
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "taken_utc", float(value)
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        text = str(value).strip().replace(" ", "T")
        moment = _partial(text)
        if moment is None:
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError as exc:
                raise FilterError(
                    f"{what}: cannot read the time {value!r}; write 2021, 2021-05, 2021-05-01 "
                    "or 2021-05-01T10:00 (a zone like +02:00 may follow)"
                ) from exc
    if moment.tzinfo is not None:
        return "taken_utc", moment.timestamp()
    return "taken_at", (moment - datetime(1970, 1, 1)) / timedelta(seconds=1)


def _partial(text: str) -> datetime | None:
    """``2021`` and ``2021-05`` (the start of the year or month)."""
    if re.fullmatch(r"\d{4}", text):
        return datetime(int(text), 1, 1)
    if re.fullmatch(r"\d{4}-\d{1,2}", text):
        year, month = text.split("-")
        try:
            return datetime(int(year), int(month), 1)
        except ValueError:
            return None
    return None


def parse_near(value: object) -> tuple[float, float, float]:
    """(latitude, longitude, km) from ``"48.85,2.35,10"`` or a sequence of three numbers.

    Example:
        >>> parse_near("48.85, 2.35, 10")
        (48.85, 2.35, 10.0)
    """
    parts = value.split(",") if isinstance(value, str) else value
    try:
        lat, lon, km = (float(p) for p in parts)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise FilterError(f"near: write LAT,LON,KM (e.g. 48.85,2.35,10), not {value!r}") from exc
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or not km > 0:
        raise FilterError(
            f"near: latitude in [-90, 90], longitude in [-180, 180], km > 0 (got {value!r})"
        )
    return lat, lon, km


def folder_of(value: object) -> str:
    """The absolute folder a ``folder`` filter names (links resolved, as indexed paths are);
    an ``s3://`` prefix is kept as it is."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if not text.strip():
        raise FilterError("folder: give a folder")
    if "://" in text:
        return text.rstrip("/")
    return str(Path(text).expanduser().resolve())


# -- searching among the selected images ------------------------------------------------------
#: Filters whose selected ids are kept (until the catalogue changes).
SELECTIONS_KEPT = 32
#: Allowed images whose vectors take at most this many bytes are scored exactly, all of them,
#: from their vectors gathered once: 8,192 256-d vectors. Measured on one core of this 2-core
#: AMD EPYC (``_scan``, one query, p50): 0.05 ms for 1,000 vectors, 0.13 for 4,000, 0.25 for
#: 8,000, 0.45 for 12,000, then 2.0 for 16,000 (the matrix no longer fits the CPU's cache),
#: where an HNSW or IVF search with a selector among 10,000 of 100,000 takes 0.2 to 0.5 ms
#: (docs/benchmarks.md, section ``filters``).
SCAN_BYTES = 8 << 20
#: Gathered vectors kept over all the kept selections, at most.
GATHERED_BYTES = 32 << 20
#: From this fraction of an approximate index allowed, it is searched unfiltered and deeper,
#: then filtered (cheaper than a selector, whose bitmap a new filter has to build) ...
POST_FILTER_FROM = 0.25
#: ... for this many times ``k / selectivity`` results.
POST_DEPTH = 3
#: Queries scored at once by an exact scan (bounds the score matrix).
SCAN_QUERIES = 1024


class Selection:
    """The images a filter allows (``ids``: sorted int64) and, once a search has gathered
    them, their vectors in an index (kept with the selection, per index).

    Example:
        >>> s = Selection(np.array([3, 8, 20]))
        >>> s.allows(np.array([[8, 9, -1]])).tolist()
        [[True, False, False]]
    """

    def __init__(self, ids: np.ndarray, stamp: Hashable = None) -> None:
        self.ids = ids
        self.stamp = stamp  # the catalogue's change stamp it was selected at
        self.gathered: dict[int, tuple[Callable, int, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def allows(self, found: np.ndarray) -> np.ndarray:
        """Which of ``found`` (ids of any shape, -1 for none) the filter allows."""
        if len(self.ids) == 0:
            return np.zeros(found.shape, np.bool_)
        at = np.minimum(np.searchsorted(self.ids, found), len(self.ids) - 1)
        return (self.ids[at] == found) & (found >= 0)

    def nbytes(self) -> int:
        """Bytes of the vectors gathered for it."""
        return sum(g[3].nbytes + g[2].nbytes for g in list(self.gathered.values()))

    def vectors(
        self, index: object, selections: Selections | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(ids, vectors) of the allowed images ``index`` holds, gathered by its
        ``vectors_of`` at the first call and kept while the index is the same object of the
        same size (a change of the catalogue makes a new selection anyway); None when the
        index cannot give its vectors."""
        gather = getattr(index, "vectors_of", None)
        if gather is None:
            return None
        kept = self.gathered.get(id(index))
        if kept is not None and kept[0]() is index and kept[1] == len(index):
            return kept[2], kept[3]
        got = gather(self.ids)
        if got is None:
            return None
        ids, vectors = got
        vectors = np.ascontiguousarray(vectors, np.float32)
        try:
            ref = weakref.ref(index)
        except TypeError:  # an index that cannot be referred to weakly: gathered each time
            return ids, vectors
        if selections is not None:
            selections.make_room(ids.nbytes + vectors.nbytes, self)
        self.gathered[id(index)] = (ref, len(index), ids, vectors)
        return ids, vectors


class Selections:
    """The selections of the last :data:`SELECTIONS_KEPT` filters, each kept while the
    catalogue is unchanged, with at most :data:`GATHERED_BYTES` of gathered vectors in all (the
    least recently used give theirs up first). Safe to share between threads.

    Example:
        >>> kept = Selections()
        >>> s = kept.select("camera=canon", (1, 0), lambda: np.array([3, 8]))
        >>> kept.select("camera=canon", (1, 0), lambda: np.array([])) is s
        True
        >>> kept.of(s.ids) is s, kept.of(np.array([8, 3, 8])).ids.tolist()
        (True, [3, 8])
    """

    def __init__(self, kept: int = SELECTIONS_KEPT, budget: int = GATHERED_BYTES) -> None:
        self.kept = kept
        self.budget = budget
        self._selections: OrderedDict[str, Selection] = OrderedDict()
        self._lock = threading.Lock()

    def select(self, key: str, stamp: Hashable, select: Callable[[], np.ndarray]) -> Selection:
        """The selection of the filter ``key`` at the catalogue's ``stamp``: the kept one,
        else ``select()`` (the catalogue's query), kept."""
        with self._lock:
            found = self._selections.get(key)
            if found is not None and found.stamp == stamp:
                self._selections.move_to_end(key)
                return found
        selection = Selection(select(), stamp)
        with self._lock:
            self._selections[key] = selection
            self._selections.move_to_end(key)
            while len(self._selections) > self.kept:
                self._selections.popitem(last=False)
        return selection

    def of(self, ids: np.ndarray) -> Selection:
        """The kept selection whose ids are this very array (``Collection.ids_where``'s
        answer, handed back to a search); else a new one of these ids, not kept."""
        with self._lock:
            for selection in self._selections.values():
                if selection.ids is ids:
                    return selection
        return Selection(np.unique(np.asarray(ids, np.int64)))

    def make_room(self, nbytes: int, keep: Selection) -> None:
        """Drop the gathered vectors of the least recently used selections (never ``keep``'s)
        until ``nbytes`` more fit in the budget."""
        with self._lock:
            selections = list(self._selections.values())
        used = sum(s.nbytes() for s in selections)
        for selection in selections:
            if used + nbytes <= self.budget:
                return
            if selection is not keep and selection.gathered:
                used -= selection.nbytes()
                selection.gathered = {}


def search_selected(
    index: object,
    queries: np.ndarray,
    k: int,
    selection: Selection,
    selections: Selections | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), best first, of the ``k`` images of ``selection`` nearest each query, by
    the plan its selectivity calls for (module docstring); ``index.search`` must take
    ``allowed`` (``lookalike.index.base.accepts_allowed``). Exact for few allowed images and
    for ``flat``; otherwise as good as the index's own search. Missing slots have id -1.

    Example:
        >>> from lookalike.index import create_index
        >>> index = create_index("hnsw", dim=4)
        >>> index.add(np.arange(4), np.eye(4, dtype=np.float32))
        >>> search_selected(index, np.ones((1, 4), np.float32), 2, Selection(np.array([1, 3])))
        (array([[1., 1.]], dtype=float32), array([[1, 3]]))
    """
    chosen = plan(index, len(selection))
    if chosen == "scan":
        inner, coordinates = index, queries
        if isinstance(index, ProjectedIndex):  # its inner index compares projected vectors
            inner, coordinates = index.inner, index.project(queries)
        gathered = selection.vectors(inner, selections)
        if gathered is not None:
            return _scan(coordinates, k, *gathered)
        chosen = plan(index, len(selection), scan=False)  # an index that cannot gather
    if chosen == "deeper":
        return _post_filtered(index, queries, k, selection)
    return index.search(queries, k, allowed=selection.ids)  # type: ignore[call-arg]


def plan(index: object, allowed: int, *, scan: bool = True) -> str:
    """The plan of a search of ``index`` among ``allowed`` images (module docstring):
    ``"scan"`` (every allowed vector scored exactly), ``"deeper"`` (the approximate index
    searched deeper, then filtered) or ``"index"`` (the index's own filtered search).

    Example:
        >>> from lookalike.index import create_index
        >>> plan(create_index("hnsw", dim=256), 1_000), plan(create_index("flat", dim=256), 50_000)
        ('scan', 'index')
    """
    inner = index.inner if isinstance(index, ProjectedIndex) else index
    if scan and allowed * int(getattr(inner, "dim", 0)) * 4 <= SCAN_BYTES:
        return "scan"
    if allowed >= POST_FILTER_FROM * max(len(index), 1) and _approximate(index):  # type: ignore[arg-type]
        return "deeper"
    return "index"


def _approximate(index: object) -> bool:
    """Whether ``index`` (or the index it wraps: a PCA, ``auto``) is an approximate kind."""
    while not isinstance(index, AnnIndex) and getattr(index, "inner", None) is not None:
        index = index.inner  # type: ignore[attr-defined]
    return isinstance(index, AnnIndex) and index.structure is not None


def _scan(
    queries: np.ndarray, k: int, ids: np.ndarray, vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of ``vectors`` (ids ``ids``) by inner product with each query."""
    queries = np.ascontiguousarray(queries, np.float32)
    width = max(1, min(k, len(ids)))
    scores = np.full((len(queries), width), -np.inf, np.float32)
    found = np.full((len(queries), width), -1, np.int64)
    if len(ids) == 0:
        return scores, found
    for start in range(0, len(queries), SCAN_QUERIES):
        block = queries[start : start + SCAN_QUERIES] @ vectors.T
        top = top_k(block, width)
        scores[start : start + len(block)] = np.take_along_axis(block, top, 1)
        found[start : start + len(block)] = ids[top]
    return scores, found


def allowed_first(
    scores: np.ndarray, found: np.ndarray, keep: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``width`` results of each row that ``keep`` allows, in their order; the slots
    left over are -inf / -1."""
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
    kept = np.take_along_axis(keep, order, 1)
    out_scores = np.where(kept, np.take_along_axis(scores, order, 1), -np.inf).astype(np.float32)
    return out_scores, np.where(kept, np.take_along_axis(found, order, 1), -1)


def _post_filtered(
    index: object, queries: np.ndarray, k: int, selection: Selection
) -> tuple[np.ndarray, np.ndarray]:
    """The index searched without the filter, deep enough to meet ``k`` allowed images on
    average ``POST_DEPTH`` times over, and filtered; the rows still short of ``k`` (or of every
    allowed image), searched again with the filter."""
    size = len(index)  # type: ignore[arg-type]
    depth = min(size, math.ceil(POST_DEPTH * k * size / max(len(selection), 1)))
    scores, found = index.search(queries, max(depth, k))  # type: ignore[attr-defined]
    width = max(1, min(k, len(selection), found.shape[1]))
    out_scores, out_ids = allowed_first(scores, found, selection.allows(found), width)
    short = np.flatnonzero((out_ids >= 0).sum(axis=1) < width)
    if len(short):
        again_scores, again_ids = index.search(  # type: ignore[attr-defined]
            queries[short], width, allowed=selection.ids
        )
        got = min(width, again_ids.shape[1])
        out_scores[short], out_ids[short] = -np.inf, -1
        out_scores[short, :got], out_ids[short, :got] = again_scores[:, :got], again_ids[:, :got]
    return out_scores, out_ids
