"""The vector spaces of a collection and their indexes: caches of the catalogue's vectors.

Each space (``image``, ``text``, ``copy``...) has one index file in ``index/<space>.faiss`` and a
stamp ``index/<space>.json`` with the catalogue generation it was saved at. An index that is
missing, damaged or behind the catalogue is rebuilt from the stored vectors; the main space is
searched through a PCA learned on the collection once it is large enough (``REDUCE_*``).

Example:
    >>> col.index("image").search(vectors, 10)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from lookalike.collection.lock import WriteLock
from lookalike.collection.manifest import (
    COPY_SPACE,
    IMAGE_SPACE,
    PCA_SAMPLE,
    REDUCE_MIN_IMAGES,
    saved_generation,
)
from lookalike.descriptors import Whitening
from lookalike.errors import CollectionError
from lookalike.fileio import write_json
from lookalike.index import VectorIndex, VectorIndexError, create_index, load_index
from lookalike.index.projected import ProjectedIndex, load_projection
from lookalike.store import SQLiteCatalogue


class Spaces:
    """The spaces and index caches of :class:`~lookalike.collection.core.Collection` (a mixin:
    it uses the collection's manifest, catalogue and locks)."""

    # -- indexes (caches of the catalogue), one per vector space -------------------------------
    def spaces(self) -> dict[str, dict]:
        """The searchable vector spaces: name -> {"dim", "index", ...}."""
        return self.manifest["spaces"]

    def _index_file(self, space: str) -> Path:
        return self.path / "index" / f"{space}.faiss"

    def index(self, space: str = IMAGE_SPACE) -> VectorIndex:
        """The index of ``space``, loaded or rebuilt so that it agrees with the catalogue."""
        if space not in self.spaces():
            if space == COPY_SPACE:
                raise CollectionError(
                    f"{self.path} has no copy-detection vectors; add them with `lookalike index "
                    f"FOLDER --collection {self.path} --copy` (FOLDER: the indexed folder; only "
                    "stored images are re-read) or Collection.add_copy_space()"
                )
            raise CollectionError(f"{self.path} has no {space!r} vectors")
        with self._lock:
            generation = self.catalogue.generation()
            cached = self._indexes.get(space)
            if cached is not None and cached[1] == generation:
                return cached[0]
            spec = self.spaces()[space]
            file = self._index_file(space)
            state_file = file.with_suffix(".json")
            saved = saved_generation(state_file) if file.exists() else None
            if saved != generation and not self._writing and WriteLock.held(self.path):
                # Another writer (a process, or another Collection here) is at work: its index
                # file, stamped when it finishes (before its caller hears back), is the one to
                # follow. Until then, answer from the last saved index instead of rebuilding
                # from the catalogue under this lock (which stalled every search of a server).
                if cached is not None and (saved is None or cached[1] >= saved):
                    return cached[0]
                generation = saved if saved is not None else generation
            index: VectorIndex | None = None
            if saved == generation:
                projection = load_projection(file)
                with contextlib.suppress(VectorIndexError):  # e.g. its Milvus data is gone
                    index = load_index(spec["index"], file)
                if projection is not None and index is not None:
                    index = ProjectedIndex(index, *projection)
            if index is None:
                index = self._build_index(space, load_projection(file))
            self._indexes[space] = (index, generation)
            return index

    def _build_index(self, space: str, projection: tuple[Whitening, int] | None) -> VectorIndex:
        """A new index of ``space`` filled from the catalogue's vectors."""
        spec = self.spaces()[space]
        options = self._index_options(space)
        if projection is None:
            index: VectorIndex = create_index(spec["index"], int(spec["dim"]), **options)
        else:
            inner = create_index(spec["index"], projection[0].dim, **options)
            index = ProjectedIndex(inner, *projection)
        for ids, vectors in self.catalogue.iter_vectors(space):
            index.add(ids, vectors)
        return index

    def _index_options(self, space: str) -> dict:
        """What a kind that keeps its vectors outside the folder (``milvus``) is told: the
        file its pointer is saved to, which names its default place and its collection."""
        kind = str(self.spaces()[space]["index"])
        return {"path": self._index_file(space)} if kind.split(":")[0] == "milvus" else {}

    def refit_projections(self) -> None:
        """Learn (or re-learn) the PCA of spaces that ask for one, once the collection is big
        enough and whenever it has doubled since the last fit; the index is then rebuilt."""
        count = len(self)
        for space, spec in self.spaces().items():
            dim = spec.get("reduce")
            if not dim or count < REDUCE_MIN_IMAGES:
                continue
            current = self._indexes.get(space, (None, 0))[0]
            fitted_on = current.fitted_on if isinstance(current, ProjectedIndex) else 0
            if fitted_on and count < 2 * fitted_on:
                continue
            sample = sample_vectors(self.catalogue, space, PCA_SAMPLE)
            projection = Whitening.fit(sample, dim=int(dim), power=0.0)
            self._indexes[space] = (
                self._build_index(space, (projection, count)),
                self.catalogue.generation(),
            )

    def save_indexes(self) -> None:
        """Write every loaded index atomically, stamped with the catalogue's generation."""
        generation = self.catalogue.generation()
        for space, (index, _) in list(self._indexes.items()):
            file = self._index_file(space)
            index.save(file)
            write_json(
                file.with_suffix(".json"),
                {"generation": generation, "count": len(index), "kind": index.kind},
            )
            self._indexes[space] = (index, generation)

    def mark_indexes_current(self) -> None:
        """The loaded indexes were updated in step with the catalogue's last writes."""
        generation = self.catalogue.generation()
        for space, (index, _) in list(self._indexes.items()):
            self._indexes[space] = (index, generation)


def sample_vectors(catalogue: SQLiteCatalogue, space: str, limit: int) -> np.ndarray:
    """Up to ``limit`` vectors of ``space``, spread evenly over the catalogue."""
    chunks = list(catalogue.iter_vectors(space))
    vectors = np.concatenate([v for _, v in chunks])
    if len(vectors) > limit:
        vectors = vectors[np.linspace(0, len(vectors) - 1, limit).astype(int)]
    return vectors
