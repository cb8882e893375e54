"""Text queries of a collection: ConSE over the stored class probabilities (the default
model), or a CLIP model's own text side.

Example:
    >>> col.search_text("a red bus", k=5)  # doctest: +SKIP
    >>> col.search_text("beach", negative=["people:0.5"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lookalike.collection.manifest import (
    IMAGE_SPACE,
    TEXT_SPACE,
    has_text_side,
    joint_text,
    text_space_spec,
)
from lookalike.collection.results import SearchResult
from lookalike.collection.search import Query
from lookalike.descriptors import l2n
from lookalike.errors import CollectionError
from lookalike.fileio import write_json


class TextSearch:
    """The text side of :class:`~lookalike.collection.core.Collection` (a mixin: it uses the
    collection's model, catalogue and search)."""

    # -- text search -----------------------------------------------------------------------
    def has_text(self) -> bool:
        """Whether text queries work: a model with a text side (CLIP) or descriptors that
        carry class probabilities (the default)."""
        return joint_text(self.embedder) or has_text_side(self.embedder)

    @property
    def text_model(self):
        """The offline text model (ConSE over ImageNet classes), loaded on first use."""
        if not has_text_side(self.embedder):
            raise CollectionError(
                f"{self.path} was built with {self.model_name!r}, which has no text side: "
                "text search needs a model whose descriptor carries class probabilities "
                "(the default efficientnet-lite0) or a CLIP model"
            )
        if self._text_model is None:
            from lookalike.models.text import ConSE

            self._text_model = ConSE()
        return self._text_model

    def _text_vectors_of(self, image_vectors: np.ndarray) -> np.ndarray:
        """Text-space vectors of images, from their stored descriptors (no decoding)."""
        probs = self.embedder.class_probabilities(image_vectors)
        return self.text_model.image_vectors(np.log(np.clip(probs, 1e-30, None)))

    def text_query(
        self,
        texts: Sequence[str | tuple[str, float]] = (),
        *,
        negative: Sequence[str | tuple[str, float]] = (),
        images: Sequence[Query] = (),
        image_weight: float = 1.0,
    ) -> np.ndarray:
        """One query vector in the text space: texts (and images) added, ``negative`` texts
        subtracted, each with an optional weight, as rclip combines queries.

        Example:
            >>> col.text_query([("beach", 1.0)], negative=[("people", 0.5)])  # doctest: +SKIP
        """
        terms = [weighted_term(t) for t in texts]
        minus = [weighted_term(t) for t in negative]
        if not terms and not images:
            raise CollectionError("a text query needs at least one text or image")
        joint = joint_text(self.embedder)  # CLIP: text and images share the image space
        model = self.embedder if joint else self.text_model
        query = np.zeros(self.dim if joint else model.dim, np.float32)
        if terms or minus:
            vectors = model.embed_text([t for t, _ in terms + minus])
            weights = [w for _, w in terms] + [-w for _, w in minus]
            query += np.asarray(weights, np.float32) @ vectors
        if images:
            seen = self.embed(list(images))
            query += image_weight * (seen if joint else self._text_vectors_of(seen)).sum(axis=0)
        return l2n(query[None])

    def search_text(
        self,
        texts: Sequence[str | tuple[str, float]] | str,
        k: int = 10,
        *,
        negative: Sequence[str | tuple[str, float]] = (),
        images: Sequence[Query] = (),
    ) -> list[SearchResult]:
        """Images that match a description, best first (score: cosine in the text space).

        ``texts`` is one text or several (``"text"`` or ``("text", weight)``), combined with
        ``images`` and minus ``negative`` texts. Works offline with the default model.

        Example:
            >>> col.search_text("a red bus", k=5)  # doctest: +SKIP
            >>> col.search_text("beach", negative=["people"])  # doctest: +SKIP
        """
        if isinstance(texts, str):
            texts = [texts]
        query = self.text_query(texts, negative=negative, images=images)
        if joint_text(self.embedder):
            return self.search_vectors(query, k, expand=0)[0]
        spec = self.spaces().get(TEXT_SPACE)
        if spec is not None and spec.get("version") == self.text_model.version:
            return self.search_vectors(query, k, space=TEXT_SPACE)[0]
        # An older collection: derive text vectors from the stored descriptors on the fly.
        best_ids, best_scores = [], []
        for ids, vectors in self.catalogue.iter_vectors(IMAGE_SPACE):
            scores = self._text_vectors_of(vectors) @ query[0]
            best_ids.append(ids)
            best_scores.append(scores)
        if not best_ids:
            return []
        ids, scores = np.concatenate(best_ids), np.concatenate(best_scores)
        order = np.argsort(-scores, kind="stable")[:k]
        return self._results(ids[order], scores[order])

    def enable_text(self) -> bool:
        """Add (or refresh) the stored text space from the stored descriptors, so text search
        uses an index; returns whether anything was written. ``add``/``sync`` call it."""
        if not has_text_side(self.embedder):  # CLIP searches text in its own image space
            return False
        spec = text_space_spec(self.text_model)
        if self.spaces().get(TEXT_SPACE) == spec and not self.catalogue.ids_missing(TEXT_SPACE):
            return False
        with self._lock:
            for ids, vectors in self.catalogue.iter_vectors(IMAGE_SPACE):
                self.catalogue.put_vectors(TEXT_SPACE, ids.tolist(), self._text_vectors_of(vectors))
            self.manifest["spaces"][TEXT_SPACE] = spec
            write_json(self.path / "manifest.json", self.manifest)
            self._indexes.pop(TEXT_SPACE, None)
        return True


def weighted_term(term: str | tuple[str, float]) -> tuple[str, float]:
    """``"beach"`` -> ("beach", 1.0); ``("beach", 2)`` and ``"beach:2"`` -> ("beach", 2.0)."""
    if isinstance(term, tuple):
        return term[0], float(term[1])
    text, _, weight = term.rpartition(":")
    try:
        return (text, float(weight)) if text else (term, 1.0)
    except ValueError:
        return term, 1.0
