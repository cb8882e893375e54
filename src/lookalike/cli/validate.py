"""The one validation layer of the command line: every command checks its inputs here, before
any collection is opened or created, so a bad value never reaches the library and a refusal is
always one line (docs/cli.md has the rules).

* **Exit codes.** A value that cannot be right (a count below 1, an unknown choice, a path that
  does not exist, an option that cannot apply to this query or collection) is a usage error:
  exit code 2. Callbacks raise :class:`typer.BadParameter` (Click prints ``Error: Invalid value
  for '--mode': ...``); checks that need several options at once call :func:`refuse`.
* **Counts** are at least 1 (``typer.Option(min=1)`` at each option).
* **Choices** list what is allowed in the error (:func:`choice`, :func:`index_kind`,
  :func:`model_name`).
* **Paths** that must exist are checked here (:func:`existing_inputs`, :func:`query_images`).
* **Regions** are pixels or fractions of the image (:func:`parse_region`): four numbers all at
  most 1.0 are fractions.
* **Texts** ``TEXT:WEIGHT`` are parsed strictly (:func:`texts`): a bad weight is an error, never
  part of the text.

Example:
    >>> parse_region("0.1,0.1,0.5,0.5").fractions
    True
    >>> parse_region("10,20,110,220").box_for(640, 480)
    (10, 20, 110, 220)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import typer

from lookalike.cli.common import err

#: What ``search --mode`` accepts: the vector space a query image is compared in.
SEARCH_MODES = ("image", "copy")
#: What ``--map`` writes, by file extension.
MAP_SUFFIXES = {".html": "HTML", ".htm": "HTML", ".png": "PNG", ".geojson": "GeoJSON"}
#: Picture files ``--grid`` writes when one picture is asked for.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def refuse(message: str) -> NoReturn:
    """A usage error found in the command itself (options that conflict, an option that does
    not apply): ``error: message`` on stderr, exit code 2."""
    err.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False, markup=True)
    raise typer.Exit(2)


def fail(message: str) -> NoReturn:
    """An input that cannot be used (no image found, nothing to remove): one line, exit 1."""
    err.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(1)


def note(message: str) -> None:
    """A remark on stderr that does not change the outcome (which reading of a value was
    used, a deprecated spelling)."""
    err.print(f"[yellow]note:[/yellow] {message}", soft_wrap=True, highlight=False)


def warn(message: str) -> None:
    """A warning on stderr: the command answered, but the answer may not be what was meant."""
    err.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True, highlight=False)


def deprecated(old: str, new: str) -> None:
    """The note an old option spelling gets: it still works, once more."""
    note(f"{old} is deprecated here, use {new} (the old spelling will be removed)")


def pick(new: object, old: object, old_name: str, new_name: str, default: object) -> object:
    """The value of an option that has a deprecated spelling: ``new`` unless only ``old`` was
    given (with a deprecation note); both given is a usage error."""
    if old is None:
        return default if new is None else new
    if new is not None:
        refuse(f"give {new_name} or its old spelling {old_name}, not both")
    deprecated(old_name, new_name)
    return old


# -- choices -----------------------------------------------------------------------------------
def choice(*allowed: str, what: str = "value") -> Callable[[str | None], str | None]:
    """A callback accepting only ``allowed`` values (None passes: the option was not given).

    Example:
        >>> choice("image", "copy")("copy")
        'copy'
    """

    def check(value: str | None) -> str | None:
        if value is None or value in allowed:
            return value
        raise typer.BadParameter(f"unknown {what} {value!r}; use one of: {', '.join(allowed)}")

    return check


def choices(*allowed: str, what: str = "value") -> Callable[[list[str] | None], list[str] | None]:
    """:func:`choice` for a repeatable option."""
    one = choice(*allowed, what=what)

    def check(values: list[str] | None) -> list[str] | None:
        for value in values or []:
            one(value)
        return values

    return check


def index_kind(value: str | None) -> str | None:
    """``--index``: a registered index kind, or ``milvus:URI``."""
    if value is None:
        return None
    from lookalike.index import kinds

    known = kinds()
    if value in known or (value.partition(":")[0] == "milvus" and value.partition(":")[2]):
        return value
    raise typer.BadParameter(
        f"{value!r} is not an index kind; use one of: {', '.join(known)}, or milvus:URI"
    )


def model_name(value: str | None) -> str | None:
    """``--model``: a model name ``lookalike models`` lists, ``clip:DIR`` or a trained model's
    folder. ``dir`` is the registry's name for trained model folders, not a model."""
    if value is None:
        return None
    from lookalike.models import available

    if value == "dir":
        raise typer.BadParameter(
            "'dir' stands for a model folder written by `lookalike train`: give the folder, "
            "--model PATH"
        )
    family, colon, argument = value.partition(":")
    if value in available() or (colon and family in available() and argument):
        return value
    path = Path(value).expanduser()
    if path.is_dir():
        return value
    names = [n for n in available() if n != "dir"]
    raise typer.BadParameter(
        f"{value!r} is neither a model nor a folder; use one of: {', '.join(names)}, "
        "clip:DIR, or the folder `lookalike train` wrote (`lookalike models` says more)"
    )


# -- paths -------------------------------------------------------------------------------------
def existing_inputs(values: list[str] | None) -> list[str] | None:
    """``index`` inputs: local files and folders must exist (``s3://`` URIs are listed later)."""
    from lookalike.ingest.sources import is_remote

    for value in values or []:
        if not is_remote(value) and not Path(value).expanduser().exists():
            raise typer.BadParameter(f"no such file or folder: {value}")
    return values


def query_images(values: list[Path] | None) -> list[Path] | None:
    """Query images must be existing files (a folder is not a query)."""
    for value in values or []:
        path = Path(value).expanduser()
        if path.is_dir():
            raise typer.BadParameter(
                f"{value} is a folder: give image files as queries (index a folder with "
                "`lookalike index FOLDER`)"
            )
        if not path.exists():
            raise typer.BadParameter(f"no such file: {value}")
    return values


def existing_file(value: Path | None) -> Path | None:
    """A file that must exist (a video, a GPS track, a detector)."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        raise typer.BadParameter(f"{value} is a folder, not a file")
    if not path.exists():
        raise typer.BadParameter(f"no such file: {value}")
    return value


def existing_path(value: Path | None) -> Path | None:
    """A file or folder that must exist (a data set)."""
    if value is not None and not Path(value).expanduser().exists():
        raise typer.BadParameter(f"no such file or folder: {value}")
    return value


def map_file(value: Path | None) -> Path | None:
    """``--map``: HTML (.html), PNG (.png) or GeoJSON (.geojson), chosen by the extension."""
    if value is None:
        return None
    if Path(value).suffix.lower() not in MAP_SUFFIXES:
        raise typer.BadParameter(
            f"{value}: a map is written as .html (a page with an SVG drawing), .png (a picture) "
            "or .geojson (positions for GIS tools)"
        )
    return value


def picture_file(value: Path | None) -> Path | None:
    """``--grid`` when one picture is written: a .png/.jpg file, not a folder."""
    if value is None:
        return None
    if Path(value).expanduser().is_dir() or Path(value).suffix.lower() not in PICTURE_SUFFIXES:
        raise typer.BadParameter(
            f"{value}: one picture is written here: give a file name ending in .png or .jpg"
        )
    return value


def picture_folder(value: Path | None) -> Path | None:
    """``--grid`` when several pictures are written: a folder (made when missing)."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise typer.BadParameter(
            f"{value} is a file: --grid here writes several pictures into a folder"
        )
    if not path.exists() and path.suffix.lower() in PICTURE_SUFFIXES:
        raise typer.BadParameter(
            f"{value}: several pictures are written here: give a folder, not a picture's name"
        )
    return value


def picture_file_or_refuse(value: Path) -> Path:
    """:func:`picture_file` where the command knows it writes one picture."""
    try:
        return picture_file(value)  # type: ignore[return-value]
    except typer.BadParameter as exc:
        refuse(f"--grid: {exc.message}")


def picture_folder_or_refuse(value: Path) -> Path:
    """:func:`picture_folder` where the command knows it writes several pictures."""
    try:
        return picture_folder(value)  # type: ignore[return-value]
    except typer.BadParameter as exc:
        refuse(f"--grid: {exc.message}")


def onnx_file(value: Path | None) -> Path | None:
    """``--detector``: an existing YOLO model exported to ONNX."""
    if value is None:
        return None
    existing_file(value)
    if Path(value).suffix.lower() != ".onnx":
        raise typer.BadParameter(f"a detector is a YOLO model exported to .onnx, not {value}")
    return value


# -- numbers -----------------------------------------------------------------------------------
def positive(value: float | None) -> float | None:
    """A length of time or distance: more than 0."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise typer.BadParameter(f"{value} must be more than 0")
    return value


def score(value: float | None) -> float | None:
    """A similarity score: between -1 and 1."""
    if value is not None and not -1.0 <= value <= 1.0:
        raise typer.BadParameter(f"{value} is not a score: scores are cosines, in -1..1")
    return value


# -- regions -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Region:
    """A box of a query image: ``x0,y0,x1,y1`` in pixels, or in fractions of the image's width
    and height when ``fractions`` (every value at most 1.0)."""

    values: tuple[float, float, float, float]
    fractions: bool

    def box_for(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The box in pixels of a ``width`` x ``height`` image.

        Example:
            >>> Region((0.5, 0.0, 1.0, 0.5), True).box_for(200, 100)
            (100, 0, 200, 50)
        """
        x0, y0, x1, y1 = self.values
        if self.fractions:
            x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
        return round(x0), round(y0), round(x1), round(y1)

    def describe(self) -> str:
        text = ",".join(f"{v:g}" for v in self.values)
        if self.fractions:
            return f"region {text} read as fractions of each image's width and height"
        return f"region {text} read as pixels of each (upright) image"


def parse_region(text: str) -> Region:
    """``x0,y0,x1,y1``: four numbers, x0 < x1 and y0 < y1, none negative; all of them at most
    1.0 means fractions of the image, else pixels.

    Raises:
        ValueError: the message says what is wrong.
    """
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"a region is four numbers x0,y0,x1,y1, not {text!r}")
    x0, y0, x1, y1 = values
    if min(values) < 0:
        raise ValueError(f"region {text}: no value may be negative")
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"region {text} is empty: it needs x0 < x1 and y0 < y1")
    return Region(values, max(values) <= 1.0)  # type: ignore[arg-type]


def region(value: str | None) -> str | None:
    """``--region`` callback: checked here, parsed again where it is used."""
    if value is not None:
        try:
            parse_region(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


# -- texts -------------------------------------------------------------------------------------
def texts(values: list[str] | None) -> list[str] | None:
    """``--text``/``--not``: each ``TEXT`` or ``TEXT:WEIGHT``, parsed strictly (see
    :func:`lookalike.collection.text.weighted_term`)."""
    from lookalike.collection.text import weighted_term

    for value in values or []:
        try:
            weighted_term(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return values


def only_with(given: Sequence[tuple[str, bool]], needs: str, reason: str) -> None:
    """Refuse each option in ``given`` (name, was it given) that needs ``needs``."""
    for name, present in given:
        if present:
            refuse(f"{name} {reason} ({needs})")
