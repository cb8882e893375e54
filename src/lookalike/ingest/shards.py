"""Embedding shards: vectors computed elsewhere (Ray workers, another machine), as plain files
a collection merges (``Collection.add_embedded``).

Each Ray worker is an actor that loads the model once (one thread: the workers are the
parallelism) and turns batches of ``(path, size, mtime_ns)`` rows into rows of content hash,
size, error and vector; the driver writes them as shards (format below and in
docs/architecture.md) and the collection merges each shard as it is written, through the same
code as ``Collection.sync``: unchanged files are skipped before any work, failed files are
recorded as skipped, identical contents are linked, and each batch is one transaction (a killed
run resumes). Paths must be readable by the workers: local files with a local Ray (the
default) or a shared file system, or ``s3://`` URIs (``lookalike.ingest.sources``) anywhere.

Shards (``out_dir``), like clip-retrieval's::

    shards.json                   {"format": "lookalike-shards", "format_version": 1,
                                   "model": {"name", "version", "dim"}, "space": "image",
                                   "dtype": "float32", "rows", "errors", "complete",
                                   "parts": [{"name": "part-00000", "rows": 1024}, ...]}
    embeddings/part-00000.npy     float32 (rows, dim), L2-normalised; row i = metadata row i
    metadata/part-00000.parquet   path, size, mtime_ns, content_hash, width, height, error
                                  (error is null for an embedded row; its vector is then zeros)

Example:
    >>> from lookalike.ingest.shards import read_shard_info, read_shards
    >>> info = read_shard_info("shards/")  # doctest: +SKIP
    >>> rows = list(read_shards("shards/"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import BulkError
from lookalike.fileio import atomic_write
from lookalike.ingest import files as ingest
from lookalike.store.base import FileState

SHARD_FORMAT = "lookalike-shards"
SHARD_FORMAT_VERSION = 1
#: Rows per shard: each shard is written, then merged, as soon as it is full.
SHARD_ROWS = 1024
#: The vector space shards fill (the collection's image descriptors).
SPACE = "image"
METADATA_COLUMNS = ("path", "size", "mtime_ns", "content_hash", "width", "height", "error")


class ShardWriter:
    """Writes embedded rows as shards in ``out_dir`` (a new or empty folder, or one holding
    shards of the same model, which are replaced)."""

    def __init__(self, out_dir: str | Path, model: dict, shard_rows: int = SHARD_ROWS) -> None:
        self.dir = Path(out_dir).expanduser()
        self.shard_rows = max(1, shard_rows)
        for sub in ("embeddings", "metadata"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.info: dict[str, Any] = {
            "format": SHARD_FORMAT,
            "format_version": SHARD_FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": dict(model),
            "space": SPACE,
            "dtype": "float32",
            "rows": 0,
            "errors": 0,
            "complete": False,
            "parts": [],
        }
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0
        self._write_info()

    def add(self, batch: dict[str, np.ndarray]) -> list[str]:
        """Buffer a batch; returns the names of the parts written (when a shard filled up)."""
        n = len(batch["path"])
        if n:
            self._pending.append(batch)
            self._pending_rows += n
        return [self._write_part()] if self._pending_rows >= self.shard_rows else []

    def close(self) -> list[str]:
        """Write what is left and mark the shards complete; returns the last part's name."""
        written = [self._write_part()] if self._pending_rows else []
        self.info["complete"] = True
        self._write_info()
        return written

    def _write_part(self) -> str:
        import pyarrow as pa
        import pyarrow.parquet as pq

        name = f"part-{len(self.info['parts']):05d}"
        columns = {k: np.concatenate([b[k] for b in self._pending]) for k in self._pending[0]}
        self._pending, self._pending_rows = [], 0
        vectors = np.ascontiguousarray(columns["vector"], dtype=np.float32)
        dim = int(self.info["model"]["dim"])
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            raise BulkError(f"workers returned vectors of shape {vectors.shape}, not (n, {dim})")
        errors = [str(e) or None for e in columns["error"]]
        table = pa.table(
            {
                "path": pa.array([str(p) for p in columns["path"]], pa.string()),
                "size": pa.array(columns["size"], pa.int64()),
                "mtime_ns": pa.array(columns["mtime_ns"], pa.int64()),
                "content_hash": pa.array([str(h) for h in columns["content_hash"]], pa.string()),
                "width": pa.array(columns["width"], pa.int32()),
                "height": pa.array(columns["height"], pa.int32()),
                "error": pa.array(errors, pa.string()),
            }
        )
        atomic_write(self.dir / "embeddings" / f"{name}.npy", lambda f: np.save(f, vectors))
        atomic_write(self.dir / "metadata" / f"{name}.parquet", lambda f: pq.write_table(table, f))
        self.info["parts"].append({"name": name, "rows": len(vectors)})
        self.info["rows"] += len(vectors)
        self.info["errors"] += sum(e is not None for e in errors)
        self._write_info()
        return name

    def _write_info(self) -> None:
        atomic_write(
            self.dir / "shards.json",
            lambda f: f.write(json.dumps(self.info, indent=2).encode() + b"\n"),
        )


def read_shard_info(out_dir: str | Path) -> dict:
    """The ``shards.json`` of ``out_dir``, checked."""
    file = Path(out_dir).expanduser() / "shards.json"
    try:
        info = json.loads(file.read_text())
    except FileNotFoundError:
        raise BulkError(f"no embedding shards in {out_dir} (no shards.json)") from None
    except json.JSONDecodeError as exc:
        raise BulkError(f"{file} is not valid JSON: {exc}") from exc
    if info.get("format") != SHARD_FORMAT:
        raise BulkError(f"{file} does not describe lookalike embedding shards")
    if int(info.get("format_version", 0)) > SHARD_FORMAT_VERSION:
        raise BulkError(f"{file} has shard format {info['format_version']}: upgrade lookalike")
    return info


def _read_metadata(out_dir: Path, name: str, columns: Sequence[str] = METADATA_COLUMNS):
    import pyarrow.parquet as pq

    return pq.read_table(out_dir / "metadata" / f"{name}.parquet", columns=list(columns))


def shard_states(out_dir: str | Path) -> dict[str, FileState]:
    """Every file in the shards: path -> the state it was embedded at."""
    out_dir = Path(out_dir).expanduser()
    states: dict[str, FileState] = {}
    for part in read_shard_info(out_dir)["parts"]:
        table = _read_metadata(out_dir, part["name"], ("path", "size", "mtime_ns")).to_pydict()
        for path, size, mtime in zip(table["path"], table["size"], table["mtime_ns"], strict=True):
            states[path] = FileState(int(size), int(mtime))
    return states


def read_part(
    out_dir: str | Path, name: str, only: set[str] | None = None
) -> Iterator[ingest.Loaded]:
    """The rows of one shard as loaded items carrying their vectors (or their error)."""
    out_dir = Path(out_dir).expanduser()
    space = read_shard_info(out_dir).get("space", SPACE)
    table = _read_metadata(out_dir, name).to_pydict()
    vectors = np.load(out_dir / "embeddings" / f"{name}.npy", mmap_mode="r")
    if len(vectors) != len(table["path"]):
        raise BulkError(
            f"shard {name} in {out_dir}: {len(vectors)} vectors for "
            f"{len(table['path'])} metadata rows"
        )
    for i, path in enumerate(table["path"]):
        if only is not None and path not in only:
            continue
        item = ingest.Loaded(
            path,
            FileState(int(table["size"][i]), int(table["mtime_ns"][i])),
            content_hash=table["content_hash"][i] or "",
            width=int(table["width"][i] or 0),
            height=int(table["height"][i] or 0),
            error=table["error"][i],
        )
        if item.error is None:
            item.vectors = {space: np.array(vectors[i], np.float32)}
        yield item


def read_shards(out_dir: str | Path, only: set[str] | None = None) -> Iterator[ingest.Loaded]:
    """Every row of the shards in ``out_dir`` (only the paths in ``only`` when given)."""
    for part in read_shard_info(out_dir)["parts"]:
        yield from read_part(out_dir, part["name"], only)
