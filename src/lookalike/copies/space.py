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
from lookalike.keypoints.rerank import decode_any
from lookalike.models import Embedder, load_embedder

if TYPE_CHECKING:
    from lookalike.collection import Collection

__all__ = ["COPY_MODELS", "COPY_SPACE", "COPY_THRESHOLDS", "DEFAULT_COPY_MODEL", "add_copy_space"]

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
    its files); images none of whose files can be read are reported in ``missing`` and stay
    out of the copy space. Idempotent: only images without a copy vector are embedded.

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
        col.add_space(COPY_SPACE, copy_space_spec(embedder), embedder)
        todo = col.ids_missing(COPY_SPACE)
        if progress:
            progress(0, len(todo))
        for start_at in range(0, len(todo), batch_size):
            ids, images = [], []
            for record in col.catalogue.images(todo[start_at : start_at + batch_size]):
                image = decode_any(record.paths, embedder.input_size) if record else None
                if image is None:
                    report.missing.extend(record.paths if record else [])
                    continue
                ids.append(record.id)
                images.append(image)
            if ids:
                col.put_vectors(COPY_SPACE, ids, embedder.embed_images(images))
                report.embedded += len(ids)
            if progress:
                progress(min(start_at + batch_size, len(todo)), len(todo))
        col.rebuild_index(COPY_SPACE)  # rebuilt from the stored vectors, then saved
    report.seconds = time.perf_counter() - start
    return report
