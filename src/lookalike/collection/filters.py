"""Filters of a search: which images may be found, in the user's words, turned into catalogue
conditions (``lookalike.store.query``) that select the allowed ids in one database query.

A filter is a mapping (the Python API's and the REST API's ``where``), a list of ``KEY=VALUE``
texts (the CLI's repeatable ``--where``), or both mixed in a mapping under ``"where"``:

================== ================================================ =============================
key                value                                            means
================== ================================================ =============================
``taken_after``    ``2021``, ``2021-05``, ``2021-05-01``,           taken at or after (wall-clock
                   ``2021-05-01T10:00``, ``...+02:00``, a datetime  time where it was taken; with
                                                                    a zone: the instant)
``taken_before``   the same                                         taken before
``near``           ``[lat, lon, km]`` or ``"lat,lon,km"``           within km of the point (GPS)
``camera``         text                                             in the camera's make + model
``lens``           text                                             in the lens name
``folder`` (``in``) a folder                                        a file of it is under it
``ids``            image ids                                        only these images
``metadata``       ``{key: value}``                                 user metadata equal to value
``width`` ...      number or ``">=1000"``                           a stored column (``COLUMNS``)
any other key      value                                            user metadata equal to value
================== ================================================ =============================

Texts (``--where``) are ``KEY=VALUE``, ``KEY!=VALUE`` or ``KEY<VALUE`` (``<=``, ``>``, ``>=``
for numbers and times), with the keys above (``taken>=2021-05-01`` is ``taken_after``) and any
user metadata key; a value is JSON when it parses (``5``, ``true``), else text, and ``=``
matches both (``sku=123`` finds ``123`` and ``"123"``).

Example:
    >>> [(c.field, c.op, c.value) for c in conditions({"camera": "canon", "sku": "A-12"})]
    [('camera', 'contains', 'canon'), ('meta:sku', '=', 'A-12')]
    >>> conditions(["width>=1000"])
    [Condition(field='width', op='>=', value=1000.0)]
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from pathlib import Path

from lookalike.errors import FilterError
from lookalike.store.query import Condition

__all__ = [
    "COLUMNS",
    "Condition",
    "FilterError",
    "Where",
    "conditions",
    "parse_near",
    "parse_time",
]

#: Stored columns a filter may name directly (else a key is user metadata).
COLUMNS = {
    "camera_make": "text",
    "camera_model": "text",
    "lens": "text",
    "taken_source": "text",
    "width": "number",
    "height": "number",
    "bytes": "number",
}
#: Keys of the filter itself.
KEYS = ("taken_after", "taken_before", "near", "camera", "lens", "folder", "in", "ids", "path")
Where = Mapping[str, object] | Iterable[str] | Iterable[Condition] | str | None
_TEXT = re.compile(r"^\s*([^=!<>]+?)\s*(=|!=|<=|>=|<|>)\s*(.*?)\s*$")


def conditions(where: Where) -> list[Condition]:
    """The catalogue conditions of a filter (empty when there is none).

    Raises:
        FilterError: a key, value or text that cannot be understood (the message says which).
    """
    if where is None:
        return []
    if isinstance(where, str):
        return [_text(where)]
    if isinstance(where, Condition):
        return [where]
    if isinstance(where, Mapping):
        out: list[Condition] = []
        for key, value in where.items():
            out += _entry(str(key), value)
        return out
    out = []
    for item in where:
        if isinstance(item, Condition):
            out.append(item)
        elif isinstance(item, str):
            out.append(_text(item))
        else:
            raise FilterError(f"a filter is KEY=VALUE text or a mapping, not {item!r}")
    return out


def _entry(key: str, value: object) -> list[Condition]:
    if value is None:
        return []
    if key == "where":  # a mapping that also carries --where texts
        return conditions(value if not isinstance(value, str) else [value])  # type: ignore[arg-type]
    if key == "metadata":
        if not isinstance(value, Mapping):
            raise FilterError("metadata: give a mapping of keys to values")
        return [Condition(f"meta:{k}", "=", v) for k, v in value.items()]
    if key in ("taken_after", "taken_before"):
        field, seconds = parse_time(value, key)
        return [Condition(field, ">=" if key == "taken_after" else "<", seconds)]
    if key == "near":
        return [Condition("near", "within", parse_near(value))]
    if key in ("camera", "lens"):
        text = str(value).strip()
        if not text:
            raise FilterError(f"{key}: give some text to look for")
        return [Condition(key if key == "camera" else "lens", "contains", text)]
    if key in ("folder", "in"):
        return [Condition("folder", "under", folder_of(value))]
    if key == "path":
        return [Condition("path", "=", str(Path(str(value)).expanduser().resolve()))]
    if key == "ids":
        try:
            ids = [int(i) for i in value]  # type: ignore[union-attr]
        except (TypeError, ValueError) as exc:
            raise FilterError("ids: give a list of image ids") from exc
        return [Condition("id", "in", ids)]
    if key in COLUMNS:
        if isinstance(value, str) and _TEXT.match(f"{key}{value}") and value[:1] in "<>!=":
            return [_text(f"{key}{value}")]
        return [_column(key, "=", value)]
    return [Condition(f"meta:{key}", "=", value)]


def _text(text: str) -> Condition:
    """One ``KEY OP VALUE`` text."""
    match = _TEXT.match(text)
    if not match or not match.group(1):
        raise FilterError(f"cannot read the filter {text!r}: write KEY=VALUE (or !=, <, <=, >, >=)")
    key, op, raw = match.group(1), match.group(2), match.group(3)
    if key in ("taken", "taken_at", "taken_after", "taken_before"):
        if key == "taken_after" and op == "=":
            op = ">="
        if key == "taken_before" and op == "=":
            op = "<"
        if op not in ("<", "<=", ">", ">="):
            raise FilterError(f"{text!r}: compare a taken time with <, <=, > or >=")
        field, seconds = parse_time(raw, key)
        return Condition(field, op, seconds)
    if key in ("near", "camera", "lens", "folder", "in", "path"):
        if op != "=":
            raise FilterError(f"{text!r}: {key} takes =")
        return _entry(key, raw)[0]
    value = _value(raw)
    if key in COLUMNS:
        return _column(key, op, value)
    if op in ("<", "<=", ">", ">=") and not isinstance(value, int | float):
        raise FilterError(f"{text!r}: < and > compare numbers")
    return Condition(f"meta:{key}", op, value)


def _column(key: str, op: str, value: object) -> Condition:
    if COLUMNS[key] == "number":
        try:
            return Condition(key, op, float(value))  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise FilterError(f"{key}: give a number, not {value!r}") from exc
    if op not in ("=", "!="):
        raise FilterError(f"{key}: compare text with = or !=")
    return Condition(key, op, str(value))


def _value(raw: str) -> object:
    """A text value: JSON when it parses as a number, true/false/null or a quoted string."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, bool | int | float | str) else raw


def parse_time(value: object, what: str = "taken") -> tuple[str, float]:
    """(``"taken_at"`` or ``"taken_utc"``, seconds) of a time filter: wall-clock seconds for a
    time without a zone, seconds UTC for one with a zone (or a number: seconds UTC).

    Example:
        >>> parse_time("2021-05-01")
        ('taken_at', 1619827200.0)
        >>> parse_time("2021-05-01T10:00+02:00")
        ('taken_utc', 1619856000.0)
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "taken_utc", float(value)
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        text = str(value).strip().replace(" ", "T")
        moment = _partial(text)
        if moment is None:
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError as exc:
                raise FilterError(
                    f"{what}: cannot read the time {value!r}; write 2021, 2021-05, 2021-05-01 "
                    "or 2021-05-01T10:00 (a zone like +02:00 may follow)"
                ) from exc
    if moment.tzinfo is not None:
        return "taken_utc", moment.timestamp()
    return "taken_at", (moment - datetime(1970, 1, 1)) / timedelta(seconds=1)


def _partial(text: str) -> datetime | None:
    """``2021`` and ``2021-05`` (the start of the year or month)."""
    if re.fullmatch(r"\d{4}", text):
        return datetime(int(text), 1, 1)
    if re.fullmatch(r"\d{4}-\d{1,2}", text):
        year, month = text.split("-")
        try:
            return datetime(int(year), int(month), 1)
        except ValueError:
            return None
    return None


def parse_near(value: object) -> tuple[float, float, float]:
    """(latitude, longitude, km) from ``"48.85,2.35,10"`` or a sequence of three numbers.

    Example:
        >>> parse_near("48.85, 2.35, 10")
        (48.85, 2.35, 10.0)
    """
    parts = value.split(",") if isinstance(value, str) else value
    try:
        lat, lon, km = (float(p) for p in parts)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise FilterError(f"near: write LAT,LON,KM (e.g. 48.85,2.35,10), not {value!r}") from exc
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or not km > 0:
        raise FilterError(
            f"near: latitude in [-90, 90], longitude in [-180, 180], km > 0 (got {value!r})"
        )
    return lat, lon, km


def folder_of(value: object) -> str:
    """The absolute folder a ``folder`` filter names (links resolved, as indexed paths are);
    an ``s3://`` prefix is kept as it is."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if not text.strip():
        raise FilterError("folder: give a folder")
    if "://" in text:
        return text.rstrip("/")
    return str(Path(text).expanduser().resolve())
