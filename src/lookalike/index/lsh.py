"""``lsh``: random-hyperplane codes (one sign bit per hyperplane) searched by Hamming distance,
then the best candidates re-ranked exactly from the stored vectors. Tombstones, tuning and
saving come from :class:`lookalike.index.ann.AnnIndex`; how it compares with the other kinds is
in docs/benchmarks.md, section ``ann``.

Example:
    >>> index = LshIndex(dim=8, bits=64)
    >>> index.add(np.array([7, 9]), np.eye(8, dtype=np.float32)[:2])
    >>> index.search(np.eye(8, dtype=np.float32)[1:2], k=1)[1].tolist()
    [[9]]
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from lookalike.errors import VectorIndexError
from lookalike.index.ann import TARGET_RECALL, AnnIndex
from lookalike.index.base import register

__all__ = ["LshIndex"]


class LshIndex(AnnIndex):
    """``lsh``: random-hyperplane codes (one sign bit per hyperplane), searched by Hamming
    distance, then the best candidates re-ranked exactly from the stored vectors.

    ``bits`` sets the code length (256 by default: 32 bytes per vector). With ``rerank=0`` the
    Hamming order is returned as is, scored by the angle it estimates (cos(pi * h / bits)).
    """

    kind = "lsh"

    def __init__(self, dim: int, target_recall: float = TARGET_RECALL, **options: object) -> None:
        super().__init__(dim, target_recall, **options)
        self.bits = int(options.get("bits", 256))
        if self.bits % 8:
            raise VectorIndexError("lsh bits must be a multiple of 8")
        rng = np.random.default_rng(int(options.get("seed", 0)))
        self.hyperplanes = rng.standard_normal((self.dim, self.bits)).astype(np.float32)
        self.params = {"rerank": int(options.get("rerank", 16))}

    def codes(self, vectors: np.ndarray) -> np.ndarray:
        """The packed sign bits of ``vectors`` against the hyperplanes."""
        signs = np.asarray(vectors, np.float32) @ self.hyperplanes > 0
        return np.packbits(signs, axis=1, bitorder="little")

    def _build(self, vectors: np.ndarray) -> faiss.IndexBinary:
        table = faiss.IndexBinaryFlat(self.bits)
        for start in range(0, len(vectors), 65_536):
            table.add(self.codes(vectors[start : start + 65_536]))
        return table

    def _append(self, vectors: np.ndarray) -> None:
        self.structure.add(self.codes(vectors))

    def _search(
        self, queries: np.ndarray, k: int, params: dict | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        rerank = int((params or self.params)["rerank"])
        search = self._search_parameters(faiss.SearchParameters)
        candidates = min(max(k, rerank * k), self.structure.ntotal)
        hamming, positions = self.structure.search(self.codes(queries), candidates, params=search)
        if rerank == 0:
            scores = np.cos(np.pi * hamming[:, :k] / self.bits).astype(np.float32)
            return scores, positions[:, :k]
        return self._rerank(queries, positions, k)

    def _touched(self) -> float:
        return len(self) * self.bits / (32.0 * self.dim)  # codes scanned, in float vectors

    def _candidates(self) -> list[dict]:
        if "rerank" in self.options:  # fixed by the caller
            return [{"rerank": int(self.options["rerank"])}]
        return [{"rerank": r} for r in (1, 2, 4, 8, 16, 32, 64, 128, 256)]

    def _write_structure(self, structure: faiss.IndexBinary, path: str) -> None:
        faiss.write_index_binary(structure, path)

    def _read_structure(self, path: Path, mmap: bool = True) -> faiss.IndexBinary:
        return faiss.read_index_binary(str(path))

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        return {"hyperplanes": self.hyperplanes}

    def _load_extra(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        self.hyperplanes = arrays["hyperplanes"]


register("lsh", LshIndex, LshIndex.load)
