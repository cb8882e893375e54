"""The lookalike server: a REST API and web page over catalogues of images.

Example:
    >>> from lookalike.server import create_app
    >>> app = create_app("/srv/lookalike", admin_key="s3cret")  # doctest: +SKIP
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lookalike.server.app import create_app
    from lookalike.server.config import ServerConfig


def __getattr__(name: str) -> object:
    # Lazy, so that `lookalike --help` and every other command start without FastAPI.
    if name == "create_app":
        from lookalike.server.app import create_app

        return create_app
    if name == "ServerConfig":
        from lookalike.server.config import ServerConfig

        return ServerConfig
    raise AttributeError(name)


__all__ = ["ServerConfig", "create_app"]
