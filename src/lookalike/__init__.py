"""lookalike: reverse image search. Find the images that look like yours.

Example:
    >>> import lookalike
    >>> col = lookalike.open_collection("photos.lookalike", create=True)  # doctest: +SKIP
    >>> col.sync(["~/Pictures"])  # doctest: +SKIP
    >>> col.search("query.jpg", k=5)  # doctest: +SKIP
"""

from lookalike.collection import (
    Collection,
    CollectionError,
    IndexReport,
    SearchResult,
)
from lookalike.images import ImageError, decode

__version__ = "0.1.0"


def open_collection(path: str, **options: object) -> Collection:
    """Open (or, with ``create=True``, create) the collection in ``path``."""
    return Collection.open(path, **options)


__all__ = [
    "Collection",
    "CollectionError",
    "ImageError",
    "IndexReport",
    "SearchResult",
    "__version__",
    "decode",
    "open_collection",
]
