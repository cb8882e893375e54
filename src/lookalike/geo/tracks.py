"""GPS tracks and positions: read CSV/GPX tracks, interpolate them in time, measure distances.

A :class:`Track` is a time series of fixes (seconds, latitude, longitude[, altitude]). Times are
seconds: as written in a CSV of plain numbers, else seconds since the first fix (GPX and CSVs
with ISO 8601 times, whose first fix is kept in ``Track.start``).

Example:
    >>> track = Track(np.array([0.0, 10.0]), np.array([48.0, 48.001]), np.array([2.0, 2.0]))
    >>> lat, lon = track.at([5.0])
    >>> round(float(lat[0]), 4), round(haversine(48.0, 2.0, 48.001, 2.0))
    (48.0005, 111)
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from lookalike.errors import TrackError

#: Mean Earth radius (IUGG), metres.
EARTH_RADIUS_M = 6_371_008.8

_TIME_NAMES = ("time", "t", "t_seconds", "seconds", "timestamp", "datetime", "date_time")
_LAT_NAMES = ("lat", "latitude")
_LON_NAMES = ("lon", "lng", "long", "longitude")
_ALT_NAMES = ("alt", "altitude", "altitude_m", "ele", "elevation")


@dataclass
class Track:
    """GPS fixes sorted by time: ``times`` in seconds, ``lat``/``lon`` in degrees.

    Example:
        >>> Track(np.array([0.0, 1.0]), np.array([1.0, 1.0]), np.array([2.0, 2.1])).span
        (0.0, 1.0)
    """

    times: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    alt: np.ndarray | None = None
    start: datetime | None = None
    source: str = ""

    def __post_init__(self) -> None:
        self.times = np.asarray(self.times, dtype=np.float64)
        self.lat = np.asarray(self.lat, dtype=np.float64)
        self.lon = np.asarray(self.lon, dtype=np.float64)
        if len(self.times) == 0:
            raise TrackError(f"{self.source or 'track'}: no GPS fixes")
        order = np.argsort(self.times, kind="stable")
        self.times, self.lat, self.lon = self.times[order], self.lat[order], self.lon[order]
        if self.alt is not None:
            self.alt = np.asarray(self.alt, dtype=np.float64)[order]

    def __len__(self) -> int:
        return len(self.times)

    @property
    def span(self) -> tuple[float, float]:
        """First and last fix times, seconds."""
        return float(self.times[0]), float(self.times[-1])

    def at(
        self, times: Sequence[float] | np.ndarray, tolerance: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Latitude and longitude at ``times`` (seconds), linearly interpolated between fixes.

        Times up to ``tolerance`` seconds outside the track take its first or last fix.

        Raises:
            TrackError: a time lies further outside the track's span; the message says by how
                much.
        """
        times = np.atleast_1d(np.asarray(times, dtype=np.float64))
        first, last = self.span
        before = first - times
        after = times - last
        if len(times) and max(before.max(), after.max()) > tolerance:
            worst = int(np.argmax(np.maximum(before, after)))
            t = times[worst]
            where = (
                f"{before[worst]:.3f} s before its first fix"
                if before[worst] > 0
                else f"{after[worst]:.3f} s after its last fix"
            )
            raise TrackError(
                f"time {t:.3f} s is outside the track {self.source or ''} "
                f"({first:.3f}-{last:.3f} s): {where}"
            )
        return np.interp(times, self.times, self.lat), np.interp(times, self.times, self.lon)

    def distance_along(self, times: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
        """Metres travelled from the first fix to each of ``times`` (each fix when None)."""
        steps = haversine(self.lat[:-1], self.lon[:-1], self.lat[1:], self.lon[1:])
        cumulative = np.concatenate([[0.0], np.cumsum(steps)])
        if times is None:
            return cumulative
        return np.interp(np.asarray(times, dtype=np.float64), self.times, cumulative)

    def length_m(self) -> float:
        """The track's length in metres."""
        return float(self.distance_along()[-1])


def haversine(lat1, lon1, lat2, lon2) -> np.ndarray | float:
    """Great-circle distance in metres between points given in degrees (numpy broadcasting).

    Example:
        >>> round(haversine(0.0, 0.0, 0.0, 1.0))  # one degree along the equator
        111195
    """
    lat1, lon1, lat2, lon2 = (
        np.radians(np.asarray(v, dtype=np.float64)) for v in (lat1, lon1, lat2, lon2)
    )
    a = (
        np.sin((lat2 - lat1) / 2) ** 2
        + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    )
    distance = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return float(distance) if distance.ndim == 0 else distance


def to_local(lat, lon, lat0: float, lon0: float) -> np.ndarray:
    """East/north metres of points from (lat0, lon0): an equirectangular projection, accurate to
    well under 0.1% over a few kilometres, which is all locating along a route needs."""
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    scale = math.radians(1.0) * EARTH_RADIUS_M
    east = (lon - lon0) * scale * math.cos(math.radians(lat0))
    north = (lat - lat0) * scale
    return np.stack([east, north], axis=-1)


def from_local(xy: np.ndarray, lat0: float, lon0: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`to_local`: latitude and longitude of east/north metres."""
    xy = np.asarray(xy, dtype=np.float64)
    scale = math.radians(1.0) * EARTH_RADIUS_M
    lat = lat0 + xy[..., 1] / scale
    lon = lon0 + xy[..., 0] / (scale * math.cos(math.radians(lat0)))
    return lat, lon


# -- reading tracks -----------------------------------------------------------------------------
def read_track(path: str | Path) -> Track:
    """A track from a GPX file (``.gpx``) or a CSV of time, latitude, longitude[, altitude].

    Raises:
        TrackError: unreadable file, bad rows (the message names the line), or no fixes.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise TrackError(f"no such track file: {path}")
    if path.suffix.lower() == ".gpx":
        return read_gpx(path)
    return read_csv(path)


def read_csv(path: str | Path) -> Track:
    """A track from CSV rows ``time, latitude, longitude[, altitude]``.

    A first row that is not numbers is a header; its names (``time``/``t_seconds``/...,
    ``lat``/``latitude``, ``lon``/``longitude``, ``alt``/``altitude``) choose the columns, else
    the columns are taken in that order. Times are seconds or ISO 8601 date-times.

    Example:
        >>> read_csv("gps.csv").span  # doctest: +SKIP
        (0.0, 10.45)
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrackError(f"cannot read track {path}: {exc}") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t ")
    except csv.Error:
        dialect = csv.excel
    rows = [(n, row) for n, row in enumerate(csv.reader(text.splitlines(), dialect), 1) if row]
    rows = [(n, [c.strip() for c in row]) for n, row in rows if any(c.strip() for c in row)]
    if not rows:
        raise TrackError(f"{path}: no rows (expected time, latitude, longitude)")
    columns = (0, 1, 2, 3)
    if not _is_number(rows[0][1][1] if len(rows[0][1]) > 1 else ""):
        columns = _columns_from_header(rows[0][1], path)
        rows = rows[1:]
    if not rows:
        raise TrackError(f"{path}: a header but no GPS fixes")
    times, lats, lons, alts = [], [], [], []
    for line, row in rows:
        t, lat, lon, alt = _parse_row(row, columns, line, path)
        times.append(t)
        lats.append(lat)
        lons.append(lon)
        alts.append(alt)
    start = None
    if isinstance(times[0], datetime):
        if not all(isinstance(t, datetime) for t in times):
            raise TrackError(f"{path}: times mix date-times and seconds")
        start = min(times)
        times = [(t - start).total_seconds() for t in times]
    elif any(isinstance(t, datetime) for t in times):
        raise TrackError(f"{path}: times mix date-times and seconds")
    has_alt = all(a is not None for a in alts)
    return Track(
        np.array(times), np.array(lats), np.array(lons),
        np.array(alts) if has_alt else None, start=start, source=str(path),
    )  # fmt: skip


def _columns_from_header(header: list[str], path: Path) -> tuple[int, int, int, int | None]:
    names = [h.strip().lower() for h in header]

    def find(candidates: tuple[str, ...], what: str, required: bool = True) -> int | None:
        for i, name in enumerate(names):
            if name in candidates:
                return i
        if required:
            raise TrackError(
                f"{path}: the header {header} has no {what} column (one of {list(candidates)})"
            )
        return None

    return (
        find(_TIME_NAMES, "time"),
        find(_LAT_NAMES, "latitude"),
        find(_LON_NAMES, "longitude"),
        find(_ALT_NAMES, "altitude", required=False),
    )  # type: ignore[return-value]


def _parse_row(
    row: list[str], columns: tuple, line: int, path: Path
) -> tuple[float | datetime, float, float, float | None]:
    t_col, lat_col, lon_col, alt_col = columns
    needed = max(t_col, lat_col, lon_col)
    if len(row) <= needed:
        raise TrackError(
            f"{path}, line {line}: {len(row)} fields, expected at least {needed + 1} "
            "(time, latitude, longitude)"
        )
    t = _parse_time(row[t_col])
    if t is None:
        raise TrackError(f"{path}, line {line}: bad time {row[t_col]!r}")
    try:
        lat, lon = float(row[lat_col]), float(row[lon_col])
    except ValueError:
        raise TrackError(
            f"{path}, line {line}: bad latitude/longitude {row[lat_col]!r}, {row[lon_col]!r}"
        ) from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise TrackError(f"{path}, line {line}: latitude/longitude out of range: {lat}, {lon}")
    alt = None
    if alt_col is not None and alt_col < len(row) and row[alt_col]:
        alt = float(row[alt_col]) if _is_number(row[alt_col]) else None
    elif alt_col is None and len(columns) == 4 and len(row) > 3 and _is_number(row[3]):
        alt = float(row[3])
    return t, lat, lon, alt


def _parse_time(text: str) -> float | datetime | None:
    if _is_number(text):
        return float(text)
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def read_gpx(path: str | Path) -> Track:
    """A track from every timed point of a GPX file's tracks (or routes/waypoints)."""
    import gpxpy
    import gpxpy.gpx

    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            gpx = gpxpy.parse(handle)
    except (OSError, gpxpy.gpx.GPXException, ValueError) as exc:
        raise TrackError(f"cannot read GPX {path}: {exc}") from None
    points = [p for t in gpx.tracks for s in t.segments for p in s.points]
    points = points or [p for r in gpx.routes for p in r.points] or list(gpx.waypoints)
    if not points:
        raise TrackError(f"{path}: no track points")
    untimed = sum(p.time is None for p in points)
    if untimed:
        raise TrackError(f"{path}: {untimed} of {len(points)} points have no <time>")
    stamps = [p.time for p in points]
    if any(s.tzinfo is None for s in stamps) and any(s.tzinfo is not None for s in stamps):
        stamps = [s.replace(tzinfo=None) for s in stamps]
    start = min(stamps)
    alts = [p.elevation for p in points]
    return Track(
        np.array([(s - start).total_seconds() for s in stamps]),
        np.array([p.latitude for p in points]),
        np.array([p.longitude for p in points]),
        np.array(alts, dtype=np.float64) if all(a is not None for a in alts) else None,
        start=start,
        source=str(path),
    )


# -- photos ------------------------------------------------------------------------------------
def photo_position(source: str | Path) -> tuple[float, float] | None:
    """(latitude, longitude) from a photo's GPS EXIF, or None when it has none.

    Example:
        >>> photo_position("holiday.jpg")  # doctest: +SKIP
        (48.8583, 2.2945)
    """
    from PIL import Image

    try:
        with Image.open(source) as image:
            gps = image.getexif().get_ifd(0x8825)  # GPSInfo
    except (OSError, ValueError):
        return None
    # 1/2: latitude ref and value, 3/4: longitude ref and value (EXIF 2.3, GPS IFD tags).
    if not gps or 2 not in gps or 4 not in gps:
        return None
    try:
        lat = _dms(gps[2]) * (-1 if str(gps.get(1, "N")).upper().startswith("S") else 1)
        lon = _dms(gps[4]) * (-1 if str(gps.get(3, "E")).upper().startswith("W") else 1)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return lat, lon


def _dms(value: Sequence) -> float:
    degrees, minutes, seconds = (float(v) for v in value)
    return degrees + minutes / 60 + seconds / 3600


def photo_metadata(paths: Sequence[str | Path]) -> dict[str, dict]:
    """``{path: {"lat", "lon"}}`` for the photos among ``paths`` with a GPS EXIF position, the
    form ``Collection.add(paths, metadata=...)`` takes."""
    out = {}
    for path in paths:
        position = photo_position(path)
        if position is not None:
            out[str(path)] = {"lat": position[0], "lon": position[1]}
    return out
