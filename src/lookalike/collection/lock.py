"""The write lock of a collection folder: one writer at a time, across processes.

``flock`` on ``.lock`` in the folder: the kernel releases it when a writer dies, so a crashed
(``kill -9``) writer is never waited for. Readers never take it; they ask :meth:`WriteLock.held`
to know whether the saved index files are about to change.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with WriteLock(folder):
    ...     WriteLock.held(folder)
    True
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Any

from lookalike.errors import BusyError


class WriteLock:
    """An exclusive lock on the collection folder, so two writers never interleave.

    ``owner``: the Collection that writes, told so while it holds the lock (it then follows its
    own writes rather than the saved files). Raises :class:`~lookalike.errors.BusyError` when
    another writer holds it. Prefer ``Collection.writing()``, which also takes the in-process lock.
    """

    def __init__(self, path: Path, owner: Any = None) -> None:
        self.file = path / ".lock"
        self.owner = owner  # told it is the writer: it follows its own writes, not the files

    def __enter__(self) -> None:
        self.handle = open(self.file, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise BusyError(
                f"another lookalike process is writing {self.file.parent}; wait for it to finish"
            ) from None
        if self.owner is not None:
            self.owner._writing = True

    def __exit__(self, *_: object) -> None:
        if self.owner is not None:
            self.owner._writing = False
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()

    @staticmethod
    def held(path: Path) -> bool:
        """Whether a writer holds the lock of ``path`` now: another process, or another open
        Collection of this one (flock locks belong to open files). A crashed writer's lock is
        released by the kernel, so its half-done work is never waited for."""
        if not (path / ".lock").exists():
            return False
        with open(path / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False
