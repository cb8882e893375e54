"""``lookalike serve``: run the REST API and web page with uvicorn.

Example:
    $ LOOKALIKE_ADMIN_KEY=s3cret lookalike serve --data /srv/lookalike --workers 4
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer


def serve(
    data: Annotated[
        Path,
        typer.Option("--data", help="Folder of the catalogues, keys and stored images."),
    ] = Path("lookalike-data"),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Where originals go: a folder, or s3://bucket/prefix [default: DATA/blobs]."
        ),
    ] = None,
    allow_private_urls: Annotated[
        bool, typer.Option(help="Allow fetching image URLs on private or loopback addresses.")
    ] = False,
) -> None:
    """Serve the REST API (OpenAPI at /docs) and the web page (at /).

    The admin key comes from $LOOKALIKE_ADMIN_KEY; S3 settings from $LOOKALIKE_S3_ENDPOINT,
    $LOOKALIKE_STORAGE_OPTIONS (JSON) and the usual AWS variables.
    """
    import uvicorn

    # Every worker process builds its app from the environment, so pass the options there.
    os.environ["LOOKALIKE_DATA"] = str(data.expanduser().resolve())
    if storage:
        os.environ["LOOKALIKE_STORAGE"] = storage
    if allow_private_urls:
        os.environ["LOOKALIKE_ALLOW_PRIVATE_URLS"] = "1"
    if not os.environ.get("LOOKALIKE_ADMIN_KEY"):
        typer.echo("warning: LOOKALIKE_ADMIN_KEY is not set: no key can be created", err=True)
    uvicorn.run(
        "lookalike.server.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
    )


def register(app: typer.Typer) -> None:
    """Add ``serve`` to ``app``."""
    app.command("serve")(serve)
