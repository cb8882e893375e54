"""The REST API and web page: the FastAPI application over :class:`Catalogs`.

:func:`create_app` builds the application: the server's database, blob storage and catalogues
(kept in ``app.state``), the routes of each group (``routes_keys``, ``routes_catalogs``,
``routes_images``, ``routes_search``, ``routes_detect``), the error answers (``errors``), the
request size limit and the web page. Every route authenticates the caller
(``Authorization: Bearer KEY`` or ``X-API-Key: KEY``), checks its rights on the catalogue (a
catalogue the key cannot read answers 404, as if it did not exist), and calls the catalogue
layer, which calls the Collection API. Errors are JSON ``{"error": "message"}``.

Example:
    >>> app = create_app("/srv/lookalike", admin_key="s3cret")  # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from lookalike.models import Embedder, available, load_embedder
from lookalike.server import (
    routes_catalogs,
    routes_detect,
    routes_images,
    routes_keys,
    routes_search,
)
from lookalike.server.catalogs import Catalogs
from lookalike.server.config import ServerConfig
from lookalike.server.db import ServerDB
from lookalike.server.errors import install_errors
from lookalike.server.storage import open_storage

STATIC = Path(__file__).parent / "static"
#: The route groups, in the order their routes are registered (and listed in the OpenAPI).
ROUTERS = (routes_keys, routes_catalogs, routes_images, routes_search, routes_detect)


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
    install_errors(app)
    install_size_limit(app, config.max_request_bytes)
    for group in ROUTERS:
        app.include_router(group.router)

    @app.get("/", include_in_schema=False)
    def index_page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def install_size_limit(app: FastAPI, limit: int) -> None:
    """Refuse bodies over ``limit`` bytes: by Content-Length up front, else while streaming."""

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return JSONResponse({"error": f"request larger than {limit:,} bytes"}, 413)
        return await call_next(request)


def app_from_env() -> FastAPI:
    """The application configured by ``LOOKALIKE_*`` variables (for ``--workers N``)."""
    return create_app(config=ServerConfig.from_env())
