"""Incremental saves: an index written whole once (its *base*), then an append-only log of its
changes beside it, so that saving after an upload costs that upload, not the whole index.

An index kind that uses it keeps a :class:`Journal` of the adds and removes made since its last
save, calls :meth:`Journal.save` (which appends one record to the log, or writes the base again
once the log has grown past ``COMPACT_FRACTION`` of it: a compaction) and reads itself back
with :func:`read_saved` (the base, then the log's records coalesced into one remove and one
add). ``flat`` (``faiss_index.py``), the approximate kinds (``ann.py``: ``hnsw``, ``ivf``,
``ivf-pq``, ``lsh``) and ``inverted`` (the sparse text space) use it; ``milvus`` keeps its
vectors in its server and writes only a pointer. The collection saves through
:func:`save_index` and loads through :func:`load_saved`, which tell the catalogue generation
to kinds nested in others (``auto``'s choice, a PCA-projected index).

On disk, beside ``index/<space>.faiss`` (the base as its kind writes it, then a trailer):

- base trailer (40 bytes): ``BASE_MAGIC``, a random token naming this base, the generation it
  was written at (-1: not given), its dimension, CRC-32 of those; files written beside a base
  (an approximate kind's vectors) end with the same trailer (:func:`mark`), its ids and
  parameters name the token, so that files of two bases are never read together;
- ``index/<space>.log``: a header (the same 40 bytes with ``LOG_MAGIC``: the token of the base
  it extends), then one record per save: payload length (u64), CRC-32 of the payload (u32),
  payload = generation (i64), number of changes (u32), then each change: kind (u8, 1 add,
  2 remove), count n (u64), n int64 ids, and for an add n x dim float32 vectors.

Crash safety (docs/architecture.md, "Crash safety and resume"). A record is appended (and
fsynced, with ``SYNC``) before the collection writes the stamp (``index/<space>.json``) that
names its generation, and it carries that generation. A reader passes the stamp's generation
(``upto``): records after it (a writer's appends since) are left out, and a log that stops
before it (a torn or lost last record: length and CRC-32 checked) makes the index *behind*
(``VectorIndexError``), so the collection rebuilds it from the catalogue. A compaction writes
the new base atomically (``fileio``: the files beside it first, the base last), then replaces
the log with an empty one naming it; a log (or a file beside the base) whose token is not the
base's is never applied: a reader that met a compaction half-way reads again. An index is
appended to only by the process that wrote or read its base and its whole log, and only while
the log is as long as it left it; anything else writes the base whole again.

Example (a log's changes replayed as one remove and one add):
    >>> added = Change(ADD, np.array([7, 3]), np.ones((2, 2), np.float32))
    >>> change = coalesce([added, Change(REMOVE, np.array([3]))])
    >>> change.touched.tolist(), change.ids.tolist()
    ([3, 7], [7])
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from lookalike.errors import VectorIndexError
from lookalike.fileio import atomic_save, atomic_write
from lookalike.index.base import VectorIndex, load_index

#: Written again whole once the log holds this fraction of the base's bytes (replaying a log
#: costs a load at most this much more; writing the base again costs each change a constant).
COMPACT_FRACTION = 0.5
#: ... but never before the log holds this many bytes (a small index would compact every time).
MIN_LOG_BYTES = 1 << 20
#: fsync each record and each new base before the collection stamps it. Off by default, as the
#: catalogue's commits are (SQLite WAL, ``synchronous = NORMAL``): what a write() put in the
#: page cache survives ``kill -9``, and after a power cut a lost or torn tail is caught by the
#: generation and CRC-32 each record carries (the index is then behind, and rebuilt). On, an
#: upload waits for the disk (2 ms idle, 100 ms and more when shared with other writers).
SYNC = False

BASE_MAGIC = b"LKBASE01"
LOG_MAGIC = b"LKVLOG01"
_HEAD = struct.Struct("<8s16sqI")  # magic, token, generation, dim
HEAD_BYTES = _HEAD.size + 4  # + CRC-32
_FRAME = struct.Struct("<QI")  # payload length, CRC-32 of payload
_RECORD = struct.Struct("<qI")  # generation, number of changes
_CHANGE = struct.Struct("<BQ")  # kind, count
RECORD_OVERHEAD = _FRAME.size + _RECORD.size
#: Reads of a base and its log while a compaction replaces them (~0.8 s in all), before a log
#: of another base is taken for a crash between a compaction's two renames.
READ_ATTEMPTS = 12
ADD, REMOVE = 1, 2

T = TypeVar("T")


@dataclass
class Change:
    """One add (ids and their vectors) or remove (ids, ``vectors`` None)."""

    kind: int
    ids: np.ndarray
    vectors: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return _CHANGE.size + self.ids.nbytes + (0 if self.vectors is None else self.vectors.nbytes)


@dataclass
class Coalesced:
    """A run of changes as one: remove ``touched`` (every id changed), then add ``ids`` with
    ``vectors`` (those whose last change was an add, in the order of that add). Applied to
    the index they started from, it gives the index they ended at, in the same storage order
    (an add moves an id to the end)."""

    touched: np.ndarray
    ids: np.ndarray
    vectors: np.ndarray

    def __bool__(self) -> bool:
        return bool(len(self.touched))


@dataclass
class Binding:
    """The base and log an index was last written to or read from, as it left them."""

    base: Path
    token: bytes
    base_bytes: int
    log_bytes: int  # where the next record goes (the end of the last one)
    generation: int  # of the last record, or of the base (-1: not given)


class Journal:
    """The changes made to an index since it was last saved, and where it was saved."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.changes: list[Change] = []
        self.pending_bytes = 0
        self.binding: Binding | None = None
        #: Whether the last :meth:`save` appended to the log (False: it wrote the base whole).
        self.appended = False

    def added(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Record an add (ids already present are replaced)."""
        ids = np.array(ids, dtype=np.int64).reshape(-1)
        vectors = np.array(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        self._record(Change(ADD, ids, vectors))

    def removed(self, ids: np.ndarray) -> None:
        """Record a remove."""
        self._record(Change(REMOVE, np.array(ids, dtype=np.int64).reshape(-1)))

    def _record(self, change: Change) -> None:
        if self.binding is None:
            return  # the next save writes the base whole: nothing to keep
        self.changes.append(change)
        self.pending_bytes += change.nbytes
        if self.binding.log_bytes + self.pending_bytes > self.log_limit(self.binding):
            self.forget()  # the next save compacts anyway: do not hold a copy of it all

    def forget(self) -> None:
        """Drop the binding: the next save writes the base whole."""
        self.binding = None
        self.changes, self.pending_bytes = [], 0

    @staticmethod
    def log_limit(binding: Binding) -> int:
        return max(int(COMPACT_FRACTION * binding.base_bytes), MIN_LOG_BYTES)

    def save(
        self,
        path: Path,
        generation: int | None,
        write_base: Callable[[str, bytes], object],
    ) -> None:
        """Save the index at ``path``: append the changes to its log when it was last written
        to or read from there, else (or when the log has grown too long, or no generation is
        known: neither ``generation`` nor :func:`save_index`'s) write it whole with
        ``write_base(file_name, token)`` and start an empty log. ``write_base`` writes the
        base into ``file_name`` (renamed to ``path`` after it), and any file beside it first
        (recording ``token``, which names this base, for :func:`read_saved`'s ``token_of``)."""
        path = Path(path)
        if generation is None:
            generation = _SAVING.get()
        bound = self.binding
        if (
            generation is not None
            and bound is not None
            and bound.base == path
            and generation >= bound.generation
            and bound.log_bytes + RECORD_OVERHEAD + self.pending_bytes <= self.log_limit(bound)
        ):
            if not self.changes and generation == bound.generation:
                self.appended = True
                return  # nothing new since the last save
            if self._append(bound, generation):
                self.changes, self.pending_bytes, self.appended = [], 0, True
                return
        self._write_whole(path, generation, write_base)
        self.changes, self.pending_bytes, self.appended = [], 0, False

    def _append(self, bound: Binding, generation: int) -> bool:
        """One record at the end of the log (fsynced with ``SYNC``); False when the log is not
        as this index left it (then the base is written whole instead)."""
        record = encode_record(generation, self.changes)
        try:
            fd = os.open(log_file(bound.base), os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            return False
        try:
            head = _read_head(fd, LOG_MAGIC)
            if (
                os.fstat(fd).st_size != bound.log_bytes
                or head is None
                or (head[0], head[2]) != (bound.token, self.dim)
            ):
                return False
            self.binding = None  # until the record is whole: a failure leaves a torn tail
            view = memoryview(record)
            while view:
                view = view[os.write(fd, view) :]
            if SYNC:
                os.fsync(fd)
        finally:
            os.close(fd)
        bound.log_bytes += len(record)
        bound.generation = generation
        self.binding = bound
        return True

    def _write_whole(
        self, path: Path, generation: int | None, write_base: Callable[[str, bytes], object]
    ) -> None:
        """The base written whole with a new token, then an empty log naming it."""
        self.binding = None
        token = os.urandom(16)
        stamp = -1 if generation is None else int(generation)
        head = _head(BASE_MAGIC, token, stamp, self.dim)

        def write(tmp: str) -> None:
            write_base(tmp, token)
            with open(tmp, "ab") as f:
                f.write(head)
                f.flush()
                if SYNC:
                    os.fsync(f.fileno())

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(path, write)
        base_bytes = path.stat().st_size

        def empty_log(f) -> None:
            f.write(_head(LOG_MAGIC, token, stamp, self.dim))
            if SYNC:
                f.flush()
                os.fsync(f.fileno())

        atomic_write(log_file(path), empty_log)
        self.binding = Binding(path, token, base_bytes, HEAD_BYTES, stamp)


#: The catalogue generation of the save in progress (set by :func:`save_index`) and the one a
#: load reads up to (set by :func:`load_saved`): kinds nested in others (``auto``'s chosen
#: index, a PCA-projected one) take it from here, whatever their wrappers pass on.
_SAVING: contextvars.ContextVar[int | None] = contextvars.ContextVar("saving", default=None)
_UPTO: contextvars.ContextVar[int | None] = contextvars.ContextVar("upto", default=None)


def save_index(index: VectorIndex, path: Path, generation: int) -> None:
    """``index.save(path)``, where kinds that keep a log (and those nested in it) append the
    changes since their last save as one record of catalogue generation ``generation``."""
    token = _SAVING.set(int(generation))
    try:
        index.save(path)
    finally:
        _SAVING.reset(token)


def saving_generation(generation: int | None = None) -> int | None:
    """``generation``, else the catalogue generation of the :func:`save_index` in progress
    (None: neither, a save that writes the base whole). For kinds that skip a save with
    nothing new only when no generation asks for a record."""
    return _SAVING.get() if generation is None else int(generation)


def load_saved(kind: str, path: Path, generation: int | None) -> VectorIndex:
    """``load_index(kind, path)``, where kinds that keep a log read it up to ``generation``
    (the one the stamp beside the file names)."""
    token = _UPTO.set(generation)
    try:
        return load_index(kind, path)
    finally:
        _UPTO.reset(token)


def appended(index: object) -> bool:
    """Whether the last save of ``index`` (or of the index it wraps) only appended to a log,
    leaving the files written with its base as they were."""
    while index is not None:
        journal = getattr(index, "journal", None)
        if journal is not None:
            return bool(journal.appended)
        index = getattr(index, "inner", None)
    return False


def mark(file: str | Path, token: bytes, dim: int) -> None:
    """Append the trailer naming base ``token`` to a file written beside a base (readers of
    the file's format stop before it, as FAISS and NumPy do), so that :func:`marked` can tell
    which base it belongs to."""
    with open(file, "ab") as f:
        f.write(_head(BASE_MAGIC, token, -1, dim))
        if SYNC:
            f.flush()
            os.fsync(f.fileno())


def marked(file: str | Path) -> bytes | None:
    """The token :func:`mark` left at the end of ``file`` (None: none, or no file)."""
    try:
        with open(file, "rb") as f:
            trailer = _read_trailer(f)
    except FileNotFoundError:
        return None
    return None if trailer is None else trailer[0]


def log_file(base: Path) -> Path:
    """Where the log of the base at ``base`` lives (``image.faiss`` -> ``image.log``)."""
    return Path(base).with_suffix(".log")


def encode_record(generation: int, changes: list[Change]) -> bytes:
    """One framed record: every change of one save, and the generation it was saved at."""
    parts = [_RECORD.pack(int(generation), len(changes))]
    for change in changes:
        parts.append(_CHANGE.pack(change.kind, len(change.ids)))
        parts.append(np.ascontiguousarray(change.ids, "<i8").tobytes())
        if change.kind == ADD:
            parts.append(np.ascontiguousarray(change.vectors, "<f4").tobytes())
    payload = b"".join(parts)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode_records(
    data: bytes, dim: int, upto: int | None
) -> tuple[list[tuple[int, list[Change]]], int, bool]:
    """The whole records at the start of ``data`` (a log without its header) up to generation
    ``upto``: ([(generation, changes)], bytes they take, whether anything follows them (a torn
    record or records after ``upto``))."""
    out: list[tuple[int, list[Change]]] = []
    at = 0
    while at + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, at)
        start = at + _FRAME.size
        if length < _RECORD.size or start + length > len(data):
            break  # torn: its end is not written
        payload = memoryview(data)[start : start + length]
        if zlib.crc32(payload) != crc:
            break  # torn or damaged
        generation, count = _RECORD.unpack_from(payload, 0)
        if upto is not None and generation > upto:
            break  # saved after the stamp the reader follows
        changes = _decode_changes(payload, count, dim)
        if changes is None:
            break
        out.append((generation, changes))
        at = start + length
    return out, at, at < len(data)


def _decode_changes(payload: memoryview, count: int, dim: int) -> list[Change] | None:
    changes = []
    at = _RECORD.size
    for _ in range(count):
        if at + _CHANGE.size > len(payload):
            return None
        kind, n = _CHANGE.unpack_from(payload, at)
        at += _CHANGE.size
        size = 8 * n + (4 * n * dim if kind == ADD else 0)
        if kind not in (ADD, REMOVE) or at + size > len(payload):
            return None
        ids = np.frombuffer(payload, "<i8", n, at).astype(np.int64)
        vectors = None
        if kind == ADD:
            vectors = np.frombuffer(payload, "<f4", n * dim, at + 8 * n).reshape(n, dim)
        changes.append(Change(kind, ids, vectors))
        at += size
    return changes if at == len(payload) else None


def coalesce(changes: list[Change], dim: int | None = None) -> Coalesced:
    """A run of changes as one (:class:`Coalesced`), so that a log is replayed with one remove
    and one add, whatever its length (``dim``: of the vectors, when none is added)."""
    if dim is None:
        dim = next((c.vectors.shape[1] for c in changes if c.vectors is not None), 0)
    if not changes:
        return Coalesced(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, dim), "f4"))
    ids = np.concatenate([c.ids for c in changes])
    is_add = np.concatenate([np.full(len(c.ids), c.kind == ADD) for c in changes])
    rows = np.full(len(ids), -1, np.int64)  # the row of each added id's vector
    rows[is_add] = np.arange(int(is_add.sum()))
    adds = [c.vectors for c in changes if c.kind == ADD]
    vectors = np.concatenate(adds) if adds else np.zeros((0, dim), np.float32)
    touched, first_from_end = np.unique(ids[::-1], return_index=True)
    last = np.sort(len(ids) - 1 - first_from_end)  # each id's last change, in log order
    last = last[is_add[last]]
    return Coalesced(touched, ids[last], np.ascontiguousarray(vectors[rows[last]], np.float32))


def read_saved(
    path: Path,
    read_base: Callable[[str, bool], T],
    dim_of: Callable[[T], int],
    upto: int | None = None,
    token_of: Callable[[T], bytes | None] | None = None,
) -> tuple[T, Coalesced, Binding | None]:
    """Read the base at ``path`` and its log's changes up to generation ``upto`` (None:
    :func:`load_saved`'s, else every whole record): (base, the changes as one, the binding to
    append to, or None when the log holds more than was read).

    ``read_base(file_name, changing)`` reads the base; ``changing``: the log holds changes to
    apply to it (a kind that memory-maps its file must then read it whole now, as the file
    may be replaced by the time it is changed). ``token_of``: the token a base written in
    several files recorded beside it (read again while it differs from the trailer's: a
    compaction was under way).

    Raises:
        VectorIndexError: the log stops before ``upto`` (the index is behind the stamp), or
            does not belong to the base (a crash between a compaction's two renames).
    """
    path = Path(path)
    if upto is None:
        upto = _UPTO.get()
    for attempt in range(READ_ATTEMPTS):  # a compaction under way: read again
        if attempt:
            time.sleep(min(0.002 * 2**attempt, 0.1))
        log_fd = _open_or_none(log_file(path))  # the log first: a compaction renames it last
        try:
            with open(path, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                trailer = _read_trailer(f)
                head = None if log_fd is None else _read_head(log_fd, LOG_MAGIC)
                if trailer is None:  # written by a version before logs (or another program)
                    base = read_base(str(path), False)
                    if os.stat(path).st_ino != inode:
                        continue  # replaced while it was read by name
                    return base, coalesce([], dim_of(base)), None
                token, base_generation, dim = trailer
                ours = log_fd is None or (head is not None and head[0] == token)
                newer = upto is not None and base_generation != -1 and base_generation >= upto
                if not ours and not newer:
                    continue  # the log of the base before (or after) the one opened
                records, used, more = [], 0, not ours
                if ours and log_fd is not None:
                    records, used, more = decode_records(_read_all(log_fd, HEAD_BYTES), dim, upto)
                changes = [c for _, cs in records for c in cs]
                base = read_base(str(path), bool(changes))
                if os.stat(path).st_ino != inode:
                    continue
            if dim != dim_of(base):
                raise VectorIndexError(f"{path}: its trailer names {dim}-d vectors")
            if token_of is not None and token_of(base) != token:
                continue  # its files are of two bases
        finally:
            if log_fd is not None:
                os.close(log_fd)
        # A base as new as asked for needs no log: a compaction since (the log then is of
        # another base), or a crash before the log of a new base was written (no log).
        reached = records[-1][0] if records else base_generation
        if upto is not None and reached != -1 and reached < upto:
            raise VectorIndexError(
                f"{log_file(path)} stops at generation {reached}, before {upto} (a torn or "
                "lost record): the index is behind"
            )
        binding = None
        if log_fd is not None and not more:
            binding = Binding(path, token, path.stat().st_size, HEAD_BYTES + used, reached)
        return base, coalesce(changes, dim), binding
    raise VectorIndexError(f"{log_file(path)} (or a file beside it) is not of {path.name}")


def _head(magic: bytes, token: bytes, generation: int, dim: int) -> bytes:
    head = _HEAD.pack(magic, token, generation, dim)
    return head + struct.pack("<I", zlib.crc32(head))


def _parse_head(raw: bytes, magic: bytes) -> tuple[bytes, int, int] | None:
    if len(raw) != HEAD_BYTES or struct.unpack("<I", raw[-4:])[0] != zlib.crc32(raw[:-4]):
        return None
    found, token, generation, dim = _HEAD.unpack(raw[:-4])
    return (token, generation, dim) if found == magic else None


def _read_head(fd: int, magic: bytes) -> tuple[bytes, int, int] | None:
    return _parse_head(os.pread(fd, HEAD_BYTES, 0), magic)


def _read_trailer(f) -> tuple[bytes, int, int] | None:
    size = os.fstat(f.fileno()).st_size
    if size < HEAD_BYTES:
        return None
    return _parse_head(os.pread(f.fileno(), HEAD_BYTES, size - HEAD_BYTES), BASE_MAGIC)


def _read_all(fd: int, offset: int) -> bytes:
    chunks = []
    while True:
        chunk = os.pread(fd, 1 << 24, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _open_or_none(path: Path) -> int | None:
    with contextlib.suppress(FileNotFoundError):
        return os.open(path, os.O_RDONLY)
    return None
