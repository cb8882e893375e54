"""Finding image files and loading them (read, hash, decode) in a thread pool.

Loading is the part of indexing that is not the network: it runs in worker threads (Pillow and
hashlib release the GIL) while the main thread embeds the previous batch, with a bounded number
of files in flight so memory stays flat on any collection size.

Only regular files are read, and only up to :data:`MAX_FILE_BYTES`: a FIFO named ``x.jpg``
would block a reader thread in ``open()`` for ever (and with it Ctrl-C and the collection's
lock), a link to ``/dev/zero`` would be read until memory runs out. :func:`file_state` refuses
them from ``stat``; :func:`read_regular` opens without blocking (``O_NONBLOCK``) and checks the
open file again with ``fstat``, since a file can be swapped between the two. Such files are
skipped with their reason, like any unusable file, and never stop a run.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import stat
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from lookalike.images import ImageError, decode, is_image_path
from lookalike.store.base import FileState

#: The largest file that is read (256 MiB). A photo is a few MB and the largest image decoded
#: (``images.MAX_PIXELS``, 120 megapixels) fits in far less as a JPEG or PNG; bigger files
#: are skipped ("file too large") rather than read into memory.
MAX_FILE_BYTES = 256 * 1024 * 1024


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

    Hidden files and folders (starting with ``.``) are left out. Symbolic links to folders are
    followed (a data set of linked class folders is indexed as ``eval`` and ``train`` read it);
    a folder already visited, through a loop of links or a second link to it, is not walked
    again (it is known by its device and inode). Files are named by the path walked, links
    included.
    """
    root = Path(folder).expanduser().resolve()
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and is_image_path(name):
                yield os.path.join(dirpath, name)


def is_excluded(path: str, globs: Iterable[str], roots: Iterable[str | Path] = ()) -> bool:
    """Whether ``path`` matches one of the exclude ``globs`` (``index --exclude``).

    A glob without ``/`` is matched against each name below the indexed folder (the first of
    ``roots`` that holds ``path``): the file's name and the folders above it (``*.tmp``,
    ``thumbnails``); without a root, against the file's name. A glob with ``/`` is matched
    against the path relative to that folder (``raw/*``) and against the whole path
    (``/photos/private/*``); a glob naming a folder (``raw/``, ``/photos/private``) takes
    everything under it.

    Example:
        >>> is_excluded("/p/raw/a.jpg", ["raw"], ["/p"]), is_excluded("/p/a.jpg", ["raw/"], ["/p"])
        (True, False)
    """
    globs = [g for g in globs if g]
    if not globs:
        return False
    relative = None
    for root in roots:
        prefix = str(root).rstrip("/" + os.sep)
        if path.startswith(prefix + "/") or path.startswith(prefix + os.sep):
            relative = path[len(prefix) + 1 :]
            break
    names = re.split(r"[/\\]", relative) if relative is not None else [os.path.basename(path)]
    for glob in globs:
        if "/" not in glob and os.sep not in glob:
            if any(fnmatch.fnmatchcase(name, glob) for name in names):
                return True
            continue
        folder = glob.rstrip("/" + os.sep) + "/*"
        for candidate in (relative, path):
            if candidate is not None and (
                fnmatch.fnmatchcase(candidate, glob) or fnmatch.fnmatchcase(candidate, folder)
            ):
                return True
    return False


def file_state(path: str) -> FileState:
    """Size and modification time of ``path``.

    Raises:
        OSError: it is gone or cannot be reached (a loop of symbolic links, no permission).
        ImageError: not a regular file (a FIFO, a device, a socket, a folder), or larger
            than :data:`MAX_FILE_BYTES`; ``reason`` says which.
    """
    st = os.stat(path)
    check_regular(st)
    return FileState(st.st_size, st.st_mtime_ns)


def check_regular(st: os.stat_result, limit: int = MAX_FILE_BYTES) -> None:
    """Raise ImageError unless ``st`` is a regular file of at most ``limit`` bytes."""
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"not a regular file ({_kind(st.st_mode)})")
    if st.st_size > limit:
        raise ImageError(f"file too large ({st.st_size:,} bytes > {limit:,})")


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    )
    return next((name for test, name in kinds if test(mode)), "not a file")


def read_regular(path: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path``, never blocking on a FIFO or reading a device.

    Raises:
        OSError: it cannot be opened or read.
        ImageError: not a regular file, or larger than ``limit`` (checked on the open file).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        check_regular(os.fstat(fd), limit)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew since fstat
        raise ImageError(f"file too large (more than {limit:,} bytes)")
    return data


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
        data = read(path) if read is not None else read_regular(path)
    except OSError as exc:
        item.error = f"cannot read file: {exc.strerror or exc}"
        return item
    except ImageError as exc:
        item.error = exc.reason
        return item
    except MemoryError:
        item.error = "file too large to read into memory"
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
    except Exception as exc:  # a decoder failing in a way nobody listed must not stop a run
        item.error = f"cannot decode: {type(exc).__name__}: {exc}"
        return item
    item.image = image
    try:
        item.width, item.height = _original_size(data, image)
    except Exception:  # the header read again: keep the decoded size
        item.width, item.height = image.size
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
