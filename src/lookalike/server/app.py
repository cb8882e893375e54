"""The REST API and web page: a FastAPI application over :class:`Catalogs`.

Every route authenticates the caller (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``), checks
its rights on the catalogue (a catalogue the key cannot read answers 404, as if it did not
exist), and calls the catalogue layer, which calls the Collection API. Errors are JSON
``{"error": "message"}`` with a 4xx status.

Example:
    >>> app = create_app("/srv/lookalike", admin_key="s3cret")  # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

import hmac
import json
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from lookalike.collection import CollectionError
from lookalike.images import ImageError
from lookalike.models import Embedder, available, load_embedder
from lookalike.server.catalogs import (
    BadRequestError,
    Catalogs,
    NotFoundError,
    UnavailableError,
    Upload,
)
from lookalike.server.config import ServerConfig
from lookalike.server.db import READ, WRITE, KeyInfo, ServerDB
from lookalike.server.fetch import FetchError, fetch_url
from lookalike.server.storage import open_storage

STATIC = Path(__file__).parent / "static"
_ImageId = PathParam(ge=0, le=2**62)
log = logging.getLogger("lookalike.server")


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class NewCatalog(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    model: str = "efficientnet-lite0"


class DuplicatesRequest(BaseModel):
    """Options of ``POST /catalogs/{id}/duplicates`` (all optional)."""

    #: Copy-space cosine similarity at or above which two images are copies (default: the copy
    #: model's calibrated threshold, 0.68 for sscd-mobile: 90% precision on the benchmark).
    threshold: float | None = Field(default=None, ge=0, le=1)
    #: Neighbours looked at per image.
    k: int = Field(default=10, ge=1, le=100)
    #: Keep a pair only when keypoint matching confirms it (slower: decodes both images).
    verify: bool = False
    #: Groups returned at most (``total_groups`` says how many were found).
    limit: int = Field(default=500, ge=1, le=10_000)
    #: True: answer when done; False: always a job; unset: a job when the copy space must be
    #: computed for more than ``job_threshold`` images, or ``verify`` on a larger catalogue.
    wait: bool | None = None


class NewKey(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    #: {catalog id: "read" | "write"}
    catalogs: dict[str, str] = Field(default_factory=dict)
    #: May create catalogues (and gets write rights on those it creates).
    create: bool = False


_IMAGES_BODY = {
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

_SEARCH_FIELDS = {
    "k": {"type": "integer", "minimum": 1, "maximum": 200, "default": 10},
    "text": {"type": "string"},
    "url": {"type": "string"},
    "filters": {"description": 'metadata filters, e.g. {"brand": "acme"}'},
    "region": {"description": "x,y,width,height as fractions of the query image"},
}
_DETECT_FIELDS = {
    "k": {"type": "integer", "minimum": 1, "maximum": 20, "default": 3},
    "url": {"type": "string"},
    "min_score": {"type": "number", "minimum": -1, "maximum": 1},
}
_DETECT_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        **_DETECT_FIELDS,
                        "proposals": {
                            "type": "string",
                            "description": "proposal sources, comma-separated (default: "
                            "lookalike.detect.photo's default)",
                        },
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        **_DETECT_FIELDS,
                        "proposals": {"type": "array", "items": {"type": "string"}},
                    },
                }
            },
        },
        "required": True,
    }
}

_SEARCH_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        **{k: v for k, v in _SEARCH_FIELDS.items() if k not in ("filters",)},
                        "filters": {"type": "string", "description": "JSON object"},
                        "region": {"type": "string", "description": "x,y,w,h in 0..1"},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        **_SEARCH_FIELDS,
                        "filters": {"type": "object"},
                        "region": {"type": "array", "items": {"type": "number"}},
                    },
                }
            },
        },
        "required": True,
    }
}


def create_app(
    data_dir: str | Path | None = None,
    *,
    config: ServerConfig | None = None,
    embedder_factory: Callable[[str], Embedder] | None = None,
    models: Sequence[str] | None = None,
    **settings: Any,
) -> FastAPI:
    """The application serving the catalogues under ``data_dir``.

    ``settings`` override :class:`ServerConfig` fields (``admin_key``, ``storage_url``,
    ``allow_private_urls``...); ``embedder_factory(model_name)`` builds models (tests pass the
    one already loaded); ``models`` are the model names a catalogue may be created with.
    """
    if config is None:
        config = ServerConfig(data_dir=Path(data_dir or "lookalike-data"), **settings)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    db = ServerDB(config.data_dir / "server.sqlite")
    storage = open_storage(
        config.storage_url or config.data_dir / "blobs", **config.storage_options
    )
    catalogs = Catalogs(
        config,
        db,
        storage,
        embedder_factory or load_embedder,
        models if models is not None else available(),
    )
    app = FastAPI(
        title="lookalike",
        description="Reverse image search over catalogues of images.",
        version="1",
    )
    app.state.config, app.state.db, app.state.catalogs = config, db, catalogs
    _install_errors(app)
    _install_size_limit(app, config.max_request_bytes)

    def caller(request: Request) -> KeyInfo:
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

    Caller = Annotated[KeyInfo, Depends(caller)]  # noqa: N806 - a type, named like one

    def readable(catalog_id: str, who: KeyInfo) -> dict:
        if not who.can_read(catalog_id):
            raise ApiError(404, "no such catalogue")  # do not reveal that it exists
        return catalogs.get(catalog_id)

    def writable(catalog_id: str, who: KeyInfo) -> dict:
        entry = readable(catalog_id, who)
        if not who.can_write(catalog_id):
            raise ApiError(403, "this key may only read this catalogue")
        return entry

    # -- keys ---------------------------------------------------------------------------------
    @app.get("/me", tags=["keys"])
    def me(who: Caller) -> dict:
        """The calling key: its name and rights."""
        return who.to_dict()

    @app.post("/keys", status_code=201, tags=["keys"])
    def create_key(body: NewKey, who: Caller) -> dict:
        """Create an API key (admin only). The key itself is shown once, in this answer."""
        if not who.admin:
            raise ApiError(403, "only the admin key creates keys")
        for catalog_id, right in body.catalogs.items():
            if right not in (READ, WRITE):
                raise ApiError(400, f"right must be 'read' or 'write', not {right!r}")
            readable(catalog_id, who)
        key, info = db.create_key(body.name, body.catalogs, create=body.create)
        return {"key": key, **info.to_dict()}

    @app.get("/keys", tags=["keys"])
    def list_keys(who: Caller) -> dict:
        if not who.admin:
            raise ApiError(403, "only the admin key lists keys")
        return {"keys": [k.to_dict() for k in db.all_keys()]}

    @app.delete("/keys/{key_id}", status_code=204, tags=["keys"])
    def delete_key(key_id: str, who: Caller) -> Response:
        if not who.admin:
            raise ApiError(403, "only the admin key deletes keys")
        if not db.delete_key(key_id):
            raise ApiError(404, "no such key")
        return Response(status_code=204)

    # -- catalogues ---------------------------------------------------------------------------
    @app.post("/catalogs", status_code=201, tags=["catalogs"])
    def create_catalog(body: NewCatalog, who: Caller) -> dict:
        """Create an empty catalogue; the calling key gets write rights on it."""
        if not who.can_create:
            raise ApiError(403, "this key may not create catalogues")
        entry = catalogs.create(body.name, body.model)
        if not who.admin:
            db.grant(who.id, entry["id"], WRITE)
        return entry

    @app.get("/catalogs", tags=["catalogs"])
    def list_catalogs(who: Caller) -> dict:
        return {"catalogs": [c for c in db.catalogs() if who.can_read(c["id"])]}

    @app.get("/catalogs/{catalog_id}", tags=["catalogs"])
    def get_catalog(catalog_id: str, who: Caller) -> dict:
        readable(catalog_id, who)
        return catalogs.describe(catalog_id) | {
            "right": "write" if who.can_write(catalog_id) else "read"
        }

    @app.delete("/catalogs/{catalog_id}", status_code=204, tags=["catalogs"])
    def delete_catalog(catalog_id: str, who: Caller) -> Response:
        writable(catalog_id, who)
        catalogs.delete(catalog_id)
        return Response(status_code=204)

    # -- images -------------------------------------------------------------------------------
    @app.post("/catalogs/{catalog_id}/images", tags=["images"], openapi_extra=_IMAGES_BODY)
    async def add_images(
        catalog_id: str,
        request: Request,
        who: Caller,
        wait: Annotated[bool | None, Query(description="wait for indexing (else a job)")] = None,
    ) -> JSONResponse:
        """Add images (multipart files, or JSON URLs), each with optional metadata.

        Small uploads answer when indexed (200); large ones, or ``wait=false``, answer 202 with
        a job to poll at ``/jobs/{id}``.
        """
        writable(catalog_id, who)
        uploads = await _read_uploads(request, config)
        if not uploads:
            raise ApiError(400, "no images given")
        as_job = (wait is False) or (wait is None and len(uploads) > config.job_threshold)
        if as_job:
            job_id = db.add_job(catalog_id, len(uploads))
            threading.Thread(
                target=_run_job, args=(catalogs, job_id, catalog_id, uploads), daemon=True
            ).start()
            return JSONResponse({"job": job_id, "status": f"/jobs/{job_id}"}, status_code=202)
        results = await run_in_threadpool(catalogs.add_uploads, catalog_id, uploads)
        added = [r for r in results if "id" in r]
        status = 200 if added else 400
        body: dict = {"images": results, "added": len(added)}
        if not added:
            body["error"] = "no image could be added: " + "; ".join(
                r.get("error", "") for r in results[:3]
            )
        return JSONResponse(body, status_code=status)

    @app.get("/jobs/{job_id}", tags=["images"])
    def get_job(job_id: str, who: Caller) -> dict:
        job = db.job(job_id)
        if job is None or not who.can_read(job["catalog"]):
            raise ApiError(404, "no such job")
        return job

    @app.get("/catalogs/{catalog_id}/images", tags=["images"])
    def list_images(
        catalog_id: str,
        who: Caller,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict:
        readable(catalog_id, who)
        return catalogs.list_images(catalog_id, offset, limit)

    @app.get("/catalogs/{catalog_id}/images/{image_id}", tags=["images"])
    def get_image(catalog_id: str, image_id: Annotated[int, _ImageId], who: Caller) -> dict:
        readable(catalog_id, who)
        return catalogs.image(catalog_id, image_id)

    @app.delete("/catalogs/{catalog_id}/images/{image_id}", status_code=204, tags=["images"])
    def delete_image(catalog_id: str, image_id: Annotated[int, _ImageId], who: Caller) -> Response:
        writable(catalog_id, who)
        catalogs.delete_image(catalog_id, image_id)
        return Response(status_code=204)

    @app.get("/catalogs/{catalog_id}/images/{image_id}/thumbnail", tags=["images"])
    def get_thumbnail(catalog_id: str, image_id: Annotated[int, _ImageId], who: Caller) -> Response:
        readable(catalog_id, who)
        data, mime = catalogs.blob(catalog_id, image_id, "thumbnail")
        return Response(data, media_type=mime, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/catalogs/{catalog_id}/images/{image_id}/original", tags=["images"])
    def get_original(catalog_id: str, image_id: Annotated[int, _ImageId], who: Caller) -> Response:
        readable(catalog_id, who)
        data, mime = catalogs.blob(catalog_id, image_id, "original")
        return Response(data, media_type=mime, headers={"X-Content-Type-Options": "nosniff"})

    # -- search -------------------------------------------------------------------------------
    @app.post("/catalogs/{catalog_id}/search", tags=["search"], openapi_extra=_SEARCH_BODY)
    async def search(catalog_id: str, request: Request, who: Caller) -> dict:
        """Images most like a query image (upload or URL, optionally a region) or a text."""
        readable(catalog_id, who)
        query = await _read_search(request, config)
        if query["url"] and query["image"] is None:
            query["image"] = await run_in_threadpool(_fetch, query["url"], config)
        results = await run_in_threadpool(
            lambda: catalogs.search(
                catalog_id,
                image=query["image"],
                text=query["text"],
                k=query["k"],
                filters=query["filters"],
                region=query["region"],
            )
        )
        return {"results": results}

    @app.post("/catalogs/{catalog_id}/duplicates", tags=["search"])
    async def duplicates(
        catalog_id: str,
        who: Caller,
        body: Annotated[DuplicatesRequest | None, Body()] = None,
    ) -> JSONResponse:
        """Groups of near-duplicate images (edited copies: crops, re-encodes, captions), each
        with a suggested original and copy-space scores.

        The first call computes the catalogue's copy space (SSCD vectors of every image; later
        uploads get theirs when indexed), which needs a key with write rights; it runs as a job
        (202, poll ``/jobs/{id}``, the groups are in its ``result``) for large catalogues.
        """
        readable(catalog_id, who)
        options = body or DuplicatesRequest()
        has_space, missing, count = await run_in_threadpool(catalogs.copy_space_state, catalog_id)
        can_write = who.can_write(catalog_id)
        if not has_space and not can_write:
            raise ApiError(
                403,
                "this catalogue has no copy-detection vectors yet; the first duplicates call "
                "must use a key with write rights on it (it adds them once)",
            )
        # A read-only key uses the vectors already there; a writer adds or completes them.
        add = (not has_space or missing > 0) and can_write
        big = config.job_threshold
        slow = (
            (add and missing > big)
            or (options.verify and count > big)
            or count > config.duplicates_sync_images
        )
        as_job = options.wait is False or (options.wait is None and slow)
        find = dict(
            threshold=options.threshold, k=options.k, verify=options.verify, limit=options.limit
        )
        if as_job:
            job_id = db.add_job(catalog_id, missing if add else 0)
            threading.Thread(
                target=_run_duplicates_job,
                args=(catalogs, job_id, catalog_id, add, find),
                daemon=True,
            ).start()
            return JSONResponse({"job": job_id, "status": f"/jobs/{job_id}"}, status_code=202)

        def run() -> dict:
            added = catalogs.add_copy_space(catalog_id) if add else None
            result = catalogs.duplicates(catalog_id, **find)
            return result | ({"copy_space": added} if added else {})

        return JSONResponse(await run_in_threadpool(run))

    @app.post("/catalogs/{catalog_id}/detect", tags=["search"], openapi_extra=_DETECT_BODY)
    async def detect(catalog_id: str, request: Request, who: Caller) -> dict:
        """Catalogue items inside a photo (upload or URL): per item its box (pixels and
        fractions), the best catalogue matches and whether keypoints confirmed it."""
        readable(catalog_id, who)
        query = await _read_detect(request, config)
        if query["image"] is None:
            query["image"] = await run_in_threadpool(_fetch, query["url"], config)
        return await run_in_threadpool(
            lambda: catalogs.detect(
                catalog_id,
                query["image"],
                k=query["k"],
                proposals=query["proposals"],
                min_score=query["min_score"],
            )
        )

    # -- web page -----------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index_page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    return app


def _install_errors(app: FastAPI) -> None:
    def answer(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return answer(exc.status, exc.message)

    # Errors from the layers below, as JSON with their status (409: the catalogue is busy).
    statuses = {
        NotFoundError: 404,
        BadRequestError: 400,
        FetchError: 400,
        CollectionError: 409,
        UnavailableError: 501,
    }
    for error, status in statuses.items():

        async def handle(_: Request, exc: Exception, status: int = status) -> JSONResponse:
            return answer(status, str(exc))

        app.add_exception_handler(error, handle)

    @app.exception_handler(ImageError)
    async def bad_image(_: Request, exc: ImageError) -> JSONResponse:
        return answer(400, f"not a usable image: {exc.reason}")

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


def _install_size_limit(app: FastAPI, limit: int) -> None:
    """Refuse bodies over ``limit`` bytes: by Content-Length up front, else while streaming."""

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return JSONResponse({"error": f"request larger than {limit:,} bytes"}, 413)
        return await call_next(request)


async def _read_uploads(request: Request, config: ServerConfig) -> list[Upload]:
    """Images from a multipart form (``files`` + ``metadata``) or JSON ``{"images": [...]}``."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=config.max_files_per_request, max_part_size=1024 * 1024)
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        metadata = _metadata_list(form.get("metadata"), len(files))
        uploads = []
        for file, meta in zip(files, metadata, strict=True):
            data = await file.read(config.max_upload_bytes + 1)
            if len(data) > config.max_upload_bytes:
                raise ApiError(413, f"a file is larger than {config.max_upload_bytes:,} bytes")
            uploads.append(Upload(data, meta))
        return uploads
    if kind.startswith("application/json"):
        body = await _json(request)
        items = body.get("images") if isinstance(body, dict) else None
        if not isinstance(items, list) or len(items) > config.max_files_per_request:
            raise ApiError(400, 'JSON body must be {"images": [{"url": ..., "metadata": {}}]}')
        uploads = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("url"), str):
                raise ApiError(400, "each image needs a url")
            meta = item.get("metadata") or {}
            if not isinstance(meta, dict):
                raise ApiError(400, "metadata must be an object")
            data = await run_in_threadpool(_fetch, item["url"], config)
            uploads.append(Upload(data, meta))
        return uploads
    raise ApiError(415, "send multipart/form-data files or a JSON body")


def _metadata_list(raw: object, count: int) -> list[dict]:
    if raw is None or raw == "":
        return [{} for _ in range(count)]
    try:
        value = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        return [dict(value) for _ in range(count)]
    if isinstance(value, list) and len(value) == count and all(isinstance(v, dict) for v in value):
        return value
    raise ApiError(400, "metadata must be a JSON object, or a list of objects, one per file")


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None


async def _read_search(request: Request, config: ServerConfig) -> dict:
    kind = request.headers.get("content-type", "")
    query: dict = {"image": None, "url": None, "text": None, "k": 10, "filters": None}
    query["region"] = None
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_part_size=1024 * 1024)
        file = form.get("file")
        if isinstance(file, UploadFile):
            data = await file.read(config.max_upload_bytes + 1)
            if len(data) > config.max_upload_bytes:
                raise ApiError(413, f"the file is larger than {config.max_upload_bytes:,} bytes")
            query["image"] = data
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        for name in ("filters", "region"):
            if fields.get(name):
                fields[name] = _parse_field(name, fields[name])
    elif kind.startswith("application/json"):
        fields = await _json(request)
        if not isinstance(fields, dict):
            raise ApiError(400, "the JSON body must be an object")
    else:
        raise ApiError(415, "send multipart/form-data or JSON")
    for name in ("url", "text"):
        value = fields.get(name)
        if value not in (None, ""):
            if not isinstance(value, str) or len(value) > 2000:
                raise ApiError(400, f"{name} must be a string")
            query[name] = value
    query["k"] = _int_field(fields.get("k", 10))
    filters = fields.get("filters")
    if filters not in (None, ""):
        if not isinstance(filters, dict):
            raise ApiError(400, 'filters must be an object such as {"brand": "acme"}')
        query["filters"] = filters
    region = fields.get("region")
    if region not in (None, ""):
        if not isinstance(region, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in region
        ):
            raise ApiError(400, "region must be [x, y, width, height] fractions")
        query["region"] = region
    if query["image"] is None and query["url"] is None and query["text"] is None:
        raise ApiError(400, "give an image file, an image url or a text")
    return query


async def _read_detect(request: Request, config: ServerConfig) -> dict:
    """A photo (multipart ``file`` or a ``url``) and the detect options, checked."""
    kind = request.headers.get("content-type", "")
    image = None
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_part_size=1024 * 1024)
        file = form.get("file")
        if isinstance(file, UploadFile):
            image = await file.read(config.max_upload_bytes + 1)
            if len(image) > config.max_upload_bytes:
                raise ApiError(413, f"the file is larger than {config.max_upload_bytes:,} bytes")
        fields: Any = {k: v for k, v in form.items() if isinstance(v, str)}
        if fields.get("proposals"):
            raw = fields["proposals"].strip()
            fields["proposals"] = (
                _parse_field("proposals", raw)
                if raw.startswith("[")
                else [p.strip() for p in raw.split(",") if p.strip()]
            )
        if fields.get("min_score"):
            try:
                fields["min_score"] = float(fields["min_score"])
            except ValueError:
                raise ApiError(400, "min_score must be a number") from None
    elif kind.startswith("application/json"):
        fields = await _json(request)
        if not isinstance(fields, dict):
            raise ApiError(400, "the JSON body must be an object")
    else:
        raise ApiError(415, "send multipart/form-data (file) or JSON (url)")
    url = fields.get("url")
    if url in (None, ""):
        url = None
    elif not isinstance(url, str) or len(url) > 2000:
        raise ApiError(400, "url must be a string")
    if image is None and url is None:
        raise ApiError(400, "give an image file or an image url")
    proposals = fields.get("proposals")
    if proposals in (None, "", []):
        proposals = None
    else:
        if isinstance(proposals, str):
            proposals = [proposals]
        if (
            not isinstance(proposals, list)
            or len(proposals) > 8
            or not all(isinstance(p, str) and 0 < len(p) <= 40 for p in proposals)
        ):
            raise ApiError(400, 'proposals must be a list of source names, e.g. ["keypoints"]')
    min_score = fields.get("min_score")
    if min_score in (None, ""):
        min_score = None
    elif (
        isinstance(min_score, bool)
        or not isinstance(min_score, int | float)
        or not -1 <= min_score <= 1
    ):
        raise ApiError(400, "min_score must be a number in -1..1")
    k = _int_field(fields.get("k", 3), most=20)
    return {"image": image, "url": url, "k": k, "proposals": proposals, "min_score": min_score}


def _parse_field(name: str, raw: str) -> object:
    if name == "region" and not raw.lstrip().startswith("["):
        try:
            return [float(v) for v in raw.split(",")]
        except ValueError:
            raise ApiError(400, "region is x,y,width,height fractions") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise ApiError(400, f"{name} is not valid JSON") from None


def _int_field(value: object, most: int = 200) -> int:
    try:
        k = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        raise ApiError(400, "k must be an integer") from None
    if isinstance(value, bool) or not 1 <= k <= most:
        raise ApiError(400, f"k must be between 1 and {most}")
    return k


def _fetch(url: str, config: ServerConfig) -> bytes:
    return fetch_url(
        url,
        max_bytes=config.max_upload_bytes,
        timeout=config.fetch_timeout,
        allow_private=config.allow_private_urls,
    )


def _run_job(catalogs: Catalogs, job_id: str, catalog_id: str, uploads: list[Upload]) -> None:
    db = catalogs.db
    db.update_job(job_id, state="running")
    try:
        results = catalogs.add_uploads(
            catalog_id,
            uploads,
            progress=lambda done, total: db.update_job(job_id, state="running", done=done),
        )
    except Exception as exc:
        log.exception("upload job %s failed", job_id)
        db.update_job(job_id, state="failed", result={"error": str(exc)})
        return
    added = sum("id" in r for r in results)
    db.update_job(
        job_id, state="done", done=len(uploads), result={"images": results, "added": added}
    )


def _run_duplicates_job(
    catalogs: Catalogs, job_id: str, catalog_id: str, add: bool, find: dict
) -> None:
    """A duplicates request run as a job: the copy space first (progress: images embedded),
    then the groups, stored as the job's result."""
    db = catalogs.db
    db.update_job(job_id, state="running")
    try:
        added = None
        if add:
            added = catalogs.add_copy_space(
                catalog_id,
                progress=lambda done, total: db.update_job(job_id, state="running", done=done),
            )
        result = catalogs.duplicates(catalog_id, **find)
    except Exception as exc:
        log.exception("duplicates job %s failed", job_id)
        db.update_job(job_id, state="failed", result={"error": str(exc)})
        return
    done = added["embedded"] + added["unreadable"] if added else 0
    db.update_job(
        job_id, state="done", done=done, result=result | ({"copy_space": added} if added else {})
    )


def app_from_env() -> FastAPI:
    """The application configured by ``LOOKALIKE_*`` variables (for ``--workers N``)."""
    return create_app(config=ServerConfig.from_env())
