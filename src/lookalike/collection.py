"""The Collection: the one object every front end talks to.

A collection is a folder::

    manifest.json        format version, model (name, version, dim), index kind
    catalogue.sqlite     images, files, metadata and every vector (the source of truth)
    index/image.faiss    the vector index: a cache, rebuilt from the catalogue when stale
    index/image.json     the catalogue generation the index was saved at

Writes go to the catalogue first, one transaction per batch; the index is saved atomically at the
end of a run. A run killed at any moment therefore leaves a valid collection: the next open sees
that the saved index is behind the catalogue and rebuilds it from the stored vectors, and the next
``add``/``sync`` skips every file already committed.

Example:
    >>> from lookalike import Collection
    >>> with Collection.open("photos.lookalike", create=True) as col:  # doctest: +SKIP
    ...     report = col.sync(["~/Pictures"])
    ...     for hit in col.search("query.jpg", k=5):
    ...         print(f"{hit.score:.3f} {hit.path}")
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from threadpoolctl import ThreadpoolController

from lookalike import ingest, sources
from lookalike.descriptors import Whitening, l2n, query_expansion
from lookalike.images import decode
from lookalike.index import VectorIndex, VectorIndexError, create_index, load_index
from lookalike.index.faiss_compat import keep_search_params
from lookalike.index.projected import ProjectedIndex, load_projection
from lookalike.models import Embedder, load_embedder
from lookalike.store import (
    CatalogueError,
    FileState,
    ImageRecord,
    NewImage,
    SQLiteCatalogue,
    open_catalogue,
)

#: Version of the folder layout and manifest; see ``_upgrade_manifest`` for older ones.
FORMAT_VERSION = 1
DEFAULT_MODEL = "efficientnet-lite0"
DEFAULT_INDEX = "flat"
#: The space of the collection's main (semantic) descriptor.
IMAGE_SPACE = "image"
#: The space text queries are matched in (derived from the image descriptors, see models/text.py).
TEXT_SPACE = "text"
#: The main space is searched in a PCA-reduced form of this many dimensions, learned on the
#: collection once it holds REDUCE_MIN_IMAGES images (from a sample of PCA_SAMPLE vectors), and
#: with α-query expansion over the first EXPAND results (docs/benchmarks.md: both raise mAP).
REDUCE_DIM = 256
REDUCE_MIN_IMAGES = 1000
PCA_SAMPLE = 20_000
EXPAND = 3

Progress = Callable[[int, int], None]
#: Loads the files to index, (path, state) pairs, into items; ``lookalike.bulk`` gives one that
#: embeds them in Ray workers (items then carry their ``vectors``).
Loader = Callable[[list[tuple[str, FileState]]], Iterable[ingest.Loaded]]
Query = str | Path | bytes | Image.Image | np.ndarray


class CollectionError(RuntimeError):
    """A collection cannot be created, opened or written (the message says what to do)."""


@dataclass
class SearchResult:
    """One hit: the image id, its first file, cosine similarity, and what else is known."""

    id: int
    path: str
    score: float
    paths: tuple[str, ...] = ()
    width: int = 0
    height: int = 0
    metadata: dict = field(default_factory=dict)
    # Set by geometric verification (copies.verify_results); None when not checked.
    verified: bool | None = None
    inliers: int | None = None
    region: tuple[int, int, int, int] | None = None

    def to_dict(self) -> dict:
        """The JSON form: ``path``, ``score``, ``id`` (the public contract) and extras."""
        out = {"path": self.path, "score": round(float(self.score), 6), "id": self.id}
        if len(self.paths) > 1:
            out["duplicates"] = list(self.paths[1:])
        if self.metadata:
            out["metadata"] = self.metadata
        if self.verified is not None:
            out["verified"] = bool(self.verified)
            out["inliers"] = int(self.inliers or 0)
            out["region"] = list(self.region) if self.region else None
        return out


@dataclass
class IndexReport:
    """What an ``add`` or ``sync`` did."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def embedded(self) -> int:
        """Images that went through the network in this run."""
        return self.added + self.updated

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["duplicates"] = [{"path": p, "same_as": o} for p, o in self.duplicates]
        out["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        out["images_per_second"] = round(self.images_per_second, 2)
        out["seconds"] = round(self.seconds, 3)
        return out


class Collection:
    """A searchable set of images stored in one folder.

    Open or create one with :meth:`open`; add images with :meth:`add` or :meth:`sync`; query with
    :meth:`search`. A collection is bound to the model it was built with.
    """

    def __init__(self, path: Path, manifest: dict, embedder: Embedder | None = None) -> None:
        self.path = path
        self.manifest = manifest
        try:
            self.catalogue = open_catalogue(manifest.get("catalogue") or path / "catalogue.sqlite")
        except CatalogueError as exc:  # e.g. a PostgreSQL server that cannot be reached
            raise CollectionError(str(exc)) from exc
        self._embedder = embedder
        self._indexes: dict[str, tuple[VectorIndex, int]] = {}
        self._space_embedders: dict[str, Embedder] = {}
        self._text_model = None
        self._lock = threading.RLock()
        self._writing = False  # holds the write lock now

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
        see ``lookalike.copies``) at indexing time.

        ``catalogue``: where images and vectors are kept, e.g. ``postgresql://host/db``
        (recorded in the manifest); by default ``catalogue.sqlite`` in the folder.
        """
        path = Path(path).expanduser()
        if (path / "manifest.json").exists():
            raise CollectionError(f"{path} already holds a collection")
        embedder = embedder or load_embedder(model)
        create_index(index, embedder.dim)  # fail now on an unknown kind, not at first search
        if catalogue is not None:  # fail before writing a manifest that points to nowhere
            try:
                open_catalogue(catalogue).close()
            except CatalogueError as exc:
                raise CollectionError(str(exc)) from exc
        path.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": "lookalike-collection",
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": {"name": embedder.name, "version": embedder.version, "dim": embedder.dim},
            "index": {"kind": index},
            "spaces": {
                IMAGE_SPACE: {
                    "dim": embedder.dim,
                    "index": index,
                    "reduce": REDUCE_DIM,
                    "expand": EXPAND,
                }
            },
        }
        if _has_text_side(embedder):
            manifest["spaces"][TEXT_SPACE] = _text_space_spec()
        if catalogue is not None:
            manifest["catalogue"] = str(catalogue)
        if copy_model is not None:
            from lookalike.copies import COPY_SPACE, copy_space_spec

            manifest["spaces"][COPY_SPACE] = copy_space_spec(load_embedder(copy_model))
        _write_json(path / "manifest.json", manifest)
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
        if not manifest_path.exists():
            if create:
                return cls.create(
                    path,
                    model=model or DEFAULT_MODEL,
                    index=index,
                    embedder=embedder,
                    catalogue=catalogue,
                    copy_model=copy_model,
                )
            raise CollectionError(
                f"no collection at {path}: create one with `lookalike index FOLDER "
                f"--collection {path}`"
            )
        manifest = _upgrade_manifest(json.loads(manifest_path.read_text()), path)
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
        return out

    # -- text search -----------------------------------------------------------------------
    def has_text(self) -> bool:
        """Whether text queries work: a model with a text side (CLIP) or descriptors that
        carry class probabilities (the default)."""
        return _joint_text(self.embedder) or _has_text_side(self.embedder)

    @property
    def text_model(self):
        """The offline text model (ConSE over ImageNet classes), loaded on first use."""
        if not _has_text_side(self.embedder):
            raise CollectionError(
                f"{self.path} was built with {self.model_name!r}, which has no text side: "
                "text search needs a model whose descriptor carries class probabilities "
                "(the default efficientnet-lite0) or a CLIP model"
            )
        if self._text_model is None:
            from lookalike.models.text import ConSE

            self._text_model = ConSE()
        return self._text_model

    def _text_vectors_of(self, image_vectors: np.ndarray) -> np.ndarray:
        """Text-space vectors of images, from their stored descriptors (no decoding)."""
        probs = self.embedder.class_probabilities(image_vectors)
        return self.text_model.image_vectors(np.log(np.clip(probs, 1e-30, None)))

    def text_query(
        self,
        texts: Sequence[str | tuple[str, float]] = (),
        *,
        negative: Sequence[str | tuple[str, float]] = (),
        images: Sequence[Query] = (),
        image_weight: float = 1.0,
    ) -> np.ndarray:
        """One query vector in the text space: texts (and images) added, ``negative`` texts
        subtracted, each with an optional weight, as rclip combines queries.

        Example:
            >>> col.text_query([("beach", 1.0)], negative=[("people", 0.5)])  # doctest: +SKIP
        """
        terms = [_weighted(t) for t in texts]
        minus = [_weighted(t) for t in negative]
        if not terms and not images:
            raise CollectionError("a text query needs at least one text or image")
        joint = _joint_text(self.embedder)  # CLIP: text and images share the image space
        model = self.embedder if joint else self.text_model
        query = np.zeros(self.dim if joint else model.dim, np.float32)
        if terms or minus:
            vectors = model.embed_text([t for t, _ in terms + minus])
            weights = [w for _, w in terms] + [-w for _, w in minus]
            query += np.asarray(weights, np.float32) @ vectors
        if images:
            seen = self.embed(list(images))
            query += image_weight * (seen if joint else self._text_vectors_of(seen)).sum(axis=0)
        return l2n(query[None])

    def search_text(
        self,
        texts: Sequence[str | tuple[str, float]] | str,
        k: int = 10,
        *,
        negative: Sequence[str | tuple[str, float]] = (),
        images: Sequence[Query] = (),
    ) -> list[SearchResult]:
        """Images that match a description, best first (score: cosine in the text space).

        ``texts`` is one text or several (``"text"`` or ``("text", weight)``), combined with
        ``images`` and minus ``negative`` texts. Works offline with the default model.

        Example:
            >>> col.search_text("a red bus", k=5)  # doctest: +SKIP
            >>> col.search_text("beach", negative=["people"])  # doctest: +SKIP
        """
        if isinstance(texts, str):
            texts = [texts]
        query = self.text_query(texts, negative=negative, images=images)
        if _joint_text(self.embedder):
            return self.search_vectors(query, k, expand=0)[0]
        spec = self.spaces().get(TEXT_SPACE)
        if spec is not None and spec.get("version") == self.text_model.version:
            return self.search_vectors(query, k, space=TEXT_SPACE)[0]
        # An older collection: derive text vectors from the stored descriptors on the fly.
        best_ids, best_scores = [], []
        for ids, vectors in self.catalogue.iter_vectors(IMAGE_SPACE):
            scores = self._text_vectors_of(vectors) @ query[0]
            best_ids.append(ids)
            best_scores.append(scores)
        if not best_ids:
            return []
        ids, scores = np.concatenate(best_ids), np.concatenate(best_scores)
        order = np.argsort(-scores, kind="stable")[:k]
        return self._results(ids[order], scores[order])

    def enable_text(self) -> bool:
        """Add (or refresh) the stored text space from the stored descriptors, so text search
        uses an index; returns whether anything was written. ``add``/``sync`` call it."""
        if not _has_text_side(self.embedder):  # CLIP searches text in its own image space
            return False
        spec = _text_space_spec(self.text_model)
        if self.spaces().get(TEXT_SPACE) == spec and not self.catalogue.ids_missing(TEXT_SPACE):
            return False
        with self._lock:
            for ids, vectors in self.catalogue.iter_vectors(IMAGE_SPACE):
                self.catalogue.put_vectors(TEXT_SPACE, ids.tolist(), self._text_vectors_of(vectors))
            self.manifest["spaces"][TEXT_SPACE] = spec
            _write_json(self.path / "manifest.json", self.manifest)
            self._indexes.pop(TEXT_SPACE, None)
        return True

    # -- indexes (caches of the catalogue), one per vector space -------------------------------
    def spaces(self) -> dict[str, dict]:
        """The searchable vector spaces: name -> {"dim", "index", ...}."""
        return self.manifest["spaces"]

    def _index_file(self, space: str) -> Path:
        return self.path / "index" / f"{space}.faiss"

    def index(self, space: str = IMAGE_SPACE) -> VectorIndex:
        """The index of ``space``, loaded or rebuilt so that it agrees with the catalogue."""
        if space not in self.spaces():
            if space == "copy":
                from lookalike.copies import how_to_add

                raise CollectionError(how_to_add(self.path))
            raise CollectionError(f"{self.path} has no {space!r} vectors")
        with self._lock:
            generation = self.catalogue.generation()
            cached = self._indexes.get(space)
            if cached is not None and cached[1] == generation:
                return cached[0]
            spec = self.spaces()[space]
            file = self._index_file(space)
            state_file = file.with_suffix(".json")
            saved = _saved_generation(state_file) if file.exists() else None
            if saved != generation and not self._writing and _WriteLock.held(self.path):
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

    def _refit_projections(self) -> None:
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
            sample = _sample_vectors(self.catalogue, space, PCA_SAMPLE)
            projection = Whitening.fit(sample, dim=int(dim), power=0.0)
            self._indexes[space] = (
                self._build_index(space, (projection, count)),
                self.catalogue.generation(),
            )

    def _save_indexes(self) -> None:
        """Write every loaded index atomically, stamped with the catalogue's generation."""
        generation = self.catalogue.generation()
        for space, (index, _) in list(self._indexes.items()):
            file = self._index_file(space)
            index.save(file)
            _write_json(
                file.with_suffix(".json"),
                {"generation": generation, "count": len(index), "kind": index.kind},
            )
            self._indexes[space] = (index, generation)

    def _mark_current(self) -> None:
        """The loaded indexes were updated in step with the catalogue's last writes."""
        generation = self.catalogue.generation()
        for space, (index, _) in list(self._indexes.items()):
            self._indexes[space] = (index, generation)

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
        states = _list_remote(p for p in paths if sources.is_remote(p))
        files = _expand(p for p in paths if not sources.is_remote(p)) + list(states)
        given = {
            (str(p) if sources.is_remote(p) else _resolve(p)): dict(m)
            for p, m in (metadata or {}).items()
        }
        return self._index_files(
            files, set(), progress, batch_size, workers, given, states=states, loader=loader
        )

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

        A folder may be an ``s3://bucket/prefix`` (see ``lookalike.sources``): its objects are
        recorded as ``s3://bucket/key`` with their size and ETag as the change key. ``loader``
        replaces the reading and embedding of new files (``lookalike.bulk.RayLoader``).
        """
        folders = list(folders)
        remote = [str(f) for f in folders if sources.is_remote(f)]
        folders = [Path(f).expanduser().resolve() for f in folders if not sources.is_remote(f)]
        for folder in folders:
            if not folder.exists():
                raise CollectionError(f"no such folder: {folder}")
        states = _list_remote(remote)
        files = _expand(folders) + list(states)
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
        ``lookalike.bulk.embed_with_ray``, format in docs/architecture.md) into the collection,
        as ``add`` would: files already indexed with the same state are left alone, failed rows
        are recorded as skipped, identical contents are linked.

        Example:
            >>> col.add_embedded("shards/")  # doctest: +SKIP
        """
        from lookalike import bulk

        info = bulk.read_shard_info(shards)
        bulk.check_compatible(self, info)
        states = bulk.shard_states(shards)
        return self._index_files(
            list(states),
            set(),
            progress,
            batch_size,
            None,
            states=states,
            loader=lambda todo: bulk.read_shards(shards, only={p for p, _ in todo}),
        )

    def _complete_vectors(self, given: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The vectors of every space from vectors embedded elsewhere: the spaces given, and the
        text space derived from the image space."""
        out = {space: np.stack([g[space] for g in given]).astype(np.float32) for space in given[0]}
        missing = [s for s in self.spaces() if s not in out and s != TEXT_SPACE]
        if missing:
            raise CollectionError(f"the embedded vectors lack the spaces {missing}")
        if TEXT_SPACE in self.spaces():
            out[TEXT_SPACE] = self._text_vectors_of(out[IMAGE_SPACE])
        return out

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
        with _WriteLock(self.path, self), self._lock:
            self.enable_text()  # an older collection gains its text space from stored vectors
            indexer = _Indexer(self, batch_size, workers or min(4, os.cpu_count() or 1))
            indexer.metadata = metadata or {}
            indexer.states = states or {}
            indexer.loader = loader
            return indexer.run(files, prune_prefixes, progress)

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
        with _WriteLock(self.path, self), self._lock:
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
            self._mark_current()
            self._save_indexes()
            return len(doomed)

    # -- reading ----------------------------------------------------------------------------
    def embed(self, queries: Sequence[Query], space: str = IMAGE_SPACE) -> np.ndarray:
        """Descriptors of query images in ``space`` (paths, bytes, PIL images; vectors pass
        through unchanged)."""
        vectors: list[np.ndarray | None] = [None] * len(queries)
        images, where = [], []
        for i, query in enumerate(queries):
            if isinstance(query, np.ndarray):
                vectors[i] = query.astype(np.float32).reshape(-1)
            else:
                images.append(decode(query, min_side=self.decode_side))
                where.append(i)
        if images:
            embedded = self.space_embedder(space).embed_images(images)
            for i, v in zip(where, embedded, strict=True):
                vectors[i] = v
        dim = int(self.spaces()[space]["dim"])
        return np.stack(vectors) if vectors else np.zeros((0, dim), np.float32)

    def search(
        self,
        query: Query,
        k: int = 10,
        *,
        space: str = IMAGE_SPACE,
        expand: int | None = None,
        verify: bool = False,
    ) -> list[SearchResult]:
        """The ``k`` images most similar to ``query``, best first (score = cosine similarity).

        ``query`` is a path, the bytes of an image file, a PIL image, or a vector. ``expand``:
        see :meth:`search_vectors`. ``space="copy"`` finds edited copies (see
        :meth:`add_copy_space`); ``verify=True`` re-ranks the hits by keypoint matching and
        fills their ``verified``, ``inliers`` and ``region`` (``copies.verify_results``).
        """
        self.index(space)  # a missing space fails here, before the model is loaded
        results = self.search_vectors(self.embed([query], space), k, space=space, expand=expand)
        if verify:
            from lookalike.copies import verify_results

            results = verify_results(query, results[0])
            return results
        return results[0]

    def add_copy_space(self, model: str | None = None, *, progress: Progress | None = None):
        """Add (or complete) the copy-detection space by re-decoding the stored images' files;
        returns a ``copies.CopySpaceReport`` (``missing``: files that are gone).

        Example:
            >>> col.add_copy_space("sscd-mobile").embedded  # doctest: +SKIP
            1200
        """
        from lookalike.copies import DEFAULT_COPY_MODEL, add_copy_space

        return add_copy_space(self, model or DEFAULT_COPY_MODEL, progress=progress)

    def duplicates(self, threshold: float | None = None, k: int = 10, verify: bool = False):
        """Groups of exact and near-duplicate images (``copies.DuplicateGroup``), each with a
        suggested original; see ``copies.duplicates``."""
        from lookalike.copies import duplicates

        return duplicates(self, threshold, k, verify)

    def search_many(
        self,
        queries: Sequence[Query],
        k: int = 10,
        *,
        space: str = IMAGE_SPACE,
        expand: int | None = None,
    ) -> list[list[SearchResult]]:
        """:meth:`search` for several queries at once (one batch through the model)."""
        vectors = self.embed(queries, space)
        return self.search_vectors(vectors, k, space=space, expand=expand)

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = 10,
        *,
        space: str = IMAGE_SPACE,
        expand: int | None = None,
    ) -> list[list[SearchResult]]:
        """Nearest images to each row of ``vectors`` (already in ``space``).

        ``expand`` is the number of first results that α-query expansion adds to the query
        before a second search (the space's default when None; 0 turns it off). Scores are then
        cosine similarities to the expanded query.
        """
        index = self.index(space)
        if len(index) == 0 or len(vectors) == 0:
            return [[] for _ in range(len(vectors))]
        expand = self.spaces()[space].get("expand", 0) if expand is None else expand
        keep_search_params()  # pytorch-metric-learning's FAISS patch drops params= (ann kinds)
        with _single_thread_blas(len(vectors) <= 16):
            scores, ids = index.search(vectors, max(k, expand))
            if expand:
                scores, ids = self._expanded_search(index, space, vectors, scores, ids, expand, k)
        return [self._results(i[:k], s[:k]) for i, s in zip(ids, scores, strict=True)]

    def project(self, vectors: np.ndarray, space: str = IMAGE_SPACE) -> np.ndarray:
        """Stored vectors in the coordinates the index of ``space`` compares (PCA-reduced when
        the collection has learned a projection); their inner products are the search scores."""
        index = self.index(space)
        return index.project(vectors) if isinstance(index, ProjectedIndex) else l2n(vectors)

    def _expanded_search(
        self,
        index: VectorIndex,
        space: str,
        vectors: np.ndarray,
        scores: np.ndarray,
        ids: np.ndarray,
        top: int,
        k: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = self.project(vectors, space)
        expanded = []
        with _single_thread_blas(True):  # tiny products per query: a woken pool only costs
            for query, row_ids, row_scores in zip(queries, ids, scores, strict=True):
                found = row_ids[:top] >= 0
                stored = self.catalogue.vectors(space, row_ids[:top][found].tolist())
                neighbours = self.project(stored, space)
                sims = row_scores[:top][found][None]
                expanded.append(
                    query_expansion(query[None], neighbours, sims, top=len(neighbours))[0]
                )
        inner = index.inner if isinstance(index, ProjectedIndex) else index
        return inner.search(np.stack(expanded), k)

    def _results(self, ids: np.ndarray, scores: np.ndarray) -> list[SearchResult]:
        keep = ids >= 0
        records = self.catalogue.images(ids[keep].tolist())
        return [
            SearchResult(
                id=r.id,
                path=r.path,
                score=float(s),
                paths=r.paths,
                width=r.width,
                height=r.height,
                metadata=r.metadata,
            )
            for r, s in zip(records, scores[keep], strict=True)
            if r is not None
        ]

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


class _Indexer:
    """One indexing run: decide what changed, load in threads, embed and commit in batches."""

    def __init__(self, collection: Collection, batch_size: int, workers: int) -> None:
        self.col = collection
        self.cat = collection.catalogue
        self.batch_size = max(1, batch_size)
        self.workers = workers
        self.report = IndexReport()
        self.metadata: dict[str, dict] = {}
        # States known without a stat (objects listed in S3, rows of embedding shards), and a
        # loader that yields loaded (or already-embedded) items for the files to do.
        self.states: dict[str, FileState] = {}
        self.loader: Loader | None = None

    def run(self, files: list[str], prune: set[str], progress: Progress | None) -> IndexReport:
        start = time.perf_counter()
        self.col.embedder  # noqa: B018 - load and check the model before any work
        self.indexes = {space: self.col.index(space) for space in self.col.spaces()}
        known = self.cat.file_states()
        skips = self.cat.skipped_states()
        todo: list[tuple[str, FileState]] = []
        self.replaced: set[str] = set()
        for path in files:
            try:
                state = self.states.get(path) or ingest.file_state(path)
            except OSError as exc:
                self.report.skipped.append((path, f"cannot read file: {exc.strerror or exc}"))
                continue
            if path in known:
                if known[path][0] == state:
                    self.report.unchanged += 1
                    if path in self.metadata:
                        self.col.update_metadata(known[path][1], self.metadata[path])
                    continue
                self.replaced.add(path)
            elif path in skips and skips[path][0] == state:
                self.report.skipped.append((path, skips[path][1]))  # unchanged since it failed
                continue
            todo.append((path, state))
        if prune:
            listed = set(files)
            gone = [p for p in known if p.startswith(tuple(prune)) and p not in listed]
            self._drop(gone)
            self.report.removed = len(gone)
            self.cat.forget_skips(
                p for p in skips if p.startswith(tuple(prune)) and p not in listed
            )

        self.pending: list[ingest.Loaded] = []
        self.hashes_in_batch: dict[str, str] = {}
        self.deferred: list[ingest.Loaded] = []

        prepare = getattr(self.col.embedder, "prepare", None)

        def load(path: str, state: FileState) -> ingest.Loaded:
            item = ingest.load_file(path, state, min_side=self.col.decode_side, read=_reader(path))
            if prepare is not None and item.image is not None:
                item.prepared = prepare(item.image)  # resize here, beside the network's work
            return item

        total = len(todo)
        if progress:
            progress(0, total)
        try:
            loaded = (
                self.loader(todo)
                if self.loader is not None
                else ingest.load_files(todo, load, workers=self.workers, window=4 * self.batch_size)
            )
            for done, item in enumerate(loaded, 1):
                self._take(item)
                if len(self.pending) >= self.batch_size:
                    self._flush()
                if progress:
                    progress(done, total)
            self._flush()
        except KeyboardInterrupt:
            self.report.interrupted = True
        finally:
            self.col._mark_current()
            self.col._refit_projections()
            self.col._save_indexes()
            self.report.seconds = time.perf_counter() - start
        return self.report

    def _take(self, item: ingest.Loaded) -> None:
        if item.error is not None:
            self.cat.record_skip(item.path, item.state, item.error)
            self.report.skipped.append((item.path, item.error))
            return
        if item.content_hash in self.hashes_in_batch:
            self.deferred.append(item)  # same content as a file waiting in this batch
            return
        existing = self.cat.image_id_by_hash(item.content_hash)
        if existing is not None:
            self._link(item, existing)
            return
        if item.image is None and item.vectors is None:  # hash was known, its image has gone
            item = ingest.load_file(
                item.path, item.state, min_side=self.col.decode_side, read=_reader(item.path)
            )
            if item.error is not None:
                self._take(item)
                return
        self.hashes_in_batch[item.content_hash] = item.path
        self.pending.append(item)

    def _link(self, item: ingest.Loaded, image_id: int) -> None:
        record = self.cat.images([image_id])[0]
        if item.path in self.replaced:
            self._drop([item.path])
            self.report.updated += 1
        if record is not None and item.path not in record.paths:
            others = [p for p in record.paths if p != item.path]
            if others:
                self.report.duplicates.append((item.path, others[0]))
        self.cat.link_file(item.path, image_id, item.state)
        if item.path in self.metadata:
            self.col.update_metadata(image_id, self.metadata[item.path])

    def _flush(self) -> None:
        if self.pending:
            batch, self.pending = self.pending, []
            prepared = [item.prepared for item in batch]
            if all(item.vectors is not None for item in batch):  # embedded elsewhere (bulk.py)
                vectors = self.col._complete_vectors([item.vectors for item in batch])
            else:
                vectors = self.col.embed_images(
                    [item.image for item in batch],
                    prepared=prepared if all(p is not None for p in prepared) else None,
                )
            replaced = [item.path for item in batch if item.path in self.replaced]
            self._drop(replaced)
            ids = self.cat.add_images(
                [
                    NewImage(
                        content_hash=item.content_hash,
                        path=item.path,
                        state=item.state,
                        width=item.width,
                        height=item.height,
                        vectors={space: v[i] for space, v in vectors.items()},
                        metadata=self.metadata.get(item.path, {}),
                    )
                    for i, item in enumerate(batch)
                ]
            )
            for space, index in self.indexes.items():
                index.add(np.asarray(ids, dtype=np.int64), vectors[space])
            self.report.updated += len(replaced)
            self.report.added += len(batch) - len(replaced)
        self.hashes_in_batch.clear()
        deferred, self.deferred = self.deferred, []
        for item in deferred:
            self._take(item)

    def _drop(self, paths: list[str]) -> None:
        orphans = self.cat.remove_files(paths)
        for index in self.indexes.values():
            index.remove(np.asarray(orphans, dtype=np.int64))


class _WriteLock:
    """An exclusive lock on the collection folder, so two writers never interleave."""

    def __init__(self, path: Path, owner: Collection | None = None) -> None:
        self.file = path / ".lock"
        self.owner = owner  # told it is the writer: it follows its own writes, not the files

    def __enter__(self) -> None:
        self.handle = open(self.file, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise CollectionError(
                f"another lookalike process is writing {self.file.parent}; wait for it to finish"
            ) from None
        if self.owner is not None:
            self.owner._writing = True

    def __exit__(self, *_: object) -> None:
        if self.owner is not None:
            self.owner._writing = False
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()

    @staticmethod
    def held(path: Path) -> bool:
        """Whether a writer holds the lock of ``path`` now: another process, or another open
        Collection of this one (flock locks belong to open files). A crashed writer's lock is
        released by the kernel, so its half-done work is never waited for."""
        if not (path / ".lock").exists():
            return False
        with open(path / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _saved_generation(state_file: Path) -> int | None:
    """The catalogue generation a saved index was stamped with (None: none, or unreadable)."""
    try:
        return int(json.loads(state_file.read_text())["generation"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _joint_text(embedder: Embedder) -> bool:
    """A model that embeds text in its own image space (CLIP)."""
    return hasattr(embedder, "embed_text")


def _has_text_side(embedder: Embedder) -> bool:
    return hasattr(embedder, "class_probabilities") and getattr(embedder, "fusion", 0) > 0


def _text_space_spec(model: object | None = None) -> dict:
    if model is None:
        from lookalike.models.text import ConSE

        model = ConSE()
    return {"dim": model.dim, "index": "flat", "derive": "conse", "version": model.version}


def _weighted(term: str | tuple[str, float]) -> tuple[str, float]:
    """``"beach"`` -> ("beach", 1.0); ``("beach", 2)`` and ``"beach:2"`` -> ("beach", 2.0)."""
    if isinstance(term, tuple):
        return term[0], float(term[1])
    text, _, weight = term.rpartition(":")
    try:
        return (text, float(weight)) if text else (term, 1.0)
    except ValueError:
        return term, 1.0


def _resolve(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def _reader(path: str) -> Callable[[str], bytes] | None:
    """How to read ``path``: None for a local file, ``sources.read_bytes`` for a URI."""
    return sources.read_bytes if sources.is_remote(path) else None


def _list_remote(uris: Iterable[str | Path]) -> dict[str, FileState]:
    """Image objects under remote prefixes (``s3://...``): URI -> state (size, ETag)."""
    states: dict[str, FileState] = {}
    for uri in uris:
        try:
            states.update(sources.list_images(str(uri)))
        except sources.SourceError as exc:
            raise CollectionError(str(exc)) from exc
    return states


def _expand(paths: Iterable[str | Path]) -> list[str]:
    """Files as given plus image files under folders, absolute, without repeats."""
    out: dict[str, None] = {}
    for p in paths:
        path = Path(p).expanduser().resolve()
        if path.is_dir():
            out.update(dict.fromkeys(ingest.walk(path)))
        else:
            out[str(path)] = None
    return list(out)


_THREADPOOLS = ThreadpoolController()


def _single_thread_blas(enabled: bool) -> contextlib.AbstractContextManager:
    """BLAS on one thread for the small products of a few queries: waking a thread pool costs
    more than the product (measured 3 ms against 0.1 ms for 1x2280 @ 2280x256 on 2 busy cores)."""
    if not enabled:
        return contextlib.nullcontext()
    return _THREADPOOLS.limit(limits=1, user_api="blas")


def _sample_vectors(catalogue: SQLiteCatalogue, space: str, limit: int) -> np.ndarray:
    """Up to ``limit`` vectors of ``space``, spread evenly over the catalogue."""
    chunks = list(catalogue.iter_vectors(space))
    vectors = np.concatenate([v for _, v in chunks])
    if len(vectors) > limit:
        vectors = vectors[np.linspace(0, len(vectors) - 1, limit).astype(int)]
    return vectors


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _upgrade_manifest(manifest: dict, path: Path) -> dict:
    """Bring an older manifest up to FORMAT_VERSION, or explain why it cannot be opened."""
    if manifest.get("format") != "lookalike-collection":
        raise CollectionError(f"{path}/manifest.json is not a lookalike collection manifest")
    version = int(manifest.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise CollectionError(
            f"{path} has collection format {version}, newer than this lookalike reads "
            f"({FORMAT_VERSION}): upgrade lookalike (pip install -U lookalike)"
        )
    # Format 1 is the first; future upgrades go here, oldest first, and rewrite the manifest.
    # Early format-1 manifests named only the model's space; derive it.
    manifest.setdefault(
        "spaces",
        {IMAGE_SPACE: {"dim": manifest["model"]["dim"], "index": manifest["index"]["kind"]}},
    )
    return manifest
