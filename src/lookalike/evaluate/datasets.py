"""Evaluation sets on disk: which images are queries, which are the gallery, which ones match.

Four layouts are understood, and :func:`detect_layout` tells them apart:

``folders``
    One sub-folder per class (``root/<class>/<image>``, nested folders allowed inside a class).
    Every image is a query and part of the gallery; a query's own image is excluded from its
    results. Corel-1k, Tiny ImageNet, Caltech-101... look like this.
``query-gallery``
    ``root/query/`` and ``root/gallery/``; an image's identity is its file-name prefix before the
    first ``_`` (``<identity>_<image>.jpg``), as in re-identification sets such as Market-1501.
``ukbench``
    One flat folder of numbered images in groups of four views: the object is the number // 4
    (``ukbench00012.jpg`` is object 3).
``pairs``
    A CSV of ground-truth pairs ``query,reference`` (the header line is optional; an empty
    reference marks a query with no copy), paths relative to the CSV's folder, as in copy
    detection (DISC21). The gallery is every image of the ``references/`` (or ``reference/``)
    folder beside the CSV when there is one, distractors included, else the references the CSV
    names.

Only image files count (see :data:`lookalike.images.IMAGE_SUFFIXES`); hidden files are skipped.

Example:
    >>> from lookalike.evaluate.datasets import load_eval_set  # doctest: +SKIP
    >>> ev = load_eval_set("datasets/corel1k")  # doctest: +SKIP
    >>> ev.layout, len(ev.paths), ev.relevance().shape  # doctest: +SKIP
    ('folders', 1000, (1000, 1000))
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from lookalike.errors import DatasetError
from lookalike.images import is_image_path

__all__ = [
    "LAYOUTS",
    "DatasetError",
    "EvalSet",
    "WordsSet",
    "detect_layout",
    "load_eval_set",
    "load_folders",
    "load_pairs",
    "load_query_gallery",
    "load_ukbench",
    "load_words",
]

LAYOUTS: tuple[str, ...] = ("folders", "query-gallery", "ukbench", "pairs")

ACCEPTED = """Accepted evaluation layouts:
  folders        one sub-folder per class: root/<class>/<image>; each image queries all others
  query-gallery  root/query/ and root/gallery/; identity = file-name prefix before the first '_'
                 (<identity>_<image>.jpg)
  ukbench        one flat folder of numbered images in groups of four views:
                 ukbench00012.jpg is object 12 // 4 = 3
  pairs          a CSV of ground-truth pairs 'query,reference' (empty reference = no copy), paths
                 relative to the CSV; the gallery is the 'references/' folder beside it if any"""

_NUMBERED = re.compile(r"^(\D*)(\d+)$")  # "ukbench00012" -> ("ukbench", "00012")
_REFERENCE_DIRS = ("references", "reference")


@dataclass(frozen=True, eq=False)
class EvalSet:
    """The images of an evaluation set and what counts as a correct result.

    Attributes:
        layout: one of :data:`LAYOUTS`.
        root: the folder (or CSV file) the set was loaded from.
        paths: every image, each once.
        labels: identity of each image (class, person, object number). For ``pairs`` it is the
            image's path relative to the CSV folder for references, and for a query the first
            reference it copies ("" for a query with no copy); :attr:`pairs` is the ground truth.
        is_query: which images are queries.
        is_gallery: which images are searched. An image can be both (``folders``, ``ukbench``).
        pairs: for ``pairs``, the ground-truth ``(query, reference)`` pairs as indices into
            :attr:`paths`; empty for the other layouts.
    """

    layout: str
    root: Path
    paths: tuple[Path, ...]
    labels: tuple[str, ...]
    is_query: NDArray[np.bool_]
    is_gallery: NDArray[np.bool_]
    pairs: tuple[tuple[int, int], ...] = field(default=())

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def queries(self) -> NDArray[np.intp]:
        """Indices into :attr:`paths` of the queries, in order."""
        return np.flatnonzero(self.is_query)

    @property
    def gallery(self) -> NDArray[np.intp]:
        """Indices into :attr:`paths` of the gallery images, in order."""
        return np.flatnonzero(self.is_gallery)

    def relevance(self) -> NDArray[np.bool_]:
        """``(n_queries, n_gallery)``: True where the gallery image is a correct answer.

        Same label, or for ``pairs`` a ground-truth pair. A query is never relevant to itself
        (use :meth:`exclude` to drop it from its own results).
        """
        q, g = self.queries, self.gallery
        if self.layout == "pairs":
            rel = np.zeros((len(q), len(g)), dtype=bool)
            q_pos = {int(i): r for r, i in enumerate(q)}
            g_pos = {int(i): c for c, i in enumerate(g)}
            for qi, gi in self.pairs:
                rel[q_pos[qi], g_pos[gi]] = True
        else:
            labels = np.asarray(self.labels, dtype=object)
            rel = labels[q][:, None] == labels[g][None, :]
        return rel & ~self.exclude()

    def exclude(self) -> NDArray[np.bool_]:
        """``(n_queries, n_gallery)``: True where the gallery image is the query itself."""
        return self.queries[:, None] == self.gallery[None, :]


# --------------------------------------------------------------------------------------------
# Listing files
# --------------------------------------------------------------------------------------------


def _is_hidden(path: Path, root: Path) -> bool:
    # .DS_Store, AppleDouble "._x.jpg" and anything under a hidden folder are not data.
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _images(folder: Path, *, recursive: bool) -> list[Path]:
    """Image files of ``folder``, sorted, hidden ones skipped."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in found if p.is_file() and is_image_path(p) and not _is_hidden(p, folder)
    )


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and is_image_path(p) for p in folder.rglob("*"))


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _fail(message: str) -> DatasetError:
    return DatasetError(f"{message}\n{ACCEPTED}")


def _examples(names: Iterable[object], limit: int = 5) -> str:
    items = [str(n) for n in names]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _both(n: int) -> NDArray[np.bool_]:
    return np.ones(n, dtype=bool)


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def load_folders(root: str | Path) -> EvalSet:
    """One sub-folder per class; every image queries all the others.

    Example:
        >>> ev = load_folders("corel1k")  # doctest: +SKIP
        >>> ev.labels[0], bool(ev.is_query.all() and ev.is_gallery.all())  # doctest: +SKIP
        ('africa', True)
    """
    root = Path(root)
    loose = _images(root, recursive=False)
    if loose:
        raise _fail(
            f"{root}: {len(loose)} images lie directly in the folder "
            f"({_examples(p.name for p in loose)}); the folder-per-class layout needs every image "
            "inside a class folder."
        )
    paths: list[Path] = []
    labels: list[str] = []
    for folder in _subfolders(root):
        images = _images(folder, recursive=True)
        paths += images
        labels += [folder.name] * len(images)
    if len(set(labels)) < 2:
        raise _fail(
            f"{root}: found {len(set(labels))} class folder(s) with images; need 2 or more."
        )
    return EvalSet(
        "folders", root, tuple(paths), tuple(labels), _both(len(paths)), _both(len(paths))
    )


def _identity(path: Path) -> str:
    identity, sep, _ = path.name.partition("_")
    if not sep or not identity:
        raise _fail(
            f"{path}: no identity prefix; query-gallery file names must read <identity>_<image>"
        )
    return identity


def load_query_gallery(root: str | Path) -> EvalSet:
    """``root/query/`` and ``root/gallery/``; identity = file-name prefix before the first ``_``.

    Example:
        >>> ev = load_query_gallery("market")  # doctest: +SKIP
        >>> ev.labels[ev.queries[0]]  # from query/0002_c1s1_000451.jpg  # doctest: +SKIP
        '0002'
    """
    root = Path(root)
    query = _images(root / "query", recursive=True)
    gallery = _images(root / "gallery", recursive=True)
    if not query or not gallery:
        empty = "query" if not query else "gallery"
        raise _fail(f"{root}: no images in {empty}/.")
    paths = query + gallery
    is_query = np.arange(len(paths)) < len(query)
    labels = tuple(_identity(p) for p in paths)
    return EvalSet("query-gallery", root, tuple(paths), labels, is_query, ~is_query)


def _ukbench_object(path: Path) -> int | None:
    match = _NUMBERED.match(path.stem)
    return int(match.group(2)) // 4 if match else None


def load_ukbench(root: str | Path) -> EvalSet:
    """A flat folder of numbered images in groups of four views; object = number // 4.

    Example:
        >>> ev = load_ukbench("ukbench-sample")  # doctest: +SKIP
        >>> ev.paths[12].name, ev.labels[12]  # doctest: +SKIP
        ('ukbench00012.jpg', '3')
    """
    root = Path(root)
    paths = _images(root, recursive=False)
    if not paths:
        raise _fail(f"{root}: no images directly in the folder.")
    unnumbered = [p.name for p in paths if _ukbench_object(p) is None]
    if unnumbered:
        raise _fail(f"{root}: images without a number in their name: {_examples(unnumbered)}.")
    objects = [_ukbench_object(p) for p in paths]
    incomplete = sorted(obj for obj, n in Counter(objects).items() if n != 4)
    if incomplete:
        raise _fail(
            f"{root}: UKBench objects come in four views (numbers 4k..4k+3); objects "
            f"{_examples(incomplete)} do not have exactly four images."
        )
    order = sorted(range(len(paths)), key=lambda i: (objects[i], paths[i].name))
    paths = [paths[i] for i in order]
    labels = tuple(str(objects[i]) for i in order)
    return EvalSet("ukbench", root, tuple(paths), labels, _both(len(paths)), _both(len(paths)))


def _read_pairs(csv_path: Path) -> list[tuple[str, str]]:
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        rows = [[c.strip() for c in row] for row in csv.reader(f)]
    rows = [r for r in rows if any(r)]  # blank lines
    if rows and [c.lower() for c in rows[0]] == ["query", "reference"]:
        rows = rows[1:]
    pairs = []
    for number, row in enumerate(rows, start=1):
        if len(row) > 2 or not row[0]:
            raise _fail(f"{csv_path}: row {number} {row!r} is not 'query,reference'.")
        pairs.append((row[0], row[1] if len(row) == 2 else ""))
    if not pairs:
        raise _fail(f"{csv_path}: no pairs.")
    return pairs


def _find_reference_dir(csv_path: Path) -> Path | None:
    for name in _REFERENCE_DIRS:
        if (csv_path.parent / name).is_dir():
            return csv_path.parent / name
    return None


def load_pairs(csv_path: str | Path, references: str | Path | None = None) -> EvalSet:
    """A CSV of ground-truth ``query,reference`` pairs for copy detection.

    Args:
        csv_path: the CSV. Paths in it are relative to its folder (absolute ones are kept). A
            query may appear on several rows (several references); an empty reference marks a
            negative query (no copy in the gallery).
        references: folder whose images (recursively) form the gallery, distractors included.
            Default: ``references/`` or ``reference/`` beside the CSV if present, else only the
            references the CSV names.

    Example:
        >>> ev = load_pairs("disc/ground_truth.csv")  # doctest: +SKIP
        >>> len(ev.pairs), int(ev.is_query.sum())  # doctest: +SKIP
        (2, 3)
    """
    csv_path = Path(csv_path)
    base = csv_path.parent
    rows = _read_pairs(csv_path)
    named = [base / p for row in rows for p in row if p]
    missing = [str(p) for p in dict.fromkeys(named) if not p.is_file()]
    if missing:
        raise _fail(f"{csv_path}: files named in the CSV do not exist: {_examples(missing)}.")
    not_images = [str(p) for p in dict.fromkeys(named) if not is_image_path(p)]
    if not_images:
        raise _fail(f"{csv_path}: not image files: {_examples(not_images)}.")

    ref_dir = Path(references) if references is not None else _find_reference_dir(csv_path)
    gallery = _images(ref_dir, recursive=True) if ref_dir is not None else []
    gallery += [base / r for _, r in rows if r]  # named references outside ref_dir too
    queries = [base / q for q, _ in rows]

    index: dict[Path, int] = {}  # one entry per file, however it is spelled
    paths: list[Path] = []
    for p in queries + gallery:
        key = p.resolve()
        if key not in index:
            index[key] = len(paths)
            paths.append(p)
    is_query = np.zeros(len(paths), dtype=bool)
    is_query[[index[q.resolve()] for q in queries]] = True
    is_gallery = np.zeros(len(paths), dtype=bool)
    is_gallery[[index[g.resolve()] for g in gallery]] = True
    pairs = tuple(
        dict.fromkeys(
            (index[(base / q).resolve()], index[(base / r).resolve()]) for q, r in rows if r
        )
    )

    first_reference: dict[int, int] = {}
    for qi, gi in pairs:
        first_reference.setdefault(qi, gi)
    labels = [
        _relative(paths[first_reference[i]], base)
        if i in first_reference
        else (_relative(p, base) if is_gallery[i] else "")
        for i, p in enumerate(paths)
    ]
    return EvalSet("pairs", csv_path, tuple(paths), tuple(labels), is_query, is_gallery, pairs)


# --------------------------------------------------------------------------------------------
# Words in the pictures (``lookalike eval --task words``)
# --------------------------------------------------------------------------------------------

#: The ground truth of a words set, in its folder (or given as the CSV itself).
WORDS_CSV = "words.csv"


@dataclass(frozen=True, eq=False)
class WordsSet:
    """The images of a words evaluation set and the words each one shows.

    Attributes:
        root: the CSV of the ground truth.
        paths: every image: those of the CSV's folder (recursively) and those the CSV names.
        words: for each image, the words it shows, folded as search folds them (case, accents
            and punctuation dropped); empty for an image without text.
    """

    root: Path
    paths: tuple[Path, ...]
    words: tuple[frozenset[str], ...]

    def __len__(self) -> int:
        return len(self.paths)

    def queries(self) -> dict[str, list[int]]:
        """Each distinct word (sorted) -> the indices of the images that show it."""
        out: dict[str, list[int]] = {}
        for i, shown in enumerate(self.words):
            for word in shown:
                out.setdefault(word, []).append(i)
        return dict(sorted(out.items()))


def load_words(path: str | Path) -> WordsSet:
    """A words evaluation set: a CSV ``path,words`` (a folder holding ``words.csv``, or the CSV
    itself). Each row names an image (relative to the CSV's folder) and the words written in it,
    separated by spaces; an image may have several rows. Every image of the CSV's folder the CSV
    does not name shows no text (a distractor). Each distinct word is a query whose correct
    answers are the images that show it.

    Example (``signs/words.csv`` holds the row ``bus.jpg,Lisboa 2024``):
        >>> ws = load_words("signs/")  # doctest: +SKIP
        >>> ws.queries()["lisboa"]  # doctest: +SKIP
        [0]

    Raises:
        DatasetError: no such CSV, a row that is not ``path,words``, an image it names is
            missing, or no word at all.
    """
    from lookalike.words.match import fold

    csv_path = Path(path)
    if csv_path.is_dir():
        csv_path = csv_path / WORDS_CSV
    if not csv_path.is_file():
        raise DatasetError(
            f"{path}: no {WORDS_CSV}; a words set is a CSV 'path,words' (the words each image "
            "shows, separated by spaces; paths relative to the CSV) beside its images"
        )
    base = csv_path.parent
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        rows = [[c.strip() for c in row] for row in csv.reader(f)]
    rows = [r for r in rows if any(r)]
    if rows and [c.lower() for c in rows[0][:2]] == ["path", "words"]:
        rows = rows[1:]
    shown: dict[Path, set[str]] = {}
    for number, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0]:
            raise DatasetError(f"{csv_path}: row {number} {row!r} is not 'path,words'")
        image = (base / row[0]).resolve()
        if not image.is_file():
            raise DatasetError(f"{csv_path}: row {number}: {row[0]} does not exist")
        shown.setdefault(image, set()).update(fold(" ".join(row[1:])).split())
    if not any(shown.values()):
        raise DatasetError(f"{csv_path}: no word in its 'path,words' rows")
    paths = sorted(set(shown) | {p.resolve() for p in _images(base, recursive=True)})
    return WordsSet(csv_path, tuple(paths), tuple(frozenset(shown.get(p, ())) for p in paths))


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------


def _pairs_csvs(folder: Path) -> list[Path]:
    """CSV files in ``folder`` whose first line is the ``query,reference`` header."""
    found = []
    for p in sorted(folder.glob("*.csv")):
        try:
            with p.open(newline="", encoding="utf-8-sig") as f:
                first = next(csv.reader(f), [])
        except (OSError, UnicodeDecodeError, csv.Error):
            continue  # unreadable: not ours to judge, just not a pairs file
        if [c.strip().lower() for c in first] == ["query", "reference"]:
            found.append(p)
    return found


def detect_layout(path: str | Path) -> str:
    """Which of :data:`LAYOUTS` the folder (or CSV file) at ``path`` follows.

    Checked in this order: a ``.csv`` file, or a folder holding one CSV with a
    ``query,reference`` header -> ``pairs``; ``query/`` and ``gallery/`` folders ->
    ``query-gallery``; class sub-folders with images and no loose images -> ``folders``; loose
    numbered images in complete groups of four -> ``ukbench``.

    Raises:
        DatasetError: nothing fits; the message lists the accepted layouts.

    Example:
        >>> detect_layout("ukbench-sample")  # doctest: +SKIP
        'ukbench'
    """
    path = Path(path)
    if not path.exists():
        raise _fail(f"{path} does not exist.")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "pairs"
        raise _fail(f"{path} is a file but not a CSV of pairs.")
    csvs = _pairs_csvs(path)
    if len(csvs) == 1:
        return "pairs"
    if len(csvs) > 1:
        raise _fail(f"{path}: several pair CSVs ({_examples(p.name for p in csvs)}); pick one.")
    if (path / "query").is_dir() and (path / "gallery").is_dir():
        return "query-gallery"
    loose = _images(path, recursive=False)
    classes = [f for f in _subfolders(path) if _has_images(f)]
    if classes and not loose:
        if len(classes) >= 2:
            return "folders"
        raise _fail(f"{path}: only one class folder ({classes[0].name}); need two or more.")
    if loose and not classes:
        objects = [_ukbench_object(p) for p in loose]
        counts = Counter(objects)
        if None not in counts and all(n == 4 for n in counts.values()):
            return "ukbench"
        raise _fail(
            f"{path}: {len(loose)} images in one flat folder, but not numbered in complete "
            "groups of four (UKBench), so it is not known which images match."
        )
    if loose and classes:
        raise _fail(
            f"{path}: both loose images ({_examples(p.name for p in loose)}) and class folders "
            f"({_examples(f.name for f in classes)})."
        )
    raise _fail(f"{path}: no images found.")


def load_eval_set(
    path: str | Path, layout: str | None = None, *, references: str | Path | None = None
) -> EvalSet:
    """Load the evaluation set at ``path``, detecting its layout unless ``layout`` is given.

    ``references`` is passed to :func:`load_pairs` (the copy-detection gallery folder).

    Example:
        >>> ev = load_eval_set("ukbench-sample")  # doctest: +SKIP
        >>> ev.layout  # doctest: +SKIP
        'ukbench'
    """
    path = Path(path)
    layout = layout or detect_layout(path)
    if layout == "pairs":
        if path.is_dir():
            csvs = _pairs_csvs(path)
            if len(csvs) != 1:
                raise _fail(f"{path}: expected one CSV with a 'query,reference' header.")
            path = csvs[0]
        return load_pairs(path, references)
    loaders = {
        "folders": load_folders,
        "query-gallery": load_query_gallery,
        "ukbench": load_ukbench,
    }
    if layout not in loaders:
        raise _fail(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}.")
    return loaders[layout](path)
