"""What every command shares: the consoles, the collection option, error handling and the
progress bar. Capability packages import these (never ``cli.app``) and register their commands.

The consoles never fail on a path that is not valid UTF-8 (``os.fsdecode`` gives it lone
surrogates, which no terminal encoding takes): such characters are printed backslash-escaped
(``caf\udce9.jpg``), as ``--json`` output escapes them too.

Example:
    >>> from lookalike.cli.common import errors
    >>> with errors():  # an expected failure becomes "error: ..." and exit code 1
    ...     pass
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.console import Console, ConsoleDimensions
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from lookalike.errors import LookalikeError


def printable(text: str) -> str:
    """``text`` with characters no encoding can write (lone surrogates) backslash-escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _Escaping:
    """A text stream that escapes lone surrogates before writing to ``target``."""

    def __init__(self, target: IO[str]) -> None:
        self._target = target

    def write(self, text: str) -> int:
        return self._target.write(printable(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class SafeConsole(Console):
    """A rich Console whose output never fails on a path that is not valid UTF-8."""

    @property
    def file(self) -> IO[str]:
        return _Escaping(Console.file.fget(self))  # type: ignore[attr-defined]

    @file.setter
    def file(self, new_file: IO[str]) -> None:
        Console.file.fset(self, new_file)  # type: ignore[attr-defined]

    def render_str(self, text: str, **options: Any) -> Text:
        # Escaped before it is measured, so table columns fit what is printed.
        return super().render_str(printable(text), **options)

    @property
    def size(self) -> ConsoleDimensions:
        """The terminal's size; when the output is not a terminal (a pipe, a file) a width no
        line reaches, so tables keep whole paths instead of cutting them to 80 columns."""
        size = Console.size.fget(self)  # type: ignore[attr-defined]
        if self.is_terminal or self._width is not None:
            return size
        return ConsoleDimensions(UNLIMITED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


#: The width of output that is not a terminal (longer than any path or table row).
UNLIMITED_WIDTH = 10_000


out = SafeConsole()
err = SafeConsole(stderr=True)


class _OneLine(logging.Handler):
    """Warnings of lookalike's loggers (a damaged index file rebuilt, an incomplete copy
    space) as one yellow line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(Text.assemble(("warning:", "yellow"), " ", record.getMessage()), soft_wrap=True)


_logger = logging.getLogger("lookalike")
if not any(isinstance(h, _OneLine) for h in _logger.handlers):
    _logger.addHandler(_OneLine(logging.WARNING))


def default_collection() -> Path:
    """``$LOOKALIKE_COLLECTION``, else a per-user data folder."""
    env = os.environ.get("LOOKALIKE_COLLECTION")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("lookalike")) / "default"


CollectionOpt = Annotated[
    Path | None,
    typer.Option(
        "--collection",
        "-c",
        metavar="DIR",
        help="Collection folder [default: $LOOKALIKE_COLLECTION or a per-user data folder].",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


@contextmanager
def errors() -> Iterator[None]:
    """Turn expected failures into a one-line message and exit code 1: every lookalike error
    (a damaged collection's names ``lookalike check --repair``), a file that cannot be read or
    written (a full disk: nothing is half-written, atomic writes leave no temporary file), a
    database failure the catalogue did not explain."""
    try:
        yield
    except LookalikeError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(_os_message(exc))
    except sqlite3.DatabaseError as exc:
        _fail(f"the catalogue failed ({exc}): run `lookalike check --repair`")
    except MemoryError:
        _fail("out of memory")


def _fail(message: str) -> None:
    err.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)
    raise typer.Exit(1) from None


def _os_message(exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left on the device{where}; nothing was half-written: free some space "
            "and run again"
        )
    return f"{exc.strerror or exc}{where}"


@contextmanager
def progress_bar(label: str) -> Iterator:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False, disable=not err.is_terminal) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
