"""Searching a collection: embed the queries, search a space's index, expand the query with
its first results (α-QE), and turn ids into results.

**Filtered search** (``where=``, see :mod:`.filters`) is exact about the filter: the allowed
ids are selected in the catalogue first (one SQL query on indexed columns, kept until the
catalogue changes), then searched by the plan their number calls for
(:func:`.filters.search_selected`: few, all scored exactly in one matrix product from their
vectors gathered once from the index and kept; most, the approximate index searched deeper
and filtered; in between, the index's own filtered search with a FAISS id selector). So a
filter never returns fewer than ``k`` results when ``k`` images match, and query expansion
uses, and returns, allowed images only. An index kind that cannot filter (Milvus) is searched
deeper and its results filtered, then, when that is not enough, the allowed stored vectors are
scanned exactly.

**More like this** (:meth:`Searching.search_like`) searches with an image's stored vector (no
decoding) and leaves the image itself out.

Example:
    >>> col.search("query.jpg", k=5)  # doctest: +SKIP
    >>> col.search("q.jpg", k=5, where={"camera": "canon"})  # doctest: +SKIP
    >>> col.search_vectors(vectors, k=10, space="copy", expand=0)  # doctest: +SKIP
    >>> col.search_like(8817, k=5)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.collection.filters import (
    Selection,
    Selections,
    Where,
    allowed_first,
    conditions,
    search_selected,
)
from lookalike.collection.manifest import COPY_SPACE, IMAGE_SPACE
from lookalike.collection.results import SearchResult
from lookalike.descriptors import blas_on_one_thread, l2n, query_expansion
from lookalike.errors import CollectionError
from lookalike.images import decode
from lookalike.index import VectorIndex
from lookalike.index.base import accepts_allowed
from lookalike.index.exact import exact_search
from lookalike.index.faiss_compat import keep_search_params
from lookalike.index.projected import ProjectedIndex

Query = str | Path | bytes | Image.Image | np.ndarray
#: Results an index that cannot filter is asked for at most, before the allowed stored vectors
#: are scanned instead (Milvus answers at most 16,384).
DEEPEST = 16_384
#: Stored vectors read from the catalogue at once by an exact scan of allowed ids.
SCAN_CHUNK = 8_192


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
        verify: bool | None = None,
        where: Where = None,
    ) -> list[SearchResult]:
        """The ``k`` images most similar to ``query``, best first (score = cosine similarity;
        in the copy space, P(copy): :mod:`lookalike.copies.scoring`).

        ``query`` is a path, the bytes of an image file, a PIL image, or a vector. ``expand``:
        see :meth:`search_vectors`. ``space="copy"`` finds edited copies (see
        :meth:`add_copy_space`), scored by the calibrated copy probability, the cosine kept in
        each hit's ``cosine``; ``verify=True`` checks the hits by keypoint matching and fills
        their ``verified``, ``inliers`` and ``region`` (in the copy space the first few, folded
        into the score, and by default: ``verify=False`` skips it; in others every hit,
        re-ranked, only when asked: ``lookalike.keypoints.rerank``).
        ``where``: only images that match this filter (:mod:`lookalike.collection.filters`),
        e.g. ``{"taken_after": "2021-05-01", "near": (48.85, 2.35, 10), "sku": "A-12"}``.
        """
        self.index(space)  # a missing space fails here, before the model is loaded
        allowed = self.ids_where(where)  # a filter that cannot be read fails before embedding
        if space == COPY_SPACE:
            scoring = _copy_scoring(expand)
            vector = isinstance(query, np.ndarray) and query.ndim == 1  # nothing to match
            checked = verify is not False and not vector
            return scoring.search_copies(self, query, k, verify=checked, where=allowed)
        results = self.search_vectors(
            self.embed([query], space), k, space=space, expand=expand, where=allowed
        )
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
        where: Where = None,
    ) -> list[list[SearchResult]]:
        """:meth:`search` for several queries at once (one batch through the model)."""
        allowed = self.ids_where(where)
        vectors = self.embed(queries, space)
        if space == COPY_SPACE:
            scoring = _copy_scoring(expand)
            return [
                scoring.search_copies(self, q, k, vector=v, where=allowed)
                for q, v in zip(queries, vectors, strict=True)
            ]
        return self.search_vectors(vectors, k, space=space, expand=expand, where=allowed)

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = 10,
        *,
        space: str = IMAGE_SPACE,
        expand: int | None = None,
        where: Where | np.ndarray = None,
        exclude: Sequence[int] = (),
    ) -> list[list[SearchResult]]:
        """Nearest images to each row of ``vectors`` (already in ``space``).

        ``expand`` is the number of first results that α-query expansion adds to the query
        before a second search (the space's default when None; 0 turns it off). Scores are then
        cosine similarities to the expanded query. ``where``: a filter (see :meth:`search`), or
        the allowed ids themselves (a sorted int64 array, :meth:`ids_where`). ``exclude``:
        image ids never returned (:meth:`search_like` leaves the image itself out).
        """
        index = self.index(space)
        allowed = self._selection(where)
        if len(index) == 0 or len(vectors) == 0 or (allowed is not None and len(allowed) == 0):
            return [[] for _ in range(len(vectors))]
        expand = self.spaces()[space].get("expand", 0) if expand is None else expand
        extra = len(exclude)
        keep_search_params()  # pytorch-metric-learning's FAISS patch drops params= (ann kinds)
        with blas_on_one_thread(len(vectors) <= 16):
            scores, ids = self._search_index(index, space, vectors, max(k + extra, expand), allowed)
            if expand:
                scores, ids = self._expanded_search(
                    index, space, vectors, scores, ids, expand, k + extra, allowed
                )
        if extra:
            ids, scores = _without(ids, scores, np.asarray(list(exclude), np.int64))
        return [self._results(i[:k], s[:k]) for i, s in zip(ids, scores, strict=True)]

    def search_like(
        self,
        image_id: int,
        k: int = 10,
        *,
        space: str = IMAGE_SPACE,
        expand: int | None = None,
        where: Where = None,
    ) -> list[SearchResult]:
        """ "More like this": the ``k`` images most similar to a stored image, from its stored
        vector (nothing is decoded), the image itself left out.

        Raises:
            CollectionError: no image ``image_id`` (or no vector of it in ``space``).

        Example:
            >>> col.search_like(8817, k=5, where={"folder": "~/Photos/2024"})  # doctest: +SKIP
        """
        self.index(space)
        try:
            vector = self.catalogue.vectors(space, [int(image_id)])
        except KeyError:
            raise CollectionError(f"no image {image_id} in {self.path}") from None
        if space == COPY_SPACE:
            scoring = _copy_scoring(expand)
            allowed = self.ids_where(where)
            windows = []  # the image's own windows, when the collection describes them
            for space in scoring.region_spaces_of(self):
                with contextlib.suppress(KeyError):  # not described yet (an incomplete space)
                    windows.append(self.catalogue.vectors(space, [int(image_id)]))
            return scoring.search_copies(
                self,
                None,
                k,
                vector=vector,
                windows=np.concatenate(windows) if windows else None,
                where=allowed,
                exclude=[int(image_id)],
            )
        return self.search_vectors(
            vector, k, space=space, expand=expand, where=where, exclude=[int(image_id)]
        )[0]

    def ids_where(self, where: Where | np.ndarray) -> np.ndarray | None:
        """The ids of the images a filter allows, sorted (None: no filter, every image).

        Raises:
            FilterError: a filter that cannot be understood.

        Example:
            >>> col.ids_where({"camera": "canon", "taken_after": "2021"})  # doctest: +SKIP
            array([  3,  17, 254])
        """
        selection = self._selection(where)
        return None if selection is None else selection.ids

    def _selection(self, where: Where | np.ndarray | Selection) -> Selection | None:
        """:meth:`ids_where` with what filtered searches keep of it (:class:`.filters.Selection`:
        the ids, and their vectors once gathered); None: no filter. The same filter again (the
        next query, the next page) while nothing was written gives the selection made last time
        (a JSON key or a LIKE costs a scan of every image), as do the ids it gave.

        Raises:
            FilterError: a filter that cannot be understood.
        """
        if where is None or isinstance(where, Selection):
            return where
        kept = self.__dict__.get("_selections")
        if kept is None:
            kept = self.__dict__.setdefault("_selections", Selections())
        if isinstance(where, np.ndarray):
            return kept.of(where)
        found = conditions(where)
        if not found:
            return None
        stamp_of = getattr(self.catalogue, "change_stamp", None)
        if stamp_of is None:  # a catalogue that cannot tell when it changed: ask it each time
            return Selection(self.catalogue.select_ids(found))
        return kept.select(repr(found), stamp_of(), lambda: self.catalogue.select_ids(found))

    def _search_index(
        self,
        index: VectorIndex,
        space: str,
        queries: np.ndarray,
        k: int,
        allowed: Selection | None,
        projected: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``index.search``, among the ``allowed`` images when given (by the plan their number
        calls for: :func:`.filters.search_selected`). ``projected``: ``index`` and ``queries``
        are in the projected coordinates (the inner index of a PCA)."""
        if allowed is None:
            return index.search(queries, k)
        if accepts_allowed(index):
            return search_selected(index, queries, k, allowed, self.__dict__.get("_selections"))
        return self._filter_unfiltered(index, space, queries, k, allowed.ids, projected)

    def _filter_unfiltered(
        self,
        index: VectorIndex,
        space: str,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray,
        projected: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A filtered search with an index that cannot filter: asked for ``k / selectivity``
        results (twice that, up to :data:`DEEPEST`) and filtered while that finds ``k`` allowed
        ones for every query; else an exact scan of the allowed stored vectors."""
        k = min(k, len(allowed))
        total = max(len(index), 1)
        depth = int(np.ceil(2 * k * total / len(allowed)))
        if depth <= DEEPEST:
            scores, ids = index.search(queries, min(depth, total))
            keep = np.isin(ids, allowed) & (ids >= 0)
            if (keep.sum(axis=1) >= k).all() or depth >= total:
                return allowed_first(scores, ids, keep, k)
        if not projected:
            queries = self.project(queries, space)
        if len(allowed) and self.spaces_missing().get(space):  # e.g. an incomplete copy space
            allowed = np.setdiff1d(allowed, np.asarray(self.ids_missing(space), np.int64))
        best_scores = np.full((len(queries), 0), -np.inf, np.float32)
        best_ids = np.full((len(queries), 0), -1, np.int64)
        for start in range(0, len(allowed), SCAN_CHUNK):
            chunk = allowed[start : start + SCAN_CHUNK]
            stored = self.project(self.catalogue.vectors(space, chunk.tolist()), space)
            scores, rows = exact_search(stored, queries, k)
            best_scores = np.concatenate([best_scores, scores], axis=1)
            best_ids = np.concatenate([best_ids, np.where(rows >= 0, chunk[rows], -1)], axis=1)
            order = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
            best_scores = np.take_along_axis(best_scores, order, 1)
            best_ids = np.take_along_axis(best_ids, order, 1)
        return best_scores, best_ids

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
        allowed: Selection | None = None,
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
        return self._search_index(inner, space, np.stack(expanded), k, allowed, projected=True)

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
                info=r.info,
            )
            for r, s in zip(records, scores[keep], strict=True)
            if r is not None
        ]


def _copy_scoring(expand: int | None):
    """``lookalike.copies.scoring``, which searches the copy space; it compares the query
    itself, so query expansion (which would blur an edited copy) is refused."""
    if expand:
        raise CollectionError("the copy space is searched without query expansion: drop expand")
    return capability("copies.scoring")


def _without(
    ids: np.ndarray, scores: np.ndarray, excluded: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Results with the ``excluded`` ids taken out (the others moved up, -1 at the end)."""
    drop = np.isin(ids, excluded)
    order = np.argsort(drop, axis=1, kind="stable")
    ids = np.where(np.take_along_axis(drop, order, 1), -1, np.take_along_axis(ids, order, 1))
    return ids, np.take_along_axis(scores, order, 1)
