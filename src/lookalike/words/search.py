"""Finding images by the words in them, alone or with an image or a text query.

:func:`search_words` ranks the images whose lines match the query's words
(:mod:`lookalike.words.match`: exact word > OCR-confusion > prefix > partial > fuzzy;
case-insensitive, accents folded). Each result is a :class:`WordsResult`: a ``SearchResult``
whose ``score`` is the ranking score, with the lines that matched (``words``: text,
confidence, box in pixels, how each query word matched) and ``words_score``.

**Combined with an image or a text** (``image=``, ``text=``), one ranking of

    score = weight * words_score + (1 - weight) * similarity

where ``similarity`` is the image's cosine to the image/text query min-max normalised over the
``max(100, 10 k)`` best images of that query (1 for the best, 0 for the last of them and for
images outside them) and ``weight`` is 0.5 by default: an image must show the words *and* look
like the query to come first; either alone puts it halfway. ``similarity`` is reported.

:func:`words_query` is the same for a front end: a collection and a query in, JSON out.

Example:
    >>> search_words(col, "lisboa", k=3)[0].to_dict()  # doctest: +SKIP
    {'path': '/photos/bus.jpg', 'score': 0.9995, 'id': 12, 'words_score': 0.9995,
     'words': [{'text': 'LISBOA 2024 Express', 'confidence': 0.95, 'box': [[21, 41], ...],
                'matched': [{'word': 'lisboa', 'kind': 'exact', 'score': 1.0}]}]}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lookalike.collection.results import SearchResult
from lookalike.errors import CollectionError
from lookalike.words.add import how_to_add, words_store
from lookalike.words.match import Query, score_lines
from lookalike.words.store import WordsStore

if TYPE_CHECKING:
    from lookalike.collection import Collection

__all__ = ["WORDS_WEIGHT", "WordsResult", "rank_images", "search_words", "words_query"]

#: The words' share of the score when a query also has an image or a text.
WORDS_WEIGHT = 0.5
#: Lines fetched from the full-text index per query, before scoring.
CANDIDATES = 5000


@dataclass
class WordsResult(SearchResult):
    """A search hit found by its words: ``words`` (the lines that matched, with how),
    ``words_score`` (0..1), and ``similarity`` when the query also had an image or a text."""

    words: list[dict] = field(default_factory=list)
    words_score: float = 0.0
    similarity: float | None = None

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["words_score"] = round(float(self.words_score), 6)
        if self.similarity is not None:
            out["similarity"] = round(float(self.similarity), 6)
        out["words"] = self.words
        return out


def search_words(
    col: Collection,
    words: str,
    k: int = 10,
    *,
    image: Any = None,
    text: str | Sequence[str] | None = None,
    weight: float = WORDS_WEIGHT,
) -> list[WordsResult]:
    """The ``k`` images whose words best match ``words``, best first; with ``image`` (a path,
    bytes, a PIL image) and/or ``text`` (a description, as ``search --text``), one ranking
    that also weighs how alike they are (see the module's docstring); several texts (each
    ``TEXT`` or ``TEXT:WEIGHT``) make one text query, as ``Collection.search_text``.

    Raises:
        CollectionError: the collection's words were never read (the message says how), or
            the query has no word.
    """
    query = Query.parse(words)
    if not query.words:
        raise CollectionError(f"no word to search for in {words!r}")
    store = words_store(col)
    if store is None:
        raise CollectionError(how_to_add(col.path))
    try:
        scored = rank_images(store, query)
        done = store.done()
    finally:
        store.close()
    similarity: dict[int, float] = {}
    combined = image is not None or text is not None
    if combined:
        similarity = _similarity(col, image, text, max(100, 10 * k))
    ranking = {
        i: (weight * scored.get(i, (0.0,))[0] + (1 - weight) * similarity.get(i, 0.0))
        if combined
        else scored[i][0]
        for i in set(scored) | set(similarity)
    }
    out: list[WordsResult] = []
    for image_id in sorted(ranking, key=lambda i: (-ranking[i], i)):
        if len(out) >= k or ranking[image_id] <= 0:
            break
        record = col.get(image_id)
        if record is None:
            continue  # removed from the collection since its words were read
        if image_id in scored and done.get(image_id) != record.content_hash:
            continue  # changed since: its words are read again by the next add_words
        words_score, lines = scored.get(image_id, (0.0, []))
        out.append(
            WordsResult(
                id=record.id,
                path=record.path,
                score=ranking[image_id],
                paths=record.paths,
                width=record.width,
                height=record.height,
                metadata=record.metadata,
                words=lines,
                words_score=words_score,
                similarity=similarity.get(image_id, 0.0) if combined else None,
            )
        )
    return out


def rank_images(store: WordsStore, query: Query) -> dict[int, tuple[float, list[dict]]]:
    """Every image of ``store`` whose lines match ``query``: id -> (words score, the lines
    that matched, as JSON-able dicts with how each query word matched)."""
    by_image: dict[int, list] = {}
    for line in store.candidates(query.keys, CANDIDATES):
        by_image.setdefault(line.image_id, []).append(line)
    scored: dict[int, tuple[float, list[dict]]] = {}
    for image_id, lines in by_image.items():
        lines.sort(key=lambda ln: (ln.box[0][1], ln.box[0][0]))
        score, matches = score_lines(query, [(ln.text, ln.confidence) for ln in lines])
        if score > 0:
            scored[image_id] = (score, _matched_lines(lines, matches))
    return scored


def _matched_lines(lines: list, matches: list) -> list[dict]:
    out: dict[int, dict] = {}
    for match in matches:
        entry = out.setdefault(match.line, {**lines[match.line].to_dict(), "matched": []})
        entry["matched"].append(
            {"word": match.word, "kind": match.kind, "score": round(match.score, 4)}
        )
    return [out[i] for i in sorted(out)]


def _similarity(col: Collection, image: Any, text, n: int) -> dict[int, float]:
    """The images most like the image/text query, min-max normalised to 0..1."""
    n = max(1, min(n, len(col)))
    if text is not None:
        texts = [text] if isinstance(text, str) else list(text)
        hits = col.search_text(texts, n, images=[image] if image is not None else ())
    else:
        hits = col.search(image, n)
    if not hits:
        return {}
    top, low = hits[0].score, hits[-1].score
    span = top - low
    return {h.id: (h.score - low) / span if span > 0 else 1.0 for h in hits}


def words_query(
    col: Collection,
    words: str,
    k: int = 10,
    *,
    image: Any = None,
    text: str | Sequence[str] | None = None,
    weight: float = WORDS_WEIGHT,
) -> dict:
    """:func:`search_words` as JSON-able data, for a route or a script:
    ``{"query": words, "results": [{"path", "score", "id", "words_score", "words", ...}]}``."""
    hits = search_words(col, words, k, image=image, text=text, weight=weight)
    return {"query": words, "results": [h.to_dict() for h in hits]}
