"""Find pictures by the words in them (issue #21).

The text in every image of a collection is read once by an OCR engine (``ocr.py``: PaddleOCR's
PP-OCRv4 detector and recogniser on ONNX Runtime, from the package ``rapidocr-onnxruntime``)
and kept with its boxes in a full-text index beside the catalogue (``store.py``: SQLite FTS5
with trigrams, or ``pg_trgm`` for a PostgreSQL catalogue). ``search.py`` ranks images by how
well their words match a query (``match.py``), alone or with an image or a text query.

Example:
    >>> from lookalike import Collection
    >>> from lookalike.words import add_words, search_words
    >>> with Collection.open("photos.lookalike") as col:  # doctest: +SKIP
    ...     add_words(col)
    ...     hits = search_words(col, "lisboa", k=5)
    ...     hits[0].words[0]["text"]
    'LISBOA 2024 Express'
"""

from __future__ import annotations

from lookalike.words.add import WordsReport, add_words, has_words, how_to_add, words_info
from lookalike.words.ocr import Line, Reader, ReaderSettings
from lookalike.words.search import WordsResult, search_words, words_query

__all__ = [
    "Line",
    "Reader",
    "ReaderSettings",
    "WordsReport",
    "WordsResult",
    "add_words",
    "has_words",
    "how_to_add",
    "search_words",
    "words_info",
    "words_query",
]
