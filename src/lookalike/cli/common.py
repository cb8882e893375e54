"""What every command shares: the consoles, the collection option, error handling and the
progress bar. Capability packages import these (never ``cli.app``) and register their commands.

Example:
    >>> from lookalike.cli.common import errors
    >>> with errors():  # an expected failure becomes "error: ..." and exit code 1
    ...     pass
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lookalike.collection import CollectionError
from lookalike.images import ImageError
from lookalike.index import VectorIndexError
from lookalike.models import ModelError

out = Console()
err = Console(stderr=True)


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
        help="Collection folder [default: $LOOKALIKE_COLLECTION or a per-user data folder].",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


@contextmanager
def errors() -> Iterator[None]:
    """Turn expected failures into a one-line message and exit code 1."""
    try:
        yield
    except (CollectionError, ModelError, ImageError, FileNotFoundError, VectorIndexError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


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
