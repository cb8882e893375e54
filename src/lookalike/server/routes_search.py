"""The search route: the images of a catalogue most like a query image (an upload or a URL,
optionally a region of it) or a text, filtered by metadata (``filters``) or by anything a
collection filters on (``where``: taken time, place, camera, metadata; exact: k results
whenever k images match).

Example:
    $ curl -s -X POST localhost:8000/catalogs/c_…/search -H "Authorization: Bearer $KEY" \\
        -F file=@photo.jpg -F k=5 -F region=0.25,0.1,0.5,0.6 -F 'filters={"tags": "red"}'
    $ curl -s -X POST localhost:8000/catalogs/c_…/search -H "Authorization: Bearer $KEY" \\
        -H 'content-type: application/json' -d '{"text": "a red bus", "k": 5}'
    $ curl -s -X POST localhost:8000/catalogs/c_…/search -H "Authorization: Bearer $KEY" \\
        -H 'content-type: application/json' -d '{"words": "lisboa", "k": 5}'
    $ curl -s -X POST localhost:8000/catalogs/c_…/search -H "Authorization: Bearer $KEY" \
        -H 'content-type: application/json' \
        -d '{"text": "beach", "where": {"taken_after": "2021-06", "near": [43.3, 5.4, 50]}}'
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from lookalike.collection.filters import FilterError, conditions
from lookalike.server.auth import Caller, ServerCatalogs, readable
from lookalike.server.bodies import (
    check_metadata,
    fetch_image,
    int_field,
    json_body,
    parse_field,
    read_file,
)
from lookalike.server.config import ServerConfig
from lookalike.server.errors import ApiError
from lookalike.server.limits import quick

router = APIRouter()

SEARCH_FIELDS = {
    "k": {"type": "integer", "minimum": 1, "maximum": 200, "default": 10},
    "text": {"type": "string"},
    "words": {"type": "string", "description": "words written in the pictures (OCR)"},
    "url": {"type": "string"},
    "filters": {"description": 'metadata filters, e.g. {"brand": "acme"}'},
    "where": {
        "description": "exact filters: taken_after, taken_before (2021-05-01...), near "
        '[lat, lon, km], camera, lens, metadata {key: value}, where ["key=value", "width>=800"]'
    },
    "region": {"description": "x,y,width,height as fractions of the query image"},
}
SEARCH_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        **{k: v for k, v in SEARCH_FIELDS.items() if k not in ("filters", "where")},
                        "filters": {"type": "string", "description": "JSON object"},
                        "where": {"type": "string", "description": "JSON object"},
                        "region": {"type": "string", "description": "x,y,w,h in 0..1"},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        **SEARCH_FIELDS,
                        "filters": {"type": "object"},
                        "where": {"type": "object"},
                        "region": {"type": "array", "items": {"type": "number"}},
                    },
                }
            },
        },
        "required": True,
    }
}


@router.post("/catalogs/{catalog_id}/search", tags=["search"], openapi_extra=SEARCH_BODY)
async def search(catalog_id: str, request: Request, who: Caller, catalogs: ServerCatalogs) -> dict:
    """Images most like a query image (upload or URL, optionally a region) or a text.

    An image query reserves its decode's memory (estimated from its header) from the
    worker's budget before its thread starts: 503 with Retry-After when it does not free up
    within ``queue_wait_seconds``.
    """
    config = catalogs.config
    readable(catalogs, catalog_id, who)
    query = await read_search(request, config)
    if query["url"] and query["image"] is None:
        query["image"] = await fetch_image(query["url"], catalogs)
    cost = 0
    if query["image"] is not None:
        cost = await quick(catalogs.query_cost, catalog_id, query["image"], query["region"])
    async with catalogs.budget.hold_async(cost, config.queue_wait_seconds):
        results = await run_in_threadpool(
            lambda: catalogs.search(
                catalog_id,
                image=query["image"],
                text=query["text"],
                k=query["k"],
                filters=query["filters"],
                region=query["region"],
                words=query["words"],
                where=query["where"],
            )
        )
    return {"results": results}


def read_where(where: object, config: ServerConfig) -> dict | None:
    """A request's ``where`` (``collection.filters``), checked: 400 when it cannot be read."""
    if where in (None, ""):
        return None
    if not isinstance(where, dict):
        raise ApiError(400, 'where must be an object such as {"taken_after": "2021-05-01"}')
    where = check_metadata(where, config, "where")
    try:
        conditions(where)
    except FilterError as exc:
        raise ApiError(400, str(exc)) from None
    return where


async def read_search(request: Request, config: ServerConfig) -> dict:
    """The query of a search (multipart ``file`` and fields, or JSON), checked."""
    kind = request.headers.get("content-type", "")
    query: dict = {"image": None, "url": None, "text": None, "k": 10, "filters": None}
    query["words"] = None
    query["region"] = None
    query["where"] = None
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_part_size=1024 * 1024)
        file = form.get("file")
        if isinstance(file, UploadFile):
            query["image"] = await read_file(file, config)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        for name in ("filters", "region", "where"):
            if fields.get(name):
                fields[name] = parse_field(name, fields[name])
    elif kind.startswith("application/json"):
        fields = await json_body(request, config)
        if not isinstance(fields, dict):
            raise ApiError(400, "the JSON body must be an object")
    else:
        raise ApiError(415, "send multipart/form-data or JSON")
    for name in ("url", "text", "words"):
        value = fields.get(name)
        if value not in (None, ""):
            if not isinstance(value, str) or len(value) > 2000:
                raise ApiError(400, f"{name} must be a string")
            query[name] = value
    query["k"] = int_field(fields.get("k", 10))
    filters = fields.get("filters")
    if filters not in (None, ""):
        if not isinstance(filters, dict):
            raise ApiError(400, 'filters must be an object such as {"brand": "acme"}')
        query["filters"] = check_metadata(filters, config, "filters")
    query["where"] = read_where(fields.get("where"), config)
    region = fields.get("region")
    if region not in (None, ""):
        if not isinstance(region, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in region
        ):
            raise ApiError(400, "region must be [x, y, width, height] fractions")
        query["region"] = region
    if all(query[name] is None for name in ("image", "url", "text", "words")):
        raise ApiError(400, "give an image file, an image url, a text or words")
    return query
