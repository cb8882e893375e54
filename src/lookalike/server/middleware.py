"""ASGI middleware around every request: body size caps while bodies stream, and the security
headers of every answer.

:class:`BodyLimit` refuses a body over its cap by its ``Content-Length`` before reading it,
and otherwise counts the bytes as the route reads them (chunked bodies have no length): past
the cap the read raises, whatever the route was doing is dropped, and the client gets 413. A
multipart body may be ``max_request_bytes`` long (files are spooled to disk as they arrive);
any other body (JSON) ``max_json_bytes``, since it is read into memory whole.

:class:`SecurityHeaders` adds to every answer a Content-Security-Policy that lets pages load
scripts, styles and connections only from the server itself (the key is kept in the page's
``localStorage``, so no other origin's script may run there), forbids framing, sends no
referrer and turns off content sniffing.

Example:
    >>> app = SecurityHeaders(BodyLimit(app, limit=2**29, json_limit=2**23))  # doctest: +SKIP
"""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lookalike.server.errors import answer

#: Every answer's headers (the API's JSON ones too: harmless there, and one rule is simpler).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


class BodyTooLargeError(Exception):
    """Raised into the route when its body passes the cap (the client is answered 413)."""


class BodyLimit:
    """413 for a body over the cap: by ``Content-Length`` before it is read, else as soon as
    the bytes read pass it."""

    def __init__(self, app: ASGIApp, limit: int, json_limit: int) -> None:
        self.app = app
        self.limit = limit
        self.json_limit = json_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        multipart = headers.get("content-type", "").startswith("multipart/form-data")
        limit = self.limit if multipart else self.json_limit
        too_large = answer(413, f"request body larger than {limit:,} bytes")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await too_large(scope, receive, send)
            return
        received = 0
        over = False
        started = False

        async def counted() -> Message:
            nonlocal received, over
            if over:
                raise BodyTooLargeError(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise BodyTooLargeError(limit)
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the route's own answer to the failed read: ours goes out instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except BodyTooLargeError:
            pass
        except Exception:
            if not over:
                raise
        if over and not started:
            await too_large(scope, receive, send)


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every answer (a header the route set is kept)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)
