"""``auto``: the index kind chosen from the collection's size and a memory budget.

As autofaiss does, the choice follows what the vectors would cost in memory and what a query
would cost in time:

- up to ``EXACT_MAX`` vectors, ``flat`` (exact search is then about as fast as any graph);
- from there, ``ivf`` (8-bit codes in inverted lists, then exact re-ranking from the vectors
  kept at half precision), trained from ``EXACT_MAX`` vectors on: the fastest kind from 10k
  to 1M vectors (docs/benchmarks.md, section ``ann``: 0.06 ms a query at 10k against 0.07 for
  ``hnsw``, 0.13 against 0.20 at 100k) and the smallest, since its lists and vectors are
  memory-mapped from disk (about 17 bytes a vector in RAM, 780 on disk for 256-d vectors,
  where a graph holds 1.3 KB in RAM). ``hnsw`` is no longer chosen: it is never faster here
  and keeps everything in RAM;
- beyond the budget, ``ivf-pq`` (about 50 bytes per vector in memory);
- for a sparse space (``sparse=T``: the text space, whose catalogue keeps the ``T`` largest
  entries of each vector), ``inverted`` lists by dimension, exact, memory-mapped
  (``lookalike.index.inverted``).

The choice is made again whenever the collection has doubled (or halved) since the last one; a
different kind is then built from the current one's vectors. Each chosen kind trains and tunes
itself (``lookalike.index.ann``). The budget is ``memory_budget`` bytes, else the environment
variable ``LOOKALIKE_INDEX_MEMORY`` ("4G", "512M"), else a quarter of the machine's memory.

Example:
    >>> choose_kind(5_000, 256, memory_budget=2**30)
    'flat'
    >>> choose_kind(20_000, 256, memory_budget=2**30)
    'ivf'
    >>> choose_kind(1_000_000, 256, memory_budget=2**30)
    'ivf'
    >>> choose_kind(10_000_000, 256, memory_budget=2**30)
    'ivf-pq'
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np

from lookalike.errors import VectorIndexError
from lookalike.fileio import write_json
from lookalike.index.ann import REGROW, AnnIndex
from lookalike.index.base import (
    VectorIndex,
    accepts_allowed,
    create_index,
    load_index,
    register,
)

#: Exact search up to this many vectors (measured in docs/benchmarks.md, section ``ann``).
EXACT_MAX = 5_000
HNSW_LINKS = 32
#: What ``auto`` asks of the ``ivf`` it chooses: the kept vectors (re-ranking) at half precision
#: (scores to about 1e-3, the same recall), trained once it is chosen (``min_train``), tuned to
#: recall@10 0.99 rather than the kind's 0.95: close to the exact search it replaces for about
#: 0.15 ms more a search at 1M vectors (docs/benchmarks.md, section ``ann``: 0.992 at 0.36 ms
#: against 0.954 at 0.21 ms), small beside the rest of a query.
IVF_OPTIONS = {"store": "float16", "target_recall": 0.99}


def default_memory_budget() -> int:
    """Bytes an index may use: ``$LOOKALIKE_INDEX_MEMORY`` or a quarter of physical memory."""
    text = os.environ.get("LOOKALIKE_INDEX_MEMORY", "").strip().upper()
    if text:
        units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
        scale = units.get(text[-1], 1)
        return int(float(text.rstrip("KMGTB") or 0) * scale)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError):
        return 4 * 2**30


def bytes_per_vector(kind: str, dim: int) -> float:
    """Estimated memory per vector of an index ``kind`` (structure plus id bookkeeping)."""
    if kind == "flat":
        return 4 * dim + 16
    if kind == "hnsw":
        return 4 * dim + 2 * HNSW_LINKS * 4 * 1.1 + 9
    if kind == "ivf":
        return dim + 8 + 9
    if kind == "ivf-pq":
        return 32 + 8 + 9
    raise VectorIndexError(f"no memory estimate for {kind!r}")


def choose_kind(count: int, dim: int, memory_budget: int | None = None) -> str:
    """The kind ``auto`` uses for ``count`` vectors of ``dim`` floats within the budget."""
    budget = memory_budget if memory_budget is not None else default_memory_budget()
    if count <= EXACT_MAX and count * bytes_per_vector("flat", dim) <= budget:
        return "flat"
    if count * bytes_per_vector("ivf", dim) <= budget:
        return "ivf"
    return "ivf-pq"


class AutoIndex:
    """Holds an index of the chosen kind and re-chooses as the collection grows.

    ``sparse``: the space's vectors keep at most this many non-zero entries (the catalogue's
    ``sparse:T`` encoding): they go to an ``inverted`` index, whatever their number.
    """

    kind = "auto"

    def __init__(
        self,
        dim: int,
        memory_budget: int | None = None,
        sparse: int | None = None,
        **options: object,
    ) -> None:
        self.dim = int(dim)
        self.memory_budget = memory_budget
        self.sparse = int(sparse) if sparse else None
        self.options = options
        self.chosen = "inverted" if self.sparse else "flat"
        self.inner: VectorIndex = create_index(
            self.chosen, self.dim, **self._options_for(self.chosen)
        )
        self.chosen_at = 0

    @property
    def params(self) -> dict:
        """The chosen kind and its tuned search parameters."""
        return {"kind": self.chosen, **getattr(self.inner, "params", {})}

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.inner.add(ids, vectors)
        self.maintain()  # a large collection never waits in a flat index: RAM stays bounded

    def remove(self, ids: np.ndarray) -> None:
        self.inner.remove(ids)

    @property
    def filters(self) -> bool:
        """Whether ``search`` takes ``allowed`` (as the chosen index does)."""
        return accepts_allowed(self.inner)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        self.maintain()
        if allowed is None:
            return self.inner.search(queries, k)
        return self.inner.search(queries, k, allowed=allowed)

    def vectors_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The chosen index's ``vectors_of`` (ids and their vectors, for a filtered search of
        a few allowed images); None when it has none (``inverted``)."""
        gather = getattr(self.inner, "vectors_of", None)
        return None if gather is None else gather(ids)

    def __len__(self) -> int:
        return len(self.inner)

    def maintain(self) -> None:
        """Choose again when the collection has doubled or halved since the last choice."""
        if self.sparse:
            return
        count = len(self.inner)
        if self.chosen_at and count < REGROW * self.chosen_at and count * REGROW > self.chosen_at:
            return
        kind = choose_kind(count, self.dim, self.memory_budget)
        if kind != self.chosen:
            ids, vectors = export(self.inner)
            inner = create_index(kind, self.dim, **self._options_for(kind))
            inner.add(ids, vectors)
            self.inner, self.chosen = inner, kind
        self.chosen_at = max(count, 1)

    def _options_for(self, kind: str) -> dict:
        if kind == "flat":
            return {}
        if kind == "inverted":
            return {"top": self.sparse, **self.options}
        if kind == "ivf":
            return {**IVF_OPTIONS, "min_train": EXACT_MAX, **self.options}
        return dict(self.options)

    def save(self, path: Path) -> None:
        """The chosen index at ``path`` and the choice beside it (``.auto.json``)."""
        self.maintain()
        self.inner.save(path)
        state = {
            "inner": self.chosen,
            "chosen_at": self.chosen_at,
            "dim": self.dim,
            "memory_budget": self.memory_budget,
            "sparse": self.sparse,
            "options": self.options,
        }
        # Rewritten only when the choice changed (a rename per upload costs a few ms).
        target, text = choice_file(path), json.dumps(state, sort_keys=True)
        if getattr(self, "_saved_state", None) != (target, text) or not target.exists():
            write_json(target, state)
            self._saved_state = (target, text)

    @classmethod
    def load(cls, path: Path) -> AutoIndex:
        state = json.loads(choice_file(path).read_text())
        index = cls.__new__(cls)
        index.dim, index.memory_budget = int(state["dim"]), state["memory_budget"]
        index.sparse, index.options = state.get("sparse"), state["options"]
        index.inner = load_index(state["inner"], path)
        index.chosen, index.chosen_at = state["inner"], state["chosen_at"]
        index._saved_state = (choice_file(path), json.dumps(state, sort_keys=True))
        return index


def memory_of(index: object) -> dict[str, int]:
    """What an index holds in memory, in bytes: ``resident`` (read into RAM) and ``mapped``
    (memory-mapped from its files: in RAM only as far as searches have touched them, and
    given back by the OS under pressure). Estimated from the structures, for ``lookalike
    info`` (``Collection.sizes``).

    Example:
        >>> flat = create_index("flat", 4)
        >>> flat.add(np.arange(10), np.ones((10, 4), np.float32))
        >>> memory_of(flat)
        {'resident': 240, 'mapped': 0}
    """
    out = {"resident": 0, "mapped": 0}

    def count(array: object) -> None:
        if isinstance(array, np.ndarray):
            mapped = isinstance(array, np.memmap) or isinstance(array.base, np.memmap)
            out["mapped" if mapped else "resident"] += int(array.nbytes)

    inner = getattr(index, "inner", None)
    if inner is not None:  # auto, or a PCA-projected index: the projection, then what it holds
        projection = getattr(index, "projection", None)
        if projection is not None:
            count(projection.mean)
            count(projection.projection)
        for key, value in memory_of(inner).items():
            out[key] += value
        return out
    if isinstance(index, AnnIndex):
        count(index._ids.data)
        count(index._alive.data)
        count(index._store.data)
        structure = index.structure
        if structure is not None:
            codes = _structure_bytes(structure, index.dim)
            if index._source is not None:  # its lists memory-mapped (IO_FLAG_MMAP_IFC)
                out["mapped"] += codes
                quantizer = getattr(faiss.extract_index_ivf(structure), "nlist", 0)
                out["resident"] += int(quantizer) * index.dim * 4
            else:
                out["resident"] += codes
        return out
    if hasattr(index, "memory"):  # a kind that says it (inverted)
        return dict(index.memory())
    raw = getattr(index, "index", None)
    if isinstance(raw, faiss.Index):  # flat: its vectors and the id map
        out["resident"] += int(raw.ntotal) * (index.dim * 4 + 8) + _structure_bytes(raw, 0)
    return out


def _structure_bytes(structure: faiss.Index, dim: int) -> int:
    """Bytes of a FAISS structure's codes and lists (``ntotal`` x its code size, ids)."""
    try:
        ivf = faiss.extract_index_ivf(structure)
        return int(ivf.ntotal) * (int(ivf.code_size) + 8)
    except RuntimeError:
        pass
    if isinstance(structure, faiss.IndexHNSW):
        links = 2 * HNSW_LINKS * 4 * 1.1
        return int(structure.ntotal * (4 * structure.d + links))
    return 0


def choice_file(index_file: Path) -> Path:
    """Where ``auto`` records which kind it chose for the index at ``index_file``."""
    return index_file.with_suffix(".auto.json")


def export(index: VectorIndex) -> tuple[np.ndarray, np.ndarray]:
    """Every (id, vector) an index holds, to build another kind from it."""
    if isinstance(index, AnnIndex):
        return index.live_ids(), index.live_vectors()
    raw = getattr(index, "index", None)
    if isinstance(raw, faiss.IndexIDMap2):
        ids = faiss.vector_to_array(raw.id_map).astype(np.int64)
        flat = faiss.downcast_index(raw.index)
        vectors = faiss.rev_swig_ptr(flat.get_xb(), len(ids) * index.dim)
        return ids, np.array(vectors, np.float32).reshape(len(ids), index.dim)
    raise VectorIndexError(f"cannot read the vectors back from a {index.kind!r} index")


register("auto", lambda dim, **options: AutoIndex(dim, **options), AutoIndex.load)
