"""Reading request bodies the routes share: JSON, form fields, metadata, an uploaded file, an
image URL.

Each helper checks what it reads and raises :class:`ApiError` (400, 413) with a message that
says what to send instead. JSON is parsed strictly: nesting deeper than Python's parser goes,
integers longer than :data:`MAX_INT_DIGITS` digits, and numbers that are not finite (``NaN``,
``Infinity``, ``1e999``) are a 400, never a 500 (and never stored, where they would break every
answer that shows them). Metadata and filters are bounded in depth, keys and size
(:func:`check_metadata`). A URL is fetched under the server's limits (``fetch.py``): a total
deadline, and a cap on the fetches in flight (503 with ``Retry-After`` beyond it).

Example:
    >>> int_field("5")
    5
    >>> parse_field("region", "0,0,0.5,1")
    [0.0, 0.0, 0.5, 1.0]
    >>> try:
    ...     loads('{"k": 1' + "0" * 5000 + "}")
    ... except ApiError as exc:
    ...     print(exc.status, exc.message)
    400 the body is not valid JSON: an integer has more than 100 digits
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from fastapi import Request
from starlette.datastructures import UploadFile

from lookalike.server.config import ServerConfig
from lookalike.server.errors import ApiError
from lookalike.server.fetch import fetch_url_async

if TYPE_CHECKING:
    from lookalike.server.catalogs import Catalogs

#: Longest integer literal accepted in JSON (Python refuses to parse more than 4300 digits).
MAX_INT_DIGITS = 100


class _RefusedError(ValueError):
    """A JSON value this server does not take (the message says which)."""


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _RefusedError(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _RefusedError(f"the number {text[:20]}{'...' if len(text) > 20 else ''} is too large")
    return value


def _parse_constant(text: str) -> float:
    raise _RefusedError(f"{text} is not a JSON number")


def loads(text: str | bytes, what: str = "the body") -> Any:
    """``text`` parsed as strict JSON; 400 that says why it is refused."""
    try:
        return json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except _RefusedError as exc:
        raise ApiError(400, f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, f"{what} is not valid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        raise ApiError(400, f"{what} is not valid JSON") from None


async def json_body(request: Request, config: ServerConfig | None = None) -> Any:
    """The request's JSON body; 413 past ``max_json_bytes`` (while it streams), 400 when it is
    not JSON."""
    limit = config.max_json_bytes if config is not None else None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if limit is not None and len(body) > limit:
            raise ApiError(413, f"the JSON body is larger than {limit:,} bytes")
    return loads(bytes(body))


def check_metadata(value: object, config: ServerConfig, what: str = "metadata") -> dict:
    """``value`` if it is a JSON object within the limits: ``metadata_depth`` levels of
    nesting, ``metadata_keys`` keys in all, ``metadata_bytes`` bytes as JSON; 400 naming the
    limit otherwise. Walked without recursion, so no depth breaks the check itself."""
    if not isinstance(value, dict):
        raise ApiError(400, f"{what} must be a JSON object")
    keys = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > config.metadata_depth:
                raise ApiError(
                    400, f"{what} is nested more than {config.metadata_depth} levels deep"
                )
            if isinstance(item, dict):
                keys += len(item)
                if keys > config.metadata_keys:
                    raise ApiError(400, f"{what} has more than {config.metadata_keys} keys")
                if not all(isinstance(k, str) for k in item):
                    raise ApiError(400, f"{what} keys must be strings")
                children = item.values()
            else:
                children = item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ApiError(400, f"{what} numbers must be finite")
        elif not (item is None or isinstance(item, str | int | float | bool)):
            raise ApiError(400, f"{what} values must be JSON values")
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > config.metadata_bytes:
        raise ApiError(400, f"{what} is larger than {config.metadata_bytes:,} bytes as JSON")
    return value


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
    return loads(raw, name)


def int_field(value: object, most: int = 200) -> int:
    """``k``: an integer in 1..``most``."""
    if isinstance(value, str) and len(value.strip()) > MAX_INT_DIGITS:
        raise ApiError(400, "k must be an integer")
    try:
        k = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        raise ApiError(400, "k must be an integer") from None
    if isinstance(value, bool) or not 1 <= k <= most:
        raise ApiError(400, f"k must be between 1 and {most}")
    return k


async def fetch_image(url: str, catalogs: Catalogs) -> bytes:
    """The bytes at ``url``, fetched on the event loop under the server's size, time and
    address limits, in one of the worker's ``max_fetches`` slots (503 when none frees up
    within ``queue_wait_seconds``)."""
    config = catalogs.config
    async with catalogs.fetches.hold_async(1, config.queue_wait_seconds):
        return await fetch_url_async(
            url,
            max_bytes=config.max_upload_bytes,
            timeout=config.fetch_timeout,
            allow_private=config.allow_private_urls,
            deadline=config.fetch_deadline,
        )
