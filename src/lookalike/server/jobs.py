"""Long requests as jobs: a row in ``server.sqlite`` (so any worker answers ``GET /jobs/{id}``),
the work itself in a thread of the worker that accepted it.

Example:
    >>> def work(progress):  # doctest: +SKIP
    ...     results = catalogs.add_uploads(catalog_id, uploads, progress=progress)
    ...     return len(uploads), {"images": results}
    >>> response = start_job(catalogs, catalog_id, len(uploads), work, "upload")  # doctest: +SKIP
    >>> # 202 {"job": "j_…", "status": "/jobs/j_…"}; the thread updates the job row
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from fastapi.responses import JSONResponse

from lookalike.server.catalogs import Catalogs
from lookalike.server.errors import message_of

log = logging.getLogger("lookalike.server")

#: ``progress(done, total)``: how far a job's work is.
Progress = Callable[[int, int], None]
#: A job's work: given a progress callback, returns (units done, the job's result).
Work = Callable[[Progress], tuple[int, dict]]


def start_job(
    catalogs: Catalogs, catalog_id: str, total: int, work: Work, what: str
) -> JSONResponse:
    """Record a job of ``total`` units on ``catalog_id``, run ``work`` in a thread, and answer
    202 ``{"job", "status"}`` (``what`` names the job in the log when it fails)."""
    job_id = catalogs.db.add_job(catalog_id, total)
    threading.Thread(target=run_job, args=(catalogs, job_id, work, what), daemon=True).start()
    return JSONResponse({"job": job_id, "status": f"/jobs/{job_id}"}, status_code=202)


def run_job(catalogs: Catalogs, job_id: str, work: Work, what: str) -> None:
    """Run ``work`` as job ``job_id``: running with progress, then done with its result, or
    failed with the error's message."""
    db = catalogs.db
    db.update_job(job_id, state="running")
    try:
        done, result = work(lambda done, total: db.update_job(job_id, state="running", done=done))
    except Exception as exc:
        log.exception("%s job %s failed", what, job_id)
        message = message_of(exc, catalogs.config.data_dir)
        db.update_job(job_id, state="failed", result={"error": message})
        return
    db.update_job(job_id, state="done", done=done, result=result)
