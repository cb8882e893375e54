"""Writing files so that a reader, a crash or ``kill -9`` never sees half of one.

Every write goes to a hidden temporary file beside the target, then ``os.replace`` swaps it in
(atomic on POSIX file systems). A failed write (a full disk, an exception, Ctrl-C) removes its
temporary file and leaves the target as it was; only ``kill -9`` can leave one behind, which
:func:`stale_temporaries` finds (``lookalike check --repair`` removes them).

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
import re
from collections.abc import Callable, Iterator
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


_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp.*$")


def stale_temporaries(folder: str | Path) -> Iterator[Path]:
    """Temporary files under ``folder`` left by writers that are no longer running (a writer
    killed with ``kill -9`` between writing and renaming)."""
    for path in sorted(Path(folder).rglob(".*.tmp*")):
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and not _alive(int(match.group(1))):
            yield path


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
