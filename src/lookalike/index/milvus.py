"""``milvus``: an index whose vectors live in Milvus (Milvus Lite in a local file, or a server).

The index kind is written ``milvus`` or ``milvus:URI`` (``--index milvus:URI`` on the command
line, ``Collection.create(index="milvus:URI")`` in Python):

- ``milvus``: Milvus Lite (the ``milvus-lite`` package, embedded in this process) in the
  collection's own folder, ``index/milvus.db``;
- ``milvus:/path/to/vectors.db``: Milvus Lite in that file (a path that ends in ``.db``);
- ``milvus:http://host:19530``: a Milvus server or cluster (``https://`` for TLS); a token, when
  the server wants one (``user:password`` or an API key), comes from ``$MILVUS_TOKEN`` and is
  never written to disk.

As with every kind, the index is a cache of the catalogue's vectors. The vectors are held in one
Milvus collection per lookalike collection and vector space (``lookalike_<space>_<random>``):
primary key ``id`` = the catalogue's image id (upserted, deleted by key), a ``FLOAT_VECTOR`` field
``vector``, metric ``IP`` and an explicit ``HNSW`` index (``FLAT`` and ``IVF_FLAT`` on request),
consistency level ``Strong`` so that a search sees every write before it. ``save(path)`` only
flushes and writes a small JSON pointer at ``path`` (URI, collection name, dimension, metric,
count); the loader reconnects to it and checks that the collection is there with that many
vectors, else it raises ``VectorIndexError`` and the collection rebuilds the index from its
catalogue into the same Milvus collection. A new index at a path that already holds a pointer
reuses that Milvus collection's name (dropping its contents), so rebuilds do not leave orphans.

pymilvus is imported only when a ``milvus`` index is used (``pip install 'lookalike[milvus]'``).

Example:
    >>> from lookalike.index import create_index
    >>> index = create_index("milvus:/tmp/vectors.db", dim=4)  # doctest: +SKIP
    >>> index.add(np.array([7, 8]), np.eye(4, dtype=np.float32)[:2])  # doctest: +SKIP
    >>> index.search(np.eye(4, dtype=np.float32)[:1], k=1)[1].tolist()  # doctest: +SKIP
    [[7]]
    >>> index.save(Path("/tmp/image.faiss"))  # the pointer  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import VectorIndexError
from lookalike.fileio import write_json
from lookalike.index.base import register
from lookalike.index.faiss_compat import keep_search_params

KIND = "milvus"
POINTER_FORMAT = "lookalike-milvus-index"
#: The Milvus Lite file of a collection whose kind is plain ``milvus``: beside the pointer.
LITE_FILE = "milvus.db"
TOKEN_ENV = "MILVUS_TOKEN"
INDEX_TYPES = ("HNSW", "FLAT", "IVF_FLAT", "AUTOINDEX")
#: Milvus refuses more than this many results (topk) or queries (nq) in one search.
MAX_TOPK = 16_384
QUERY_CHUNK = 256
#: Rows per upsert request, bounded so a request stays far below gRPC's 64 MiB message limit.
REQUEST_BYTES = 16 * 2**20
#: Milvus Lite searches rows it has not flushed to a segment by brute force in Python (0.9 s a
#: query over 20k unflushed 256-d rows here, 0.05 s once flushed): flush before reading when
#: this many rows are pending. A server indexes its growing segments itself and is left alone.
LITE_FLUSH_ROWS = 1_000
_MISSING_SCORE = -np.finfo(np.float32).max  # what FAISS reports for an empty slot


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError as exc:
        raise VectorIndexError(
            "the milvus index needs pymilvus (and milvus-lite for a local file): "
            "pip install 'lookalike[milvus]'"
        ) from exc
    return pymilvus


def is_lite(uri: str) -> bool:
    """Whether ``uri`` names a Milvus Lite file rather than a server."""
    return not uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))


def _check_uri(uri: str) -> str:
    if is_lite(uri):
        if not uri.endswith(".db"):
            raise VectorIndexError(
                f"milvus:{uri}: a Milvus Lite location is a file path ending in .db, a server "
                "is http://host:19530"
            )
        return str(Path(uri).expanduser().resolve())
    return uri


class MilvusIndex:
    """A VectorIndex over one Milvus collection (see the module docstring).

    Args:
        dim: vector dimension.
        uri: a Milvus Lite ``.db`` path or a server URI; by default ``milvus.db`` beside ``path``.
        path: where this index will be saved (its pointer): names the default Lite file and
            lets a rebuild reuse the Milvus collection recorded there.
        name: the Milvus collection; by default the one recorded at ``path``, else a new one.
        token: for a server; by default ``$MILVUS_TOKEN``.
        index_type: ``HNSW`` (default), ``FLAT`` (exact), ``IVF_FLAT`` or ``AUTOINDEX``.
        links, ef_construction, ef_search: HNSW's M, efConstruction and ef (at least k); M and
            efConstruction as the ``hnsw`` kind builds its graph (docs/benchmarks.md, ``ann``).
        nlist, nprobe: IVF_FLAT's list count and lists searched.
    """

    kind = KIND

    def __init__(
        self,
        dim: int,
        uri: str | None = None,
        path: str | Path | None = None,
        name: str | None = None,
        token: str | None = None,
        index_type: str = "HNSW",
        links: int = 32,
        ef_construction: int = 40,
        ef_search: int = 128,
        nlist: int = 1024,
        nprobe: int = 32,
        fresh: bool = True,
    ) -> None:
        self.dim = int(dim)
        self.path = Path(path) if path is not None else None
        recorded = _read_pointer(self.path) if self.path is not None and fresh else None
        if uri is None and self.path is not None:
            uri = str(self.path.parent / LITE_FILE)
        self.uri = _check_uri(uri) if uri is not None else None
        if name is None and recorded is not None and recorded["uri"] == self.uri:
            name = recorded["collection"]
        space = self.path.stem if self.path is not None else "index"
        self.name = name or f"lookalike_{_safe_name(space)}_{uuid.uuid4().hex[:12]}"
        self.token = token
        index_type = index_type.upper()
        if index_type not in INDEX_TYPES:
            raise VectorIndexError(
                f"milvus index_type {index_type!r}: use one of {', '.join(INDEX_TYPES)}"
            )
        self.index_type = index_type
        self.links, self.ef_construction, self.ef_search = links, ef_construction, ef_search
        self.nlist, self.nprobe = nlist, nprobe
        self._fresh = fresh  # a new index: its Milvus collection is (re)created on first use
        self._client: Any = None
        self._count: int | None = None
        self._pending = 0
        self._lock = threading.RLock()

    # -- connection ---------------------------------------------------------------------------
    @property
    def lite(self) -> bool:
        return self.uri is not None and is_lite(self.uri)

    def client(self) -> Any:
        """The connected MilvusClient, the collection created (new index) or checked (loaded)."""
        with self._lock:
            if self._client is not None:
                return self._client
            if self.uri is None:
                raise VectorIndexError(
                    "a milvus index needs a URI (milvus:URI) or the collection folder it belongs to"
                )
            pymilvus = _pymilvus()
            if self.lite:
                Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
            token = self.token if self.token is not None else os.environ.get(TOKEN_ENV, "")
            try:
                client = pymilvus.MilvusClient(uri=self.uri, token=token)
                if self._fresh:
                    if client.has_collection(self.name):
                        client.drop_collection(self.name)
                    self._create(client, pymilvus)
                elif not client.has_collection(self.name):
                    raise VectorIndexError(f"Milvus at {self.uri} has no collection {self.name}")
                else:
                    self._check_dim(client)
                    # Released when its server (or the Lite file's process) started again;
                    # loading a loaded collection is a no-op.
                    client.load_collection(self.name)
            except pymilvus.MilvusException as exc:
                hint = (
                    "; Milvus Lite serves one process at a time: is another process using it? "
                    "Several processes need a Milvus server (milvus:http://host:19530)"
                    if self.lite
                    else ""
                )
                raise VectorIndexError(f"Milvus at {self.uri}: {exc}{hint}") from exc
            self._client, self._fresh = client, False
            return client

    def _create(self, client: Any, pymilvus: Any) -> None:
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=self.dim)
        params = client.prepare_index_params()
        build = {
            "HNSW": {"M": self.links, "efConstruction": self.ef_construction},
            "IVF_FLAT": {"nlist": self.nlist},
        }.get(self.index_type, {})
        params.add_index(
            field_name="vector", index_type=self.index_type, metric_type="IP", params=build
        )
        client.create_collection(
            self.name, schema=schema, index_params=params, consistency_level="Strong"
        )
        self._count = 0

    def _check_dim(self, client: Any) -> None:
        fields = client.describe_collection(self.name).get("fields", [])
        dims = [int(f["params"]["dim"]) for f in fields if f.get("name") == "vector"]
        if dims != [self.dim]:
            raise VectorIndexError(
                f"Milvus collection {self.name} holds vectors of dimension {dims}, not {self.dim}"
            )

    def _call(self, method: str, *args: object, **kwargs: object) -> Any:
        client = self.client()
        try:
            return getattr(client, method)(*args, **kwargs)
        except _pymilvus().MilvusException as exc:
            raise VectorIndexError(f"Milvus at {self.uri} ({method}): {exc}") from exc

    def _settle(self) -> None:
        """Flush a Milvus Lite collection with many unflushed rows before reading from it."""
        if self.lite and self._pending >= LITE_FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        """Seal what was written into indexed segments (``save`` does it)."""
        self._call("flush", self.name)
        self._pending = 0

    def close(self) -> None:
        """Close the connection (the index reconnects if used again)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- the VectorIndex protocol ------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Upsert vectors under their ids (an id already present is replaced)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        if len(ids) == 0:
            self.client()
            return
        rows = max(1, min(10_000, REQUEST_BYTES // (4 * self.dim + 16)))
        with self._lock:
            for start in range(0, len(ids), rows):
                chunk = slice(start, start + rows)
                data = [
                    {"id": int(i), "vector": v}
                    for i, v in zip(ids[chunk].tolist(), vectors[chunk], strict=True)
                ]
                self._call("upsert", self.name, data)
            self._count = None
            self._pending += len(ids)

    def remove(self, ids: np.ndarray) -> None:
        """Delete these ids (unknown ids are ignored)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            return
        with self._lock:
            for start in range(0, len(ids), 10_000):
                self._call("delete", self.name, ids=ids[start : start + 10_000].tolist())
            self._count = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores, ids), each (n, k); missing slots have id -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = max(1, min(int(k), MAX_TOPK))
        scores = np.full((len(queries), k), _MISSING_SCORE, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        if len(queries) == 0 or len(self) == 0:
            return scores, ids
        keep_search_params()  # Milvus Lite searches with FAISS, passing params=
        params = {
            "HNSW": {"ef": max(self.ef_search, k)},
            "IVF_FLAT": {"nprobe": self.nprobe},
        }.get(self.index_type, {})
        for start in range(0, len(queries), QUERY_CHUNK):
            chunk = queries[start : start + QUERY_CHUNK]
            hits = self._call(
                "search",
                self.name,
                data=list(chunk),
                limit=k,
                anns_field="vector",
                search_params={"metric_type": "IP", "params": params},
            )
            for row, found in enumerate(hits, start):
                for slot, hit in enumerate(list(found)[:k]):
                    ids[row, slot] = int(hit["id"])
                    scores[row, slot] = float(hit["distance"])
        return scores, ids

    def __len__(self) -> int:
        with self._lock:
            self._settle()
            if self._count is None:
                rows = self._call("query", self.name, filter="", output_fields=["count(*)"])
                self._count = int(rows[0]["count(*)"])
            return self._count

    def save(self, path: Path) -> None:
        """Flush, then write the pointer (URI, collection, dimension, count) atomically."""
        path = Path(path)
        with self._lock:
            self.flush()
            uri = self.uri or ""
            if self.lite and Path(uri).parent == path.parent.resolve():
                uri = Path(uri).name  # beside the pointer: the folder can move
            pointer = {
                "format": POINTER_FORMAT,
                "version": 1,
                "uri": uri,
                "collection": self.name,
                "dim": self.dim,
                "metric": "IP",
                "index_type": self.index_type,
                "params": self.params,
                "count": len(self),
            }
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, pointer)

    @property
    def params(self) -> dict:
        """The index's build and search parameters."""
        if self.index_type == "HNSW":
            return {"M": self.links, "efConstruction": self.ef_construction, "ef": self.ef_search}
        if self.index_type == "IVF_FLAT":
            return {"nlist": self.nlist, "nprobe": self.nprobe}
        return {}

    @classmethod
    def load(cls, path: Path, token: str | None = None) -> MilvusIndex:
        """Reconnect to the collection a pointer names; ``VectorIndexError`` when it is gone
        or does not hold the count the pointer recorded (the caller then rebuilds)."""
        pointer = _read_pointer(Path(path))
        if pointer is None:
            raise VectorIndexError(f"{path} is not a milvus index pointer")
        params = pointer.get("params", {})
        index = cls(
            pointer["dim"],
            uri=pointer["uri"],
            name=pointer["collection"],
            token=token,
            index_type=pointer.get("index_type", "HNSW"),
            links=params.get("M", 32),
            ef_construction=params.get("efConstruction", 40),
            ef_search=params.get("ef", 128),
            nlist=params.get("nlist", 1024),
            nprobe=params.get("nprobe", 32),
            fresh=False,
        )
        index.path = Path(path)
        if len(index) != pointer.get("count", len(index)):
            raise VectorIndexError(
                f"Milvus collection {index.name} holds {len(index)} vectors, the index was saved "
                f"with {pointer['count']}"
            )
        return index


def _read_pointer(path: Path) -> dict | None:
    """The pointer saved at ``path`` (its Lite URI made absolute), or None."""
    try:
        pointer = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(pointer, dict) or pointer.get("format") != POINTER_FORMAT:
        return None
    uri = str(pointer.get("uri", ""))
    if is_lite(uri) and not Path(uri).is_absolute():
        uri = str((path.parent / uri).resolve())
    return {**pointer, "uri": uri}


def _safe_name(text: str) -> str:
    """Letters, digits and underscores only, as Milvus wants collection names."""
    return "".join(c if c.isalnum() and c.isascii() else "_" for c in text)[:64] or "index"


register(KIND, lambda dim, **options: MilvusIndex(dim, **options), MilvusIndex.load)
