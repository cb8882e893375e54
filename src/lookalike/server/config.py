"""Server settings, with defaults and the environment variables that set them.

Example:
    >>> ServerConfig(data_dir="/srv/lookalike", max_upload_bytes=10_000_000).max_pixels
    50000000
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServerConfig:
    """What one server (every worker of it) runs with."""

    data_dir: Path
    #: Key that may do everything, including creating other keys (``$LOOKALIKE_ADMIN_KEY``).
    admin_key: str | None = None
    #: Where originals and thumbnails go: None = ``data_dir/blobs``; or ``s3://bucket/prefix``.
    storage_url: str | None = None
    storage_options: dict = field(default_factory=dict)
    max_upload_bytes: int = 25_000_000
    max_pixels: int = 50_000_000
    max_files_per_request: int = 500
    #: A multipart body larger than this is refused (413): up front by its Content-Length,
    #: else as soon as this many bytes have streamed in (chunked bodies too).
    max_request_bytes: int = 512_000_000
    #: The same for every other body (JSON): they are read into memory whole.
    max_json_bytes: int = 8_000_000
    thumbnail_side: int = 320
    #: Seconds one step of a URL fetch (connect, each read) may take.
    fetch_timeout: float = 10.0
    #: Seconds a whole URL fetch may take, redirects and body included
    #: (``$LOOKALIKE_FETCH_DEADLINE``).
    fetch_deadline: float = 15.0
    #: URL fetches in flight in one worker (``$LOOKALIKE_MAX_FETCHES``); a request that finds
    #: them all taken waits ``queue_wait_seconds``, then answers 503 with Retry-After.
    max_fetches: int = 16
    #: Memory the image decodes in flight in one worker may hold together, estimated from each
    #: image's header (``$LOOKALIKE_DECODE_BUDGET_MB``, in MiB); a request whose decode does not
    #: fit waits ``queue_wait_seconds``, then answers 503 with Retry-After.
    decode_budget_bytes: int = 1024 << 20
    #: The most one decode may hold (``$LOOKALIKE_MAX_DECODE_MB``): JPEGs are decoded at a
    #: smaller scale to fit, other formats reduced, or refused (400) when their pixels alone
    #: would not fit. At most ``decode_budget_bytes``.
    max_decode_bytes: int = 512 << 20
    #: How long a request waits for decode memory or a fetch slot before it answers 503 (a job
    #: waits ``job_wait_seconds``).
    queue_wait_seconds: float = 2.0
    job_wait_seconds: float = 600.0
    #: Metadata (and search filters): at most this deep, this many keys in all, this many bytes
    #: as JSON; more is a 400 that says which limit.
    metadata_depth: int = 20
    metadata_keys: int = 256
    metadata_bytes: int = 65_536
    #: Fetch URLs on private/loopback addresses (tests, or a trusted intranet).
    allow_private_urls: bool = False
    #: How long a write waits for another process (e.g. the CLI) holding the collection.
    write_wait_seconds: float = 60.0
    #: Uploads with more files than this run as a job unless the client asks to wait.
    job_threshold: int = 64
    #: A duplicates request on a larger catalogue runs as a job (its k-NN pass is O(N^2)).
    duplicates_sync_images: int = 10_000

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        self.max_decode_bytes = min(self.max_decode_bytes, self.decode_budget_bytes)

    @classmethod
    def from_env(cls, data_dir: str | Path | None = None) -> ServerConfig:
        """Settings from ``LOOKALIKE_*`` environment variables (used by every worker)."""
        env = os.environ
        options = json.loads(env.get("LOOKALIKE_STORAGE_OPTIONS", "{}"))
        endpoint = env.get("LOOKALIKE_S3_ENDPOINT")
        if endpoint:
            options.setdefault("client_kwargs", {})["endpoint_url"] = endpoint
        return cls(
            data_dir=Path(data_dir or env.get("LOOKALIKE_DATA", "lookalike-data")),
            admin_key=env.get("LOOKALIKE_ADMIN_KEY") or None,
            storage_url=env.get("LOOKALIKE_STORAGE") or None,
            storage_options=options,
            allow_private_urls=env.get("LOOKALIKE_ALLOW_PRIVATE_URLS", "") == "1",
            **_numbers(env),
        )


#: Numeric settings read from the environment: variable -> (field, scale, type).
ENV_NUMBERS = {
    "LOOKALIKE_DECODE_BUDGET_MB": ("decode_budget_bytes", 1 << 20, int),
    "LOOKALIKE_MAX_DECODE_MB": ("max_decode_bytes", 1 << 20, int),
    "LOOKALIKE_FETCH_DEADLINE": ("fetch_deadline", 1, float),
    "LOOKALIKE_MAX_FETCHES": ("max_fetches", 1, int),
}


def _numbers(env: dict[str, str] | os._Environ) -> dict:
    """The numeric settings set in ``env``; a value that is not a positive number is an error
    that names the variable (the server does not start)."""
    found = {}
    for name, (key, scale, kind) in ENV_NUMBERS.items():
        raw = env.get(name, "").strip()
        if not raw:
            continue
        try:
            value = kind(raw)
        except ValueError:
            value = 0
        if not value > 0:
            raise ValueError(f"{name} must be a positive number, not {raw!r}")
        found[key] = kind(value * scale)
    return found
