"""Who is calling and what they may do: the request's API key, and its rights on a catalogue.

A route asks for :data:`Caller` (the key, checked: 401 without a known one) and for
:data:`ServerCatalogs` (the app's :class:`Catalogs`), then calls :func:`readable` or
:func:`writable`: a catalogue the key cannot read answers 404, as if it did not exist.

Example:
    >>> @router.get("/catalogs/{catalog_id}")  # doctest: +SKIP
    ... def get_catalog(catalog_id: str, who: Caller, catalogs: ServerCatalogs) -> dict:
    ...     return readable(catalogs, catalog_id, who)
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from lookalike.server.catalogs import Catalogs
from lookalike.server.db import KeyInfo
from lookalike.server.errors import ApiError


def caller(request: Request) -> KeyInfo:
    """The key of the request (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``)."""
    config, db = request.app.state.config, request.app.state.db
    key = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization", "")
    if not key and auth.lower().startswith("bearer "):
        key = auth[7:].strip()
    if not key:
        raise ApiError(401, "an API key is required (Authorization: Bearer KEY)")
    if config.admin_key and hmac.compare_digest(key.encode(), config.admin_key.encode()):
        return KeyInfo("admin", "admin", admin=True, can_create=True)
    info = db.key_info(key)
    if info is None:
        raise ApiError(401, "unknown API key")
    return info


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
