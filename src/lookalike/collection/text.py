"""Text queries of a collection: ConSE over the stored class probabilities (the default
model), or a CLIP model's own text side.

Example:
    >>> col.search_text("a red bus", k=5)  # doctest: +SKIP
    >>> col.search_text("beach", negative=["people:0.5"])  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from lookalike.collection.filters import Where
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

#: A text term is near the vocabulary when the cosine between it and its closest class name
#: (ConSE's class embeddings) is at least this. Measured on 102 words and phrases: each of the
#: 68 that ImageNet's 1000 classes have a word for scored 0.600 or more ("dinosaurs" 0.600,
#: "astronaut" 0.611, "mountains" 0.637, "bus" 0.763, "seashore" 0.926); of the 34 they have no
#: word for, 27 scored below ("xyzzyplugh" 0.508, "love" 0.530, "people" 0.478, "sunset" 0.584,
#: "europe" 0.588, "" 0.563). "africa" (0.636) and "american" (0.607) meet their classes only as
#: a qualifier ("African crocodile") and are caught by that rule (``_only_as_modifier``);
#: "asia", "china", "japan" and "christmas" pass, mapped to things of theirs (shoji, kimono,
#: Christmas stocking).
NEAR_SIMILARITY = 0.595
#: Classes shown per term by :meth:`TextSearch.understand`.
EXPLAIN_CLASSES = 5


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
        where: Where | np.ndarray = None,
    ) -> list[SearchResult]:
        """Images that match a description, best first (score: cosine in the text space).

        ``texts`` is one text or several (``"text"`` or ``("text", weight)``), combined with
        ``images`` and minus ``negative`` texts. Works offline with the default model.
        ``where``: only images that match this filter (see ``Collection.search``).

        Example:
            >>> col.search_text("a red bus", k=5)  # doctest: +SKIP
            >>> col.search_text("beach", negative=["people"])  # doctest: +SKIP
        """
        if isinstance(texts, str):
            texts = [texts]
        allowed = self.ids_where(where)
        query = self.text_query(texts, negative=negative, images=images)
        if joint_text(self.embedder):
            return self.search_vectors(query, k, expand=0, where=allowed)[0]
        spec = self.spaces().get(TEXT_SPACE)
        if spec is not None and spec.get("version") == self.text_model.version:
            # Stored sparse (format 2: each image's 96 largest class scores), its index ranks
            # as the dense float32 text space does: re-scoring its top 100 exactly from the
            # stored descriptors found no more of the dense top 10, in 1.7 times the time
            # (docs/benchmarks.md, section ``compact``: at 100k images, recall@10 0.983
            # without, 0.980 with; search_text p50 14 ms against 24).
            return self.search_vectors(query, k, space=TEXT_SPACE, where=allowed)[0]
        # An older collection: derive text vectors from the stored descriptors on the fly.
        best_ids, best_scores = [], []
        for ids, vectors in self.catalogue.iter_vectors(IMAGE_SPACE):
            if allowed is not None:
                keep = np.isin(ids, allowed)
                ids, vectors = ids[keep], vectors[keep]
                if len(ids) == 0:
                    continue
            scores = self._text_vectors_of(vectors) @ query[0]
            best_ids.append(ids)
            best_scores.append(scores)
        if not best_ids:
            return []
        ids, scores = np.concatenate(best_ids), np.concatenate(best_scores)
        order = np.argsort(-scores, kind="stable")[:k]
        return self._results(ids[order], scores[order])

    def understand(
        self,
        texts: Sequence[str | tuple[str, float]] = (),
        *,
        negative: Sequence[str | tuple[str, float]] = (),
        n: int = EXPLAIN_CLASSES,
    ) -> list[dict]:
        """What a text query was understood as: for each term (``texts``, then ``negative``),
        ``{"text", "weight", "classes": [{"name", "weight"}], "similarity", "near"}`` and, when
        not near, ``"why"``; negative terms carry ``"negative": true``.

        ``classes`` are the ImageNet classes the term was mapped to with their weights (the
        ConSE expansion, largest first). ``similarity`` is the cosine between the term and its
        nearest class name; the term is ``near`` the vocabulary when it reaches
        :data:`NEAR_SIMILARITY` and does not meet its classes only as a qualifier ("africa" in
        "African crocodile"). A CLIP model maps texts into its own space: its terms carry no
        classes and no ``near``.

        Example:
            >>> col.understand(["bus"])[0]["classes"][0]  # doctest: +SKIP
            {'name': 'school bus', 'weight': 0.463}
        """
        terms = [(*weighted_term(t), False) for t in texts]
        terms += [(*weighted_term(t), True) for t in negative]
        if not terms:
            return []
        if joint_text(self.embedder):
            return [
                {"text": t, "weight": w, **({"negative": True} if neg else {})}
                for t, w, neg in terms
            ]
        model = self.text_model
        words = [t for t, _, _ in terms]
        weights = model.class_weights(words)
        similarity = model.query_embeddings(words) @ model.class_vectors.T
        out = []
        for (text, weight, neg), row, sims in zip(terms, weights, similarity, strict=True):
            order = np.argsort(-row, kind="stable")[:n]
            classes = [
                {"name": model.class_names[i], "weight": round(float(row[i]), 3)}
                for i in order
                if row[i] > 0
            ]
            best = int(np.argmax(sims))
            closest = float(sims[best])
            names = [c["name"] for c in classes[:3]]
            entry: dict = {
                "text": text,
                "weight": weight,
                "classes": classes,
                "similarity": round(closest, 3),
                "near": True,
            }
            if closest < NEAR_SIMILARITY:
                entry["near"] = False
                entry["why"] = (
                    f"nothing in the vocabulary (1000 ImageNet classes) is near: the closest, "
                    f"{model.class_names[best]!r}, is at {closest:.3f} (near: "
                    f"{NEAR_SIMILARITY:.3f} or more)"
                )
            elif _only_as_modifier(text, names):
                entry["near"] = False
                entry["why"] = (
                    f"it only qualifies the classes it matched ({', '.join(names)}); no class "
                    "in the vocabulary (1000 ImageNet classes) is what it names"
                )
            if neg:
                entry["negative"] = True
            out.append(entry)
        return out

    def enable_text(self) -> bool:
        """Add (or refresh) the stored text space from the stored descriptors, so text search
        uses an index; returns whether anything was written. ``add``/``sync`` call it.

        Whether the space is complete is checked over every image once, then over the images
        added since the last check only (image ids only grow): an upload costs its images,
        not the collection's."""
        if not has_text_side(self.embedder):  # CLIP searches text in its own image space
            return False
        spec = text_space_spec(self.text_model)
        current = self.spaces().get(TEXT_SPACE) == spec
        if current:
            checked = getattr(self, "_text_checked", 0)  # images up to it have a text vector
            missing, newest = self.catalogue.ids_missing_after(TEXT_SPACE, checked)
            if not missing:
                self._text_checked = newest
                return False
        with self._lock:
            self.catalogue.set_encoding(TEXT_SPACE, spec["encoding"])
            for ids, vectors in self.catalogue.iter_vectors(IMAGE_SPACE):
                self.catalogue.put_vectors(TEXT_SPACE, ids.tolist(), self._text_vectors_of(vectors))
            self.manifest["spaces"][TEXT_SPACE] = spec
            write_json(self.path / "manifest.json", self.manifest)
            self._indexes.pop(TEXT_SPACE, None)
            # every image with a descriptor has its text vector now (one without is for
            # ``complete_spaces``); a new space is checked whole once more next time
            self._text_checked = newest if current else 0
        return True


def weighted_term(term: str | tuple[str, float]) -> tuple[str, float]:
    """``"beach"`` -> ("beach", 1.0); ``("beach", 2)`` and ``"beach:2"`` -> ("beach", 2.0).

    Parsed strictly: what follows the last ``:`` must be a weight (a number above 0), never
    part of the text, and the text must not be empty.

    Raises:
        ValueError: an empty text, or a weight that is not a number above 0.

    Example:
        >>> weighted_term("beach:0.5")
        ('beach', 0.5)
        >>> weighted_term("horse:abc")
        Traceback (most recent call last):
        ...
        ValueError: 'horse:abc': the weight after ':' must be a number above 0, e.g. horse:0.5
    """
    if isinstance(term, tuple):
        text, weight = str(term[0]), float(term[1])
        shown = f"{text}:{term[1]}"
    else:
        shown = term
        text, colon, given = term.rpartition(":")
        if not colon:
            text, given = term, "1"
        try:
            weight = float(given)
        except ValueError:
            raise ValueError(
                f"{term!r}: the weight after ':' must be a number above 0, "
                f"e.g. {text.strip() or 'beach'}:0.5"
            ) from None
    if not text.strip():
        raise ValueError(f"{shown!r}: the text is empty; describe what to find, e.g. 'a red bus'")
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(
            f"{shown!r}: the weight must be a number above 0 (steer away from a text with "
            "--not / negative=)"
        )
    return text.strip(), weight


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", text.lower()) if w not in _STOP_WORDS]


def _same_word(a: str, b: str) -> bool:
    """Two words with one stem ("africa", "african"; "bus", "buses")."""
    n = max(4, min(len(a), len(b)) - 1)
    return len(a) >= 3 and len(b) >= 3 and a[:n] == b[:n]


def _only_as_modifier(text: str, names: Sequence[str]) -> bool:
    """Whether ``text`` meets each class name only in a word that qualifies its head noun
    ("africa" in "African crocodile", "water" in "water tower"): the classes are then not what
    the text means."""
    words = _words(text)
    if not words or not names:
        return False
    for name in names:
        parts = re.findall(r"[a-z]+", name.lower())
        if any(_same_word(w, p) for w in words for p in parts[-1:]):
            return False
        if not any(_same_word(w, p) for w in words for p in parts[:-1]):
            return False
    return True


_STOP_WORDS = frozenset({"a", "an", "the", "of", "at", "in", "on", "with", "and", "or", "to"})
