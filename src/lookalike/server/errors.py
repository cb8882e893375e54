"""How errors become HTTP answers: one table from error class to status, and the handlers.

Every error is answered as JSON ``{"error": "message"}``. The routes raise :class:`ApiError`
with a status of their own; the layers below raise the classes of :mod:`lookalike.errors`,
whose status is :data:`STATUS` (the most specific class listed wins, so :class:`BusyError`
answers 409 while any other :class:`CollectionError` answers 500). A busy collection also
answers ``Retry-After``; anything unforeseen is logged and answers a bare 500.

Example:
    >>> from lookalike.errors import BusyError, CollectionError
    >>> status_of(BusyError("another lookalike process is writing")), status_of(
    ...     CollectionError("damaged")
    ... )
    (409, 500)
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lookalike.errors import (
    BadRequestError,
    BusyError,
    CollectionError,
    FetchError,
    FilterError,
    ImageError,
    NotFoundError,
    UnavailableError,
)

log = logging.getLogger("lookalike.server")

#: The HTTP status of each error the layers below raise on purpose; a subclass not listed takes
#: its nearest listed base's. 400: the request cannot be served as asked (a bad image, a URL
#: that may not be fetched). 409: another writer (e.g. the CLI) held the collection for longer
#: than the server waits (``write_wait_seconds``); the same request can succeed later. 500: the
#: catalogue's collection is in a state this server cannot use (a damaged or newer manifest,
#: vectors of another model version, an unreachable catalogue database): the server's checks
#: turn every request-made collection error (no text side, no copy space, unknown model) into
#: a :class:`BadRequestError` before the collection sees it, so what is left is never the
#: caller's to fix. 501: a feature this server cannot offer as installed.
STATUS: dict[type[Exception], int] = {
    NotFoundError: 404,
    BadRequestError: 400,
    FetchError: 400,
    FilterError: 400,
    ImageError: 400,
    BusyError: 409,
    CollectionError: 500,
    UnavailableError: 501,
}

#: Seconds a client is told to wait (``Retry-After``) before repeating a 409 (busy) request.
RETRY_AFTER_SECONDS = 10


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status`` (and ``headers``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class OverloadedError(ApiError):
    """503: this worker's decode memory or fetch slots stayed taken for longer than a request
    waits; the answer says when to try again (``Retry-After``, seconds)."""

    def __init__(self, message: str, retry_after: int = 2) -> None:
        super().__init__(503, message, {"Retry-After": str(retry_after)})


def status_of(exc: BaseException) -> int:
    """The status :data:`STATUS` gives ``exc`` (its class or nearest listed base), else 500."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def message_of(exc: Exception, data_dir: Path) -> str:
    """What the caller is told about ``exc``: its message; a collection's message names the
    catalogue by its id, never by the server's folders."""
    if isinstance(exc, ImageError):
        return f"not a usable image: {exc.reason}"
    if not isinstance(exc, CollectionError):
        return str(exc)
    text = str(exc).replace(f"{data_dir}/catalogs/", "").replace(str(data_dir), "DATA")
    return text if isinstance(exc, BusyError) else f"the catalogue cannot be used as stored: {text}"


def answer(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error answer ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def install_errors(app: FastAPI) -> None:
    """Answer every error raised while serving ``app`` as JSON with its status."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return answer(exc.status, exc.message, exc.headers)

    async def known(request: Request, exc: Exception) -> JSONResponse:
        status = status_of(exc)
        if status >= 500:
            log.error("%s: %s", type(exc).__name__, exc)
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if isinstance(exc, BusyError) else None
        return answer(status, message_of(exc, request.app.state.config.data_dir), headers)

    for error in STATUS:
        app.add_exception_handler(error, known)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return answer(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return answer(422, f"invalid request: {where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return answer(500, "internal error")
