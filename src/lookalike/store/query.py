"""Selecting images by what the catalogue knows of them: the conditions a filtered search gives
(``lookalike.collection.filters`` makes them from the user's words) turned into the SQL of each
catalogue (SQLite, PostgreSQL), so that a selection is one indexed query in the database.

A :class:`Condition` names a *field* and an *operator*:

============== ======================================= =========================================
field          operators                               value
============== ======================================= =========================================
``taken_at``   ``< <= > >=``                           wall-clock seconds where it was taken
``taken_utc``  ``< <= > >=``                           seconds UTC (``taken_at`` less the offset)
``camera``     ``contains`` (case-insensitive)         text, matched in "make model"
a column       ``= != < <= > >= contains``             ``camera_make``, ``camera_model``,
                                                       ``lens``, ``taken_source``, ``width``,
                                                       ``height``, ``bytes``, ``id``
``meta:KEY``   ``= != < <= > >=``                      a user metadata value (JSON; ``=``
                                                       also finds it in a list: tags)
``folder``     ``under``                               an absolute folder (sub-folders included)
``path``       ``=``                                   an absolute file path
``near``       ``within``                              (latitude, longitude, km)
``id``         ``in``                                  image ids
============== ======================================= =========================================

``near`` is a bounding box in SQL (latitude indexed) refined by the great-circle distance in
:func:`refine`; every other condition is decided by the database.

Example:
    >>> sql, params, near = build([Condition("taken_at", ">=", 0.0)], SQLITE)
    >>> sql, params
    ('(taken_at >= ?)', [0.0])
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: The images table's columns a condition may name directly (with their kind).
COLUMNS = {
    "camera_make": "text",
    "camera_model": "text",
    "lens": "text",
    "taken_source": "text",
    "taken_at": "number",
    "width": "number",
    "height": "number",
    "bytes": "number",
    "id": "number",
    "lat": "number",
    "lon": "number",
}
_COMPARE = ("=", "!=", "<", "<=", ">", ">=")
EARTH_KM = 6371.0088
#: The largest offset of a time zone from UTC (UTC+14), in seconds.
MAX_OFFSET = 14 * 3600


@dataclass(frozen=True)
class Condition:
    """One condition on an image (see the module docstring)."""

    field: str
    op: str
    value: object


@dataclass(frozen=True)
class Dialect:
    """How one database writes what the conditions need."""

    name: str
    mark: str  # the parameter placeholder

    def meta_value(self, key: str) -> tuple[str, list]:
        """An expression of the metadata value under ``key``, comparable to a typed value."""
        if self.name == "sqlite":
            return "json_extract(metadata, ?)", [json_path(key)]
        return "(metadata::jsonb -> %s)", [key]


SQLITE = Dialect("sqlite", "?")
POSTGRES = Dialect("postgres", "%s")


def json_path(key: str) -> str:
    """SQLite's JSON path of a top-level key (quoted, so dots and spaces are kept).

    Example:
        >>> json_path('a.b')
        '$."a.b"'
    """
    return "$." + json.dumps(key)


def like_pattern(text: str) -> str:
    """``%text%`` with LIKE's wildcards in ``text`` escaped (by ``\\``)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped.lower()}%"


def build(conditions: Iterable[Condition], dialect: Dialect) -> tuple[str, list, list[tuple]]:
    """The WHERE clause (``1=1`` when there is no condition) and its parameters for the images
    table, and the ``near`` conditions (lat, lon, km) that :func:`refine` must still check."""
    m = dialect.mark
    parts: list[str] = []
    params: list = []
    near: list[tuple[float, float, float]] = []
    for c in conditions:
        if c.field == "near" and c.op == "within":
            lat, lon, km = (float(v) for v in c.value)
            near.append((lat, lon, km))
            box, values = _box(lat, lon, km, m)
            parts.append(box)
            params += values
        elif c.field == "folder" and c.op == "under":
            folder = str(c.value).rstrip("/") or "/"
            prefix = folder if folder.endswith("/") else folder + "/"
            if dialect.name == "sqlite":  # a range of the files' primary key (byte order)
                test = f"files.path >= {m} AND files.path < {m}"
                values = [prefix, prefix[:-1] + "0"]
            else:
                test = f"starts_with(files.path, {m})"
                values = [prefix]
            parts.append(f"id IN (SELECT image_id FROM files WHERE {test})")
            params += values
        elif c.field == "path" and c.op == "=":
            parts.append(f"id IN (SELECT image_id FROM files WHERE files.path = {m})")
            params.append(str(c.value))
        elif c.field == "id" and c.op == "in":
            ids = sorted({int(i) for i in c.value})  # type: ignore[union-attr]
            if not ids:
                parts.append("1=0")
            elif dialect.name == "sqlite":
                parts.append(f"id IN (SELECT value FROM json_each({m}))")
                params.append(json.dumps(ids))
            else:
                parts.append(f"id = ANY({m})")
                params.append(ids)
        elif c.field == "camera" and c.op == "contains":
            parts.append(
                "LOWER(COALESCE(camera_make, '') || ' ' || COALESCE(camera_model, '')) "
                f"LIKE {m} ESCAPE '\\'"
            )
            params.append(like_pattern(str(c.value)))
        elif c.field == "taken_utc" and c.op in _COMPARE[2:]:
            # The wall-clock column is indexed and within 14 hours of UTC: bound it first.
            seconds = float(c.value)  # type: ignore[arg-type]
            wall = seconds + MAX_OFFSET if c.op[0] == "<" else seconds - MAX_OFFSET
            parts.append(
                f"taken_at {c.op} {m} AND (taken_at - 60 * COALESCE(taken_offset, 0)) {c.op} {m}"
            )
            params += [wall, seconds]
        elif c.field in COLUMNS:
            sql, values = _column(c, m)
            parts.append(sql)
            params += values
        elif c.field.startswith("meta:"):
            sql, values = _meta(c, dialect)
            parts.append(sql)
            params += values
        else:
            raise ValueError(f"cannot select on {c.field!r} with {c.op!r}")
    if not parts:
        return "1=1", [], near
    return " AND ".join(f"({p})" for p in parts), params, near


def _column(c: Condition, m: str) -> tuple[str, list]:
    kind = COLUMNS[c.field]
    if c.op == "contains" and kind == "text":
        return f"LOWER(COALESCE({c.field}, '')) LIKE {m} ESCAPE '\\'", [like_pattern(str(c.value))]
    if c.op not in _COMPARE:
        raise ValueError(f"cannot select on {c.field!r} with {c.op!r}")
    value = c.value
    if kind == "number":
        value = float(value)  # type: ignore[arg-type]
    elif isinstance(value, str) and c.op == "=":  # text columns: case-insensitive (indexed)
        return f"LOWER({c.field}) = {m}", [value.lower()]
    elif isinstance(value, str) and c.op == "!=":
        return f"LOWER(COALESCE({c.field}, '')) <> {m}", [value.lower()]
    op = "<>" if c.op == "!=" else c.op
    if c.op == "!=":
        return f"({c.field} IS NULL OR {c.field} {op} {m})", [value]
    return f"{c.field} {op} {m}", [value]


def _meta(c: Condition, dialect: Dialect) -> tuple[str, list]:
    """A user metadata key against a value. ``=``/``!=`` match the value as typed JSON *or* as
    its text ("sku=123" finds 123 and "123"); the comparisons take numbers."""
    key = c.field[len("meta:") :]
    expr, params = dialect.meta_value(key)
    m = dialect.mark
    if c.op not in _COMPARE:
        raise ValueError(f"cannot select on metadata {key!r} with {c.op!r}")
    value = c.value
    if c.op in ("=", "!="):
        typed, text = value, str(value) if not isinstance(value, str) else value
        if isinstance(value, bool):
            text = "true" if value else "false"
        if dialect.name == "sqlite":
            if isinstance(typed, bool):
                typed = int(typed)  # json_extract gives 1/0 for true/false
            path = json_path(key)
            test = (
                f"{expr} IN ({m}, {m}) OR (json_type(metadata, {m}) = 'array' AND EXISTS "
                f"(SELECT 1 FROM json_each(metadata, {m}) WHERE value IN ({m}, {m})))"
            )
            values = [*params, typed, text, path, path, typed, text]
        else:
            test = (
                f"{expr} IN ({m}::jsonb, {m}::jsonb) OR (jsonb_typeof({expr}) = 'array' AND "
                f"({expr} @> jsonb_build_array({m}::jsonb) OR "
                f"{expr} @> jsonb_build_array({m}::jsonb)))"
            )
            typed_json, text_json = json.dumps(typed), json.dumps(text)
            values = [*params, typed_json, text_json, *params, *params, typed_json, *params]
            values.append(text_json)
        if c.op == "!=":
            return f"NOT ({test}) OR {expr} IS NULL", [*values, *params]
        return f"({test})", values
    number = float(value)  # type: ignore[arg-type]
    if dialect.name == "sqlite":
        return (
            f"(json_type(metadata, {m}) IN ('integer', 'real') AND {expr} {c.op} {m})",
            [json_path(key), *params, number],
        )
    return (
        f"(jsonb_typeof({expr}) = 'number' AND ({expr})::text::double precision {c.op} {m})",
        [*params, *params, number],
    )


def _box(lat: float, lon: float, km: float, m: str) -> tuple[str, list]:
    """A latitude/longitude box around a circle (longitude left open near the poles and across
    the antimeridian; :func:`refine` decides)."""
    dlat = math.degrees(km / EARTH_KM)
    sql = f"lat IS NOT NULL AND lat BETWEEN {m} AND {m}"
    params: list = [lat - dlat, lat + dlat]
    cos = math.cos(math.radians(min(abs(lat) + dlat, 90.0)))
    if cos > 1e-6:
        dlon = math.degrees(km / (EARTH_KM * cos))
        if dlon < 180 and lon - dlon >= -180 and lon + dlon <= 180:
            sql += f" AND lon BETWEEN {m} AND {m}"
            params += [lon - dlon, lon + dlon]
    return sql, params


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine).

    Example:
        >>> round(distance_km(48.8584, 2.2945, 48.8606, 2.3376))  # Eiffel tower to the Louvre
        3
    """
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(a)))


def refine(rows: Sequence[tuple], near: Sequence[tuple[float, float, float]]) -> list[int]:
    """The ids of ``(id, lat, lon)`` rows within every ``near`` circle."""
    return [
        int(r[0])
        for r in rows
        if r[1] is not None
        and all(distance_km(lat, lon, r[1], r[2]) <= km for lat, lon, km in near)
    ]


def selection_sql(conditions: Sequence[Condition], dialect: Dialect) -> tuple[str, list, list]:
    """The whole SELECT of the ids (and positions, when a ``near`` must be refined)."""
    where, params, near = build(conditions, dialect)
    columns = "id, lat, lon" if near else "id"
    return f"SELECT {columns} FROM images WHERE {where}", params, near
