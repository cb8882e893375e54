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
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lookalike.collection.lock import WriteLock
from lookalike.collection.manifest import (
    COPY_SPACE,
    DEFAULT_INDEX,
    FORMAT_VERSION,
    IMAGE_SPACE,
    MANIFEST_COPY,
    PCA_SAMPLE,
    REDUCE_MIN_IMAGES,
    saved_generation,
    sparse_top,
    upgraded_spaces,
)
from lookalike.descriptors import Whitening
from lookalike.errors import CollectionError
from lookalike.fileio import write_json
from lookalike.index import VectorIndex, VectorIndexError, create_index
from lookalike.index.auto import memory_of
from lookalike.index.log import load_saved, save_index
from lookalike.index.projected import ProjectedIndex, load_projection
from lookalike.store import SQLiteCatalogue
from lookalike.store.encoding import as_stored

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
                    index = load_saved(spec["index"], file, generation)  # its log up to it
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
        file its pointer is saved to, which names its default place and its collection;
        ``auto`` over a space stored sparse (``sparse:T``): that it is sparse."""
        spec = self.spaces()[space]
        kind = str(spec["index"])
        if kind.split(":")[0] == "milvus":
            return {"path": self._index_file(space)}
        if kind == "auto" and sparse_top(spec):
            return {"sparse": sparse_top(spec)}
        return {}

    # -- how the catalogue stores each space, and what it all costs ----------------------------
    def _apply_encodings(self) -> None:
        """Tell the catalogue how each space's vectors are written (``encoding`` in the
        manifest; format 1 has none: float32)."""
        for space, spec in self.spaces().items():
            if "encoding" in spec:
                self.catalogue.set_encoding(space, str(spec["encoding"]))

    def as_stored(self, vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """New vectors by space as the catalogue will give them back (its encodings): what the
        indexes are given, so that an index fed batch by batch equals one rebuilt from the
        catalogue (a resumed run answers as a clean one)."""
        encodings = getattr(self.catalogue, "encodings", {})
        return {s: as_stored(v, encodings.get(s, "float32")) for s, v in vectors.items()}

    def upgrade(self, progress: Callable[[int, int], None] | None = None) -> bool:
        """Bring a collection of an older format up to :data:`~.manifest.FORMAT_VERSION`, in
        place; returns whether there was anything to do. Call it holding the write lock
        (``writing()`` does, before any write).

        Format 1 -> 2: every stored vector is rewritten in its space's encoding
        (``manifest.upgraded_spaces``), a batch a transaction, which changes no generation;
        the catalogue file is compacted (``VACUUM``); the index files of spaces whose kind
        changes (``flat`` -> ``auto``) are removed; the manifest is written; those indexes are
        built from the catalogue and saved. Killed at any point it leaves a collection that
        reads as before (every blob says how it is encoded; a missing index is built from the
        catalogue) and that the next writer, or ``lookalike check --repair``, upgrades from
        where it stopped.
        """
        version = int(self.manifest.get("format_version", 1))
        if version >= FORMAT_VERSION:
            return False
        start = time.perf_counter()
        log.warning(
            "%s: upgrading the collection from format %d to %d (compact vectors); a killed "
            "upgrade resumes",
            self.path,
            version,
            FORMAT_VERSION,
        )
        spaces = upgraded_spaces(self.manifest)
        for space, spec in spaces.items():
            self.catalogue.set_encoding(space, spec["encoding"])
        for space in spaces:
            self.catalogue.reencode(space, progress=progress)
        self.catalogue.compact()
        changed = [s for s, spec in spaces.items() if spec["index"] != self.spaces()[s]["index"]]
        for space in changed:
            self._drop_index_files(space)
            self._indexes.pop(space, None)
        manifest = {**self.manifest, "format_version": FORMAT_VERSION, "spaces": spaces}
        if manifest["index"].get("kind") == "flat":
            manifest["index"] = {**manifest["index"], "kind": DEFAULT_INDEX}
        manifest["upgraded"] = {"from": version, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json(self.path / "manifest.json", manifest)
        self.manifest = manifest
        self.catalogue.set_meta(MANIFEST_COPY, json.dumps(manifest, sort_keys=True))
        for space in changed:  # built once here and saved, not by every reader on its own
            self.rebuild_index(space)
        log.warning("%s: upgraded in %.1f s", self.path, time.perf_counter() - start)
        return True

    def _drop_index_files(self, space: str) -> None:
        """Remove the index files of ``space`` (its PCA stays: it still holds)."""
        for file in (self.path / "index").glob(f"{space}.*"):
            if not file.name.endswith(".pca.npz"):
                file.unlink(missing_ok=True)

    def sizes(self) -> dict:
        """What each space costs, on disk and in RAM, in bytes and bytes per image.

        ``spaces[name]``: ``encoding``; ``index`` (the kind, ``auto``'s choice included);
        ``disk``: ``catalogue`` (its stored vectors' bytes), ``index`` (its files),
        ``per_image``; ``ram``: ``resident`` (read into memory), ``mapped`` (memory-mapped
        index files: paged in as searches touch them, given back under memory pressure),
        ``per_image`` (resident). ``catalogue``: the file's bytes, of which ``vectors``, and
        ``other`` (images, files, metadata, SQLite's pages; per image too). ``disk_per_image``:
        the whole folder. Loads every index (as searching would).

        Example:
            >>> col.sizes()["spaces"]["image"]["disk"]["per_image"]  # doctest: +SKIP
            1893.4
        """
        images = max(self.catalogue.count()["images"], 1)
        stats = self.catalogue.vector_stats()
        folder = self.path / "index"
        out: dict = {"images": images, "spaces": {}}
        ram_total = 0
        for space, spec in self.spaces().items():
            stored = stats.get(space, {})
            blob_bytes = sum(e["bytes"] for e in stored.values())
            files = [f for f in folder.glob(f"{space}.*") if f.is_file()] if folder.exists() else []
            index_bytes = sum(f.stat().st_size for f in files)
            index = self.index(space)
            memory = memory_of(index)
            ram_total += memory["resident"]
            held = index.inner if isinstance(index, ProjectedIndex) else index
            chosen = getattr(held, "params", {}).get("kind") or getattr(index, "kind", "")
            out["spaces"][space] = {
                "encoding": spec.get("encoding", "float32"),
                "stored_as": {name: e["vectors"] for name, e in stored.items()},
                "index": f"{spec['index']} ({chosen})" if chosen != spec["index"] else chosen,
                "vectors": sum(e["vectors"] for e in stored.values()),
                "disk": {
                    "catalogue": blob_bytes,
                    "index": index_bytes,
                    "per_image": round((blob_bytes + index_bytes) / images, 1),
                },
                "ram": {
                    **memory,
                    "per_image": round(memory["resident"] / images, 1),
                    "mapped_per_image": round(memory["mapped"] / images, 1),
                },
            }
        file = Path(str(getattr(self.catalogue, "path", "")))
        if file.name and file.exists():
            size = sum(
                f.stat().st_size for f in (file, file.with_name(file.name + "-wal")) if f.exists()
            )
            vectors = sum(e["bytes"] for by in stats.values() for e in by.values())
            out["catalogue"] = {
                "bytes": size,
                "vectors": vectors,
                "other": size - vectors,
                "other_per_image": round((size - vectors) / images, 1),
            }
        total = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        out["disk_bytes"] = total
        out["disk_per_image"] = round(total / images, 1)
        out["ram_per_image"] = round(ram_total / images, 1)
        return out

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
                save_index(index, file, generation)  # appended to its log (index/log.py)
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
    """Up to ``limit`` vectors of ``space``, spread evenly over the catalogue (read a chunk at
    a time: at 1M images the whole space would take 9 GB as float32)."""
    total = catalogue.vector_counts().get(space, 0)
    wanted = np.unique(np.linspace(0, max(total - 1, 0), min(limit, total)).astype(np.int64))
    kept, seen = [], 0
    for _, vectors in catalogue.iter_vectors(space):
        inside = wanted[(wanted >= seen) & (wanted < seen + len(vectors))] - seen
        kept.append(vectors[inside])
        seen += len(vectors)
    if not kept:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(kept)
