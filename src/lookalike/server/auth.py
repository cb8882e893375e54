"""Who is calling and what they may do: the request's API key, and its rights on a catalogue.

The key is checked before anything of the request is read: :class:`RequireKey` (an ASGI
middleware) answers 401 to a request on any API path without a known key before the route
runs, so no body of an unauthenticated request is ever read or parsed. A route asks for
:data:`Caller` (the key the middleware found) and for :data:`ServerCatalogs` (the app's
:class:`Catalogs`), then calls :func:`readable` or :func:`writable`: a catalogue the key cannot
read answers 404, as if it did not exist.

Example:
    >>> @router.get("/catalogs/{catalog_id}")  # doctest: +SKIP
    ... def get_catalog(catalog_id: str, who: Caller, catalogs: ServerCatalogs) -> dict:
    ...     return readable(catalogs, catalog_id, who)
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from lookalike.server.catalogs import Catalogs
from lookalike.server.config import ServerConfig
from lookalike.server.db import KeyInfo, ServerDB
from lookalike.server.errors import ApiError, answer
from lookalike.server.limits import quick

#: Paths anyone may read: the web page, its files, the API documentation and schema.
PUBLIC_PATHS = frozenset({"/", "/docs", "/openapi.json", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/", "/docs/")
#: Where :class:`RequireKey` leaves the checked key for the routes.
SCOPE_KEY = "lookalike.caller"


def key_of(headers: Headers) -> str:
    """The key a request carries (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``)."""
    key = headers.get("x-api-key") or ""
    auth = headers.get("authorization", "")
    if not key and auth.lower().startswith("bearer "):
        key = auth[7:].strip()
    return key


def authenticate(key: str, config: ServerConfig, db: ServerDB) -> KeyInfo:
    """Who ``key`` is; 401 when there is none or it is unknown (a database lookup: blocking)."""
    if not key:
        raise ApiError(401, "an API key is required (Authorization: Bearer KEY)")
    if config.admin_key and hmac.compare_digest(key.encode(), config.admin_key.encode()):
        return KeyInfo("admin", "admin", admin=True, can_create=True)
    info = db.key_info(key)
    if info is None:
        raise ApiError(401, "unknown API key")
    return info


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class RequireKey:
    """ASGI middleware: every request outside :data:`PUBLIC_PATHS` must carry a known key,
    checked before the route runs and so before any of its body is read; 401 otherwise. The
    lookup runs in a :data:`~lookalike.server.limits.QUICK` thread: the event loop never waits
    on the database, and the lookup never queues behind decodes in the default pool."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        try:
            key = key_of(Headers(scope=scope))
            scope[SCOPE_KEY] = await quick(authenticate, key, state.config, state.db)
        except ApiError as exc:
            await answer(exc.status, exc.message)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def caller(request: Request) -> KeyInfo:
    """The key of the request (checked by :class:`RequireKey`; checked here when an app runs
    without it)."""
    who = request.scope.get(SCOPE_KEY)
    if who is None:
        config, db = request.app.state.config, request.app.state.db
        who = await quick(authenticate, key_of(request.headers), config, db)
        request.scope[SCOPE_KEY] = who
    return who


def server_catalogs(request: Request) -> Catalogs:
    """The catalogues of the app serving the request."""
    return request.app.state.catalogs


#: A route parameter: the calling key.
Caller = Annotated[KeyInfo, Depends(caller)]
#: A route parameter: the app's :class:`Catalogs` (its ``config`` and ``db`` too).
ServerCatalogs = Annotated[Catalogs, Depends(server_catalogs)]


def readable(catalogs: Catalogs, catalog_id: str, who: KeyInfo) -> dict:
    """The catalogue's registry entry if ``who`` may read it; else 404 (never 403: a key is
    not told that a catalogue it cannot read exists)."""
    if not who.can_read(catalog_id):
        raise ApiError(404, "no such catalogue")  # do not reveal that it exists
    return catalogs.get(catalog_id)


def writable(catalogs: Catalogs, catalog_id: str, who: KeyInfo) -> dict:
    """The catalogue's registry entry if ``who`` may write it; 403 if it may only read it."""
    entry = readable(catalogs, catalog_id, who)
    if not who.can_write(catalog_id):
        raise ApiError(403, "this key may only read this catalogue")
    return entry
