"""How a catalogue stores a vector: the bytes of one row of the ``vectors`` table.

A collection's vectors are kept at the precision their uses need, not at float32
(docs/benchmarks.md, section ``compact``, has the measurements that chose each):

- ``int8`` (the default for dense spaces): one signed byte a dimension and a float32 scale,
  chosen so that the decoded vector keeps the original's norm. On the default descriptor
  (2280-d) it changes no retrieval figure at the 4th decimal (class mAP on Corel-1k and Tiny
  ImageNet, text mAP); ``int8z`` is the same bytes through zlib (the descriptor's many small
  values make it about half as long), ``float16`` two bytes a dimension, ``float32`` four.
- ``sparse:T``: the ``T`` entries of largest magnitude (zeros never kept) as uint16 indices and
  float16 values; the text space (square roots of 1000 class probabilities, of which a few
  dozen matter to a query) is stored so.

Every blob says how it was written, so rows of several encodings (a collection being
upgraded, a space re-encoded) are read alike: a blob whose length is a multiple of 4 is the
float32 of format 1 (raw little-endian floats); every other blob starts with a tag byte and the
dimension, and is padded with one byte when its length would be a multiple of 4.

Example:
    >>> v = np.array([[0.6, 0.0, 0.8]], np.float32)
    >>> blob = encode_vector(v[0], "int8")
    >>> len(blob), [round(float(x), 2) for x in decode_vectors([blob])[0]]
    (10, [0.6, 0.0, 0.8])
    >>> decode_vectors([encode_vector(v[0], "sparse:1")]).tolist()
    [[0.0, 0.0, 0.7998046875]]
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np

#: The encodings a space may ask for (``sparse:T`` with any T from 1).
ENCODINGS = ("float32", "float16", "int8", "int8z", "sparse:T")
#: Tag bytes of the encoded forms (float32 has none: it is format 1's raw floats).
_HALF, _INT8, _INT8Z, _SPARSE = b"h", b"q", b"z", b"s"
_NAMES = {_HALF[0]: "float16", _INT8[0]: "int8", _INT8Z[0]: "int8z", _SPARSE[0]: "sparse"}
_HEAD = struct.Struct("<cH")  # tag, dimension
_SCALE = struct.Struct("<f")
_COUNT = struct.Struct("<H")


def check_encoding(encoding: str) -> str:
    """``encoding`` if it names one (see :data:`ENCODINGS`), else ValueError.

    Example:
        >>> check_encoding("sparse:64")
        'sparse:64'
    """
    if encoding in ("float32", "float16", "int8", "int8z"):
        return encoding
    name, _, top = encoding.partition(":")
    if name == "sparse" and top.isdigit() and 0 < int(top) < 65536:
        return encoding
    raise ValueError(f"unknown vector encoding {encoding!r}; known: {', '.join(ENCODINGS)}")


def encode_vector(vector: np.ndarray, encoding: str = "float32") -> bytes:
    """The stored bytes of one vector in ``encoding``."""
    v = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
    if encoding == "float32":
        return v.tobytes()
    dim = len(v)
    if dim >= 65536:
        raise ValueError(f"a {dim}-d vector is too long for the {encoding} encoding")
    if encoding == "float16":
        blob = _HEAD.pack(_HALF, dim) + v.astype("<f2").tobytes()
    elif encoding in ("int8", "int8z"):
        codes, scale = _int8(v)
        data = codes.tobytes()
        if encoding == "int8":
            blob = _HEAD.pack(_INT8, dim) + _SCALE.pack(scale) + data
        else:
            packed = zlib.compress(data, 1)  # level 6 saves 4% more, at twice the time
            blob = _HEAD.pack(_INT8Z, dim) + _SCALE.pack(scale) + packed
    else:
        top = int(check_encoding(encoding).partition(":")[2])
        keep = np.flatnonzero(v)
        if len(keep) > top:
            keep = keep[np.argpartition(-np.abs(v[keep]), top - 1)[:top]]
            keep.sort()
        blob = (
            _HEAD.pack(_SPARSE, dim)
            + _COUNT.pack(len(keep))
            + keep.astype("<u2").tobytes()
            + v[keep].astype("<f2").tobytes()
        )
    return blob + b"\0" if len(blob) % 4 == 0 else blob


def _int8(v: np.ndarray) -> tuple[np.ndarray, float]:
    """Codes in -127..127 and the scale that gives the decoded vector ``v``'s norm."""
    peak = float(np.abs(v).max()) if len(v) else 0.0
    if peak == 0.0 or not np.isfinite(peak):
        return np.zeros(len(v), np.int8), 0.0
    codes = np.clip(np.rint(v * (127.0 / peak)), -127, 127).astype(np.int8)
    length = float(np.linalg.norm(codes.astype(np.float32)))
    return codes, float(np.linalg.norm(v)) / length if length else 0.0


def encoding_of(blob: bytes) -> str:
    """The encoding a stored blob was written in (``sparse`` without its T).

    Example:
        >>> encoding_of(np.zeros(4, np.float32).tobytes())
        'float32'
        >>> encoding_of(encode_vector(np.ones(4), "int8"))
        'int8'
    """
    if len(blob) % 4 == 0:
        return "float32"
    return _NAMES.get(blob[0], "unknown")


def decode_vector(blob: bytes) -> np.ndarray:
    """One stored vector as float32."""
    if len(blob) % 4 == 0:
        return np.frombuffer(blob, dtype="<f4").astype(np.float32)
    tag, dim = _HEAD.unpack_from(blob)
    at = _HEAD.size
    if tag == _HALF:
        return np.frombuffer(blob, "<f2", dim, at).astype(np.float32)
    if tag in (_INT8, _INT8Z):
        (scale,) = _SCALE.unpack_from(blob, at)
        at += _SCALE.size
        data = blob[at : at + dim] if tag == _INT8 else zlib.decompressobj().decompress(blob[at:])
        return np.frombuffer(data, np.int8, dim).astype(np.float32) * np.float32(scale)
    if tag == _SPARSE:
        (count,) = _COUNT.unpack_from(blob, at)
        at += _COUNT.size
        keep = np.frombuffer(blob, "<u2", count, at)
        values = np.frombuffer(blob, "<f2", count, at + 2 * count)
        out = np.zeros(dim, np.float32)
        out[keep] = values
        return out
    raise ValueError(f"a stored vector of an unknown encoding (tag {tag!r})")


def decode_vectors(blobs: Sequence[bytes], dim: int | None = None) -> np.ndarray:
    """Stored vectors as one (n, dim) float32 array (``dim`` when there are none). Rows of
    one encoding (the usual case) are decoded together."""
    if not blobs:
        return np.zeros((0, dim or 0), np.float32)
    first = bytes(blobs[0][:1])
    size = len(blobs[0])
    n = len(blobs)
    if size % 4 == 0 and all(len(b) == size for b in blobs):
        return np.frombuffer(b"".join(blobs), "<f4").reshape(n, size // 4).astype(np.float32)
    head = bytes(blobs[0][: _HEAD.size])  # the tag and the dimension
    # Together only when every blob has both (a float32 blob of format 1, left by an upgrade
    # not yet done, may start with a tag's byte: its length, a multiple of 4, tells it apart).
    if first in (_INT8, _INT8Z) and all(b[: _HEAD.size] == head and len(b) % 4 for b in blobs):
        width = _HEAD.unpack_from(head)[1]
        at = _HEAD.size + _SCALE.size
        scales = np.array([_SCALE.unpack_from(b, _HEAD.size)[0] for b in blobs], np.float32)
        if first == _INT8:
            data = b"".join(bytes(b[at : at + width]) for b in blobs)
        else:
            data = b"".join(zlib.decompressobj().decompress(b[at:]) for b in blobs)
        codes = np.frombuffer(data, np.int8).reshape(n, width)
        return codes.astype(np.float32) * scales[:, None]
    return np.stack([decode_vector(bytes(b)) for b in blobs])


def dimension(blob: bytes) -> int:
    """The dimension of a stored vector."""
    if len(blob) % 4 == 0:
        return len(blob) // 4
    return int(_HEAD.unpack_from(blob)[1])


def stats_of(rows: Sequence[tuple]) -> dict[str, dict[str, dict[str, int]]]:
    """A catalogue's ``vector_stats`` from rows of (space, ``"float32"`` or the tag byte in
    hexadecimal, count, bytes), as its SQL groups them.

    Example:
        >>> stats_of([("image", "71", 2, 4600), ("text", "float32", 2, 8000)])["image"]
        {'int8': {'vectors': 2, 'bytes': 4600}}
    """
    out: dict[str, dict[str, dict[str, int]]] = {}
    for space, tag, count, size in rows:
        name = "float32" if tag == "float32" else _NAMES.get(int(str(tag), 16), "unknown")
        entry = out.setdefault(str(space), {}).setdefault(name, {"vectors": 0, "bytes": 0})
        entry["vectors"] += int(count)
        entry["bytes"] += int(size or 0)
    return out


def as_stored(vectors: np.ndarray, encoding: str) -> np.ndarray:
    """``vectors`` as a catalogue gives them back once stored in ``encoding``: what an index
    built from new vectors must hold, so that it equals one rebuilt from the catalogue.

    Example:
        >>> as_stored(np.array([[0.6, 0.8]], np.float32), "sparse:1").tolist()
        [[0.0, 0.7998046875]]
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if encoding == "float32" or len(vectors) == 0:
        return vectors
    return decode_vectors([encode_vector(v, encoding) for v in vectors.reshape(len(vectors), -1)])
