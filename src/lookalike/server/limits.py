"""What one worker lets requests hold at once: decode memory and URL fetches.

A :class:`Gate` counts units of a shared resource (bytes of decode memory, fetch slots) against
a capacity. Threads take units blocking (an upload decodes in a thread, a job waits longer);
coroutines take them without blocking the event loop (a search reserves its decode's memory
before its thread starts, so waiting requests hold no thread). A request that cannot take its
units within its wait answers 503 with ``Retry-After`` (:class:`OverloadedError`).

:data:`QUICK` runs the short blocking calls the event loop must not make itself (the key's
database lookup, an image header's cost) in threads of their own, so they never queue behind
the decodes, fetches and writes that fill the default thread pool.

Example:
    >>> gate = Gate(100, "decode memory")
    >>> with gate.hold(60, wait=0):
    ...     gate.in_use
    60
    >>> gate.in_use
    0
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import TypeVar

from lookalike.server.errors import OverloadedError

T = TypeVar("T")
#: Threads for the short blocking calls of the event loop (key lookups, image headers).
QUICK = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lookalike-quick")


async def quick(function: Callable[..., T], *args: object) -> T:
    """``function(*args)`` in a :data:`QUICK` thread, awaited."""
    return await asyncio.get_running_loop().run_in_executor(QUICK, function, *args)


class Gate:
    """``capacity`` units shared by threads and coroutines; a request for more than the
    capacity is a request for all of it (it waits until nothing else is held)."""

    def __init__(self, capacity: int, what: str) -> None:
        self.capacity = max(1, int(capacity))
        self.what = what
        self.in_use = 0
        self.peak = 0  # the most held at once, for tests and the log
        self._changed = threading.Condition()

    def _units(self, units: int) -> int:
        return min(max(0, int(units)), self.capacity)

    def try_take(self, units: int) -> bool:
        units = self._units(units)
        with self._changed:
            if self.in_use + units > self.capacity:
                return False
            self.in_use += units
            self.peak = max(self.peak, self.in_use)
            return True

    def give(self, units: int) -> None:
        units = self._units(units)
        with self._changed:
            self.in_use -= units
            self._changed.notify_all()

    def _busy(self, wait: float) -> OverloadedError:
        return OverloadedError(
            f"the server is busy ({self.what} is taken by other requests); "
            f"try again in {max(1, math.ceil(wait))} s",
            retry_after=max(1, math.ceil(wait)),
        )

    @contextmanager
    def hold(self, units: int, wait: float) -> Iterator[None]:
        """Hold ``units`` (blocking this thread up to ``wait`` seconds; then 503)."""
        units = self._units(units)
        deadline = time.monotonic() + wait
        with self._changed:
            while self.in_use + units > self.capacity:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._busy(wait)
                self._changed.wait(left)
            self.in_use += units
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            self.give(units)

    @asynccontextmanager
    async def hold_async(self, units: int, wait: float) -> AsyncIterator[None]:
        """Hold ``units`` from a coroutine: polls (the event loop stays free) up to ``wait``."""
        units = self._units(units)
        deadline = time.monotonic() + wait
        pause = 0.005
        while not self.try_take(units):
            if time.monotonic() >= deadline:
                raise self._busy(wait)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
        try:
            yield
        finally:
            self.give(units)
