"""Images in object stores: listing an ``s3://bucket/prefix`` and reading its objects (fsspec).

A remote image is recorded under its URI (``s3://bucket/key``) and its change key is its size
and ETag (stored in the catalogue's ``FileState`` as ``size`` and a 62-bit number derived from
the ETag, in place of a local file's mtime), so a second ``lookalike index s3://...`` reads
nothing that did not change. Object names are not trusted: the content decides whether an
object is an image (``images.decode`` sniffs it), exactly as for local files.

Configuration comes from the standard AWS variables, read by botocore: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_DEFAULT_REGION``, and
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for an S3-compatible store (MinIO, Ceph, moto).

Example:
    >>> from lookalike.ingest.sources import list_images, read_bytes
    >>> states = list_images("s3://photos/2024/")  # doctest: +SKIP
    >>> uri = next(iter(states))  # "s3://photos/2024/beach.jpg"  # doctest: +SKIP
    >>> data = read_bytes(uri)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import PurePosixPath
from typing import Any

from lookalike.errors import SourceError
from lookalike.images import IMAGE_SUFFIXES
from lookalike.store.base import FileState

_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$")
#: The environment variables that configure S3 access (passed on to Ray workers).
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


def is_remote(path: object) -> bool:
    """True for a URI such as ``s3://bucket/prefix`` (``file://`` and plain paths are local)."""
    match = _URI.match(str(path))
    return match is not None and match.group(1).lower() != "file"


def split(uri: str) -> tuple[str, str]:
    """``("s3", "bucket/prefix")`` for ``s3://bucket/prefix``."""
    match = _URI.match(uri)
    if match is None:
        raise SourceError(f"not a URI: {uri!r}")
    return match.group(1).lower(), match.group(2)


def storage_options(protocol: str) -> dict[str, Any]:
    """fsspec options for ``protocol`` from the environment (S3: the endpoint URL)."""
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def filesystem(protocol: str):
    """The fsspec file system for ``protocol`` (s3 needs s3fs), configured from the environment.

    fsspec caches instances by their options, so repeated calls are cheap.
    """
    try:
        import fsspec

        return fsspec.filesystem(protocol, **storage_options(protocol))
    except ImportError as exc:
        raise SourceError(f"{protocol}:// needs its fsspec driver: {exc}") from exc
    except ValueError as exc:  # unknown protocol
        raise SourceError(str(exc)) from exc


def change_key(info: dict) -> FileState:
    """The state of an object as listed: its size and a number derived from its ETag (or its
    modification time when the store gives no ETag)."""
    size = int(info.get("size") or info.get("Size") or 0)
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    if etag:
        digest = hashlib.blake2b(str(etag).strip('"').encode(), digest_size=8).digest()
        return FileState(size, int.from_bytes(digest, "big") >> 2)  # fits a signed 64-bit column
    modified = info.get("LastModified") or info.get("mtime") or info.get("updated")
    stamp = modified.timestamp() if hasattr(modified, "timestamp") else float(modified or 0)
    return FileState(size, int(stamp * 1e9))


def looks_like_image(key: str) -> bool:
    """Objects listed for indexing: an image suffix, or no suffix at all (object stores often
    hold content-addressed keys); the content decides in the end."""
    name = PurePosixPath(key).name
    if not name or name.startswith("."):
        return False
    suffix = PurePosixPath(name).suffix.lower()
    return suffix in IMAGE_SUFFIXES or suffix == ""


def list_images(uri: str) -> dict[str, FileState]:
    """Every image object under ``uri`` (a prefix, read as a folder, or one object):
    ``{"s3://bucket/key": FileState}`` in key order.

    Raises:
        SourceError: the bucket or prefix does not exist or cannot be listed.
    """
    protocol, root = split(uri)
    fs = filesystem(protocol)
    root = root.rstrip("/")
    fs.invalidate_cache()  # a second listing in one process must see changes
    try:
        if fs.isfile(root):
            return {f"{protocol}://{root}": change_key(fs.info(root))}
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        raise SourceError(f"nothing at {uri}") from None
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot list {uri}: {exc}") from exc
    if not found and not fs.exists(root):
        raise SourceError(f"nothing at {uri}")
    out: dict[str, FileState] = {}
    for key in sorted(found):
        info = found[key]
        if info.get("type", "file") != "file" or not looks_like_image(key):
            continue
        relative = key[len(root) :] if key.startswith(root) else key
        if any(part.startswith(".") for part in relative.split("/") if part):
            continue  # hidden "folders" are left out, as for local folders
        out[f"{protocol}://{key}"] = change_key(info)
    return out


def read_bytes(uri: str) -> bytes:
    """The content of the object at ``uri`` (OSError when it cannot be read)."""
    protocol, key = split(uri)
    try:
        return filesystem(protocol).cat_file(key)
    except OSError:
        raise
    except Exception as exc:  # botocore and aiohttp errors that s3fs does not translate
        raise OSError(f"cannot read {uri}: {exc}") from exc


def remote_environment() -> dict[str, str]:
    """The AWS variables set here (for worker processes started elsewhere, e.g. by Ray)."""
    return {name: os.environ[name] for name in AWS_VARIABLES if name in os.environ}
