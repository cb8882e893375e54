"""A corpus of hostile files for indexing, mixed with good images (issue #15).

:func:`make_corpus` fills a folder with files an indexer meets in the wild and returns what a
correct run does with each: ``good`` files are indexed (each distinct content exactly once),
``bad`` ones are skipped with a reason containing the given text, ``unlisted`` ones are never
looked at (hidden files, other suffixes). Paths are str as ``os.fsdecode`` gives them (a name
that is not UTF-8 has lone surrogates).

Some cases depend on the machine, and the corpus says what to expect there:

- ``unreadable.jpg`` (chmod 000) is readable by root, so it is ``good`` when the tests run as
  root and ``bad`` ("Permission denied") otherwise;
- ``socket.jpg`` needs a unix socket path shorter than about 108 bytes, and is left out when
  the folder's path is too long;
- ``vanishing.jpg`` is listed and then deleted before it is read: :func:`vanish_on_read`
  arranges that inside one process (a test's ``monkeypatch``); a run in another process sees it
  as a plain good file, so it is in ``good`` unless that is arranged.

Example:
    >>> corpus = make_corpus(tmp_path / "hostile")  # doctest: +SKIP
    >>> sorted(corpus.bad.values())[:2]  # doctest: +SKIP
    ['cannot read file', 'empty']
"""

from __future__ import annotations

import io
import os
import socket
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from lookalike.images import bundled_photo

#: A file larger than lookalike.ingest.files.MAX_FILE_BYTES, made sparse (no disk used).
HUGE_BYTES = 300 * 1024 * 1024


@dataclass
class Corpus:
    """What :func:`make_corpus` made: path -> None for good files, path -> expected reason
    text for bad ones; ``contents``: how many distinct good contents (images) there are."""

    folder: Path
    good: dict[str, None] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)
    unlisted: list[str] = field(default_factory=list)
    contents: int = 0
    sockets: list[socket.socket] = field(default_factory=list)

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def _jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85, **options)
    return buffer.getvalue()


def _png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` grey pixels, a few hundred bytes on disk
    (the first rows only; a decoder that trusted the header would allocate 10 GB)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", rows)
        + _chunk(b"IEND", b"")
    )


def make_corpus(folder: Path) -> Corpus:
    """Fill ``folder`` (created) with good images and hostile files; see the module's doc."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(folder)
    photo = bundled_photo("astronaut").resize((256, 256))
    others = [bundled_photo(n).resize((240, 200)) for n in ("chelsea", "coffee", "rocket")]

    def good(name: str | bytes, data: bytes) -> str:
        path = os.path.join(os.fsencode(folder), os.fsencode(name))
        with open(path, "wb") as f:
            f.write(data)
        corpus.good[os.fsdecode(path)] = None
        return os.fsdecode(path)

    def bad(name: str, data: bytes | None, reason: str) -> str:
        path = folder / name
        if data is not None:
            path.write_bytes(data)
        corpus.bad[str(path)] = reason
        return str(path)

    # Good images, one distinct content each (plus links and copies of them below).
    good("astronaut.jpg", _jpeg(photo))
    for i, other in enumerate(others):
        good(f"other{i}.jpg", _jpeg(other))
    good(b"caf\xe9-latin1-name.jpg", _jpeg(photo.rotate(90)))  # not UTF-8
    good("new\nline.jpg", _jpeg(photo.rotate(180)))
    good("sixteen-bit.png", _png(Image.fromarray((_grey(photo) * 257).astype("uint16"))))
    good("cmyk.jpg", _jpeg(others[0].convert("CMYK")))
    palette = others[1].convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = 0
    good("palette-transparent.png", _png(palette, transparency=0))
    frames = [others[2], others[2].rotate(45), others[2].rotate(90)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    good("animated.gif", buffer.getvalue())
    inside = folder / "folder-named.jpg"  # a directory with an image suffix: walked into
    inside.mkdir()
    good("folder-named.jpg/inside.jpg", _jpeg(photo.rotate(270)))
    corpus.contents = len(corpus.good)
    # The same content again: linked to the image above, not a new one.
    link = folder / "link-to-astronaut.jpg"
    link.symlink_to(folder / "astronaut.jpg")
    corpus.good[str(link)] = None
    unreadable = good("unreadable.jpg", _jpeg(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    os.chmod(unreadable, 0)
    if os.geteuid() == 0:  # root reads it anyway
        corpus.contents += 1
    else:
        del corpus.good[unreadable]
        corpus.bad[unreadable] = "Permission denied"
    good("vanishing.jpg", _jpeg(photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM)))
    corpus.contents += 1

    # Files that are not regular files: never opened, or opened without blocking.
    fifo = folder / "pipe.jpg"
    os.mkfifo(fifo)
    corpus.bad[str(fifo)] = "not a regular file (a FIFO)"
    zero = folder / "zero.jpg"
    zero.symlink_to("/dev/zero")
    corpus.bad[str(zero)] = "not a regular file (a character device)"
    loop = folder / "loop.jpg"
    loop.symlink_to(loop)
    corpus.bad[str(loop)] = "cannot read file"
    dangling = folder / "dangling.jpg"
    dangling.symlink_to(folder / "no-such-target.jpg")
    corpus.bad[str(dangling)] = "cannot read file"
    sock = folder / "socket.jpg"
    if len(os.fsencode(sock)) < 100:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(sock))
        corpus.sockets.append(server)
        corpus.bad[str(sock)] = "not a regular file (a socket)"
    huge = folder / "huge.jpg"
    with open(huge, "wb") as f:
        f.truncate(HUGE_BYTES)
    corpus.bad[str(huge)] = "file too large"

    # Regular files that are not usable images.
    good_bytes = _jpeg(photo)
    bad("empty.jpg", b"", "empty")
    bad("truncated.jpg", good_bytes[: len(good_bytes) // 3], "truncated")
    bad("png-header-only.png", _png(photo)[:40], "")
    bad("text.jpg", b"this is not a picture, only text\n" * 20, "not an image")
    bad("bomb.png", bomb_png(), "too many pixels")
    icon = io.BytesIO()
    photo.resize((32, 32)).save(icon, "ICO")
    bad("icon.png", icon.getvalue(), "unsupported format")
    bad("zeros.jpg", b"\x00" * 4096, "not an image")
    broken = os.path.join(os.fsencode(folder), b"\xff-broken-latin1.jpg")  # not UTF-8 either
    with open(broken, "wb") as f:
        f.write(b"GIF89a" + b"\x00" * 10)
    corpus.bad[os.fsdecode(broken)] = "image"

    # Never looked at: hidden, or not an image suffix.
    (folder / ".hidden.jpg").write_bytes(good_bytes)
    (folder / "notes.txt").write_text("hello")
    corpus.unlisted = [str(folder / ".hidden.jpg"), str(folder / "notes.txt")]
    return corpus


def vanish_on_read(corpus: Corpus, monkeypatch) -> str:
    """Make ``vanishing.jpg`` disappear after it was listed and stat'ed, just before it is
    read (inside this process); returns its path, now expected to be skipped."""
    from lookalike.ingest import files

    path = str(corpus.folder / "vanishing.jpg")
    original = files.read_regular

    def read(name: str, *args, **kwargs) -> bytes:
        if name == path and os.path.exists(name):
            os.unlink(name)
        return original(name, *args, **kwargs)

    monkeypatch.setattr(files, "read_regular", read)
    del corpus.good[path]
    corpus.contents -= 1
    corpus.bad[path] = "No such file"
    return path


def _grey(image: Image.Image):
    import numpy as np

    return np.asarray(image.convert("L"), dtype="uint16")
