"""Bulk embedding with Ray Data: decode and embed in parallel worker processes, write the
vectors as shards (:mod:`lookalike.ingest.shards`), and merge them into a collection in one
writer. This module drives a collection, so it sits above the core (docs/architecture.md).

Each Ray worker is an actor that loads the model once (one thread: the workers are the
parallelism) and turns batches of ``(path, size, mtime_ns)`` rows into rows of content hash,
size, error and vector; the driver writes them as shards (format in :mod:`lookalike.ingest.shards`
and docs/architecture.md) and the collection merges each shard as it is written, through the same
code as ``Collection.sync``: unchanged files are skipped before any work, failed files are
recorded as skipped, identical contents are linked, and each batch is one transaction (a killed
run resumes). Paths must be readable by the workers: local files with a local Ray (the
default) or a shared file system, or ``s3://`` URIs (``lookalike.ingest.sources``) anywhere.

Example:
    >>> from lookalike import Collection
    >>> from lookalike.ingest.bulk import embed_with_ray, index_with_ray
    >>> with Collection.open("photos.lookalike", create=True) as col:  # doctest: +SKIP
    ...     report = index_with_ray(col, ["~/Pictures", "s3://bucket/photos"], workers=4)
    >>> info = embed_with_ray(["/data/images"], "efficientnet-lite0", "shards/",  # doctest: +SKIP
    ...                       workers=8, address="auto")  # a running Ray cluster
    >>> Collection.open("photos.lookalike").add_embedded("shards/")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lookalike.collection import IndexReport
from lookalike.errors import BulkError
from lookalike.ingest import files as ingest
from lookalike.ingest import sources
from lookalike.ingest.shards import (  # noqa: F401 - the shard API, re-exported
    SHARD_FORMAT,
    SHARD_ROWS,
    ShardWriter,
    read_part,
    read_shard_info,
    read_shards,
    shard_states,
)
from lookalike.store.base import FileState

if TYPE_CHECKING:
    from lookalike.collection import Collection


Progress = Callable[[int, int], None]


# -- the Ray side ------------------------------------------------------------------------------
class EmbedWorker:
    """A Ray Data actor: reads, hashes, decodes and embeds batches of files with one model.

    ``env`` is applied to the worker process first (the driver's AWS variables and model cache),
    since a Ray worker may have started before the driver set them.
    """

    def __init__(self, model_name: str, version: str, env: dict[str, str]) -> None:
        os.environ.update(env)
        from lookalike.models import load_embedder

        try:
            self.embedder = load_embedder(model_name, threads=1)
        except TypeError:  # a model without a thread setting
            self.embedder = load_embedder(model_name)
        if self.embedder.version != version:
            raise BulkError(
                f"worker computes {self.embedder.version!r}, the collection holds {version!r}: "
                "install the same lookalike on every Ray node"
            )
        self.min_side = int(getattr(self.embedder, "input_size", 0)) or None
        self.prepare = getattr(self.embedder, "prepare", None)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [
            ingest.load_file(
                str(path),
                FileState(int(size), int(mtime)),
                min_side=self.min_side,
                read=sources.read_bytes if sources.is_remote(path) else None,
            )
            for path, size, mtime in zip(
                batch["path"], batch["size"], batch["mtime_ns"], strict=True
            )
        ]
        good = [i for i, r in enumerate(rows) if r.error is None and r.image is not None]
        vectors = np.zeros((len(rows), self.embedder.dim), np.float32)
        if good:
            images = [rows[i].image for i in good]
            if self.prepare is not None and hasattr(self.embedder, "embed_prepared"):
                vectors[good] = self.embedder.embed_prepared([self.prepare(im) for im in images])
            else:
                vectors[good] = self.embedder.embed_images(images)
        return {
            "path": np.array([r.path for r in rows], dtype=object),
            "size": np.array([r.state.size for r in rows], np.int64),
            "mtime_ns": np.array([r.state.mtime_ns for r in rows], np.int64),
            "content_hash": np.array([r.content_hash for r in rows], dtype=object),
            "width": np.array([r.width for r in rows], np.int32),
            "height": np.array([r.height for r in rows], np.int32),
            "error": np.array([r.error or "" for r in rows], dtype=object),
            "vector": vectors,
        }


@contextlib.contextmanager
def ray_session(address: str | None, workers: int) -> Iterator[None]:
    """Ray for the duration of a run: the running one when ``ray.init`` was already called,
    a local one with ``workers`` CPUs for ``address`` None or ``"local"``, else the cluster at
    ``address`` (``"auto"``, ``"ray://host:10001"``). A Ray started here is shut down after."""
    try:
        import ray
    except ImportError as exc:
        raise BulkError("--ray needs Ray Data: pip install 'lookalike[ray]'") from exc
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # not "progress bars disabled"
    if ray.is_initialized():
        yield
        return
    if address in (None, "", "local"):
        ray.init(
            num_cpus=max(1, workers),
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            object_store_memory=512 * 1024 * 1024,
        )
    else:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BulkError(f"cannot connect to Ray at {address}: {exc}") from exc
    try:
        yield
    finally:
        ray.shutdown()


def _warm_model_cache(model_name: str) -> None:
    """Build (or find) the model's cached files here, once, so that the workers load them
    instead of exporting the same model concurrently."""
    from lookalike.models import load_embedder
    from lookalike.models.efficientnet import EfficientNetLite, onnx_model

    embedder = load_embedder(model_name)
    if isinstance(embedder, EfficientNetLite):
        onnx_model(embedder.name, embedder.precision)
    elif hasattr(embedder, "session"):
        embedder.session  # noqa: B018 - creating the session builds its cached files


def _worker_env() -> dict[str, str]:
    env = sources.remote_environment()
    env["OMP_NUM_THREADS"] = "1"
    if "LOOKALIKE_CACHE" in os.environ:
        env["LOOKALIKE_CACHE"] = os.environ["LOOKALIKE_CACHE"]
    else:
        from lookalike.models.efficientnet import cache_dir

        env["LOOKALIKE_CACHE"] = str(cache_dir())
    return env


def ray_batches(
    items: Sequence[tuple[str, FileState]],
    model_name: str,
    version: str,
    *,
    workers: int = 2,
    address: str | None = None,
    batch_size: int = 32,
) -> Iterator[dict[str, np.ndarray]]:
    """Embedded rows of ``items`` from a pool of ``workers`` Ray actors (at most the cluster's
    CPUs), batch by batch, in the order they finish (see :class:`EmbedWorker` for the columns)."""
    if not items:
        return
    _warm_model_cache(model_name)
    with ray_session(address, workers):
        import ray.data

        cpus = int(ray.cluster_resources().get("CPU", 0))
        workers = max(1, min(workers, cpus) if cpus else workers)  # a pool that fits, or it waits
        rows = [{"path": p, "size": s.size, "mtime_ns": s.mtime_ns} for p, s in items]
        # Blocks of one batch each, and at least one per worker, so that every actor gets work.
        blocks = max(min(workers, len(rows)), math.ceil(len(rows) / batch_size))
        dataset = ray.data.from_items(rows, override_num_blocks=blocks)
        embedded = dataset.map_batches(
            EmbedWorker,
            fn_constructor_kwargs={
                "model_name": model_name,
                "version": version,
                "env": _worker_env(),
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=max(1, workers)),
            num_cpus=1,
        )
        yield from embedded.iter_batches(batch_size=None, batch_format="numpy")


class RayLoader:
    """A ``Collection.sync``/``add`` loader that embeds the files to do in Ray workers, writes
    them as shards in ``out_dir`` and yields each shard's rows as soon as it is written.

    With ``out_dir`` None the shards go to a folder inside the collection that is removed after
    the run; otherwise they are kept.
    """

    def __init__(
        self,
        col: Collection,
        *,
        workers: int = 2,
        address: str | None = None,
        out_dir: str | Path | None = None,
        batch_size: int = 32,
        shard_rows: int = 256,
    ) -> None:
        col.check_shards({"model": col.manifest["model"]})
        self.col = col
        self.workers = max(1, workers)
        self.address = address
        self.out_dir = Path(out_dir).expanduser() if out_dir is not None else None
        self.batch_size = max(1, batch_size)
        self.shard_rows = shard_rows

    def __call__(self, todo: list[tuple[str, FileState]]) -> Iterator[ingest.Loaded]:
        if not todo:  # nothing new: Ray is not even started
            return
        out = self.out_dir or self.col.path / "shards" / f"run-{os.getpid()}-{time.time_ns()}"
        try:
            writer = ShardWriter(out, self.col.manifest["model"], self.shard_rows)
            for batch in ray_batches(
                todo,
                self.col.model_name,
                self.col.manifest["model"]["version"],
                workers=self.workers,
                address=self.address,
                batch_size=self.batch_size,
            ):
                for name in writer.add(batch):
                    yield from read_part(out, name)
            for name in writer.close():
                yield from read_part(out, name)
        finally:
            if self.out_dir is None:
                shutil.rmtree(out, ignore_errors=True)
                with contextlib.suppress(OSError):
                    out.parent.rmdir()  # "shards/" when no other run uses it


def index_with_ray(
    col: Collection,
    folders: Iterable[str | Path],
    *,
    workers: int = 2,
    address: str | None = None,
    shards: str | Path | None = None,
    progress: Progress | None = None,
    batch_size: int = 32,
) -> IndexReport:
    """``col.sync(folders)`` with new and changed files embedded by ``workers`` Ray actors
    (``address``: see :func:`ray_session`); ``shards``: keep the embedding shards there."""
    col.embedder  # noqa: B018 - the model here must be the collection's before Ray starts
    loader = RayLoader(col, workers=workers, address=address, out_dir=shards, batch_size=batch_size)
    return col.sync(folders, progress=progress, batch_size=batch_size, loader=loader)


def list_sources(paths_or_uris: Iterable[str | Path]) -> list[tuple[str, FileState]]:
    """Image files under local folders and ``s3://`` prefixes, with their states (a local
    file that cannot be stat'ed gets state (0, 0), and its read error comes out in the shard)."""
    items: dict[str, FileState] = {}
    for source in paths_or_uris:
        if sources.is_remote(source):
            try:
                items.update(sources.list_images(str(source)))
            except sources.SourceError as exc:
                raise BulkError(str(exc)) from exc
            continue
        path = Path(source).expanduser().resolve()
        if not path.exists():
            raise BulkError(f"no such file or folder: {path}")
        for file in ingest.walk(path) if path.is_dir() else [str(path)]:
            try:
                items[file] = ingest.file_state(file)
            except OSError:
                items[file] = FileState(0, 0)
    return list(items.items())


def embed_with_ray(
    paths_or_uris: Iterable[str | Path],
    model_name: str,
    out_dir: str | Path,
    *,
    workers: int = 2,
    address: str | None = None,
    batch_size: int = 32,
    shard_rows: int = SHARD_ROWS,
    progress: Progress | None = None,
) -> dict:
    """Embed every image under ``paths_or_uris`` (folders, files, ``s3://`` prefixes) with
    ``workers`` Ray actors and write the shards to ``out_dir``; returns ``shards.json``'s
    content plus ``seconds``. Merge them with ``Collection.add_embedded(out_dir)``."""
    from lookalike.models import load_embedder

    start = time.perf_counter()
    items = list_sources(paths_or_uris)
    embedder = load_embedder(model_name)
    model = {"name": embedder.name, "version": embedder.version, "dim": embedder.dim}
    writer = ShardWriter(out_dir, model, shard_rows)
    done = 0
    if progress:
        progress(0, len(items))
    for batch in ray_batches(
        items,
        model_name,
        embedder.version,
        workers=workers,
        address=address,
        batch_size=batch_size,
    ):
        writer.add(batch)
        done += len(batch["path"])
        if progress:
            progress(done, len(items))
    writer.close()
    return {**writer.info, "seconds": time.perf_counter() - start}
