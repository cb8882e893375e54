"""The Collection: the one object every front end talks to.

A collection is a folder::

    manifest.json        format version, model (name, version, dim), spaces (manifest.py)
    catalogue.sqlite     images, files, metadata and every vector (the source of truth)
    index/image.faiss    the vector index: a cache, rebuilt from the catalogue when stale
    index/image.json     the catalogue generation the index was saved at
    .lock                the write lock (lock.py)

Writes go to the catalogue first, one transaction per batch; the index is saved atomically at the
end of a run. A run killed at any moment therefore leaves a valid collection: the next open sees
that the saved index is behind the catalogue and rebuilds it from the stored vectors, and the next
``add``/``sync`` skips every file already committed.

The class is a facade over the core's parts: :mod:`.spaces` (index caches, PCA),
:mod:`.search`, :mod:`.text` and :mod:`.pipeline` (one indexing run). Capabilities extend a
collection through its public methods: :meth:`Collection.writing`, :meth:`Collection.add_space`,
:meth:`Collection.put_vectors`, :meth:`Collection.rebuild_index`.

Example:
    >>> from lookalike import Collection
    >>> with Collection.open("photos.lookalike", create=True) as col:  # doctest: +SKIP
    ...     report = col.sync(["~/Pictures"])
    ...     for hit in col.search("query.jpg", k=5):
    ...         print(f"{hit.score:.3f} {hit.path}")
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.collection.lock import WriteLock
from lookalike.collection.manifest import (
    COPY_SPACE,
    DEFAULT_INDEX,
    DEFAULT_MODEL,
    IMAGE_SPACE,
    MANIFEST_COPY,
    TEXT_SPACE,
    model_space_spec,
    new_manifest,
    read_manifest,
)
from lookalike.collection.metadata import HeaderPass, read_headers
from lookalike.collection.pipeline import (
    Indexer,
    Loader,
    Progress,
    expand_paths,
    list_remote,
    resolve,
)
from lookalike.collection.results import IndexReport, SearchResult
from lookalike.collection.search import Searching, capability
from lookalike.collection.spaces import Spaces
from lookalike.collection.text import TextSearch
from lookalike.errors import BulkError, BusyError, CollectionError, ImageError
from lookalike.fileio import write_json
from lookalike.index import VectorIndex, create_index
from lookalike.ingest import files as ingest
from lookalike.ingest import shards as shards_api
from lookalike.ingest import sources
from lookalike.models import Embedder, load_embedder
from lookalike.store import CatalogueError, FileState, ImageRecord, open_catalogue

__all__ = [
    "DEFAULT_INDEX",
    "DEFAULT_MODEL",
    "IMAGE_SPACE",
    "TEXT_SPACE",
    "BusyError",
    "Collection",
    "CollectionError",
    "IndexReport",
    "SearchResult",
    "SpaceCompletion",
]


@dataclass
class SpaceCompletion:
    """What :meth:`Collection.complete_spaces` did: vectors computed by space, the files of
    images none of whose files could be read again (gone or changed), the seconds taken."""

    embedded: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unreadable: list[int] = field(default_factory=list)  # their image ids
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "embedded": self.embedded,
            "missing": self.missing,
            "seconds": round(self.seconds, 3),
        }


class Collection(Spaces, Searching, TextSearch):
    """A searchable set of images stored in one folder.

    Open or create one with :meth:`open`; add images with :meth:`add` or :meth:`sync`; query with
    :meth:`search`. A collection is bound to the model it was built with.
    """

    def __init__(self, path: Path, manifest: dict, embedder: Embedder | None = None) -> None:
        self.path = path
        self.manifest = manifest
        try:  # it must exist: a missing or empty catalogue is damage, not a new collection
            self.catalogue = open_catalogue(
                manifest.get("catalogue") or path / "catalogue.sqlite", create=False
            )
        except CatalogueError as exc:  # e.g. a PostgreSQL server that cannot be reached
            raise CollectionError(str(exc)) from exc
        self._embedder = embedder
        self._indexes: dict[str, tuple[VectorIndex, int]] = {}
        self._space_embedders: dict[str, Embedder] = {}
        self._text_model = None
        self._lock = threading.RLock()
        self._writing = False  # holds the write lock now
        self._writer: int | None = None  # the thread that holds it (writing() re-enters)
        self._complete = False  # every space was found complete (checked once per instance)
        self._apply_encodings()  # how the catalogue writes each space (spaces.py)

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        model: str = DEFAULT_MODEL,
        index: str = DEFAULT_INDEX,
        embedder: Embedder | None = None,
        catalogue: str | None = None,
        copy_model: str | None = None,
    ) -> Collection:
        """Create an empty collection in ``path`` (a new or empty folder).

        ``copy_model``: also compute a copy-detection space (``"sscd-mobile"`` or ``"sscd"``,
        see ``lookalike.copies.space``) at indexing time.

        ``catalogue``: where images and vectors are kept, e.g. ``postgresql://host/db``
        (recorded in the manifest); by default ``catalogue.sqlite`` in the folder.
        """
        path = Path(path).expanduser()
        if (path / "manifest.json").exists():
            raise CollectionError(f"{path} already holds a collection")
        made = cls._create(path, model, index, embedder, catalogue, copy_model)
        if made is None:
            raise CollectionError(f"{path} already holds a collection")
        return made

    @classmethod
    def _create(
        cls,
        path: Path,
        model: str,
        index: str,
        embedder: Embedder | None,
        catalogue: str | None,
        copy_model: str | None,
    ) -> Collection | None:
        """Create the collection under its write lock; None when another process created it
        meanwhile. The catalogue is made first and the manifest last, so a folder with a
        manifest always has its catalogue (a missing or empty one is then damage)."""
        embedder = embedder or load_embedder(model)
        create_index(index, embedder.dim)  # fail now on an unknown kind, not at first search
        if catalogue is not None:  # fail before writing a manifest that points to nowhere
            try:
                open_catalogue(catalogue).close()
            except CatalogueError as exc:
                raise CollectionError(str(exc)) from exc
        manifest = new_manifest(embedder, index)
        if catalogue is not None:
            manifest["catalogue"] = str(catalogue)
        if copy_model is not None:
            manifest["spaces"][COPY_SPACE] = model_space_spec(load_embedder(copy_model))
        path.mkdir(parents=True, exist_ok=True)
        with WriteLock(path):  # two `index` runs starting a new collection: one creates it
            if (path / "manifest.json").exists():
                return None
            try:
                store = open_catalogue(catalogue or path / "catalogue.sqlite")
            except CatalogueError as exc:
                raise CollectionError(str(exc)) from exc
            try:
                store.set_meta(MANIFEST_COPY, json.dumps(manifest))
            finally:
                store.close()
            write_json(path / "manifest.json", manifest)
        return cls(path, manifest, embedder)

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        create: bool = False,
        model: str | None = None,
        index: str = DEFAULT_INDEX,
        embedder: Embedder | None = None,
        catalogue: str | None = None,
        copy_model: str | None = None,
    ) -> Collection:
        """Open the collection in ``path``; with ``create=True`` make it if it does not exist
        (``catalogue``: see :meth:`create`; when opening, it must match the recorded one).

        Raises:
            CollectionError: not a collection, written by a newer lookalike, or ``model`` is not
                the model the collection was built with.
        """
        path = Path(path).expanduser()
        manifest_path = path / "manifest.json"
        if not manifest_path.exists() and create:
            made = cls._create(path, model or DEFAULT_MODEL, index, embedder, catalogue, copy_model)
            if made is not None:
                return made  # else another process created it meanwhile: open what it made
        if not manifest_path.exists():
            raise CollectionError(
                f"no collection at {path}: create one with `lookalike index FOLDER "
                f"--collection {path}`"
            )
        manifest = read_manifest(path)
        built_with = manifest["model"]["name"]
        if model is not None and Path(model).expanduser().is_dir():  # a trained model folder
            model = str(Path(model).expanduser().resolve())  # is recorded by its absolute path
        if model is not None and model != built_with:
            raise CollectionError(
                f"{path} was built with model {built_with!r}, not {model!r}; use another "
                "--collection folder for another model"
            )
        if embedder is not None and embedder.name != built_with:
            raise CollectionError(f"{path} was built with {built_with!r}, not {embedder.name!r}")
        if catalogue is not None and str(catalogue) != manifest.get("catalogue"):
            raise CollectionError(
                f"{path} keeps its catalogue in {manifest.get('catalogue') or 'catalogue.sqlite'}"
                f", not {catalogue}"
            )
        return cls(path, manifest, embedder)

    @property
    def model_name(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def dim(self) -> int:
        return int(self.manifest["model"]["dim"])

    @property
    def embedder(self) -> Embedder:
        """The collection's model, loaded on first use and checked against the manifest."""
        if self._embedder is None:
            self._embedder = load_embedder(self.model_name)
        stored = self.manifest["model"]["version"]
        if self._embedder.version != stored:
            raise CollectionError(
                f"{self.path} holds vectors of {stored!r} but this lookalike computes "
                f"{self._embedder.version!r}; rebuild it: `lookalike index FOLDER --collection "
                "NEW_DIR` (the old folder keeps working with the lookalike that made it)"
            )
        return self._embedder

    def space_embedder(self, space: str) -> Embedder:
        """The model that computes ``space`` (the collection's model for "image")."""
        spec = self.spaces()[space]
        if "model" not in spec:
            return self.embedder
        if space not in self._space_embedders:
            embedder = load_embedder(spec["model"])
            if embedder.version != spec["version"]:
                raise CollectionError(
                    f"{self.path} holds {space!r} vectors of {spec['version']!r} but this "
                    f"lookalike computes {embedder.version!r}: rebuild the collection"
                )
            self._space_embedders[space] = embedder
        return self._space_embedders[space]

    @property
    def decode_side(self) -> int:
        """Images are decoded with at least this shorter side (the largest model input)."""
        return max(
            [self.embedder.input_size]
            + [
                self.space_embedder(s).input_size
                for s, spec in self.spaces().items()
                if "model" in spec
            ]
        )

    def embed_images(
        self, images: Sequence[Image.Image], prepared: Sequence[object] | None = None
    ) -> dict[str, np.ndarray]:
        """Every stored vector of decoded images, by space: the collection's model's outputs
        (``embed_spaces`` when it has several) and those of the models of other spaces.
        ``prepared``: the model's inputs made beforehand by its ``prepare`` (decoding threads)."""
        primary = self.embedder
        if hasattr(primary, "embed_spaces"):
            out = dict(primary.embed_spaces(images))
        elif prepared is not None and hasattr(primary, "embed_prepared"):
            out = {IMAGE_SPACE: primary.embed_prepared(prepared)}
        else:
            out = {IMAGE_SPACE: primary.embed_images(images)}
        for space, spec in self.spaces().items():
            if "model" in spec and space not in out:
                out[space] = self.space_embedder(space).embed_images(images)
        if TEXT_SPACE in self.spaces():
            out[TEXT_SPACE] = self._text_vectors_of(out[IMAGE_SPACE])
        return self.as_stored(out)  # what the catalogue will give back (spaces.py)

    # -- writing ----------------------------------------------------------------------------
    def add(
        self,
        paths: Iterable[str | Path],
        *,
        progress: Progress | None = None,
        batch_size: int = 32,
        workers: int | None = None,
        metadata: Mapping[str | Path, dict] | None = None,
        loader: Loader | None = None,
    ) -> IndexReport:
        """Add image files, and every image under folders, skipping files already indexed.

        Changed files are re-embedded; files whose content is already stored are linked to it
        (reported in ``duplicates``); unreadable files are reported in ``skipped``.
        ``metadata`` maps file paths to JSON-able dicts merged into their image's metadata
        (e.g. ``{"sku": "A-12", "gps": [48.85, 2.35]}``).

        Example:
            >>> col.add(["shoe.jpg"], metadata={"shoe.jpg": {"sku": "A-12"}})  # doctest: +SKIP
        """
        paths = list(paths)
        states = list_remote(p for p in paths if sources.is_remote(p))
        files = expand_paths(p for p in paths if not sources.is_remote(p)) + list(states)
        if self.excludes:  # remembered `--exclude` globs, relative to the folders given
            roots = [str(p) if sources.is_remote(p) else resolve(p) for p in paths]
            files = [f for f in files if not ingest.is_excluded(f, self.excludes, roots)]
        given = {
            (str(p) if sources.is_remote(p) else resolve(p)): dict(m)
            for p, m in (metadata or {}).items()
        }
        return self._index_files(
            files, set(), progress, batch_size, workers, given, states=states, loader=loader
        )

    @property
    def excludes(self) -> list[str]:
        """The glob patterns of files that :meth:`add` and :meth:`sync` leave out (see
        ``ingest.files.is_excluded``), remembered in the manifest."""
        return list(self.manifest.get("excludes", []))

    def set_excludes(self, globs: Iterable[str]) -> None:
        """Remember ``globs`` (replacing the ones before) for every later :meth:`add` and
        :meth:`sync`: files they match are not indexed, and :meth:`sync` drops those indexed
        before.

        Example:
            >>> col.set_excludes([*col.excludes, "thumbnails", "*.tmp.jpg"])  # doctest: +SKIP
        """
        globs = list(dict.fromkeys(str(g) for g in globs if str(g)))
        with self.writing():
            if globs == self.excludes:
                return
            if globs:
                self.manifest["excludes"] = globs
            else:
                self.manifest.pop("excludes", None)
            write_json(self.path / "manifest.json", self.manifest)
            self._keep_manifest_copy()

    def sync(
        self,
        folders: Iterable[str | Path],
        *,
        progress: Progress | None = None,
        batch_size: int = 32,
        workers: int | None = None,
        loader: Loader | None = None,
    ) -> IndexReport:
        """Make the collection match ``folders``: add new and changed files, drop removed ones.

        A folder may be an ``s3://bucket/prefix`` (see ``lookalike.ingest.sources``): its objects
        are recorded as ``s3://bucket/key`` with their size and ETag as the change key. ``loader``
        replaces the reading and embedding of new files (``lookalike.ingest.bulk.RayLoader``).
        """
        folders = list(folders)
        remote = [str(f) for f in folders if sources.is_remote(f)]
        folders = [Path(f).expanduser().resolve() for f in folders if not sources.is_remote(f)]
        for folder in folders:
            if not folder.exists():
                raise CollectionError(f"no such folder: {folder}")
        states = list_remote(remote)
        files = expand_paths(folders) + list(states)
        if self.excludes:  # excluded files are not added, and dropped when indexed before
            roots = [str(f) for f in folders] + remote
            files = [f for f in files if not ingest.is_excluded(f, self.excludes, roots)]
        prefixes = tuple(str(f) + os.sep if f.is_dir() else str(f) for f in folders)
        prefixes += tuple(u if u in states else u.rstrip("/") + "/" for u in remote)
        return self._index_files(
            files, set(prefixes), progress, batch_size, workers, states=states, loader=loader
        )

    def add_embedded(
        self,
        shards: str | Path,
        *,
        progress: Progress | None = None,
        batch_size: int = 256,
    ) -> IndexReport:
        """Merge vectors computed elsewhere (embedding shards written by
        ``lookalike.ingest.bulk.embed_with_ray``, format in docs/architecture.md) into the
        collection, as ``add`` would: files already indexed with the same state are left alone,
        failed rows are recorded as skipped, identical contents are linked.

        Example:
            >>> col.add_embedded("shards/")  # doctest: +SKIP
        """
        info = shards_api.read_shard_info(shards)
        self.check_shards(info)
        states = shards_api.shard_states(shards)
        return self._index_files(
            list(states),
            set(),
            progress,
            batch_size,
            None,
            states=states,
            loader=lambda todo: shards_api.read_shards(shards, only={p for p, _ in todo}),
        )

    def check_shards(self, info: dict) -> None:
        """Raise BulkError unless shards described by ``info`` (a ``shards.json``, or just its
        ``model``) can fill every vector space of this collection."""
        model = info["model"]
        stored = self.manifest["model"]
        if model.get("name") != stored["name"] or model.get("version") != stored["version"]:
            raise BulkError(
                f"the shards hold {model.get('version')!r} vectors; {self.path} holds "
                f"{stored['version']!r} ({stored['name']})"
            )
        if int(model.get("dim", 0)) != int(stored["dim"]):
            raise BulkError(
                f"the shards hold {model.get('dim')}-d vectors, {self.path} {stored['dim']}"
            )
        other = [s for s in self.spaces() if s not in (IMAGE_SPACE, TEXT_SPACE)]
        if other:
            raise BulkError(
                f"{self.path} also keeps {other} vectors, which Ray indexing does not compute "
                "yet: index it without --ray"
            )

    def complete_vectors(self, given: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The vectors of every space from vectors embedded elsewhere: the spaces given, and the
        text space derived from the image space."""
        out = {space: np.stack([g[space] for g in given]).astype(np.float32) for space in given[0]}
        missing = [s for s in self.spaces() if s not in out and s != TEXT_SPACE]
        if missing:
            raise CollectionError(f"the embedded vectors lack the spaces {missing}")
        if TEXT_SPACE in self.spaces():
            out[TEXT_SPACE] = self._text_vectors_of(out[IMAGE_SPACE])
        return self.as_stored(out)

    def _index_files(
        self,
        files: list[str],
        prune_prefixes: set[str],
        progress: Progress | None,
        batch_size: int,
        workers: int | None,
        metadata: dict[str, dict] | None = None,
        *,
        states: dict[str, FileState] | None = None,
        loader: Loader | None = None,
    ) -> IndexReport:
        with self.writing():
            # A run killed while a space was being added (`index --copy`) or a repaired
            # catalogue leaves images without some vectors: compute them first, as the main
            # space's files are resumed below.
            if not self._complete:
                self.complete_spaces(progress=progress)
            self.read_headers()  # images indexed before their headers were stored
            self.enable_text()  # an older collection gains its text space from stored vectors
            self._keep_manifest_copy()
            indexer = Indexer(self, batch_size, workers or min(4, os.cpu_count() or 1))
            indexer.metadata = metadata or {}
            indexer.states = states or {}
            indexer.loader = loader
            report = indexer.run(files, prune_prefixes, progress)
            if not report.interrupted and loader is not None:
                self.read_headers()  # images whose files were read elsewhere (Ray, shards)
            return report

    def read_headers(self, *, workers: int = 4) -> HeaderPass:
        """Read the file headers (taken time, GPS, camera, lens) of the images that have none
        stored: images indexed by an older lookalike or by Ray workers. Headers only, no
        decoding; resumable (``collection.metadata``). Every indexing run starts with it.

        Example:
            >>> col.read_headers().read  # doctest: +SKIP
            12408
        """
        return read_headers(self, workers=workers)

    # -- completing spaces: every image has a vector in every space ----------------------------
    def spaces_missing(self) -> dict[str, int]:
        """Spaces some images have no vector in: space -> how many images lack one (from
        counts: the catalogue keeps no vector of an image that is gone)."""
        images = self.catalogue.count()["images"]
        counts = self.catalogue.vector_counts()
        return {
            space: images - counts.get(space, 0)
            for space in self.spaces()
            if counts.get(space, 0) < images
        }

    def complete_spaces(
        self, *, progress: Progress | None = None, batch_size: int = 32
    ) -> SpaceCompletion:
        """Compute the vectors images lack in any space, re-decoding their stored files: a space
        added to a collection that has images (``add_copy_space``), a run killed while doing
        so, vectors lost in a repaired catalogue. The text space is derived from the image
        vectors. Each batch is one transaction; the indexes of completed spaces are rebuilt and
        saved. Takes the write lock (re-entered when this thread holds it already).

        Images none of whose files still hold their content are reported in ``missing`` and
        stay incomplete (the next ``index`` of their folder drops or re-adds them).

        Example:
            >>> col.complete_spaces().embedded  # doctest: +SKIP
            {'copy': 108}
        """
        start = time.perf_counter()
        report = SpaceCompletion()
        with self.writing():
            if not self.spaces_missing():  # the usual case: two counts
                self._complete = True
                report.seconds = time.perf_counter() - start
                return report
            before = self.catalogue.generation()
            computed = [
                s for s, spec in self.spaces().items() if s != TEXT_SPACE and "derive" not in spec
            ]
            missing = {s: set(self.catalogue.ids_missing(s)) for s in computed}
            todo = sorted(set().union(*missing.values()))
            if todo and progress:
                progress(0, len(todo))
            for begin in range(0, len(todo), batch_size):
                records = self.catalogue.images(todo[begin : begin + batch_size])
                loaded = []
                for record in records:
                    image = self._decode_stored(record) if record is not None else None
                    if image is None:
                        if record is not None:
                            report.missing.extend(record.paths)
                            report.unreadable.append(record.id)
                        continue
                    loaded.append((record.id, image))
                for space in computed:
                    chosen = [(i, image) for i, image in loaded if i in missing[space]]
                    if not chosen:
                        continue
                    vectors = self._embed_space(space, [image for _, image in chosen])
                    self.catalogue.put_vectors(space, [i for i, _ in chosen], vectors)
                    report.embedded[space] = report.embedded.get(space, 0) + len(chosen)
                if progress:
                    progress(min(begin + batch_size, len(todo)), len(todo))
            if TEXT_SPACE in self.spaces() and IMAGE_SPACE in self.spaces():
                have = set(self.catalogue.ids_missing(TEXT_SPACE))
                have -= set(self.catalogue.ids_missing(IMAGE_SPACE))
                ids = sorted(have)
                for begin in range(0, len(ids), 1000):
                    chunk = ids[begin : begin + 1000]
                    stored = self.catalogue.vectors(IMAGE_SPACE, chunk)
                    self.catalogue.put_vectors(TEXT_SPACE, chunk, self._text_vectors_of(stored))
                if ids:
                    report.embedded[TEXT_SPACE] = len(ids)
            # Indexes of the other spaces still hold what the catalogue holds: only the
            # generation moved. Keep them current, so the saves below do not leave them stale.
            for space, (index, loaded_at) in list(self._indexes.items()):
                if loaded_at == before and space not in report.embedded:
                    self._indexes[space] = (index, self.catalogue.generation())
            for space in report.embedded:
                self.rebuild_index(space)
            self._complete = not self.spaces_missing()
        report.seconds = time.perf_counter() - start
        return report

    def _decode_stored(self, record: ImageRecord):
        """The image of a stored record from the first of its files that still holds its
        content (same hash), decoded as an indexing run decodes it; None when none does."""
        for path in record.paths:
            remote = sources.is_remote(path)
            try:
                state = FileState(0, 0) if remote else ingest.file_state(path)
            except (OSError, ImageError):  # gone, or not a file to read any more
                continue
            read = sources.read_bytes if remote else None
            item = ingest.load_file(path, state, min_side=self.decode_side, read=read)
            if item.error is None and item.content_hash == record.content_hash:
                return item.image
        return None

    def _embed_space(self, space: str, images: list) -> np.ndarray:
        """Vectors of ``space`` for decoded images: the space's own model, or the collection's."""
        if "model" in self.spaces()[space]:
            return self.space_embedder(space).embed_images(images)
        primary = self.embedder
        if hasattr(primary, "embed_spaces"):
            return np.asarray(primary.embed_spaces(images)[space], dtype=np.float32)
        if space != IMAGE_SPACE:
            raise CollectionError(f"{self.path}: no model computes the {space!r} space")
        return primary.embed_images(images)

    def get(self, image_id: int) -> ImageRecord | None:
        """The stored record of one image (files, size, metadata), or None."""
        return self.catalogue.images([int(image_id)])[0]

    def records(self, batch: int = 1000) -> Iterator[ImageRecord]:
        """Every stored image (files, size, metadata), in id order."""
        for ids, _ in self.catalogue.iter_vectors(IMAGE_SPACE, batch):
            yield from (r for r in self.catalogue.images(ids.tolist()) if r is not None)

    def update_metadata(self, image_id: int, metadata: Mapping[str, object]) -> dict:
        """Merge ``metadata`` into an image's metadata (a None value deletes a key)."""
        with self._lock:
            record = self.get(image_id)
            if record is None:
                raise CollectionError(f"no image {image_id} in {self.path}")
            merged = {**record.metadata, **metadata}
            merged = {k: v for k, v in merged.items() if v is not None}
            self.catalogue.set_metadata(int(image_id), merged)
            return merged

    def image_ids(self) -> list[int]:
        """The ids of every image, ascending (to page through a collection)."""
        return sorted({image_id for _, image_id in self.catalogue.file_states().values()})

    def image_id_of(self, content_hash: str) -> int | None:
        """The id of the image with this content hash (``ingest.content_hash``), or None."""
        return self.catalogue.image_id_by_hash(content_hash)

    def remove_images(self, ids: Iterable[int]) -> int:
        """Forget images by id, with every file that holds them; returns the files removed."""
        records = self.catalogue.images([int(i) for i in ids])
        paths = [p for r in records if r is not None for p in r.paths]
        return self.remove(paths) if paths else 0

    def remove(self, paths: Iterable[str | Path]) -> int:
        """Forget files (or every file under a folder); returns the number of files removed."""
        targets = [
            str(p) if sources.is_remote(p) else str(Path(p).expanduser().resolve()) for p in paths
        ]
        with self.writing():
            known = self.catalogue.file_states()
            doomed = [
                p
                for p in known
                if any(p == t or p.startswith(t.rstrip(os.sep) + os.sep) for t in targets)
            ]
            indexes = [self.index(space) for space in self.spaces()]
            orphans = np.asarray(self.catalogue.remove_files(doomed), dtype=np.int64)
            for index in indexes:
                index.remove(orphans)
            self.mark_indexes_current()
            self.save_indexes()
            return len(doomed)

    def add_copy_space(
        self, model: str | None = None, *, progress: Progress | None = None, regions: bool = False
    ):
        """Add (or complete) the copy-detection space by re-decoding the stored images' files;
        returns a ``copies.CopySpaceReport`` (``missing``: files that are gone). ``regions``:
        also the region descriptors that find heavy crops (``copies.space.add_copy_space``).

        Example:
            >>> col.add_copy_space("sscd-mobile").embedded  # doctest: +SKIP
            1200
        """
        copies = capability("copies.space")
        if model is None:
            model = self.spaces().get(COPY_SPACE, {}).get("model", copies.DEFAULT_COPY_MODEL)
        return copies.add_copy_space(self, model, progress=progress, regions=regions)

    def duplicates(self, threshold: float | None = None, k: int = 10, verify: bool = False):
        """Groups of exact and near-duplicate images (``copies.DuplicateGroup``), each with a
        suggested original; see ``copies.duplicates``."""
        return capability("copies.duplicates").duplicates(self, threshold, k, verify)

    def __len__(self) -> int:
        return self.catalogue.count()["images"]

    def info(self) -> dict:
        """A summary: location, format, model, index, counts and size on disk."""
        counts = self.catalogue.count()
        size = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return {
            "path": str(self.path),
            "format_version": self.manifest["format_version"],
            "created": self.manifest.get("created"),
            "model": self.manifest["model"],
            "index": {**self.manifest["index"], "vectors": len(self.index())},
            "spaces": {
                name: {**spec, "vectors": len(self.index(name))}
                for name, spec in self.spaces().items()
            },
            "images": counts["images"],
            "files": counts["files"],
            "skipped": counts["skipped"],
            "bytes_on_disk": size,
        }

    def close(self) -> None:
        self.catalogue.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- for capabilities: spaces of their own, written under the collection's lock ----------
    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the collection's write lock (across processes) and its in-process lock. The
        thread that holds it may enter again (a capability's step inside an indexing run).

        Raises:
            BusyError: another writer holds the collection.

        Example:
            >>> with col.writing():  # doctest: +SKIP
            ...     col.put_vectors("copy", ids, vectors)
        """
        me = threading.get_ident()
        if self._writer == me:
            yield
            return
        with WriteLock(self.path, self), self._lock:
            self._writer = me
            try:
                self.upgrade()  # a collection of an older format, before anything is written
                yield
            finally:
                self._writer = None

    def add_space(self, name: str, spec: Mapping[str, object], embedder: Embedder | None = None):
        """Record a vector space (``spec``: its manifest entry, see ``manifest.model_space_spec``)
        and the model that computes it; call it inside :meth:`writing`. Its vectors come from
        :meth:`complete_spaces` (and from every indexing run, which completes them first)."""
        if self.spaces().get(name) != dict(spec):
            self.manifest["spaces"][name] = dict(spec)
            write_json(self.path / "manifest.json", self.manifest)
            self._complete = False
            self._apply_encodings()
        self._keep_manifest_copy()
        if embedder is not None:
            self._space_embedders[name] = embedder

    def _keep_manifest_copy(self) -> None:
        """Keep a copy of the manifest in the catalogue, from which ``lookalike check
        --repair`` restores a damaged manifest.json."""
        text = json.dumps(self.manifest, sort_keys=True)
        if self.catalogue.get_meta(MANIFEST_COPY) != text:
            self.catalogue.set_meta(MANIFEST_COPY, text)

    def put_vectors(self, space: str, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Store vectors of ``space`` for existing images (the index follows on
        :meth:`rebuild_index`)."""
        self.catalogue.put_vectors(space, list(ids), vectors)

    def ids_missing(self, space: str) -> list[int]:
        """Images that have no vector in ``space`` yet."""
        return self.catalogue.ids_missing(space)

    def rebuild_index(self, space: str) -> VectorIndex:
        """Rebuild the index of ``space`` from the stored vectors and save it."""
        with self._lock:
            self._indexes.pop(space, None)
            index = self.index(space)
            self.save_indexes()
            return index
