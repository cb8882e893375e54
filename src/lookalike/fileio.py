"""Writing files so that a reader, a crash or ``kill -9`` never sees half of one.

Every write goes to a hidden temporary file beside the target, then ``os.replace`` swaps it in
(atomic on POSIX file systems). A failed write removes its temporary file.

Example:
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "manifest.json"
    >>> write_json(target, {"format_version": 1})
    >>> target.read_text()
    '{\\n  "format_version": 1\\n}\\n'
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def temporary_beside(path: str | Path, suffix: str = "") -> Path:
    """A hidden temporary name next to ``path`` (same folder, so ``os.replace`` is atomic),
    unique to this process; ``suffix`` for writers that need the name to end in one."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(file)`` on a temporary binary file, then rename it to ``path``."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_save(path: str | Path, save: Callable[[str], Any], suffix: str = "") -> None:
    """Call ``save(temporary_name)`` for writers that take a file name (FAISS, NumPy), then
    rename the result to ``path``."""
    path = Path(path)
    tmp = temporary_beside(path, suffix)
    try:
        save(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_json(path: str | Path, data: object) -> None:
    """``data`` as indented JSON in ``path``, atomically."""
    atomic_write(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))
