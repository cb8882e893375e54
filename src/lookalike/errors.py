"""Every error lookalike raises, in one tree: catch :class:`LookalikeError` for all of them, or a
branch for one kind. Each class also keeps the built-in base it always had (``ValueError`` for
bad input, ``RuntimeError`` for a state or a missing part, ``LookupError`` for "no such"), so
callers written against those keep working.

::

    LookalikeError
    ├── ImageError (ValueError)          a file or buffer that is not a usable image
    ├── ModelError (RuntimeError)        an embedder cannot be loaded or used
    ├── VectorIndexError (RuntimeError)  an index cannot be created, loaded or searched
    ├── CatalogueError (RuntimeError)    the catalogue database cannot be opened or migrated
    ├── SourceError (RuntimeError)       a remote location (s3://) cannot be listed
    ├── CollectionError (RuntimeError)   a collection cannot be created, opened or written
    │   ├── BusyError                    another writer holds the collection: try again later
    │   └── BulkError                    embedding shards cannot be written, read or merged
    ├── FilterError (ValueError)         a search filter that cannot be understood
    ├── DatasetError (ValueError)        a folder that is not a usable evaluation set
    ├── EvalError (ValueError)           an evaluation cannot run
    ├── TrainError (ValueError)          training cannot run on this data or with these options
    ├── TrackError (ValueError)          a GPS track cannot be read or does not cover a time
    ├── VideoError (RuntimeError)        a video cannot be decoded
    ├── LocateError (RuntimeError)       nothing to locate against
    ├── DetectorError (RuntimeError)     an object detector cannot be loaded or run
    └── ServerError                      the REST server's own errors (lookalike.server)
        ├── NotFoundError (LookupError)  no such catalogue, image or job, or not visible
        ├── BadRequestError (ValueError) the request cannot be served as asked
        ├── UnavailableError (RuntimeError)  a feature this server cannot offer as installed
        ├── StorageError (RuntimeError)  a blob cannot be stored or read
        └── FetchError (ValueError)      a URL cannot or may not be fetched

Example:
    >>> from lookalike.errors import LookalikeError, ImageError
    >>> issubclass(ImageError, LookalikeError) and issubclass(ImageError, ValueError)
    True
"""

from __future__ import annotations


class LookalikeError(Exception):
    """The base of every error lookalike raises on purpose; the message says what to do."""


class ImageError(LookalikeError, ValueError):
    """A file or buffer that cannot be used as an image; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ModelError(LookalikeError, RuntimeError):
    """An embedder cannot be loaded or used (unknown name, missing package or weights)."""


class VectorIndexError(LookalikeError, RuntimeError):
    """An index cannot be created, loaded or used."""


class CatalogueError(LookalikeError, RuntimeError):
    """The catalogue cannot be opened or migrated."""


class SourceError(LookalikeError, RuntimeError):
    """A remote location cannot be listed (bad URI, no such bucket, no access)."""


class CollectionError(LookalikeError, RuntimeError):
    """A collection cannot be created, opened or written (the message says what to do)."""


class BusyError(CollectionError):
    """Another writer (a process, or another open Collection) holds the collection; the same
    call can succeed later. The server answers it with 409 and ``Retry-After``."""


class BulkError(CollectionError):
    """Shards cannot be written, read or merged (the message says why)."""


class FilterError(LookalikeError, ValueError):
    """A search filter (``where=``, ``--where``, ``--near``...) that cannot be understood."""


class DatasetError(LookalikeError, ValueError):
    """A folder or file that is not a usable evaluation set; the message says what to change."""


class EvalError(LookalikeError, ValueError):
    """The evaluation cannot run (nothing readable, no query); the message says why."""


class TrainError(LookalikeError, ValueError):
    """Training cannot run on this data or with these options; the message says why."""


class TrackError(LookalikeError, ValueError):
    """A track cannot be read, or does not cover the times asked of it."""


class VideoError(LookalikeError, RuntimeError):
    """A video cannot be decoded."""


class LocateError(LookalikeError, RuntimeError):
    """Nothing to locate against (no positioned images in the collection)."""


class DetectorError(LookalikeError, RuntimeError):
    """A detector cannot be loaded or run (missing model, wrong output format...)."""


class ServerError(LookalikeError):
    """The REST server's own errors; each maps to one HTTP status (lookalike.server.errors)."""


class NotFoundError(ServerError, LookupError):
    """No such catalogue, image or job (or not visible to the caller)."""


class BadRequestError(ServerError, ValueError):
    """The request cannot be served as asked (the message says why)."""


class UnavailableError(ServerError, RuntimeError):
    """A feature this server cannot offer as installed (the message says what is missing)."""


class StorageError(ServerError, RuntimeError):
    """A blob cannot be stored or read."""


class FetchError(ServerError, ValueError):
    """A URL cannot or may not be fetched (the message says why)."""
