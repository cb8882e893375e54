"""The core: a collection of images, its spaces, indexes and catalogue (see :mod:`.core`)."""

from lookalike.collection.core import (
    DEFAULT_INDEX,
    DEFAULT_MODEL,
    IMAGE_SPACE,
    TEXT_SPACE,
    Collection,
    CollectionError,
    IndexReport,
    SearchResult,
)

__all__ = [
    "DEFAULT_INDEX",
    "DEFAULT_MODEL",
    "IMAGE_SPACE",
    "TEXT_SPACE",
    "Collection",
    "CollectionError",
    "IndexReport",
    "SearchResult",
]
