"""Keeping a collection in sync with folders as files appear, change or go (``lookalike watch``).

The file system's events (watchdog: inotify on Linux, FSEvents, ReadDirectoryChangesW) only say
*which paths* may have changed; what to do is decided when a batch is taken, from what is on
disk then: a path that is a file is added (or updated: ``Collection.add`` compares its size and
mtime with the catalogue, so an unchanged file costs nothing), a folder is walked, a path that
is gone is removed with everything under it. So a file deleted and written again, moved in,
moved out or renamed all end right, whatever order the events came in.

- **Debounced.** A path is taken once it has been quiet for :data:`QUIET` seconds, or
  :data:`CLOSED_QUIET` after the writer closed it (inotify's close-after-write event): a new
  file is searchable within about a second of being closed, and a file still being written is
  not read half-way.
- **Batched.** Paths are taken together once a burst of events is over (or after
  :data:`MAX_DELAY`, so a steady stream still gets indexed), into one indexing run (at most
  :data:`MAX_BATCH` files); events that arrive meanwhile wait for the next one. Each batch
  prints one summary line.
- **Crash-safe like index.** Each batch *is* an indexing run (one transaction per batch of
  images, the index saved at its end), and a watch starts with a full ``sync`` of its folders,
  so ``kill -9`` loses nothing: the next ``watch`` (or ``index``) does what was left.
- **A good neighbour.** The collection's write lock is held only while a batch is indexed; when
  another writer holds it (an ``index`` run), the batch waits and is tried again.

This module drives a collection it is given (any object with ``sync``, ``add``, ``remove``,
``excludes``), so ``ingest`` stays below ``collection`` in the layers.

Example:
    >>> watcher = Watcher(col, ["~/Photos"], report=print)  # doctest: +SKIP
    >>> watcher.run()  # until Ctrl-C  # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookalike.errors import BusyError, CollectionError
from lookalike.images import is_image_path
from lookalike.ingest.files import is_excluded, walk

#: Seconds a path must be quiet (no event) before it is taken.
QUIET = 1.0
#: Seconds after the writer closed a file (inotify IN_CLOSE_WRITE) before it is taken.
CLOSED_QUIET = 0.3
#: Seconds the first settled path waits at most for a burst of events to end.
MAX_DELAY = 0.8
#: Files indexed in one run at most (the rest wait for the next).
MAX_BATCH = 1000
#: Seconds before a batch that found the collection busy is tried again.
BUSY_RETRY = 2.0


@dataclass
class Batch:
    """What one batch did: files added, updated, removed, skipped (path, reason), seconds."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    files: int = 0
    seconds: float = 0.0
    started: float = 0.0

    def summary(self) -> str:
        """One line: ``12:00:01 +3 added, 1 updated, 2 removed, 0 skipped (12 files, 0.8 s)``."""
        when = time.strftime("%H:%M:%S", time.localtime(self.started))
        line = (
            f"{when} {self.added} added, {self.updated} updated, {self.removed} removed, "
            f"{len(self.skipped)} skipped ({self.files} paths, {self.seconds:.1f} s)"
        )
        return line + "".join(f"\n  skipped {p}: {r}" for p, r in self.skipped[:5])


class Watcher:
    """Watch ``folders`` and keep ``col`` in sync with them (see the module docstring).

    ``report`` gets each batch's :class:`Batch` (and the start's catch-up ``sync`` as one).
    :meth:`run` blocks until :meth:`stop` (or Ctrl-C); :meth:`start` runs it in a thread.
    """

    def __init__(
        self,
        col: Any,
        folders: Iterable[str | Path],
        *,
        report: Callable[[Batch], None] | None = None,
        quiet: float = QUIET,
        closed_quiet: float = CLOSED_QUIET,
        poll: bool = False,
    ) -> None:
        self.col = col
        self.folders = [Path(f).expanduser().resolve() for f in folders]
        for folder in self.folders:
            if not folder.is_dir():
                raise FileNotFoundError(f"no such folder: {folder}")
        self.report = report or (lambda batch: None)
        self.quiet, self.closed_quiet = quiet, closed_quiet
        self.poll = poll
        self._dirty: dict[str, tuple[float, bool]] = {}  # path -> (last event, closed)
        self._last_event = 0.0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()  # set once the catch-up sync is done and events flow
        self.batches = 0

    # -- events (called from watchdog's thread) ---------------------------------------------
    def touched(self, path: str, closed: bool = False) -> None:
        """Note that ``path`` may have changed (``closed``: its writer closed it)."""
        with self._cond:
            self._last_event = time.monotonic()
            self._dirty[path] = (self._last_event, closed)
            self._cond.notify()

    # -- running -----------------------------------------------------------------------------
    def run(self) -> None:
        """Catch up (a full ``sync`` of the folders), then index what the events name, batch
        after batch, until :meth:`stop`."""
        observer = self._observer()
        observer.start()  # events from here on are kept while the catch-up runs
        try:
            self._catch_up()
            self.ready.set()
            while not self._stopping:
                paths, wait = self._take()
                if paths:
                    self._index(paths)
                    continue
                with self._cond:
                    if not self._stopping:
                        self._cond.wait(timeout=wait)
        finally:
            observer.stop()
            observer.join(timeout=5)

    def start(self) -> threading.Thread:
        """:meth:`run` in a background thread (returned); :meth:`stop` ends it."""
        self._thread = threading.Thread(target=self.run, name="lookalike-watch", daemon=True)
        self._thread.start()
        return self._thread

    def request_stop(self) -> None:
        """Ask :meth:`run` to end after the batch under way (safe in a signal handler)."""
        self._stopping = True

    def stop(self) -> None:
        """End :meth:`run` after the batch under way and wait for its thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _observer(self) -> Any:
        try:
            if self.poll:
                from watchdog.observers.polling import PollingObserver as Observer
            else:
                from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - watchdog is a dependency
            raise CollectionError("watching folders needs watchdog: pip install watchdog") from None
        observer = Observer()
        handler = _Handler(self)
        for folder in self.folders:
            observer.schedule(handler, str(folder), recursive=True)
        return observer

    def _catch_up(self) -> None:
        batch = Batch(started=time.time())
        start = time.perf_counter()
        while True:
            try:
                report = self.col.sync(self.folders)
                break
            except BusyError:
                if self._sleep(BUSY_RETRY):
                    return
        batch.added, batch.updated, batch.removed = report.added, report.updated, report.removed
        batch.skipped = list(report.skipped)
        batch.files = report.added + report.updated + report.unchanged + len(report.skipped)
        batch.seconds = time.perf_counter() - start
        self.report(batch)

    def _take(self) -> tuple[list[str], float]:
        """The paths to index now, and how long to wait before looking again.

        A path is settled once quiet long enough; settled paths are taken together once the
        burst of events is over (none for ``closed_quiet``), or once the first of them has
        waited :data:`MAX_DELAY` (a steady stream of files still gets indexed)."""
        now = time.monotonic()
        settled, due_next, first_due = [], 3600.0, now
        with self._cond:
            for path, (when, closed) in self._dirty.items():
                due = when + (self.closed_quiet if closed else self.quiet)
                if due <= now:
                    settled.append(path)
                    first_due = min(first_due, due)
                else:
                    due_next = min(due_next, due - now)
            if not settled:
                return [], max(due_next, 0.01)
            calm = now - self._last_event
            if calm < self.closed_quiet and now - first_due < MAX_DELAY:
                wait = min(self.closed_quiet - calm, MAX_DELAY - (now - first_due), due_next)
                return [], max(wait, 0.01)
            taken = settled[:MAX_BATCH]
            for path in taken:
                del self._dirty[path]
        return taken, 0.0

    def _index(self, paths: list[str]) -> None:
        """One batch: add what is on disk, remove what is gone."""
        batch = Batch(started=time.time(), files=len(paths))
        start = time.perf_counter()
        files: list[str] = []
        gone: list[str] = []
        for path in sorted(set(paths)):
            if os.path.isdir(path):
                files += [f for f in walk(path) if self._wanted(f)]
            elif os.path.exists(path):
                if self._wanted(path):
                    files.append(path)
            else:
                gone.append(path)
        try:  # added first: a file moved within the folders keeps its image (no embedding)
            if files:
                report = self.col.add(files)
                batch.added = report.added + len(report.duplicates)
                batch.updated = report.updated
                batch.skipped = list(report.skipped)
            if gone:
                batch.removed = self.col.remove(gone)
        except BusyError:  # another writer: try these again shortly
            with self._cond:
                for path in paths:
                    self._dirty.setdefault(path, (time.monotonic() + BUSY_RETRY, False))
            return
        batch.seconds = time.perf_counter() - start
        self.batches += 1
        if batch.added or batch.updated or batch.removed or batch.skipped:
            self.report(batch)

    def _wanted(self, path: str) -> bool:
        """An image file that ``index`` of the folders would take: not hidden, not under a
        hidden folder, not excluded (the collection's remembered ``--exclude`` globs)."""
        name = os.path.basename(path)
        if name.startswith(".") or not is_image_path(name):
            return False
        for folder in self.folders:
            if path.startswith(str(folder) + os.sep):
                below = Path(path).relative_to(folder).parts[:-1]
                if any(part.startswith(".") for part in below):
                    return False
                break
        excludes = list(getattr(self.col, "excludes", []) or [])
        return not (excludes and is_excluded(path, excludes, self.folders))

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` unless stopped; True when stopped."""
        with self._cond:
            if not self._stopping:
                self._cond.wait(timeout=seconds)
            return self._stopping


class _Handler:
    """watchdog's handler: every event names paths that may have changed."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def dispatch(self, event: Any) -> None:
        kind = event.event_type
        if kind in ("opened", "closed_no_write"):
            return
        if event.is_directory and kind == "modified":
            return  # a file inside changed: that file has its own event
        closed = kind == "closed"
        self.watcher.touched(_text(event.src_path), closed)
        if getattr(event, "dest_path", ""):
            self.watcher.touched(_text(event.dest_path), closed)


def _text(path: str | bytes) -> str:
    return os.fsdecode(path)
