"""The vector spaces of a collection and their indexes: caches of the catalogue's vectors.

Each space (``image``, ``text``, ``copy``...) has one index file in ``index/<space>.faiss`` and a
stamp ``index/<space>.json`` with the catalogue generation it was saved at. An index that is
missing, damaged or behind the catalogue is rebuilt from the stored vectors; the main space is
searched through a PCA learned on the collection once it is large enough (``REDUCE_*``).
A damaged file (truncated, overwritten: any failure to load it) is a cache lost, not an error:
it is rebuilt, and a warning on the ``lookalike`` logger says so once per file and process.

Example:
    >>> col.index("image").search(vectors, 10)  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import json
import logging
import os
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

log = logging.getLogger("lookalike.collection")
#: Index files found damaged in this process (each is reported once).
_reported: set[str] = set()


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
            projection = self._saved_projection(file)
            if saved == generation:
                try:
                    index = load_index(spec["index"], file)
                except VectorIndexError:  # e.g. its Milvus data is gone: rebuilt below
                    index = None
                except Exception as exc:  # a truncated or overwritten file: FAISS, NumPy...
                    self._damaged(file, exc)
                    index = None
                count = self._stored_count(file)
                if index is not None and count is not None and len(index) != count:
                    self._damaged(file, ValueError("its count differs from the catalogue's"))
                    index = None
                if projection is not None and index is not None:
                    index = ProjectedIndex(index, *projection)
            if index is None:
                index = self._build_index(space, projection)
            self._indexes[space] = (index, generation)
            return index

    def _saved_projection(self, file: Path) -> tuple[Whitening, int] | None:
        """The PCA saved beside an index file; None when there is none or it is damaged (the
        index is then searched unprojected until the next indexing run learns it again)."""
        try:
            return load_projection(file)
        except Exception as exc:
            self._damaged(file.with_suffix(".pca.npz"), exc)
            return None

    def _stored_count(self, file: Path) -> int | None:
        """The vector count the index file's stamp records (None: not recorded)."""
        try:
            return int(json.loads(file.with_suffix(".json").read_text())["count"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _damaged(self, file: Path, exc: BaseException) -> None:
        if str(file) not in _reported:
            _reported.add(str(file))
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning(
                "%s is damaged (%s); rebuilt it from the catalogue (`lookalike check --repair "
                "--collection %s` saves it)",
                file,
                why[:200],
                self.path,
            )

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
        """Write every loaded index that matches the catalogue atomically, stamped with the
        catalogue's generation. One loaded at an older generation is left alone: stamping it
        would make a stale index pass for a current one (it is rebuilt when next used)."""
        generation = self.catalogue.generation()
        for space, (index, loaded_at) in list(self._indexes.items()):
            if loaded_at != generation:
                continue
            file = self._index_file(space)
            try:
                index.save(file)
            except OSError:
                raise
            except Exception as exc:  # FAISS reports a full disk as a RuntimeError
                if "No space left" in str(exc) or "quota exceeded" in str(exc).lower():
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file)) from exc
                raise
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
