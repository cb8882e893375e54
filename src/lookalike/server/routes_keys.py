"""The ``keys`` routes: who the calling key is, and the admin's management of keys.

Example:
    $ curl -s localhost:8000/me -H "Authorization: Bearer $KEY"
    $ curl -s -X POST localhost:8000/keys -H "Authorization: Bearer $ADMIN" \\
        -H 'content-type: application/json' -d '{"name": "shop", "catalogs": {"c_…": "read"}}'
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, Field

from lookalike.server.auth import Caller, ServerCatalogs, readable
from lookalike.server.db import READ, WRITE
from lookalike.server.errors import ApiError

router = APIRouter()


class NewKey(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    #: {catalog id: "read" | "write"}
    catalogs: dict[str, str] = Field(default_factory=dict)
    #: May create catalogues (and gets write rights on those it creates).
    create: bool = False


@router.get("/me", tags=["keys"])
async def me(who: Caller) -> dict:
    """The calling key: its name and rights (answered on the event loop: never queued behind
    the decodes and writes in the thread pool)."""
    return who.to_dict()


@router.post("/keys", status_code=201, tags=["keys"])
def create_key(body: NewKey, who: Caller, catalogs: ServerCatalogs) -> dict:
    """Create an API key (admin only). The key itself is shown once, in this answer."""
    if not who.admin:
        raise ApiError(403, "only the admin key creates keys")
    for catalog_id, right in body.catalogs.items():
        if right not in (READ, WRITE):
            raise ApiError(400, f"right must be 'read' or 'write', not {right!r}")
        readable(catalogs, catalog_id, who)
    key, info = catalogs.db.create_key(body.name, body.catalogs, create=body.create)
    return {"key": key, **info.to_dict()}


@router.get("/keys", tags=["keys"])
def list_keys(who: Caller, catalogs: ServerCatalogs) -> dict:
    if not who.admin:
        raise ApiError(403, "only the admin key lists keys")
    return {"keys": [k.to_dict() for k in catalogs.db.all_keys()]}


@router.delete("/keys/{key_id}", status_code=204, tags=["keys"])
def delete_key(key_id: str, who: Caller, catalogs: ServerCatalogs) -> Response:
    if not who.admin:
        raise ApiError(403, "only the admin key deletes keys")
    if not catalogs.db.delete_key(key_id):
        raise ApiError(404, "no such key")
    return Response(status_code=204)
