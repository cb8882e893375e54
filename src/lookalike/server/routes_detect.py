"""The copy and detection routes: near-duplicate groups of a catalogue (its copy space is added
at the first call, as a job when large), the decisions about them that stick ("not duplicates",
"keep this one") and the catalogue items found inside a photo.

Example:
    $ curl -s -X POST localhost:8000/catalogs/c_…/duplicates -H "Authorization: Bearer $KEY" \\
        -H 'content-type: application/json' -d '{"threshold": 0.9, "verify": false}'
    $ curl -s -X POST localhost:8000/catalogs/c_…/duplicates/decisions \\
        -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \\
        -d '{"decision": "keep", "images": [7]}'
    $ curl -s -X POST localhost:8000/catalogs/c_…/detect -H "Authorization: Bearer $KEY" \\
        -F file=@shelf.jpg -F k=3
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictInt
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from lookalike.server.auth import Caller, ServerCatalogs, readable, writable
from lookalike.server.bodies import fetch_image, int_field, json_body, parse_field, read_file
from lookalike.server.config import ServerConfig
from lookalike.server.errors import ApiError
from lookalike.server.jobs import Progress, start_job
from lookalike.server.limits import quick

router = APIRouter()


class DuplicatesRequest(BaseModel):
    """Options of ``POST /catalogs/{id}/duplicates`` (all optional)."""

    #: Copy score P(copy) at or above which two images are copies (default: the copy model's
    #: calibrated threshold, 90% precision on the hard benchmark: lookalike.copies.scoring).
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


class DecisionRequest(BaseModel):
    """A decision of ``POST /catalogs/{id}/duplicates/decisions``, kept in the catalogue and
    respected by every later duplicates call."""

    #: ``distinct``: not duplicates (two images: that pair; one image: its whole current
    #: group); ``keep``: this one image is its group's original; ``forget``: drop the
    #: decisions naming these images.
    decision: str = Field(max_length=40)
    #: The image ids the decision is about.
    images: list[StrictInt] = Field(max_length=1000)
    #: How the current group of one image is found for ``distinct`` and ``keep`` (as in
    #: ``POST /catalogs/{id}/duplicates``; default: the copy model's calibrated threshold).
    threshold: float | None = Field(default=None, ge=0, le=1)
    k: int = Field(default=10, ge=1, le=100)


DETECT_FIELDS = {
    "k": {"type": "integer", "minimum": 1, "maximum": 20, "default": 3},
    "url": {"type": "string"},
    "min_score": {"type": "number", "minimum": -1, "maximum": 1},
}
DETECT_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        **DETECT_FIELDS,
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
                        **DETECT_FIELDS,
                        "proposals": {"type": "array", "items": {"type": "string"}},
                    },
                }
            },
        },
        "required": True,
    }
}


@router.post("/catalogs/{catalog_id}/duplicates", tags=["search"])
async def duplicates(
    catalog_id: str,
    who: Caller,
    catalogs: ServerCatalogs,
    body: Annotated[DuplicatesRequest | None, Body()] = None,
) -> JSONResponse:
    """Groups of near-duplicate images (edited copies: crops, re-encodes, captions), each
    with a suggested original and copy-space scores.

    The first call computes the catalogue's copy space (SSCD vectors of every image; later
    uploads get theirs when indexed), which needs a key with write rights; it runs as a job
    (202, poll ``/jobs/{id}``, the groups are in its ``result``) for large catalogues.
    """
    config = catalogs.config
    readable(catalogs, catalog_id, who)
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

    def run(progress: Progress | None = None) -> tuple[int, dict]:
        """The copy space first (progress: images embedded), then the groups."""
        added = catalogs.add_copy_space(catalog_id, progress=progress) if add else None
        result = catalogs.duplicates(catalog_id, **find)
        done = added["embedded"] + added["unreadable"] if added else 0
        return done, result | ({"copy_space": added} if added else {})

    if as_job:
        return start_job(catalogs, catalog_id, missing if add else 0, run, "duplicates")
    _, result = await run_in_threadpool(run)
    return JSONResponse(result)


@router.get("/catalogs/{catalog_id}/duplicates/decisions", tags=["search"])
async def duplicate_decisions(catalog_id: str, who: Caller, catalogs: ServerCatalogs) -> dict:
    """The decisions about duplicates kept in the catalogue, by image id: ``distinct`` pairs
    (not duplicates) and ``keep`` (the chosen original of its group)."""
    readable(catalogs, catalog_id, who)
    return await run_in_threadpool(catalogs.duplicate_decisions, catalog_id)


@router.post("/catalogs/{catalog_id}/duplicates/decisions", tags=["search"])
async def decide_duplicates(
    catalog_id: str, body: DecisionRequest, who: Caller, catalogs: ServerCatalogs
) -> dict:
    """Record a decision about duplicates that later duplicates calls respect: ``distinct``
    with two images (that pair is not a duplicate) or one (none of its current group is),
    ``keep`` with one image (the original of its group), ``forget`` with any images (their
    decisions dropped). Needs write rights; answers the decisions now held (as ``GET``).
    400: an unknown decision or the wrong number of images (or ``distinct`` on one image in
    no group); 404: an image the catalogue does not hold."""
    writable(catalogs, catalog_id, who)
    return await run_in_threadpool(
        lambda: catalogs.decide_duplicates(
            catalog_id, body.decision, body.images, threshold=body.threshold, k=body.k
        )
    )


@router.post("/catalogs/{catalog_id}/words", tags=["search"])
async def read_words(catalog_id: str, who: Caller, catalogs: ServerCatalogs) -> JSONResponse:
    """Read the words written in the catalogue's images (OCR), so ``search`` takes
    ``words``; later uploads are then read as they come. Needs write rights; runs as a job
    (202, poll ``/jobs/{id}``) when more than ``job_threshold`` images are to be read."""
    writable(catalogs, catalog_id, who)
    todo = await run_in_threadpool(catalogs.words_to_read, catalog_id)

    def run(progress: Progress | None = None) -> tuple[int, dict]:
        result = catalogs.read_words(catalog_id, progress=progress)
        return todo, result

    if todo > catalogs.config.job_threshold:
        return start_job(catalogs, catalog_id, todo, run, "words")
    _, result = await run_in_threadpool(run)
    return JSONResponse(result)


@router.post("/catalogs/{catalog_id}/detect", tags=["search"], openapi_extra=DETECT_BODY)
async def detect(catalog_id: str, request: Request, who: Caller, catalogs: ServerCatalogs) -> dict:
    """Catalogue items inside a photo (upload or URL): per item its box (pixels and
    fractions), the best catalogue matches and whether keypoints confirmed it."""
    config = catalogs.config
    readable(catalogs, catalog_id, who)
    query = await read_detect(request, config)
    if query["image"] is None:
        query["image"] = await fetch_image(query["url"], catalogs)
    cost = await quick(catalogs.detect_cost, query["image"])
    async with catalogs.budget.hold_async(cost, config.queue_wait_seconds):
        return await run_in_threadpool(
            lambda: catalogs.detect(
                catalog_id,
                query["image"],
                k=query["k"],
                proposals=query["proposals"],
                min_score=query["min_score"],
            )
        )


async def read_detect(request: Request, config: ServerConfig) -> dict:
    """A photo (multipart ``file`` or a ``url``) and the detect options, checked."""
    kind = request.headers.get("content-type", "")
    image = None
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_part_size=1024 * 1024)
        file = form.get("file")
        if isinstance(file, UploadFile):
            image = await read_file(file, config)
        fields: Any = {k: v for k, v in form.items() if isinstance(v, str)}
        if fields.get("proposals"):
            raw = fields["proposals"].strip()
            fields["proposals"] = (
                parse_field("proposals", raw)
                if raw.startswith("[")
                else [p.strip() for p in raw.split(",") if p.strip()]
            )
        if fields.get("min_score"):
            try:
                fields["min_score"] = float(fields["min_score"])
            except ValueError:
                raise ApiError(400, "min_score must be a number") from None
    elif kind.startswith("application/json"):
        fields = await json_body(request, config)
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
    k = int_field(fields.get("k", 3), most=20)
    return {"image": image, "url": url, "k": k, "proposals": proposals, "min_score": min_score}
