"""Catalogues: where a collection keeps its images, files, metadata and vectors."""

from lookalike.store.base import Catalogue, CatalogueError, FileState, ImageRecord, NewImage
from lookalike.store.sqlite import SQLiteCatalogue

__all__ = [
    "Catalogue",
    "CatalogueError",
    "FileState",
    "ImageRecord",
    "NewImage",
    "SQLiteCatalogue",
]
