"""Reading request bodies the routes share: JSON, form fields, an uploaded file, an image URL.

Each helper checks what it reads and raises :class:`ApiError` (400, 413) with a message that
says what to send instead; a URL is fetched under the server's limits (``fetch.py``).

Example:
    >>> int_field("5")
    5
    >>> parse_field("region", "0,0,0.5,1")
    [0.0, 0.0, 0.5, 1.0]
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from lookalike.server.config import ServerConfig
from lookalike.server.errors import ApiError
from lookalike.server.fetch import fetch_url


async def json_body(request: Request) -> Any:
    """The request's JSON body; 400 when it is not JSON."""
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None


async def read_file(file: UploadFile, config: ServerConfig) -> bytes:
    """The bytes of an uploaded query file; 413 beyond ``max_upload_bytes``."""
    data = await file.read(config.max_upload_bytes + 1)
    if len(data) > config.max_upload_bytes:
        raise ApiError(413, f"the file is larger than {config.max_upload_bytes:,} bytes")
    return data


def parse_field(name: str, raw: str) -> object:
    """A form field holding JSON (``region`` may also be ``x,y,w,h``)."""
    if name == "region" and not raw.lstrip().startswith("["):
        try:
            return [float(v) for v in raw.split(",")]
        except ValueError:
            raise ApiError(400, "region is x,y,width,height fractions") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise ApiError(400, f"{name} is not valid JSON") from None


def int_field(value: object, most: int = 200) -> int:
    """``k``: an integer in 1..``most``."""
    try:
        k = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        raise ApiError(400, "k must be an integer") from None
    if isinstance(value, bool) or not 1 <= k <= most:
        raise ApiError(400, f"k must be between 1 and {most}")
    return k


def fetch_image(url: str, config: ServerConfig) -> bytes:
    """The bytes at ``url``, fetched under the server's size, time and address limits."""
    return fetch_url(
        url,
        max_bytes=config.max_upload_bytes,
        timeout=config.fetch_timeout,
        allow_private=config.allow_private_urls,
    )
