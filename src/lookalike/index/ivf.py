"""``ivf`` and ``ivf-pq``: inverted lists over a k-means coarse quantizer, then exact re-ranking
of the best candidates from the full vectors (memory-mapped from disk once saved). ``ivf`` keeps
8-bit (or fp16, or float) codes in its lists, ``ivf-pq`` product-quantised ones (32 bytes a
vector by default). Tombstones, training, tuning and saving come from
:class:`lookalike.index.ann.AnnIndex`; speed, recall and memory at 10k to 1M vectors are in
docs/benchmarks.md, section ``ann``.

Example:
    >>> index = IvfIndex(dim=8)  # searched exactly until it holds min_train vectors
    >>> index.add(np.array([7, 9]), np.eye(8, dtype=np.float32)[:2])
    >>> index.search(np.eye(8, dtype=np.float32)[1:2], k=1)[1].tolist()
    [[9]]
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import faiss
import numpy as np

from lookalike.errors import VectorIndexError
from lookalike.index.ann import TARGET_RECALL, TUNE_K, AnnIndex
from lookalike.index.base import register

__all__ = ["IvfIndex", "IvfPqIndex"]


class _IvfBase(AnnIndex):
    """Inverted lists over a k-means coarse quantizer, then exact re-ranking of the best
    candidates from the stored vectors (the shared part of ``ivf`` and ``ivf-pq``).

    The full vectors are kept in a ``.vectors.npy`` file and memory-mapped once loaded, as are
    the inverted lists (``faiss.IO_FLAG_MMAP_IFC``): a collection bigger than RAM is searched
    through the page cache. Trains on a sample once it holds ``min_train`` vectors (about
    ``4 sqrt(n)`` lists); exact search below that.
    """

    min_train = 10_000
    train_sample = 100_000
    #: Re-ranking depths tried while tuning (candidates = rerank * k).
    reranks: tuple[int, ...] = (1,)

    def __init__(self, dim: int, target_recall: float = TARGET_RECALL, **options: object) -> None:
        super().__init__(dim, target_recall, **options)
        self.min_train = int(options.get("min_train", type(self).min_train))
        self.params = {"nprobe": 8, "rerank": self.reranks[-1]}

    def _make(self, nlist: int) -> faiss.IndexIVF:
        raise NotImplementedError

    def _code_bytes(self) -> float:
        """Bytes of one code in the lists (for the cost model of the candidates)."""
        raise NotImplementedError

    def _transform(self, vectors: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(vectors, np.float32)

    def _build(self, vectors: np.ndarray) -> faiss.Index:
        nlist = int(self.options.get("nlist") or _nlist_for(len(vectors)))
        ivf = self._make(nlist)
        ivf.cp.niter = 10  # k-means converges well before the default 25 for this use
        rng = np.random.default_rng(0)
        sample_size = min(len(vectors), max(self.train_sample, 40 * nlist))
        sample = vectors[np.sort(rng.choice(len(vectors), sample_size, replace=False))]
        ivf.train(self._transform(sample))
        for start in range(0, len(vectors), 65_536):
            chunk = vectors[start : start + 65_536]
            ivf.add_with_ids(self._transform(chunk), np.arange(start, start + len(chunk)))
        return ivf

    def _append(self, vectors: np.ndarray) -> None:
        first = self._ids.size - len(vectors)
        self.structure.add_with_ids(
            self._transform(vectors), np.arange(first, first + len(vectors), dtype=np.int64)
        )

    def _search(
        self, queries: np.ndarray, k: int, params: dict | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        params = params or self.params
        search = self._search_parameters(faiss.SearchParametersIVF, nprobe=int(params["nprobe"]))
        candidates = max(k, int(params.get("rerank", 1)) * k)
        _, positions = self.structure.search(self._transform(queries), candidates, params=search)
        return self._rerank(queries, positions, k)

    def _touched(self) -> float:
        nlist = self.structure.nlist if self.structure is not None else 1
        return float(self.params["nprobe"]) * len(self) / nlist

    def _widened(self, selectivity: float) -> dict:
        """Lists hold allowed and other vectors alike: probe about ``1 / selectivity`` times
        as many to meet as many allowed candidates."""
        nprobe = int(np.ceil(int(self.params["nprobe"]) / max(selectivity, 1e-6)))
        return {**self.params, "nprobe": min(nprobe, self.structure.nlist)}

    def _candidates(self) -> list[dict]:
        nlist = self.structure.nlist
        probes = [p for p in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512) if p < nlist]
        settings = [{"nprobe": p, "rerank": r} for p in [*probes, nlist] for r in self.reranks]
        per_list = max(len(self), 1) / nlist
        # Cost in bytes read: coarse centroids, codes scanned, re-ranking (scattered full
        # vectors, counted 4x for the random access).
        return sorted(
            settings,
            key=lambda s: (
                nlist * self.dim * 4
                + s["nprobe"] * per_list * self._code_bytes()
                + s["rerank"] * TUNE_K * self.dim * 4 * 4
            ),
        )

    def _read_structure(self, path: Path, mmap: bool = True) -> faiss.Index:
        if not mmap:
            return faiss.read_index(str(path))
        self._source = path
        # IO_FLAG_MMAP_IFC maps the lists in place (FAISS >= 1.10); IO_FLAG_MMAP turns them into
        # OnDiskInvertedLists, whose locking made a query at 10k vectors 16x slower (0.45 ms
        # against 0.027 ms: docs/benchmarks.md, section ``compact``).
        return faiss.read_index(str(path), getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP))


class IvfIndex(_IvfBase):
    """``ivf``: inverted lists of scalar-quantised vectors (8 bits a dimension by default),
    then exact re-ranking. The fastest kind at 100k vectors and more (docs/benchmarks.md,
    section ``ann``): a query scans a few contiguous lists instead of hopping through a graph.

    ``codec`` is ``sq8`` (one byte a dimension, 256 B for a 256-d vector, the default),
    ``fp16`` (2 bytes) or ``flat`` (4 bytes, exact scores without re-ranking, but the vectors
    are then held twice: in the lists and in the re-ranking file). Each vector also
    costs its id in the lists (8 B) and the position map (9 B); the full vectors for re-ranking
    are memory-mapped from disk once saved.
    """

    kind = "ivf"
    CODECS: ClassVar[dict[str, int | None]] = {
        "sq8": faiss.ScalarQuantizer.QT_8bit,
        "fp16": faiss.ScalarQuantizer.QT_fp16,
        "flat": None,
    }

    def __init__(self, dim: int, target_recall: float = TARGET_RECALL, **options: object) -> None:
        self.codec = str(options.get("codec", "sq8"))
        if self.codec not in self.CODECS:
            raise VectorIndexError(f"ivf codec must be one of {', '.join(self.CODECS)}")
        self.reranks = (1,) if self.codec == "flat" else (1, 2, 4)
        super().__init__(dim, target_recall, **options)

    def _make(self, nlist: int) -> faiss.IndexIVF:
        quantizer = faiss.IndexFlatIP(self.dim)
        if self.codec == "flat":
            return faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        return faiss.IndexIVFScalarQuantizer(
            quantizer, self.dim, nlist, self.CODECS[self.codec], faiss.METRIC_INNER_PRODUCT
        )

    def _code_bytes(self) -> float:
        return self.structure.code_size

    def _search(
        self, queries: np.ndarray, k: int, params: dict | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.codec != "flat":
            return super()._search(queries, k, params)
        nprobe = int((params or self.params)["nprobe"])
        search = self._search_parameters(faiss.SearchParametersIVF, nprobe=nprobe)
        return self.structure.search(queries, k, params=search)  # exact scores already


class IvfPqIndex(_IvfBase):
    """``ivf-pq``: inverted lists of product-quantised codes, then exact re-ranking.

    Memory per vector: the code (``code_bytes``, 32 by default) plus its id in the lists (8)
    and the position map (9). A random rotation spreads the variance of PCA-ordered dimensions
    evenly over the PQ sub-vectors. See :class:`_IvfBase` for training and memory-mapping.
    """

    kind = "ivf-pq"
    # At least 4k candidates: 32-byte codes rank near-ties poorly, and held-out queries from
    # the collection understate that (docs/benchmarks.md, section ``ann``).
    reranks = (4, 8, 16, 32)

    def __init__(self, dim: int, target_recall: float = TARGET_RECALL, **options: object) -> None:
        super().__init__(dim, target_recall, **options)
        code_bytes = int(options.get("code_bytes", 32))
        self.code_bytes = max(m for m in range(1, code_bytes + 1) if self.dim % m == 0)
        self.rotation = _random_rotation(self.dim, seed=int(options.get("seed", 0)))
        self.params = {"nprobe": 8, "rerank": 8}

    def _make(self, nlist: int) -> faiss.IndexIVF:
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFPQ(
            quantizer, self.dim, nlist, self.code_bytes, 8, faiss.METRIC_INNER_PRODUCT
        )
        ivf.do_polysemous_training = False  # minutes of training for an unused feature
        ivf.pq.cp.niter = 10  # the default 25 triples training time for little gain
        return ivf

    def _code_bytes(self) -> float:
        return self.code_bytes

    def _transform(self, vectors: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(vectors, np.float32) @ self.rotation)

    def _rotate(self, vectors: np.ndarray) -> np.ndarray:
        return self._transform(vectors)

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        return {"rotation": self.rotation}

    def _load_extra(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        self.rotation = arrays["rotation"]


def _nlist_for(count: int) -> int:
    """Inverted lists for ``count`` vectors: about 4 sqrt(n), a power of two (as autofaiss),
    with at least 39 training vectors per list (k-means needs them)."""
    wanted = np.log2(4 * np.sqrt(max(count, 1)))
    fits = np.log2(max(count // 39, 16))
    return int(2 ** np.clip(min(round(wanted), int(fits)), 4, 16))


def _random_rotation(dim: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


register("ivf", IvfIndex, IvfIndex.load)
register("ivf-pq", IvfPqIndex, IvfPqIndex.load)
