"""``inverted``: exact inner-product search over sparse vectors, through inverted lists.

Made for the ``text`` space, whose vectors are the square roots of an image's 1000 ImageNet
class probabilities, of which the catalogue keeps the largest (``store.encoding``,
``sparse:T``), and whose text queries weigh about 20 classes: a query reads the lists of its
classes only, and adds each list's weights into one score per vector (``np.bincount``). A
flat 1000-d float32 matrix costs 4 KB a vector in RAM and reads all of it for every query;
the lists cost 6 bytes an entry on disk (int32 position, float16 value), memory-mapped, and a
query reads a few % of them (docs/benchmarks.md, section ``compact``). The lists are read
from their file with ``pread`` as a query needs them, not memory-mapped: a mapping would count
every list a search has ever touched in the process's RSS (the whole file, at 1M images, once
the queries have covered the vocabulary), where reading them leaves the pages in the OS cache
only.

Layout: vectors have positions 0..n-1; ``ids`` maps a position to the catalogue's image id,
``alive`` marks positions in use (removing a vector clears its bit; re-adding an id moves it
to a new position). The lists are compressed sparse columns: the entries of class ``c`` are
``positions[offsets[c]:offsets[c+1]]`` with their ``values``. Vectors added since the lists
were last built wait in a pending part, scored entry by entry, and are merged (a stable radix
sort of every entry by class, O(entries)) when they are as many as the lists (so that adding
costs O(entries) in all), before a search once they are an eighth of them, when dead
positions are a quarter of all, and before the index is written whole. Written whole as one
file (a *base*: a JSON header and the arrays, each aligned, then ``index.log``'s trailer);
loading maps the ids and tombstones and reads the lists on demand. Saves between two bases
append the adds and removes since the last save to the base's log (``lookalike.index.log``),
so that saving after an upload costs that upload, not the whole index: loading replays them
(one remove, one add) on top of the base.

Scores are exact for the stored entries; a vector's entries beyond ``top`` (the largest
kept) count as 0, as they do in the catalogue. A query with more than ``2 * top`` non-zero
entries (a text combined with images) keeps its ``2 * top`` largest.

Example:
    >>> index = InvertedIndex(dim=6, top=2)
    >>> index.add(np.array([7, 9]), np.array([[0, .8, 0, .6, 0, 0], [.6, 0, 0, 0, 0, .8]]))
    >>> scores, ids = index.search(np.array([[0, 0, 0, 1, 0, 1]], np.float32), k=2)
    >>> ids.tolist(), scores.astype(float).round(2).tolist()
    ([[9, 7]], [[0.8, 0.6]])
"""

from __future__ import annotations

import json
import os
import weakref
from pathlib import Path

import numpy as np

from lookalike.errors import VectorIndexError
from lookalike.index.base import register
from lookalike.index.log import Journal, read_saved, saving_generation

__all__ = ["InvertedIndex"]

MAGIC = b"LKINVIDX"
_ALIGN = 64
#: Entries kept per vector when none is said (the text space's ``sparse:T``).
DEFAULT_TOP = 96
#: Pending entries are merged into the lists beyond this many (or an eighth of the lists).
MERGE_MIN = 1 << 16
#: Rebuilt without dead positions once they are this fraction of all.
REBUILD_DEAD = 0.25
#: :func:`_top` bounds the k-th score from a slice when there are this many times 64 k scores.
SAMPLED_TOP = 16


class InvertedIndex:
    """Sparse vectors in inverted lists by dimension (see the module docstring)."""

    kind = "inverted"
    #: ``search`` takes ``allowed`` (a filtered search: ``lookalike.index.base``).
    filters = True

    def __init__(self, dim: int, top: int = DEFAULT_TOP, **options: object) -> None:
        self.dim = int(dim)
        self.top = int(top)
        if self.top < 1:
            raise VectorIndexError("an inverted index keeps at least 1 entry a vector")
        self.options = dict(options)
        self._ids = np.zeros(0, np.int64)
        self._alive = np.zeros(0, np.bool_)
        self._dead = 0
        self._offsets = np.zeros(self.dim + 1, np.int64)
        self._positions = np.zeros(0, np.int32)
        self._values = np.zeros(0, np.float16)
        self._merged = 0  # positions below this are in the lists, the others pending
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # rows, cols, vals
        self._pending_entries = 0
        self._order: tuple[int, np.ndarray, np.ndarray] | None = None  # (size, argsort, sorted)
        self._changes = 0  # bumped by every change
        self._saved: tuple[str, int] | None = None  # (file, changes) last written or read
        # the adds and removes since the last save, appended to the base's log (index/log.py)
        self.journal = Journal(self.dim)

    # -- the VectorIndex protocol ---------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under their ids; an id already present is replaced."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            return
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        self._forget(ids)
        rows, cols, vals = _sparse_rows(vectors, self.top)
        start = len(self._ids)
        self._ids = np.concatenate([self._ids, ids])
        self._alive = np.concatenate([self._alive, np.ones(len(ids), np.bool_)])
        self._pending.append((rows.astype(np.int64) + start, cols, vals))
        self._pending_entries += len(cols)
        self._order = None
        self._changes += 1
        if self._pending_entries > max(MERGE_MIN, len(self._positions)):  # doubling: O(n)
            self._merge()
        self.journal.added(ids, vectors)

    def remove(self, ids: np.ndarray) -> None:
        """Forget these ids (unknown ids are ignored)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self._forget(ids):
            self.journal.removed(ids)

    def _forget(self, ids: np.ndarray) -> bool:
        """Tombstone the live positions of ``ids``; whether there were any."""
        positions = self._live_positions(ids)
        if len(positions) == 0:
            return False
        if not self._alive.flags.writeable:  # memory-mapped from the saved file
            self._alive = np.array(self._alive)
        self._alive[positions] = False
        self._dead += len(positions)
        self._changes += 1
        if self._dead > REBUILD_DEAD * len(self._ids):
            self._merge()
        return True

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores, ids), each (n, k), best first; missing ids are -1.
        ``allowed``: only these ids (sorted int64) may be found."""
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        subset = None if allowed is None else self._live_positions(np.asarray(allowed, np.int64))
        live = len(self) if subset is None else len(subset)
        k = max(1, min(int(k), max(live, 1)))
        out_scores = np.full((len(queries), k), -np.inf, np.float32)
        out_ids = np.full((len(queries), k), -1, np.int64)
        if live == 0:
            return out_scores, out_ids
        if self._pending_entries > max(MERGE_MIN, len(self._positions) // 8):
            self._merge()
        dead = np.flatnonzero(~self._alive) if self._dead else None
        for row, query in enumerate(queries):
            scores = self._scores(query)
            if subset is not None:
                candidates, scores = subset, scores[subset]
            else:
                candidates = None
                if dead is not None:
                    scores[dead] = -np.inf
            top = _top(scores, k)
            out_scores[row, : len(top)] = scores[top]
            positions = top if candidates is None else candidates[top]
            out_ids[row, : len(top)] = self._ids[positions]
        out_ids[~np.isfinite(out_scores)] = -1
        return out_scores, out_ids

    def __len__(self) -> int:
        return len(self._ids) - self._dead

    def save(self, path: Path, generation: int | None = None) -> None:
        """With a catalogue generation (``generation`` or ``log.save_index``'s), the adds and
        removes since the last save or load at ``path`` appended to its log
        (``lookalike.index.log``: O(changes)). Else, or once the log has grown past a
        fraction of the index, the index written whole (atomically: one file, arrays
        memory-mappable, pending entries merged first), the log emptied. Without a
        generation, nothing to do when the file already holds it (read from or written to
        there, unchanged)."""
        path = Path(path)
        generation = saving_generation(generation)
        if generation is None and self._saved == (str(path), self._changes):
            return
        self.journal.save(path, generation, lambda tmp, _: self._write_base(tmp))
        self._saved = (str(path), self._changes)

    def _write_base(self, target: str) -> None:
        """The whole index into ``target`` (``log.Journal`` renames it and adds its trailer)."""
        self._merge()
        arrays = {
            "ids": np.asarray(self._ids),
            "alive": np.asarray(self._alive).view(np.uint8),
            "offsets": np.asarray(self._offsets),
            "positions": np.asarray(self._positions),
            "values": np.asarray(self._values),
        }
        header = {"kind": self.kind, "dim": self.dim, "top": self.top, "options": self.options}
        _write(target, header, arrays)

    @classmethod
    def load(cls, path: Path, generation: int | None = None) -> InvertedIndex:
        """Read an index written by :meth:`save`: its base (arrays memory-mapped, lists read
        as queries need them) and its log's changes up to ``generation`` (None:
        ``log.load_saved``'s, else all of them)."""
        path = Path(path)
        index, change, binding = read_saved(
            path, lambda name, _: cls.load_base(Path(name)), lambda base: base.dim, generation
        )
        if change:
            index.remove(change.touched)
            index.add(change.ids, change.vectors)
        index.journal.binding = binding
        # a save without a generation has nothing to write while base and log hold it
        index._saved = (str(path), index._changes) if binding is not None else None
        return index

    @classmethod
    def load_base(cls, path: Path) -> InvertedIndex:
        """The base written at ``path``, without its log; its arrays are memory-mapped."""
        header, arrays = _read(Path(path))
        index = cls(header["dim"], header["top"], **header.get("options", {}))
        index._ids = arrays["ids"]
        index._alive = arrays["alive"].view(np.bool_)
        index._dead = int(len(index._alive) - np.count_nonzero(index._alive))
        index._offsets = arrays["offsets"]
        index._positions = _FileArray.of(path, arrays["positions"])
        index._values = _FileArray.of(path, arrays["values"])
        index._merged = len(index._ids)
        if len(index._offsets) != index.dim + 1 or len(index._positions) != len(index._values):
            raise VectorIndexError(f"{path}: inconsistent inverted lists")
        return index

    # -- entries ------------------------------------------------------------------------
    def entries(self) -> int:
        """How many (position, value) entries the index holds, pending ones included."""
        return len(self._positions) + self._pending_entries

    def nbytes(self) -> int:
        """Bytes of its arrays (lists, ids, tombstones)."""
        return sum(self.memory().values())

    def memory(self) -> dict[str, int]:
        """Bytes held in RAM (``resident``) and left in the file, read or paged in as searches
        need them (``mapped``: the lists, read with ``pread``; the ids, memory-mapped)."""
        out = {"resident": 14 * self._pending_entries, "mapped": 0}
        for array in (self._ids, self._alive, self._offsets, self._positions, self._values):
            on_disk = isinstance(array, (np.memmap, _FileArray)) or isinstance(
                getattr(array, "base", None), np.memmap
            )
            out["mapped" if on_disk else "resident"] += int(array.nbytes)
        return out

    def _scores(self, query: np.ndarray) -> np.ndarray:
        """Every position's inner product with ``query`` (float64, pending ones included)."""
        cols = np.flatnonzero(query)
        if len(cols) > 2 * self.top:
            cols = cols[np.argpartition(-np.abs(query[cols]), 2 * self.top - 1)[: 2 * self.top]]
        total = len(self._ids)
        if len(cols) == 0:
            return np.zeros(total, np.float64)
        starts, ends = self._offsets[cols], self._offsets[cols + 1]
        spans = list(zip(cols.tolist(), starts.tolist(), ends.tolist(), strict=True))
        positions = np.concatenate([self._positions[s:e] for _, s, e in spans])
        weights = np.concatenate(
            [self._values[s:e].astype(np.float32) * query[c] for c, s, e in spans]
        )
        scores = np.zeros(total, np.float64)
        if len(positions):
            scores += np.bincount(positions, weights=weights, minlength=total)
        for rows, pcols, vals in self._pending:
            if len(rows):
                scores += np.bincount(rows, weights=vals * query[pcols], minlength=total)
        return scores

    def _merge(self) -> None:
        """Fold the pending entries into the lists, dropping dead positions."""
        if not self._pending and not self._dead:
            return
        counts = np.diff(self._offsets)
        cols = np.repeat(np.arange(self.dim, dtype=_col_type(self.dim)), counts)
        positions = np.asarray(self._positions, np.int64)
        values = np.asarray(self._values)
        if self._pending:
            cols = np.concatenate([cols, *(c.astype(cols.dtype) for _, c, _ in self._pending)])
            positions = np.concatenate([positions, *(r for r, _, _ in self._pending)])
            values = np.concatenate([values, *(v.astype(np.float16) for _, _, v in self._pending)])
        ids, alive = self._ids, self._alive
        if self._dead:
            keep = alive[positions]
            cols, positions, values = cols[keep], positions[keep], values[keep]
            renumber = np.cumsum(alive) - 1
            positions = renumber[positions]
            ids = np.asarray(ids)[alive]
            alive = np.ones(len(ids), np.bool_)
        if len(positions) and positions.max() >= 2**31:
            raise VectorIndexError("an inverted index holds at most 2**31 vectors")
        order = np.argsort(cols, kind="stable")  # a radix sort for 16-bit keys
        self._offsets = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=self.dim))])
        self._positions = positions[order].astype(np.int32)
        self._values = values[order]
        self._ids, self._alive = np.array(ids, np.int64), np.array(alive, np.bool_)
        self._dead = 0
        self._merged = len(self._ids)
        self._pending, self._pending_entries = [], 0
        self._order = None

    def _live_positions(self, ids: np.ndarray) -> np.ndarray:
        """The live positions holding ``ids`` (unknown ids left out), ascending."""
        if len(ids) == 0 or len(self._ids) == 0:
            return np.zeros(0, np.int64)
        if self._order is None or self._order[0] != len(self._ids):
            order = np.argsort(self._ids, kind="stable")
            self._order = (len(self._ids), order, np.asarray(self._ids)[order])
        _, order, sorted_ids = self._order
        at = np.searchsorted(sorted_ids, ids)
        inside = at < len(sorted_ids)
        inside[inside] = sorted_ids[at[inside]] == ids[inside]
        positions = order[at[inside]]
        return np.sort(positions[self._alive[positions]])


class _FileArray:
    """A 1-d array left in its file: slices are read with ``pread`` (no mapping, so nothing
    stays in the process's memory); ``np.asarray`` reads it whole."""

    def __init__(self, path: Path, dtype: np.dtype, size: int, offset: int) -> None:
        self.dtype, self.size, self.offset = np.dtype(dtype), int(size), int(offset)
        self.nbytes = self.size * self.dtype.itemsize
        self.fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self.fd)

    @classmethod
    def of(cls, path: Path, mapped: np.ndarray) -> _FileArray | np.ndarray:
        """The array ``_read`` mapped from ``path``, as a file array."""
        if not isinstance(mapped, np.memmap):
            return mapped
        return cls(path, mapped.dtype, len(mapped), mapped.offset)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, item: slice) -> np.ndarray:
        start, stop, _ = item.indices(self.size)
        count = max(stop - start, 0)
        if count == 0:
            return np.zeros(0, self.dtype)
        width = self.dtype.itemsize
        data = os.pread(self.fd, count * width, self.offset + start * width)
        if len(data) != count * width:
            raise VectorIndexError("an inverted index file was cut short while in use")
        return np.frombuffer(data, self.dtype)

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        whole = self[0 : self.size].copy()
        return whole if dtype is None else whole.astype(dtype)


def _col_type(dim: int) -> type:
    return np.uint16 if dim <= 1 << 16 else np.int32


def _sparse_rows(vectors: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, value) of the non-zero entries of each row, at most ``top`` a row (the
    largest in magnitude)."""
    if vectors.shape[1] > top and np.count_nonzero(vectors, axis=1).max(initial=0) > top:
        cut = np.argpartition(-np.abs(vectors), top - 1, axis=1)[:, top:]
        vectors = vectors.copy()
        np.put_along_axis(vectors, cut, 0.0, axis=1)
    rows, cols = np.nonzero(vectors)
    values = vectors[rows, cols].astype(np.float16)
    return rows, cols.astype(_col_type(vectors.shape[1])), values.astype(np.float32)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest finite scores, best first (ties: lower index first).

    Over many scores, the ``k``-th largest of a slice (1/64th of them) bounds the whole's from
    below, so only the few scores at or above it are sorted: exact, and about 10x cheaper than
    partitioning a million scores (the text space at 1M images)."""
    k = min(k, len(scores))
    if k and len(scores) >= SAMPLED_TOP * k * 64:
        sample = scores[: len(scores) // 64]
        sample = sample[np.isfinite(sample)]
        if len(sample) >= k:
            bound = np.partition(sample, len(sample) - k)[len(sample) - k]
            candidates = np.flatnonzero(scores >= bound)
            order = np.lexsort((candidates, -scores[candidates]))[:k]
            return candidates[order]
    part = np.argpartition(scores, -k)[-k:] if len(scores) > k else np.arange(len(scores))
    order = np.lexsort((part, -scores[part]))
    part = part[order]
    return part[np.isfinite(scores[part])]


def _write(target: str, header: dict, arrays: dict[str, np.ndarray]) -> None:
    layout, offset = {}, 0
    for name, array in arrays.items():
        layout[name] = [array.dtype.str, list(array.shape), offset]
        offset += -(-array.nbytes // _ALIGN) * _ALIGN
    head = json.dumps({**header, "arrays": layout}).encode()
    start = -(-(len(MAGIC) + 8 + len(head)) // _ALIGN) * _ALIGN
    with open(target, "wb") as f:
        f.write(MAGIC + len(head).to_bytes(8, "little") + head)
        for name, array in arrays.items():
            f.seek(start + layout[name][2])
            f.write(np.ascontiguousarray(array).tobytes())
        f.truncate(start + offset)


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with open(path, "rb") as f:
        magic = f.read(len(MAGIC))
        if magic != MAGIC:
            raise VectorIndexError(f"{path} is not an inverted index")
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    start = -(-(len(MAGIC) + 8 + size) // _ALIGN) * _ALIGN
    total = path.stat().st_size
    arrays = {}
    for name, (dtype, shape, offset) in header.pop("arrays").items():
        count = int(np.prod(shape)) if shape else 1
        if start + offset + count * np.dtype(dtype).itemsize > total:
            raise VectorIndexError(f"{path} is truncated")
        if count == 0:
            arrays[name] = np.zeros(shape, dtype)
        else:
            arrays[name] = np.memmap(path, dtype, "r", start + offset, tuple(shape))
    return header, arrays


register("inverted", InvertedIndex, InvertedIndex.load)
