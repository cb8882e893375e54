"""Searching a collection: embed the queries, search a space's index, expand the query with
its first results (α-QE), and turn ids into results.

Example:
    >>> col.search("query.jpg", k=5)  # doctest: +SKIP
    >>> col.search_vectors(vectors, k=10, space="copy", expand=0)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.collection.manifest import IMAGE_SPACE
from lookalike.collection.results import SearchResult
from lookalike.descriptors import blas_on_one_thread, l2n, query_expansion
from lookalike.images import decode
from lookalike.index import VectorIndex
from lookalike.index.faiss_compat import keep_search_params
from lookalike.index.projected import ProjectedIndex

Query = str | Path | bytes | Image.Image | np.ndarray


def capability(name: str):
    """The module ``lookalike.<name>``, imported on demand: the facade's few conveniences that
    belong to a capability (copy verification, duplicates) call it by name, so the core imports
    no capability package (docs/architecture.md)."""
    return importlib.import_module(f"lookalike.{name}")


class Searching:
    """The search side of :class:`~lookalike.collection.core.Collection` (a mixin: it uses the
    collection's models, catalogue and index caches)."""

    # -- reading ----------------------------------------------------------------------------
    def embed(self, queries: Sequence[Query], space: str = IMAGE_SPACE) -> np.ndarray:
        """Descriptors of query images in ``space`` (paths, bytes, PIL images; vectors pass
        through unchanged)."""
        vectors: list[np.ndarray | None] = [None] * len(queries)
        images, where = [], []
        for i, query in enumerate(queries):
            if isinstance(query, np.ndarray):
                vectors[i] = query.astype(np.float32).reshape(-1)
            else:
                images.append(decode(query, min_side=self.decode_side))
                where.append(i)
        if images:
            embedded = self.space_embedder(space).embed_images(images)
            for i, v in zip(where, embedded, strict=True):
                vectors[i] = v
        dim = int(self.spaces()[space]["dim"])
        return np.stack(vectors) if vectors else np.zeros((0, dim), np.float32)

    def search(
        self,
        query: Query,
        k: int = 10,
        *,
        space: str = IMAGE_SPACE,
        expand: int | None = None,
        verify: bool = False,
    ) -> list[SearchResult]:
        """The ``k`` images most similar to ``query``, best first (score = cosine similarity).

        ``query`` is a path, the bytes of an image file, a PIL image, or a vector. ``expand``:
        see :meth:`search_vectors`. ``space="copy"`` finds edited copies (see
        :meth:`add_copy_space`); ``verify=True`` re-ranks the hits by keypoint matching and
        fills their ``verified``, ``inliers`` and ``region`` (``lookalike.keypoints.rerank``).
        """
        self.index(space)  # a missing space fails here, before the model is loaded
        results = self.search_vectors(self.embed([query], space), k, space=space, expand=expand)
        if verify:
            return capability("keypoints.rerank").verify_results(query, results[0])
        return results[0]

    def search_many(
        self,
        queries: Sequence[Query],
        k: int = 10,
        *,
        space: str = IMAGE_SPACE,
        expand: int | None = None,
    ) -> list[list[SearchResult]]:
        """:meth:`search` for several queries at once (one batch through the model)."""
        vectors = self.embed(queries, space)
        return self.search_vectors(vectors, k, space=space, expand=expand)

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = 10,
        *,
        space: str = IMAGE_SPACE,
        expand: int | None = None,
    ) -> list[list[SearchResult]]:
        """Nearest images to each row of ``vectors`` (already in ``space``).

        ``expand`` is the number of first results that α-query expansion adds to the query
        before a second search (the space's default when None; 0 turns it off). Scores are then
        cosine similarities to the expanded query.
        """
        index = self.index(space)
        if len(index) == 0 or len(vectors) == 0:
            return [[] for _ in range(len(vectors))]
        expand = self.spaces()[space].get("expand", 0) if expand is None else expand
        keep_search_params()  # pytorch-metric-learning's FAISS patch drops params= (ann kinds)
        with blas_on_one_thread(len(vectors) <= 16):
            scores, ids = index.search(vectors, max(k, expand))
            if expand:
                scores, ids = self._expanded_search(index, space, vectors, scores, ids, expand, k)
        return [self._results(i[:k], s[:k]) for i, s in zip(ids, scores, strict=True)]

    def project(self, vectors: np.ndarray, space: str = IMAGE_SPACE) -> np.ndarray:
        """Stored vectors in the coordinates the index of ``space`` compares (PCA-reduced when
        the collection has learned a projection); their inner products are the search scores."""
        index = self.index(space)
        return index.project(vectors) if isinstance(index, ProjectedIndex) else l2n(vectors)

    def _expanded_search(
        self,
        index: VectorIndex,
        space: str,
        vectors: np.ndarray,
        scores: np.ndarray,
        ids: np.ndarray,
        top: int,
        k: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = self.project(vectors, space)
        expanded = []
        with blas_on_one_thread(True):  # tiny products per query: a woken pool only costs
            for query, row_ids, row_scores in zip(queries, ids, scores, strict=True):
                found = row_ids[:top] >= 0
                stored = self.catalogue.vectors(space, row_ids[:top][found].tolist())
                neighbours = self.project(stored, space)
                sims = row_scores[:top][found][None]
                expanded.append(
                    query_expansion(query[None], neighbours, sims, top=len(neighbours))[0]
                )
        inner = index.inner if isinstance(index, ProjectedIndex) else index
        return inner.search(np.stack(expanded), k)

    def _results(self, ids: np.ndarray, scores: np.ndarray) -> list[SearchResult]:
        keep = ids >= 0
        records = self.catalogue.images(ids[keep].tolist())
        return [
            SearchResult(
                id=r.id,
                path=r.path,
                score=float(s),
                paths=r.paths,
                width=r.width,
                height=r.height,
                metadata=r.metadata,
            )
            for r, s in zip(records, scores[keep], strict=True)
            if r is not None
        ]
