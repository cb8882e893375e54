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
    #: A request body larger than this is refused before it is read (413).
    max_request_bytes: int = 512_000_000
    thumbnail_side: int = 320
    fetch_timeout: float = 10.0
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
        )
