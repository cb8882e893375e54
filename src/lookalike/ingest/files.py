"""Finding image files and loading them (read, hash, decode) in a thread pool.

Loading is the part of indexing that is not the network: it runs in worker threads (Pillow and
hashlib release the GIL) while the main thread embeds the previous batch, with a bounded number
of files in flight so memory stays flat on any collection size.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from lookalike.images import ImageError, decode, is_image_path
from lookalike.store.base import FileState


@dataclass
class Loaded:
    """One file after loading: its hash and image, or the reason it cannot be used."""

    path: str
    state: FileState
    content_hash: str = ""
    image: Image.Image | None = None
    width: int = 0
    height: int = 0
    error: str | None = None
    prepared: object = None  # the model's input, when the model prepares it in this thread
    vectors: dict | None = None  # already-embedded vectors by space (lookalike.ingest.bulk)


def content_hash(data: bytes) -> str:
    """The identity of a file's content (BLAKE2b, 128 bits, hex)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def walk(folder: str | Path) -> Iterator[str]:
    """Image files under ``folder``, recursively, as absolute paths in a stable order.

    Hidden files and folders (starting with ``.``) are left out.
    """
    root = Path(folder).expanduser().resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and is_image_path(name):
                yield os.path.join(dirpath, name)


def file_state(path: str) -> FileState:
    """Size and modification time of ``path`` (raises OSError when it is gone)."""
    st = os.stat(path)
    return FileState(st.st_size, st.st_mtime_ns)


def load_file(
    path: str,
    state: FileState,
    *,
    min_side: int | None,
    known_hashes: Collection[str] = (),
    read: Callable[[str], bytes] | None = None,
) -> Loaded:
    """Read, hash and decode one file; never raises for a bad file.

    When the content hash is in ``known_hashes`` the file is not decoded: its content is
    already in the collection. ``read`` fetches the bytes of a non-local ``path`` (e.g.
    ``sources.read_bytes`` for ``s3://`` URIs); by default the file is opened.
    """
    item = Loaded(path, state)
    try:
        if read is not None:
            data = read(path)
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as exc:
        item.error = f"cannot read file: {exc.strerror or exc}"
        return item
    item.content_hash = content_hash(data)
    if item.content_hash in known_hashes:
        return item
    try:
        image = decode(data, min_side=min_side)
    except ImageError as exc:
        item.error = exc.reason
        return item
    except MemoryError:
        item.error = "image too large to decode in memory"
        return item
    item.image = image
    item.width, item.height = _original_size(data, image)
    return item


def _original_size(data: bytes, decoded: Image.Image) -> tuple[int, int]:
    # Draft mode decodes at reduced scale; the catalogue records the true (upright) size.
    import io

    with Image.open(io.BytesIO(data)) as header:
        w, h = header.size
        orientation = header.getexif().get(0x0112, 1) if hasattr(header, "getexif") else 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_files(
    items: Iterable[tuple[str, FileState]],
    load: Callable[[str, FileState], Loaded],
    *,
    workers: int = 2,
    window: int = 64,
) -> Iterator[Loaded]:
    """Apply ``load`` to items in a thread pool, yielding results in input order.

    At most ``window`` files are in flight, so a million-file run holds a few dozen images.
    """
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        futures: deque[Future[Loaded]] = deque()
        for path, state in iterator:
            futures.append(pool.submit(load, path, state))
            if len(futures) >= window:
                break
        while futures:
            result = futures.popleft().result()
            for path, state in iterator:
                futures.append(pool.submit(load, path, state))
                break
            yield result
