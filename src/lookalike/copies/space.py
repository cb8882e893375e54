"""The copy space of a collection: SSCD descriptors for finding edited copies.

A collection can hold, beside its semantic descriptor, a *copy space*: one SSCD vector per image
(``lookalike.models.sscd``), which stays close under crops, overlays, recompression and colour
edits. :func:`add_copy_space` computes it for a collection that lacks it (re-decoding the stored
files); new images then get it at indexing time. ``Collection.search(query, space="copy")``
searches it, scored by P(copy) (:mod:`lookalike.copies.scoring`); ``verify=True`` checks the
first hits by keypoint matching (``keypoints.verify``), folds the evidence into their score and
gives each one ``verified``, ``inliers`` and the ``region`` of the candidate the query covers.
:mod:`lookalike.copies.duplicates` groups copies.

Scores: a copy search's score and the duplicates' threshold are the calibrated copy
probability of :mod:`lookalike.copies.scoring` (self-normalised cosine, and keypoint evidence
with ``verify``), fitted per model on the DISC21-hard set of ``benchmarks/copies_hard.py``;
:func:`threshold_for` gives the score of 90% precision there (docs/benchmarks.md, sections
``copies-hard`` and ``copies-scoring``).

Without a copy space, :func:`duplicates` reports exact copies only and says how to add it
(PDQ over re-decoded files would be as slow as adding the copy space, and catches less).

Example:
    >>> from lookalike import Collection
    >>> col = Collection.open("photos.lookalike")  # doctest: +SKIP
    >>> add_copy_space(col, "sscd-mobile")  # doctest: +SKIP
    >>> col.search("edited.jpg", k=5, space="copy", verify=True)[0].verified  # doctest: +SKIP
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lookalike.collection.manifest import COPY_SPACE, model_space_spec
from lookalike.copies.scoring import REGION_SPACES, calibration_of
from lookalike.errors import CollectionError
from lookalike.models import Embedder, load_embedder
from lookalike.models.sscd import window_model

if TYPE_CHECKING:
    from lookalike.collection import Collection

__all__ = [
    "COPY_MODELS",
    "COPY_SPACE",
    "DEFAULT_COPY_MODEL",
    "REGION_SPACES",
    "add_copy_space",
    "incomplete",
]

#: The copy model of ``lookalike index --copy``: Meta's SSCD (int8, 288x288 squashed), the
#: better on every tier of the hard set (docs/benchmarks.md, sections ``copies-hard`` and
#: ``copies-scoring``: µAP 0.770 against 0.735, R@P90 with verification 0.782 against 0.708) at
#: 1.6x the indexing time of ``sscd-mobile``, which stays available (``--copy-model``).
DEFAULT_COPY_MODEL = "sscd"
COPY_MODELS = ("sscd-mobile", "sscd")
Progress = Callable[[int, int], None]


def how_to_add(path: object) -> str:
    """The message for a collection without a copy space."""
    return (
        f"{path} has no copy-detection vectors; add them with `lookalike index FOLDER "
        f"--collection {path} --copy` (FOLDER: the indexed folder; only stored images are "
        "re-read) or Collection.add_copy_space()"
    )


def copy_space_spec(embedder: Embedder) -> dict:
    """The manifest entry of a copy space computed by ``embedder``."""
    return model_space_spec(embedder)


def threshold_for(col: Collection, verify: bool = False) -> float:
    """The copy score (P(copy)) at or above which the collection's copy model calls two images
    copies: 90% precision on the hard set's calibration split, with or without keypoint
    verification (:data:`lookalike.copies.scoring.CALIBRATIONS`)."""
    cal = calibration_of(col)
    return cal.verified_threshold if verify else cal.threshold


@dataclass
class CopySpaceReport:
    """What :func:`add_copy_space` did: images embedded, files that are gone, seconds."""

    model: str
    embedded: int = 0
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "embedded": self.embedded,
            "missing": self.missing,
            "seconds": round(self.seconds, 3),
        }


def add_copy_space(
    col: Collection,
    model: str = DEFAULT_COPY_MODEL,
    *,
    progress: Progress | None = None,
    batch_size: int = 32,
    regions: bool = False,
) -> CopySpaceReport:
    """Give ``col`` a copy space computed by ``model`` for every stored image (re-decoding
    its files, ``Collection.complete_spaces``); images none of whose files can be read are
    reported in ``missing`` and stay out of the copy space. Idempotent: only images without a
    copy vector are embedded, so a killed run is resumed by calling it again (or by any
    indexing run).

    ``regions``: also describe five windows of every image (the corners and the centre, 55% of
    each side; :class:`lookalike.models.sscd.Window`), one space each (``copy-window0`` ...), so
    that a copy keeping a corner of a picture is found (docs/benchmarks.md, section
    ``copies-regions``): five more vectors per image, five times the copy space's work.

    Raises:
        CollectionError: the collection already has a copy space of another model.
    """
    start = time.perf_counter()
    report = CopySpaceReport(model)
    existing = col.spaces().get(COPY_SPACE)
    if existing is not None and existing.get("model") != model:
        raise CollectionError(
            f"{col.path} already has a copy space of {existing.get('model')!r}, not {model!r}"
        )
    embedder = load_embedder(model)
    with col.writing():
        # Recorded first: a run killed from here on leaves the space incomplete, which every
        # later indexing run (and `lookalike check --repair`) completes.
        col.add_space(COPY_SPACE, copy_space_spec(embedder), embedder)
        if regions:
            for j, name in enumerate(REGION_SPACES):
                window = load_embedder(window_model(model, j))
                col.add_space(name, copy_space_spec(window), window)
        done = col.complete_spaces(progress=progress, batch_size=batch_size)
        for name in [COPY_SPACE, *(REGION_SPACES if regions else ())]:
            if name not in done.embedded:
                col.rebuild_index(name)  # nothing to add: the index still exists and is saved
    report.embedded = done.embedded.get(COPY_SPACE, 0)
    report.missing = done.missing
    report.seconds = time.perf_counter() - start
    return report


def incomplete(col: Collection) -> str | None:
    """A one-line message when some images of ``col`` have no copy vector (a run adding the
    copy space was killed, or their files could not be read), naming the fix; else None."""
    if COPY_SPACE not in col.spaces():
        return None
    missing = len(col.ids_missing(COPY_SPACE))
    if not missing:
        return None
    return (
        f"{missing} of {len(col)} images in {col.path} have no copy vector yet and are left "
        f"out: complete them with `lookalike check --repair --collection {col.path}` (or "
        "`lookalike index FOLDER --collection ...`)"
    )
