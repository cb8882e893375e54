"""The REST API and web page: the FastAPI application over :class:`Catalogs`.

:func:`create_app` builds the application: the server's database, blob storage and catalogues
(kept in ``app.state``), the routes of each group (``routes_keys``, ``routes_catalogs``,
``routes_images``, ``routes_search``, ``routes_detect``), the error answers (``errors``), the
middleware (``middleware``: security headers, body caps while bodies stream; ``auth``: the key
checked before any body is read), the web page and the API documentation (Swagger UI served
from the ``fastapi-offline`` package's files, never from a CDN). Every route authenticates the
caller (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``), checks its rights on the
catalogue (a catalogue the key cannot read answers 404, as if it did not exist), and calls the
catalogue layer, which calls the Collection API. Errors are JSON ``{"error": "message"}``.

Example:
    >>> app = create_app("/srv/lookalike", admin_key="s3cret")  # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from lookalike.models import Embedder, available, load_embedder
from lookalike.server import (
    routes_catalogs,
    routes_detect,
    routes_images,
    routes_keys,
    routes_search,
)
from lookalike.server.auth import RequireKey
from lookalike.server.catalogs import Catalogs
from lookalike.server.config import ServerConfig
from lookalike.server.db import ServerDB
from lookalike.server.errors import install_errors
from lookalike.server.middleware import BodyLimit, SecurityHeaders
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
        docs_url=None,  # served below from local files: the default loads them from a CDN
        redoc_url=None,
    )
    app.state.config, app.state.db, app.state.catalogs = config, db, catalogs
    install_errors(app)
    # Outermost last: headers on every answer, then the body caps, then the key.
    app.add_middleware(RequireKey)
    app.add_middleware(BodyLimit, limit=config.max_request_bytes, json_limit=config.max_json_bytes)
    app.add_middleware(SecurityHeaders)
    for group in ROUTERS:
        app.include_router(group.router)

    @app.get("/", include_in_schema=False)
    def index_page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    install_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def swagger_files() -> Path | None:
    """The folder of Swagger UI's files (``swagger-ui-bundle.js``, ``swagger-ui.css``) shipped
    by the ``fastapi-offline`` package, or None when it is not installed."""
    try:
        from importlib.resources import files

        folder = Path(str(files("fastapi_offline") / "static"))
    except (ImportError, TypeError):
        return None
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>lookalike API</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/static/docs.js"></script>
</body>
</html>
"""
NO_DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lookalike API</title></head>
<body><p>The interactive documentation needs the <code>fastapi-offline</code> package on the
server. The API's schema is at <a href="/openapi.json">/openapi.json</a>.</p></body></html>
"""


def install_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the server's own files (same origin, no CDN, works offline;
    the page's script is a file too, so the Content-Security-Policy needs no inline script)."""
    folder = swagger_files()

    @app.get("/docs", include_in_schema=False)
    def docs_page() -> HTMLResponse:
        return HTMLResponse(DOCS_PAGE if folder else NO_DOCS_PAGE)

    if folder is not None:
        app.mount("/docs/assets", StaticFiles(directory=folder), name="docs-assets")


def app_from_env() -> FastAPI:
    """The application configured by ``LOOKALIKE_*`` variables (for ``--workers N``)."""
    return create_app(config=ServerConfig.from_env())
