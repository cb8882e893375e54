"""Catalogues: where a collection keeps its images, files, metadata and vectors."""

from pathlib import Path

from lookalike.store.base import Catalogue, CatalogueError, FileState, ImageRecord, NewImage
from lookalike.store.sqlite import SQLiteCatalogue

__all__ = [
    "Catalogue",
    "CatalogueError",
    "FileState",
    "ImageRecord",
    "NewImage",
    "SQLiteCatalogue",
    "open_catalogue",
]


def open_catalogue(location: str | Path, *, create: bool = True) -> Catalogue:
    """The catalogue at ``location``: a ``postgresql://`` URI, else an SQLite file path.

    ``create=False``: the catalogue must exist and hold its tables (a collection's catalogue
    that is missing or empty is an error, not a new empty catalogue).

    Example:
        >>> open_catalogue(":memory:").count()
        {'images': 0, 'files': 0, 'skipped': 0}
    """
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        from lookalike.store.postgres import PostgresCatalogue  # psycopg only when used

        return PostgresCatalogue(text, create=create)
    if text.startswith("sqlite:///"):
        text = text.removeprefix("sqlite://")
    return SQLiteCatalogue(text if text == ":memory:" else Path(text).expanduser(), create=create)
