"""What the files' headers say of their images (taken time, GPS, camera, lens), stored as
columns of the catalogue's images table (``lookalike.ingest.exif`` reads them).

New images get it at ingest (the loading threads of an indexing run read the header beside the
pixels). Images indexed before, by an older lookalike or by Ray workers, get it from
:func:`read_headers`, which every indexing run starts with: a one-off pass that reads headers
only (no decoding, no embedding), a batch per transaction, so a killed pass resumes where it
stopped. It does not change the catalogue's generation: no index goes stale.

Example:
    >>> read_headers(col).read  # doctest: +SKIP
    12408
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lookalike.ingest import sources
from lookalike.ingest.exif import empty_info, read_info

#: Images whose headers are read per transaction.
BATCH = 2048


@dataclass
class HeaderPass:
    """What :func:`read_headers` did: images whose header was read, seconds taken."""

    read: int = 0
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0


def info_of_file(path: str, mtime_ns: int | None = None) -> dict:
    """The header info of one file (an ``s3://`` object: nothing known, ``"none"``)."""
    if sources.is_remote(path):
        return empty_info("none")
    return read_info(path, mtime_ns)


def read_headers(
    col: Any,
    *,
    workers: int = 4,
    batch: int = BATCH,
    progress: Callable[[int], None] | None = None,
) -> HeaderPass:
    """Read the header of every image that has none stored yet (its first file), in threads;
    one transaction per ``batch``. Takes the collection's write lock (re-entered when held)."""
    report = HeaderPass()
    start = time.perf_counter()
    with col.writing():
        rows = col.catalogue.ids_without_info(batch)
        if not rows:
            return report
        with ThreadPoolExecutor(max(1, workers)) as pool:
            while rows:
                infos = list(pool.map(lambda r: info_of_file(r[1], r[2]), rows))
                col.catalogue.set_info(
                    [(image_id, info) for (image_id, _, _), info in zip(rows, infos, strict=True)]
                )
                report.read += len(rows)
                if progress:
                    progress(report.read)
                rows = col.catalogue.ids_without_info(batch, after=rows[-1][0])
    report.seconds = time.perf_counter() - start
    return report
