"""``auto``: the index kind chosen from the collection's size and a memory budget.

As autofaiss does, the choice follows what the vectors would cost in memory and what a query
would cost in time:

- up to ``EXACT_MAX`` vectors, ``flat`` (exact search is then about as fast as any graph);
- below ``IVF_MIN``, ``hnsw`` while the graph (about 4 d + 8 M bytes per vector) fits the
  budget: it needs no training and is the fastest there;
- from ``IVF_MIN``, ``ivf`` (8-bit codes in inverted lists, about d + 17 bytes per vector,
  then exact re-ranking), the fastest kind at 100k and 1M vectors (docs/benchmarks.md,
  section ``ann``);
- beyond the budget, ``ivf-pq`` (about 50 bytes per vector in memory). Both IVF kinds
  memory-map the full vectors for re-ranking from disk.

The choice is made again whenever the collection has doubled (or halved) since the last one; a
different kind is then built from the current one's vectors. Each chosen kind trains and tunes
itself (``lookalike.index.ann``). The budget is ``memory_budget`` bytes, else the environment
variable ``LOOKALIKE_INDEX_MEMORY`` ("4G", "512M"), else a quarter of the machine's memory.

Example:
    >>> choose_kind(5_000, 256, memory_budget=2**30)
    'flat'
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
from lookalike.index.base import VectorIndex, create_index, load_index, register

#: Exact search up to this many vectors (measured in docs/benchmarks.md, section ``ann``).
EXACT_MAX = 5_000
#: ``ivf`` rather than ``hnsw`` from this many vectors (docs/benchmarks.md, section ``ann``).
IVF_MIN = 50_000
HNSW_LINKS = 32


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
    if count < IVF_MIN and count * bytes_per_vector("hnsw", dim) <= budget:
        return "hnsw"
    if count * bytes_per_vector("ivf", dim) <= budget:
        return "ivf"
    return "ivf-pq"


class AutoIndex:
    """Holds an index of the chosen kind and re-chooses as the collection grows."""

    kind = "auto"

    def __init__(self, dim: int, memory_budget: int | None = None, **options: object) -> None:
        self.dim = int(dim)
        self.memory_budget = memory_budget
        self.options = options
        self.inner: VectorIndex = create_index("flat", self.dim)
        self.chosen = "flat"
        self.chosen_at = 0

    @property
    def params(self) -> dict:
        """The chosen kind and its tuned search parameters."""
        return {"kind": self.chosen, **getattr(self.inner, "params", {})}

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.inner.add(ids, vectors)

    def remove(self, ids: np.ndarray) -> None:
        self.inner.remove(ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.maintain()
        return self.inner.search(queries, k)

    def __len__(self) -> int:
        return len(self.inner)

    def maintain(self) -> None:
        """Choose again when the collection has doubled or halved since the last choice."""
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
        return {} if kind == "flat" else dict(self.options)

    def save(self, path: Path) -> None:
        """The chosen index at ``path`` and the choice beside it (``.auto.json``)."""
        self.maintain()
        self.inner.save(path)
        state = {
            "inner": self.chosen,
            "chosen_at": self.chosen_at,
            "dim": self.dim,
            "memory_budget": self.memory_budget,
            "options": self.options,
        }
        write_json(choice_file(path), state)

    @classmethod
    def load(cls, path: Path) -> AutoIndex:
        state = json.loads(choice_file(path).read_text())
        index = cls(state["dim"], state["memory_budget"], **state["options"])
        index.inner = load_index(state["inner"], path)
        index.chosen, index.chosen_at = state["inner"], state["chosen_at"]
        return index


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
