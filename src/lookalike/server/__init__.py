"""The lookalike server: a REST API and web page over catalogues of images.

Example:
    >>> from lookalike.server import create_app
    >>> app = create_app("/srv/lookalike", admin_key="s3cret")  # doctest: +SKIP
"""

from lookalike.server.app import create_app
from lookalike.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
