"""The ``catalogs`` routes: create, list, describe and delete catalogues.

Example:
    $ curl -s -X POST localhost:8000/catalogs -H "Authorization: Bearer $KEY" \\
        -H 'content-type: application/json' -d '{"name": "shoes", "model": "efficientnet-lite0"}'
    $ curl -s localhost:8000/catalogs/c_… -H "Authorization: Bearer $KEY"
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, Field

from lookalike.server.auth import Caller, ServerCatalogs, readable, writable
from lookalike.server.db import WRITE
from lookalike.server.errors import ApiError

router = APIRouter()


class NewCatalog(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    model: str = "efficientnet-lite0"


@router.post("/catalogs", status_code=201, tags=["catalogs"])
def create_catalog(body: NewCatalog, who: Caller, catalogs: ServerCatalogs) -> dict:
    """Create an empty catalogue; the calling key gets write rights on it."""
    if not who.can_create:
        raise ApiError(403, "this key may not create catalogues")
    entry = catalogs.create(body.name, body.model)
    if not who.admin:
        catalogs.db.grant(who.id, entry["id"], WRITE)
    return entry


@router.get("/catalogs", tags=["catalogs"])
def list_catalogs(who: Caller, catalogs: ServerCatalogs) -> dict:
    return {"catalogs": [c for c in catalogs.db.catalogs() if who.can_read(c["id"])]}


@router.get("/catalogs/{catalog_id}", tags=["catalogs"])
def get_catalog(catalog_id: str, who: Caller, catalogs: ServerCatalogs) -> dict:
    readable(catalogs, catalog_id, who)
    return catalogs.describe(catalog_id) | {
        "right": "write" if who.can_write(catalog_id) else "read"
    }


@router.delete("/catalogs/{catalog_id}", status_code=204, tags=["catalogs"])
def delete_catalog(catalog_id: str, who: Caller, catalogs: ServerCatalogs) -> Response:
    writable(catalogs, catalog_id, who)
    catalogs.delete(catalog_id)
    return Response(status_code=204)
