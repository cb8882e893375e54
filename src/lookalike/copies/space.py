"""The copy space of a collection: SSCD descriptors for finding edited copies.

A collection can hold, beside its semantic descriptor, a *copy space*: one SSCD vector per image
(``lookalike.models.sscd``), which stays close under crops, overlays, recompression and colour
edits. :func:`add_copy_space` computes it for a collection that lacks it (re-decoding the stored
files); new images then get it at indexing time. ``Collection.search(query, space="copy")``
searches it and ``verify=True`` (:mod:`lookalike.keypoints.rerank`) re-ranks the hits by keypoint
matching (``keypoints.verify``), giving each one ``verified``, ``inliers`` and the ``region``
of the candidate the query covers. :mod:`lookalike.copies.duplicates` groups copies.

Thresholds (cosine similarity in the copy space) are calibrated by ``benchmarks/copies.py`` on a
DISC21-style set (1000 references: 500 Corel-1k + 500 Tiny ImageNet distractors; 400 queries:
200 AugLy edits of references, 200 edits of Corel images that are not indexed):
:data:`COPY_THRESHOLDS` holds, per model, the score above which 90% of the predictions are true
copies on that set. ``sscd-mobile``: 0.68 (90% precision, recall 0.78; µAP 0.91, recall@1 1.00,
~32 images/s); ``sscd``: 0.60 (90% precision, recall 0.875; µAP 0.95, recall@1 1.00, ~7
images/s on 2 busy cores). Meta gives 0.75 for ``sscd`` at 90% precision on DISC2021, whose
negatives are harder; raise ``threshold`` for fewer false groups. ``sscd-mobile`` is the
default: it meets the goals (µAP >= 0.90, recall@1 >= 0.95) at about 4.5x the speed.

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
from lookalike.errors import CollectionError
from lookalike.models import Embedder, load_embedder

if TYPE_CHECKING:
    from lookalike.collection import Collection

__all__ = [
    "COPY_MODELS",
    "COPY_SPACE",
    "COPY_THRESHOLDS",
    "DEFAULT_COPY_MODEL",
    "add_copy_space",
    "incomplete",
]

#: The copy model of ``lookalike index --copy``; see docs/benchmarks.md (section copies).
DEFAULT_COPY_MODEL = "sscd-mobile"
COPY_MODELS = ("sscd-mobile", "sscd")
#: Cosine similarity in the copy space at or above which two images are called copies:
#: 90% precision on the benchmark set (benchmarks/copies.py; recall 0.78 and 0.875).
COPY_THRESHOLDS = {"sscd": 0.60, "sscd-mobile": 0.68}

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


def threshold_for(col: Collection) -> float:
    """The calibrated copy threshold of the collection's copy model."""
    model = col.spaces()[COPY_SPACE]["model"]
    return COPY_THRESHOLDS.get(model, COPY_THRESHOLDS["sscd"])


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
) -> CopySpaceReport:
    """Give ``col`` a copy space computed by ``model`` for every stored image (re-decoding
    its files, ``Collection.complete_spaces``); images none of whose files can be read are
    reported in ``missing`` and stay out of the copy space. Idempotent: only images without a
    copy vector are embedded, so a killed run is resumed by calling it again (or by any
    indexing run).

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
        done = col.complete_spaces(progress=progress, batch_size=batch_size)
        if COPY_SPACE not in done.embedded:
            col.rebuild_index(COPY_SPACE)  # nothing to add: the index still exists and is saved
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
