"""The shared machinery of the approximate nearest-neighbour kinds (``hnsw``, ``ivf``,
``ivf-pq``, ``lsh``): :class:`AnnIndex`, which each kind subclasses in its own module
(``lookalike.index.hnsw``, ``lookalike.index.ivf``, ``lookalike.index.lsh``).

They share one design:

- **Positions and tombstones.** Vectors live at positions 0..n-1 of a FAISS structure; ``ids``
  maps a position to the catalogue's image id and ``alive`` marks the positions still in use.
  Removing (or re-adding) an id only clears its ``alive`` bit; searches skip dead positions
  through a FAISS ``IDSelectorBitmap``. Once more than ``REBUILD_DEAD`` of the positions are
  dead, the structure is rebuilt from the live vectors. HNSW cannot delete at all, and IVF lists
  memory-mapped from disk are read-only, so one mechanism serves every kind.
- **Training from the collection's own vectors.** A collection adds its vectors in chunks and
  then searches or saves. A kind that must be trained (``ivf-pq``) keeps what it is given and
  answers exactly until it holds ``min_train`` vectors; at the first search or save after that it
  trains on a sample of them. It trains again when the collection has doubled since.
- **Tuned, not hard-coded.** After each (re)build the search parameters (``efSearch``,
  ``nprobe`` and the number of re-ranked candidates) are chosen as the cheapest that reach
  ``target_recall`` recall@10 on held-out vectors: a sample of stored vectors used as queries,
  against exact neighbours among the others.
- **Self-tuning on real queries.** Held-out stored vectors are easier queries than new images
  (build-time tuning falls well short of its target on real queries at 1M vectors:
  docs/benchmarks.md, section ``ann``), so every search offers its query vectors to a small
  reservoir (a uniform sample of the queries since the last tuning, ``reservoir`` = 256 of
  them). As soon as it is full the parameters are chosen again on it against exact search;
  after that, once ``retune_queries`` queries have arrived *and* the time spent searching since
  the last tuning is at least ``1 / retune_budget`` times what that tuning cost: the parameters
  follow the queries (and the data) as they drift, and self-tuning costs at most
  ``retune_budget`` (5%) of the search time. It runs in a background thread (changes to the
  index wait for it); the reservoir and the parameters are saved with the index.

Example:
    >>> from lookalike.index import create_index
    >>> index = create_index("hnsw", dim=8)  # an AnnIndex subclass
    >>> index.add(np.array([7, 9]), np.eye(8, dtype=np.float32)[:2])
    >>> index.search(np.eye(8, dtype=np.float32)[1:2], k=1)[1].tolist()
    [[9]]
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import faiss
import numpy as np

from lookalike.errors import VectorIndexError
from lookalike.fileio import atomic_save
from lookalike.index.exact import PositionMap, exact_search, recall_at, top_k
from lookalike.index.log import Journal, mark, marked, read_saved

#: Rebuild once this fraction of positions are tombstones.
REBUILD_DEAD = 0.25
#: Adds of at most this many vectors run FAISS on one thread (an upload: 0.15 ms instead of ~6 ms
#: spent waking the OpenMP pool on 2 busy cores).
SMALL_ADD = 64
#: Re-train / re-tune when the number of live vectors has grown by this factor.
REGROW = 2.0
#: Recall@TUNE_K on held-out vectors that tuning aims for.
TARGET_RECALL = 0.95
TUNE_K = 10
TUNE_QUERIES = 300
#: Tuning queries are stored vectors moved by this many nearest-neighbour distances.
TUNE_NOISE = 1.0
#: Below this many vectors there is nothing meaningful to tune on.
TUNE_MIN = 1000
#: Query vectors kept for self-tuning (a uniform sample of those since the last tuning).
RESERVOIR = 256
#: Re-tune on real queries after at least this many of them since the last tuning ...
RETUNE_QUERIES = 1000
#: ... and once searching has taken 1 / RETUNE_BUDGET times what the last tuning took.
RETUNE_BUDGET = 0.05
#: Fewest reservoir queries worth tuning on (below, held-out vectors are used instead).
RESERVOIR_MIN = 64
#: A filtered search scans at least this many allowed vectors exactly (``AnnIndex.scan_limit``).
SCAN_MIN = 2048
#: What comparing a query with a gathered (scattered) stored vector costs, in vectors the
#: index compares while it searches (measured at 100k 256-d vectors: docs/benchmarks.md,
#: section ``filters``).
GATHER_COST = 4.0

__all__ = [
    "AnnIndex",
    "exact_search",
    "meta_file",
    "recall_at",
    "vectors_file",
]


def meta_file(index_file: Path) -> Path:
    """Sidecar with the ids, tombstones and tuned parameters of the index at ``index_file``."""
    return index_file.with_suffix(".ann.npz")


def vectors_file(index_file: Path) -> Path:
    """Sidecar with the full vectors (re-ranking and rebuilds), memory-mapped when loaded."""
    return index_file.with_suffix(".vectors.npy")


class _Growable:
    """An array that grows by doubling, for appending batches cheaply."""

    def __init__(self, shape: tuple[int, ...], dtype: type, data: np.ndarray | None = None):
        self.data = data if data is not None else np.zeros((16, *shape), dtype)
        self.size = 0 if data is None else len(data)

    def append(self, rows: np.ndarray) -> None:
        need = self.size + len(rows)
        if need > len(self.data) or not self.data.flags.writeable:
            grown = np.zeros((max(need, 2 * len(self.data)), *self.data.shape[1:]), self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : need] = rows
        self.size = need

    def view(self) -> np.ndarray:
        return self.data[: self.size]


class AnnIndex:
    """The shared machinery of the approximate kinds (see the module docstring).

    Subclasses say how to build the FAISS structure from vectors, append to it, search it, and
    which parameters to tune.
    """

    kind = "ann"
    #: ``search`` takes ``allowed`` (a filtered search: ``lookalike.index.base``).
    filters = True
    #: Vectors needed before the structure is built; below that, search is exact.
    min_train = 0
    #: Whether the index keeps its own copy of the vectors (else the structure holds them).
    keeps_vectors = True

    def __init__(self, dim: int, target_recall: float = TARGET_RECALL, **options: object) -> None:
        self.dim = int(dim)
        self.target_recall = float(target_recall)
        self.options = dict(options)
        self.params: dict = {}
        self.structure: faiss.Index | None = None
        self._ids = _Growable((), np.int64)
        self._alive = _Growable((), np.bool_)
        # ``store="float16"``: the kept vectors at half precision (re-ranking scores to about
        # 1e-3, half the bytes; what ``auto`` asks of ``ivf``).
        self._store = _Growable((self.dim,), np.dtype(str(options.get("store", "float32"))))
        self._dead = 0
        self._max_id = -1
        self._built_at = 0  # live vectors when the structure was last built
        self._tuned_at = 0
        self._bitmap: tuple[np.ndarray, faiss.IDSelector] | None = None
        self._source: Path | None = None  # file a memory-mapped structure was read from
        self._version = 0  # bumped when the structure or the stored vectors change
        self._saved: tuple[str, int] | None = None  # (file, version) last written or read
        # Saving (``lookalike.index.log``): the adds and removes since the base was written or
        # read, for its log; a rebuild (``_layout``) or new parameters since the base's make
        # the next save write the base whole; ``_token`` names the base the files came from.
        self.journal = Journal(self.dim)
        self._layout = 0
        self._base_state: tuple[int, str] | None = None
        self._token: bytes | None = None
        # Self-tuning on real queries (module docstring).
        self.reservoir_size = int(options.get("reservoir", RESERVOIR))
        self.retune_queries = int(options.get("retune_queries", RETUNE_QUERIES))
        self.retune_budget = float(options.get("retune_budget", RETUNE_BUDGET))
        self._reservoir = np.zeros((self.reservoir_size, self.dim), np.float32)
        self._seen = 0  # queries offered to the reservoir since the last tuning
        self._kept = 0  # reservoir rows in use
        self._search_seconds = 0.0  # spent searching since the last tuning
        self._tune_seconds = 0.0  # what the last tuning cost
        self._tuning = threading.Lock()
        self._tuner: threading.Thread | None = None
        self._rng = np.random.default_rng(0)
        self._random = random.Random(0)
        self._parameters: tuple[tuple, faiss.SearchParameters] | None = None
        self._filter = threading.local()  # the selector of this thread's filtered search
        self._positions = PositionMap()  # allowed ids -> positions (filtered search)

    # -- the VectorIndex protocol ---------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under their ids; an id already present is replaced."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            return
        self.wait_for_tuning()  # a background tuning must not search a structure changing
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        if ids.min() <= self._max_id:  # catalogue ids only grow, so this is usually skipped
            self.remove(ids)
        self._max_id = max(self._max_id, int(ids.max()))
        self._version += 1
        self._ids.append(ids)
        self._alive.append(np.ones(len(ids), np.bool_))
        if self.keeps_vectors:
            self._store.append(vectors)
        if self.structure is not None:
            self._writable()
            if len(ids) > SMALL_ADD:
                self._append(vectors)
            else:  # an upload's few vectors: waking FAISS's OpenMP pool costs 40x the add
                threads = faiss.omp_get_max_threads()
                faiss.omp_set_num_threads(1)
                try:
                    self._append(vectors)
                finally:
                    faiss.omp_set_num_threads(threads)
        self._bitmap = None
        self.journal.added(ids, vectors)

    def remove(self, ids: np.ndarray) -> None:
        """Tombstone these ids (unknown ids are ignored)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0 or self._ids.size == 0:
            return
        self.wait_for_tuning()
        self.journal.removed(ids)
        hit = np.flatnonzero(np.isin(self._ids.view(), ids) & self._alive.view())
        if len(hit):
            self._alive.data[hit] = False
            self._dead += len(hit)
            self._bitmap = None

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores, ids), each (n, k), best first; missing ids are -1.
        ``allowed``: only these ids (sorted int64) may be found (:meth:`_filtered`)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = max(1, min(int(k), max(len(self), 1)))
        self.maintain()
        positions_allowed = None if allowed is None else self.positions_of(allowed)
        if positions_allowed is not None:
            k = max(1, min(k, len(positions_allowed)))
        if len(self) == 0 or (positions_allowed is not None and len(positions_allowed) == 0):
            return (
                np.full((len(queries), k), -np.inf, np.float32),
                np.full((len(queries), k), -1, np.int64),
            )
        start = time.perf_counter()
        if positions_allowed is not None:
            scores, positions = self._filtered(queries, k, positions_allowed)
        elif self.structure is None:
            scores, positions = self._exact(queries, k)
        else:
            scores, positions = self._search(queries, k)
        ids = np.where(positions >= 0, self._ids.data[np.maximum(positions, 0)], -1)
        self._search_seconds += time.perf_counter() - start
        self.observe(queries)
        if self.retune_due():
            self.retune(wait=False)
        return scores.astype(np.float32), ids.astype(np.int64)

    # -- filtered search ------------------------------------------------------------------
    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """The live positions holding ``ids`` (unknown ids left out), ascending."""
        if len(ids) == 0 or self._ids.size == 0:
            return np.zeros(0, np.int64)
        state = (self._version, self._ids.size, self._dead)
        return self._positions.positions(
            self._ids.view(), ids, state=state, alive=self._alive.view()
        )

    def vectors_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors): those of ``ids`` (sorted int64) the index holds live and their
        stored vectors (float32), which its exact scans and re-ranking score: what a filtered
        search of a few allowed images gathers once and keeps (``collection.filters``)."""
        positions = self.positions_of(np.asarray(ids, np.int64))
        vectors = np.asarray(self._vectors(positions), np.float32).reshape(-1, self.dim)
        return self._ids.data[positions].copy(), np.ascontiguousarray(vectors)

    def scan_limit(self) -> int:
        """Up to this many allowed vectors, a filtered search scans them exactly: about where
        scanning ``m`` of ``n`` vectors (scattered: :data:`GATHER_COST` times a vector the
        index visits) costs what the index costs when only ``m / n`` of what it visits may be
        kept (``touched * n / m``): ``m = sqrt(n * touched / GATHER_COST)``."""
        return max(SCAN_MIN, int(np.sqrt(max(len(self), 1) * self._touched() / GATHER_COST)))

    def _touched(self) -> float:
        """About how many stored vectors one unfiltered search compares with the query."""
        return float(len(self))

    def _filtered(
        self, queries: np.ndarray, k: int, positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) among the allowed ``positions`` only. Few of them: exact scan of
        their stored vectors. Many: the structure searched with a selector of those positions
        (searches in this thread only) and its parameters widened by the selectivity
        (:meth:`_widened`); a row still short of ``k`` results is scanned exactly, so a filter
        never returns fewer than ``k`` when ``k`` images match."""
        if self.structure is None or len(positions) <= self.scan_limit():
            return exact_search(self._matrix(), queries, k, rows=positions)
        self._filter.selector = self._positions.bitmap(self._ids.size, positions)
        try:
            scores, found = self._search(
                queries, k, self._widened(len(positions) / max(len(self), 1))
            )
        finally:
            self._filter.selector = None
        short = np.flatnonzero((found[:, :k] < 0).any(axis=1))
        if len(short):
            redo = exact_search(self._matrix(), queries[short], k, rows=positions)
            scores[short], found[short] = redo
        return scores, found

    def _widened(self, selectivity: float) -> dict:
        """The search parameters for a search that keeps only ``selectivity`` of the vectors."""
        return dict(self.params)

    # -- self-tuning on real queries ------------------------------------------------------
    def observe(self, queries: np.ndarray) -> None:
        """Offer query vectors to the reservoir (Algorithm R: a uniform sample of the queries
        since the last tuning; the first ones after it overwrite the oldest rows)."""
        queries = np.asarray(queries, np.float32).reshape(-1, self.dim)
        size = self.reservoir_size
        if size == 0 or len(queries) == 0:
            return
        if len(queries) == 1:  # the common case, without array overheads
            slot = self._seen
            if slot >= size:
                slot = int(self._random.random() * (self._seen + 1))
            if slot < size:
                self._reservoir[slot] = queries[0]
            self._seen += 1
            self._kept = max(self._kept, min(self._seen, size))
            return
        seen = self._seen + 1 + np.arange(len(queries))
        slots = np.where(seen <= size, seen - 1, self._rng.integers(0, seen))
        keep = slots < size
        self._reservoir[slots[keep]] = queries[keep]
        self._seen += len(queries)
        self._kept = max(self._kept, min(self._seen, size))

    def reservoir(self) -> np.ndarray:
        """The query vectors held for self-tuning."""
        return self._reservoir[: self._kept].copy()

    def retune_due(self) -> bool:
        """Whether enough real queries, and enough search time to pay for it, have come
        since the last tuning. The first tuning on real queries (after one on held-out
        vectors) comes as soon as the reservoir is full, whatever it costs once."""
        if self.structure is None or self._kept < RESERVOIR_MIN or len(self) < TUNE_MIN:
            return False
        if not str(self.params.get("tuned_on", "")).endswith(" queries"):
            return self._seen >= min(self.retune_queries, self.reservoir_size)
        return (
            self._seen >= self.retune_queries
            and self._search_seconds * self.retune_budget >= self._tune_seconds
        )

    def retune(self, wait: bool = True) -> None:
        """Choose the search parameters again on the reservoir's queries, unless another
        thread is already doing it. With ``wait=False`` (as searches do) it runs in a
        background thread, and its result is dropped if the index changed meanwhile."""
        if not self._tuning.acquire(blocking=False):
            return
        queries, version = self.reservoir(), self._version

        def work() -> None:
            try:
                self._tune(queries, version=version)
            finally:
                self._tuning.release()

        if wait:
            work()
        else:
            self._tuner = threading.Thread(target=work, name="lookalike-retune", daemon=True)
            self._tuner.start()

    def wait_for_tuning(self) -> None:
        """Return once a background re-tuning (if any) has finished."""
        tuner = self._tuner
        if tuner is not None:
            tuner.join()
            self._tuner = None

    def __len__(self) -> int:
        return self._ids.size - self._dead

    def save(self, path: Path, generation: int | None = None) -> None:
        """With a catalogue generation (``generation`` or ``log.save_index``'s), the adds and
        removes since the base was last written or read at ``path`` appended to its log
        (``lookalike.index.log``). Else, after a rebuild or a new tuning, or once the log has
        grown past a fraction of the base, the base written whole: the vectors, then the ids,
        tombstones and parameters beside ``path`` (each atomically, each naming the base),
        then the structure at ``path``."""
        self.maintain()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._base_state != self._state():
            self.journal.forget()  # rebuilt or tuned since the base: written whole
        self.journal.save(path, generation, lambda tmp, token: self._write_base(path, tmp, token))

    def _state(self) -> tuple[int, str]:
        return self._layout, json.dumps(self.params, sort_keys=True)

    def _write_base(self, path: Path, tmp: str, token: bytes) -> None:
        """The files beside ``path``, then the structure into ``tmp`` (renamed to ``path``)."""
        if self.keeps_vectors:

            def vectors(name: str) -> None:
                np.save(name, self._store.view())
                mark(name, token, self.dim)

            atomic_save(vectors_file(path), vectors, ".npy")
        meta = {
            "kind": self.kind,
            "dim": self.dim,
            "target_recall": self.target_recall,
            "options": self.options,
            "params": self.params,
            "built": self.structure is not None,
            "built_at": self._built_at,
            "tuned_at": self._tuned_at,
            "seen": self._seen,
            "search_seconds": self._search_seconds,
            "tune_seconds": self._tune_seconds,
            "token": token.hex(),
            **self._extra_meta(),
        }
        atomic_save(
            meta_file(path),
            lambda name: np.savez(
                name,
                meta=np.array(json.dumps(meta)),
                ids=self._ids.view(),
                alive=self._alive.view(),
                reservoir=self._reservoir[: self._kept],
                **self._extra_arrays(),
            ),
            ".npz",
        )
        if self.structure is not None:
            self._write_structure(self.structure, tmp)
        else:
            open(tmp, "wb").close()  # not built yet: an empty file (and the trailer)
        self._token, self._base_state = token, self._state()
        self._saved = (str(path), self._version)

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path, generation: int | None = None) -> AnnIndex:
        """Read an index written by :meth:`save`: its base (vectors and IVF lists
        memory-mapped, unless its log holds changes) and its log's changes up to
        ``generation`` (None: ``log.load_saved``'s, else all of them)."""
        path = Path(path)
        index, change, binding = read_saved(
            path,
            lambda _, changing: cls.load_base(path, mmap=not changing),
            lambda base: base.dim,
            generation,
            token_of=lambda base: base._token,
        )
        if change:
            index.remove(change.touched)
            index.add(change.ids, change.vectors)
        index.journal.binding = binding
        return index

    @classmethod
    def load_base(cls, path: Path, mmap: bool = True) -> AnnIndex:
        """The base written at ``path``, without its log; its files are of one base when its
        ``_token`` is the one the trailer at ``path`` names (``log.read_saved`` checks)."""
        file = meta_file(path)
        if not file.exists():
            raise VectorIndexError(f"{path}: missing {file.name}")
        with np.load(file) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {name: data[name] for name in data.files if name != "meta"}
        index = cls(meta["dim"], meta["target_recall"], **meta["options"])
        index.params = meta["params"]
        index._built_at, index._tuned_at = meta["built_at"], meta["tuned_at"]
        index._seen = int(meta.get("seen", 0))
        index._search_seconds = float(meta.get("search_seconds", 0.0))
        index._tune_seconds = float(meta.get("tune_seconds", 0.0))
        kept = arrays.pop("reservoir", np.zeros((0, index.dim), np.float32))[: index.reservoir_size]
        index._reservoir[: len(kept)] = kept
        index._kept = len(kept)
        index._ids = _Growable((), np.int64, arrays.pop("ids"))
        index._alive = _Growable((), np.bool_, arrays.pop("alive"))
        index._dead = int((~index._alive.view()).sum())
        index._max_id = int(index._ids.view().max()) if index._ids.size else -1
        index._token = bytes.fromhex(meta["token"]) if "token" in meta else None
        if cls.keeps_vectors:
            vectors = vectors_file(path)
            before = marked(vectors)
            index._store = _Growable((index.dim,), np.float32, np.load(vectors, "r"))
            if index._token is not None and not before == marked(vectors) == index._token:
                index._token = None  # the vectors are another base's: read again
        index._load_extra(meta, arrays)
        if meta["built"]:
            index.structure = index._read_structure(path, mmap=mmap)
        index._saved = (str(path), index._version)
        index._base_state = index._state()
        return index

    # -- maintenance ----------------------------------------------------------------------
    def maintain(self) -> None:
        """Build, re-train, compact or re-tune when the contents call for it (idempotent)."""
        live = len(self)
        if live == 0:
            return
        if self.structure is None:
            if live >= max(self.min_train, 1):
                self._rebuild()
        elif self._dead > REBUILD_DEAD * self._ids.size or live >= REGROW * max(self._built_at, 1):
            self._rebuild()
        elif live >= TUNE_MIN and live >= REGROW * max(self._tuned_at, TUNE_MIN / REGROW):
            self._tune()

    def _rebuild(self) -> None:
        """Drop dead positions and build the structure anew from the live vectors."""
        self.wait_for_tuning()
        vectors = self.live_vectors()
        ids = self._ids.view()[self._alive.view()]
        self._ids = _Growable((), np.int64, ids.copy())
        self._alive = _Growable((), np.bool_, np.ones(len(ids), np.bool_))
        self._dead = 0
        self._bitmap = None
        self._source = None
        self._version += 1
        self._layout += 1
        if self.keeps_vectors:
            stored = np.array(vectors, self._store.data.dtype)
            self._store = _Growable((self.dim,), stored.dtype, stored)
        self.structure = self._build(vectors)
        self._built_at = len(ids)
        self._tuned_at = 0
        if len(ids) >= TUNE_MIN:
            self._tune()

    def live_vectors(self) -> np.ndarray:
        """The vectors of the live positions, in position order."""
        return np.asarray(self._vectors(np.flatnonzero(self._alive.view())), np.float32)

    def live_ids(self) -> np.ndarray:
        """The ids of the live positions, in the order of :meth:`live_vectors`."""
        return self._ids.view()[self._alive.view()].copy()

    def _tune(self, queries: np.ndarray | None = None, version: int | None = None) -> None:
        """Choose the cheapest search parameters that reach ``target_recall`` on ``queries``
        (the reservoir of real ones when it holds enough, else held-out vectors), against
        their exact neighbours. Nothing changes if the index is no longer at ``version``."""
        start = time.perf_counter()
        alive = np.flatnonzero(self._alive.view())
        if queries is None and self._kept >= RESERVOIR_MIN:
            queries = self.reservoir()
        source = "queries"
        if queries is None or len(queries) == 0:
            queries, source = self._held_out(alive), "held-out"
        queries = np.ascontiguousarray(queries, np.float32)
        truth = exact_search(self._matrix(), queries, TUNE_K, rows=alive)[1]
        best = None
        for params in self._candidates():
            recall = recall_at(self._search(queries, TUNE_K, params)[1], truth)
            best = (params, recall)
            if recall >= self.target_recall:
                break
        assert best is not None
        if version is not None and version != self._version:
            return  # vectors were added or the structure rebuilt meanwhile: tune again later
        self.params = {
            **best[0],
            "tuned_recall": round(best[1], 4),
            "tuned_on": f"{len(queries)} {source}",
        }
        self._tuned_at = len(alive)
        self._seen = 0
        self._search_seconds = 0.0
        self._tune_seconds = time.perf_counter() - start

    def _held_out(self, alive: np.ndarray) -> np.ndarray:
        """Queries made from stored vectors, moved away from themselves by a random offset as
        long as the distance to their nearest other vector: a new image is about that far from
        the collection, and a stored vector itself (with its near-duplicates) is an easier
        query than a new one (docs/benchmarks.md, section ``ann``)."""
        rng = np.random.default_rng(len(alive))
        held = np.sort(rng.choice(alive, size=min(TUNE_QUERIES, len(alive)), replace=False))
        stored = np.asarray(self._vectors(held), np.float32)
        nearest = exact_search(self._matrix(), stored, 2, rows=alive)[0][:, 1]  # [:, 0]: itself
        distance = np.sqrt(np.maximum(2 - 2 * nearest, 0))[:, None]
        # Offsets along other stored vectors keep the queries in the data's own subspace
        # (isotropic noise would be nearly orthogonal to it and change no ranking).
        offset = np.asarray(self._vectors(rng.choice(alive, size=len(held))), np.float32)
        queries = stored + TUNE_NOISE * distance * offset
        return queries / np.linalg.norm(queries, axis=1, keepdims=True)

    def _selector(self) -> faiss.IDSelector | None:
        """A bitmap of live positions when some are dead (None when all are live); in a
        filtered search, the bitmap of the allowed live positions."""
        chosen = getattr(self._filter, "selector", None)
        if chosen is not None:
            return chosen
        if self._dead == 0:
            return None
        if self._bitmap is None:
            bits = np.packbits(self._alive.view(), bitorder="little")
            self._bitmap = (bits, faiss.IDSelectorBitmap(self._ids.size, faiss.swig_ptr(bits)))
        return self._bitmap[1]

    def _search_parameters(self, kind: type, **values: int) -> faiss.SearchParameters:
        """A FAISS search-parameters object with these values and the live-positions selector,
        reused while neither changes (making one costs several microseconds a query)."""
        selector = self._selector()
        key = (kind, tuple(sorted(values.items())), selector)
        cached = self._parameters
        if (
            cached is not None
            and cached[0][0] is kind
            and cached[0][1] == key[1]
            and cached[0][2] is selector
        ):
            return cached[1]
        search = kind()
        for name, value in values.items():
            setattr(search, name, value)
        if selector is not None:
            search.sel = selector
        self._parameters = (key, search)  # the key holds the selector, which must stay alive
        return search

    def _exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        alive = np.flatnonzero(self._alive.view())
        return exact_search(self._matrix(), queries, k, rows=alive)

    def _rerank(
        self, queries: np.ndarray, candidates: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner products with the candidate positions' stored vectors; the top ``k``."""
        if len(queries) == 1:  # one query: no de-duplication or batching needed
            row = candidates[0][candidates[0] >= 0]
            scores = np.asarray(self._vectors(row), np.float32) @ queries[0]
            top = np.argsort(-scores, kind="stable")[:k]
            out_scores = np.full((1, k), -np.inf, np.float32)
            out_positions = np.full((1, k), -1, np.int64)
            out_scores[0, : len(top)] = scores[top]
            out_positions[0, : len(top)] = row[top]
            return out_scores, out_positions
        out_scores = np.full((len(queries), k), -np.inf, np.float32)
        out_positions = np.full((len(queries), k), -1, np.int64)
        for start in range(0, len(queries), 256):  # bounds the gathered block's memory
            block = candidates[start : start + 256]
            valid = block >= 0
            flat = np.where(valid, block, 0)
            unique, inverse = np.unique(flat, return_inverse=True)
            gathered = np.asarray(self._vectors(unique), np.float32)[inverse.reshape(flat.shape)]
            scores = np.matmul(gathered, queries[start : start + 256, :, None])[..., 0]
            scores = np.where(valid, scores, -np.inf)
            top = top_k(scores, min(k, scores.shape[1]))
            out_scores[start : start + 256, : top.shape[1]] = np.take_along_axis(scores, top, 1)
            positions = np.take_along_axis(np.where(valid, block, -1), top, 1)
            out_positions[start : start + 256, : top.shape[1]] = positions
        out_positions[~np.isfinite(out_scores)] = -1
        return out_scores, out_positions

    def _writable(self) -> None:
        """A structure memory-mapped from disk is read-only: read it into memory to change it."""
        if self._source is not None:
            self.structure = self._read_structure(self._source, mmap=False)
            self._source = None

    def _vectors(self, positions: np.ndarray) -> np.ndarray:
        return self._matrix()[positions]

    def _matrix(self) -> np.ndarray:
        """Every position's vector (dead ones included), possibly memory-mapped."""
        return self._store.view()

    # -- what each kind provides ---------------------------------------------------------
    def _build(self, vectors: np.ndarray) -> faiss.Index:
        raise NotImplementedError

    def _append(self, vectors: np.ndarray) -> None:
        raise NotImplementedError

    def _search(
        self, queries: np.ndarray, k: int, params: dict | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) from the structure with ``params`` (else the current ones)."""
        raise NotImplementedError

    def _candidates(self) -> list[dict]:
        """Parameter settings from cheapest to dearest, tried in order while tuning."""
        return [{}]

    def _write_structure(self, structure: faiss.Index, path: str) -> None:
        faiss.write_index(structure, path)

    def _read_structure(self, path: Path, mmap: bool = True) -> faiss.Index:
        return faiss.read_index(str(path))

    def _extra_meta(self) -> dict:
        return {}

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _load_extra(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        pass
