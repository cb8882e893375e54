"""The ``images`` routes: add images to a catalogue (files or URLs, small uploads at once and
large ones as a job), poll jobs, list, read and delete images, their thumbnails and originals,
and match a query image against one of them (the keypoints that agree, for a compare view).

Example:
    $ curl -s -X POST localhost:8000/catalogs/c_…/images -H "Authorization: Bearer $KEY" \\
        -F files=@a.jpg -F files=@b.jpg -F 'metadata=[{"sku": "A-1"}, {"sku": "B-2"}]'
    $ curl -s localhost:8000/catalogs/c_…/images/7/thumbnail -H "Authorization: Bearer $KEY"
    $ curl -s -X POST localhost:8000/catalogs/c_…/images/7/match -H "Authorization: Bearer $KEY" \\
        -F file=@crop.jpg
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from lookalike.server.auth import Caller, ServerCatalogs, readable, writable
from lookalike.server.bodies import check_metadata, fetch_image, json_body, loads
from lookalike.server.catalogs import Catalogs, Upload
from lookalike.server.config import ServerConfig
from lookalike.server.errors import ApiError
from lookalike.server.jobs import Progress, start_job
from lookalike.server.limits import quick

router = APIRouter()
#: An image id in a path: what the catalogue can hold.
IMAGE_ID = PathParam(ge=0, le=2**62)

IMAGES_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "metadata": {
                            "type": "string",
                            "description": "JSON: one object for every file, or a list of "
                            "objects, one per file",
                        },
                    },
                    "required": ["files"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "url": {"type": "string"},
                                    "metadata": {"type": "object"},
                                },
                                "required": ["url"],
                            },
                        }
                    },
                    "required": ["images"],
                }
            },
        },
        "required": True,
    }
}


@router.post("/catalogs/{catalog_id}/images", tags=["images"], openapi_extra=IMAGES_BODY)
async def add_images(
    catalog_id: str,
    request: Request,
    who: Caller,
    catalogs: ServerCatalogs,
    wait: Annotated[bool | None, Query(description="wait for indexing (else a job)")] = None,
) -> JSONResponse:
    """Add images (multipart files, or JSON URLs), each with optional metadata.

    Small uploads answer when indexed (200); large ones, or ``wait=false``, answer 202 with
    a job to poll at ``/jobs/{id}``.
    """
    config = catalogs.config
    writable(catalogs, catalog_id, who)
    uploads = await read_uploads(request, catalogs)
    if not uploads:
        raise ApiError(400, "no images given")
    as_job = (wait is False) or (wait is None and len(uploads) > config.job_threshold)
    if as_job:

        def work(progress: Progress) -> tuple[int, dict]:
            results = catalogs.add_uploads(
                catalog_id, uploads, progress=progress, wait=config.job_wait_seconds
            )
            added = sum("id" in r for r in results)
            return len(uploads), {"images": results, "added": added}

        return start_job(catalogs, catalog_id, len(uploads), work, "upload")
    results = await run_in_threadpool(catalogs.add_uploads, catalog_id, uploads)
    added = [r for r in results if "id" in r]
    status = 200 if added else 400
    body: dict = {"images": results, "added": len(added)}
    if not added:
        body["error"] = "no image could be added: " + "; ".join(
            r.get("error", "") for r in results[:3]
        )
    return JSONResponse(body, status_code=status)


@router.get("/jobs/{job_id}", tags=["images"])
def get_job(job_id: str, who: Caller, catalogs: ServerCatalogs) -> dict:
    job = catalogs.db.job(job_id)
    if job is None or not who.can_read(job["catalog"]):
        raise ApiError(404, "no such job")
    return job


@router.get("/catalogs/{catalog_id}/images", tags=["images"])
def list_images(
    catalog_id: str,
    who: Caller,
    catalogs: ServerCatalogs,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict:
    readable(catalogs, catalog_id, who)
    return catalogs.list_images(catalog_id, offset, limit)


@router.get("/catalogs/{catalog_id}/images/{image_id}", tags=["images"])
def get_image(
    catalog_id: str, image_id: Annotated[int, IMAGE_ID], who: Caller, catalogs: ServerCatalogs
) -> dict:
    readable(catalogs, catalog_id, who)
    return catalogs.image(catalog_id, image_id)


@router.delete("/catalogs/{catalog_id}/images/{image_id}", status_code=204, tags=["images"])
def delete_image(
    catalog_id: str, image_id: Annotated[int, IMAGE_ID], who: Caller, catalogs: ServerCatalogs
) -> Response:
    writable(catalogs, catalog_id, who)
    catalogs.delete_image(catalog_id, image_id)
    return Response(status_code=204)


@router.get("/catalogs/{catalog_id}/images/{image_id}/similar", tags=["images"])
def similar_images(
    catalog_id: str,
    image_id: Annotated[int, IMAGE_ID],
    who: Caller,
    catalogs: ServerCatalogs,
    k: Annotated[int, Query(ge=1, le=200)] = 10,
    where: Annotated[str | None, Query(max_length=10_000)] = None,
) -> dict:
    """ "More like this": the images most like a stored one, from its stored vector (nothing is
    decoded), itself left out; ``where``: a JSON object of filters as for search."""
    from lookalike.server.routes_search import read_where

    readable(catalogs, catalog_id, who)
    filters = read_where(loads(where, "where") if where else None, catalogs.config)
    return {"results": catalogs.similar(catalog_id, image_id, k, filters)}


MATCH_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "url": {"type": "string"},
                        "region": {"type": "string", "description": "x,y,w,h in 0..1"},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "url": {"type": "string"},
                        "region": {"type": "array", "items": {"type": "number"}},
                    },
                }
            },
        },
        "required": True,
    }
}


@router.post(
    "/catalogs/{catalog_id}/images/{image_id}/match", tags=["images"], openapi_extra=MATCH_BODY
)
async def match_image(
    catalog_id: str,
    image_id: Annotated[int, IMAGE_ID],
    request: Request,
    who: Caller,
    catalogs: ServerCatalogs,
) -> dict:
    """Why a query image (upload or URL, optionally a region of it, read as the search route
    reads it) matches a stored image: keypoint verification's answer, with the matched region
    of the stored image and up to 200 keypoint pairs [qx, qy, cx, cy] (query pixels, stored
    image pixels) to draw; ``query_size`` and ``image_size`` are those pixels' frames."""
    from lookalike.server.routes_search import read_search

    config = catalogs.config
    readable(catalogs, catalog_id, who)
    query = await read_search(request, config)
    if query["url"] and query["image"] is None:
        query["image"] = await fetch_image(query["url"], catalogs)
    if query["image"] is None:
        raise ApiError(400, "give the query image: a file or an image url")
    image, region = query["image"], query["region"]
    cost = await quick(catalogs.match_cost, catalog_id, image_id, image, region)
    async with catalogs.budget.hold_async(cost, config.queue_wait_seconds):
        return await run_in_threadpool(
            lambda: catalogs.match(catalog_id, image_id, image, region=region)
        )


@router.get("/catalogs/{catalog_id}/images/{image_id}/thumbnail", tags=["images"])
def get_thumbnail(
    catalog_id: str, image_id: Annotated[int, IMAGE_ID], who: Caller, catalogs: ServerCatalogs
) -> Response:
    readable(catalogs, catalog_id, who)
    data, mime = catalogs.blob(catalog_id, image_id, "thumbnail")
    return Response(data, media_type=mime, headers={"Cache-Control": "private, max-age=3600"})


@router.get("/catalogs/{catalog_id}/images/{image_id}/original", tags=["images"])
def get_original(
    catalog_id: str, image_id: Annotated[int, IMAGE_ID], who: Caller, catalogs: ServerCatalogs
) -> Response:
    readable(catalogs, catalog_id, who)
    data, mime = catalogs.blob(catalog_id, image_id, "original")
    return Response(data, media_type=mime, headers={"X-Content-Type-Options": "nosniff"})


async def read_uploads(request: Request, catalogs: Catalogs) -> list[Upload]:
    """Images from a multipart form (``files`` + ``metadata``) or JSON ``{"images": [...]}``;
    URLs are fetched here (on the event loop, under the fetch limits)."""
    config = catalogs.config
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=config.max_files_per_request, max_part_size=1024 * 1024)
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        metadata = metadata_list(form.get("metadata"), len(files), config)
        uploads = []
        for file, meta in zip(files, metadata, strict=True):
            data = await file.read(config.max_upload_bytes + 1)
            if len(data) > config.max_upload_bytes:
                raise ApiError(413, f"a file is larger than {config.max_upload_bytes:,} bytes")
            uploads.append(Upload(data, meta))
        return uploads
    if kind.startswith("application/json"):
        body = await json_body(request, config)
        items = body.get("images") if isinstance(body, dict) else None
        if not isinstance(items, list) or len(items) > config.max_files_per_request:
            raise ApiError(400, 'JSON body must be {"images": [{"url": ..., "metadata": {}}]}')
        uploads = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("url"), str):
                raise ApiError(400, "each image needs a url")
            meta = check_metadata(item.get("metadata") or {}, config)
            data = await fetch_image(item["url"], catalogs)
            uploads.append(Upload(data, meta))
        return uploads
    raise ApiError(415, "send multipart/form-data files or a JSON body")


def metadata_list(raw: object, count: int, config: ServerConfig) -> list[dict]:
    """The ``metadata`` form field: one JSON object for every file, or a list, one per file;
    each within the metadata limits."""
    if raw is None or raw == "":
        return [{} for _ in range(count)]
    value = loads(raw, "metadata") if isinstance(raw, str) else None
    if isinstance(value, dict):
        check_metadata(value, config)
        return [dict(value) for _ in range(count)]
    if isinstance(value, list) and len(value) == count and all(isinstance(v, dict) for v in value):
        return [check_metadata(v, config, f"metadata {i}") for i, v in enumerate(value)]
    raise ApiError(400, "metadata must be a JSON object, or a list of objects, one per file")
