"""How a word query matches the lines read in an image: text folding and the scores.

Text is compared **folded**: Unicode NFKD with accents removed, case-folded, every run of
characters that are not letters or digits made one space (``"Café-Bar"`` -> ``"cafe bar"``).
The full-text index holds a further **key**: the folded text with the characters OCR confuses
made one (``0``->``o``, ``1``/``i``/``|``->``l``, ``5``->``s``), so "LISB0A" is found by "lisboa".

Each word of the query gets the best of these over the image's lines (``Match.kind``):

======== ====================================================== ===============
kind     the query word ...                                     score
======== ====================================================== ===============
exact    equals a word of the line                              1.0
ocr      equals a word once OCR confusions are made one         0.9
prefix   starts a word ("lisb" in "lisboa")                     0.70 .. 0.85
partial  is inside a word or runs across words ("texthere")     0.60 .. 0.75
fuzzy    is close to a word (edit distance, >= 4 letters)       <= 0.55
======== ====================================================== ===============

prefix and partial grow with the share of the word covered (``0.70 + 0.15 * len(q)/len(w)``);
fuzzy is ``0.55 * (1 - edits / longest)`` when that similarity is at least 0.6. An image's
*words score* is the mean over the query's words (an image showing every word beats one
showing some), plus 0.05 when the whole query appears as a phrase in one line, times
``0.95 + 0.05 * confidence`` of the lines matched (the recogniser's certainty breaks ties);
at most 1.

Example:
    >>> fold("Café-Bar ÉTÉ")
    'cafe bar ete'
    >>> key("LISB0A 2024")
    'llsboa 2o24'
    >>> best_match("lisboa", ["lisb0a", "2024"]).kind
    'ocr'
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Match", "Query", "best_match", "fold", "key", "score_lines", "trigrams", "words_of"]

_NOT_WORD = re.compile(r"[^\w]+|_+")
# Where OCR that ran words together still shows a seam: a lower-case letter then a capital,
# a letter then a digit, a digit then a letter ("LISBOA2024Express" -> LISBOA, 2024, Express).
_SEAM = re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])|(?<=[a-z\u00df-\u00ff])(?=[A-Z])")
_MISREAD = re.compile(r"(?<=[^\W\d_])[015|](?=[^\W\d_])")
_CONFUSABLE = str.maketrans({"0": "o", "1": "l", "i": "l", "|": "l", "5": "s"})

#: Scores of the kinds of match (see the table above).
EXACT, OCR, PREFIX, PARTIAL, FUZZY = 1.0, 0.9, 0.70, 0.60, 0.55
#: The least edit similarity that counts as a fuzzy match, and the shortest word it applies to.
FUZZY_MIN, FUZZY_LETTERS = 0.6, 4
PHRASE_BONUS = 0.05


def fold(text: str) -> str:
    """Accents removed, case-folded, non-word runs made one space, trimmed."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return _NOT_WORD.sub(" ", bare).strip()


def key(text: str) -> str:
    """The folded text with OCR's usual confusions made one: what the full-text index holds."""
    return fold(text).translate(_CONFUSABLE)


def words_of(text: str) -> list[str]:
    """The folded words of a recognised line, with the parts of words OCR ran together.

    Example:
        >>> words_of("LISB0A2024Express Café")
        ['lisb0a2024express', 'cafe', 'lisb0a', '2024', 'express']
    """
    words = fold(text).split()
    parts = [fold(p) for chunk in text.split() for p in _seams(chunk)]
    return words + [p for p in dict.fromkeys(parts) if p and p not in words]


def _seams(chunk: str) -> list[str]:
    # A 0, 1, 5 or | between letters is a misread letter, not a seam ("LISB0A"): found on a
    # shadow copy with those made letters, cut in the original (same positions).
    shadow = _MISREAD.sub("\u00aa", chunk)  # a letter of neither case
    cuts = [0, *(m.start() for m in _SEAM.finditer(shadow)), len(chunk)]
    return [chunk[a:b] for a, b in itertools.pairwise(cuts) if b > a]


def trigrams(word: str) -> set[str]:
    """The character trigrams of a word (the word itself when it is shorter)."""
    if len(word) < 3:
        return {word} if word else set()
    return {word[i : i + 3] for i in range(len(word) - 2)}


@dataclass(frozen=True)
class Match:
    """The best match of one query word in an image: kind, score, the line's index."""

    word: str
    kind: str
    score: float
    line: int = -1


@dataclass(frozen=True)
class Query:
    """A words query: its folded text and its distinct words."""

    text: str
    words: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Query:
        folded = fold(text)
        return cls(folded, tuple(dict.fromkeys(folded.split())))

    @property
    def keys(self) -> tuple[str, ...]:
        """The query's words as index keys (OCR confusions made one)."""
        return tuple(dict.fromkeys(w.translate(_CONFUSABLE) for w in self.words))


def _edits(a: str, b: str) -> int:
    """Levenshtein distance."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def best_match(word: str, line_words: Sequence[str], joined: str = "") -> Match:
    """How well the folded query ``word`` matches a line given as its folded words
    (``joined``: the line's folded text without spaces, for words OCR ran together)."""
    best = Match(word, "", 0.0)
    word_key = word.translate(_CONFUSABLE)
    for other in line_words:
        if other == word:
            return Match(word, "exact", EXACT)
        other_key = other.translate(_CONFUSABLE)
        share = len(word) / max(len(other), 1)
        if other_key == word_key:
            found = Match(word, "ocr", OCR)
        elif other.startswith(word) or (len(word) >= 3 and other_key.startswith(word_key)):
            found = Match(word, "prefix", PREFIX + 0.15 * share)
        elif len(word) >= 3 and (word in other or word_key in other_key):
            found = Match(word, "partial", PARTIAL + 0.15 * share)
        elif len(word) >= FUZZY_LETTERS and abs(len(other) - len(word)) <= len(word) // 2:
            similarity = 1 - _edits(word_key, other_key) / max(len(word_key), len(other_key))
            found = Match(word, "fuzzy", FUZZY * similarity if similarity >= FUZZY_MIN else 0.0)
        else:
            continue
        if found.score > best.score:
            best = found
    if best.score < PARTIAL and len(word) >= 3 and joined:
        joined_key = joined.translate(_CONFUSABLE)
        if word in joined or word_key in joined_key:
            best = Match(word, "partial", PARTIAL + 0.15 * len(word) / max(len(joined), 1))
    return best


def score_lines(query: Query, lines: Iterable[tuple[str, float]]) -> tuple[float, list[Match]]:
    """An image's words score for ``query`` and the best match of each query word; ``lines``
    are the image's (text, confidence). Matches name their line by index."""
    lines = list(lines)
    folded = [fold(text) for text, _ in lines]
    split = [words_of(text) for text, _ in lines]
    joined = [f.replace(" ", "") for f in folded]
    matches = []
    for word in query.words:
        best = Match(word, "", 0.0)
        for i, words in enumerate(split):
            found = best_match(word, words, joined[i])
            if found.score > best.score:
                best = Match(word, found.kind, found.score, i)
            if best.score >= EXACT:
                break
        matches.append(best)
    if not query.words:
        return 0.0, []
    score = sum(m.score for m in matches) / len(query.words)
    if score <= 0:
        return 0.0, []
    if len(query.words) > 1 and any(query.text in f for f in folded):
        score += PHRASE_BONUS
    used = {m.line for m in matches if m.score > 0}
    confidence = sum(lines[i][1] for i in used) / max(len(used), 1)
    return min(1.0, score * (0.95 + 0.05 * confidence)), [m for m in matches if m.score > 0]
