"""What a file's header says about a photo: when it was taken, where, with which camera and lens.

Read without decoding any pixel: Pillow's ``Image.open`` parses the headers only and
``getexif()`` reads the EXIF block (JPEG APP1, TIFF/DNG and most TIFF-based RAW files, HEIC
through pillow-heif, PNG ``eXIf``, WebP). What is read becomes columns of the catalogue's images
table (``store``: ``taken_at``, ``taken_offset``, ``taken_source``, ``lat``, ``lon``,
``camera_make``, ``camera_model``, ``lens``), which filtered search selects on
(``lookalike.collection.filters``).

**Taken time.** EXIF ``DateTimeOriginal`` (else ``DateTimeDigitized``) with its offset
(``OffsetTimeOriginal``, EXIF 2.31) when the camera wrote one; else the file's modification time
in this machine's zone. ``taken_at`` holds the *wall-clock* time where the photo was taken, as
seconds since 1970-01-01T00:00 of that clock (a "May 1st" filter means May 1st where the photo
was taken); ``taken_offset`` the zone's offset from UTC in minutes when known (the instant is
then ``taken_at - 60 * taken_offset``); ``taken_source`` says which it is: ``"exif"``,
``"mtime"``, or ``"none"`` (nothing known, e.g. an S3 object).

Example:
    >>> info = read_info("photo.jpg")  # doctest: +SKIP
    >>> info["taken_source"], info["camera_model"]  # doctest: +SKIP
    ('exif', 'EOS 5D Mark III')
"""

from __future__ import annotations

import calendar
import math
import os
import struct
import time
from datetime import datetime, timedelta, timezone

from PIL import Image

from lookalike.store.base import INFO_COLUMNS

__all__ = ["INFO_COLUMNS", "empty_info", "read_info", "taken_text"]

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_MAKE, _MODEL = 0x010F, 0x0110
_ORIGINAL, _DIGITIZED, _OFFSET_ORIGINAL, _OFFSET_DIGITIZED = 0x9003, 0x9004, 0x9011, 0x9012
_LENS_MAKE, _LENS_MODEL = 0xA433, 0xA434


def empty_info(source: str = "none") -> dict:
    """Info of a file nothing is known about (``taken_source`` says why)."""
    out: dict = dict.fromkeys(INFO_COLUMNS)
    out["taken_source"] = source
    return out


def read_info(path: str, mtime_ns: int | None = None) -> dict:
    """The header info of the file at ``path`` (see the module docstring): never raises; a file
    without EXIF, or one whose header cannot be parsed, gets its modification time
    (``mtime_ns`` when given, else from ``stat``).

    JPEG and TIFF-based files (TIFF, DNG and most RAW formats) are parsed here, reading only the
    tags wanted (about 20 times faster than Pillow's full EXIF parse); other formats (HEIC,
    PNG, WebP) through ``Image.open(...).getexif()``."""
    info = empty_info()
    try:
        with open(path, "rb") as file:
            head = file.read(_HEAD)
            if head[:2] == b"\xff\xd8":
                tags = _jpeg_tags(head, file)
            elif head[:4] in (b"II*\x00", b"MM\x00*"):
                tags = _tiff_tags(_Reader(file, 0, head))
            else:
                tags = None
        if tags is not None:
            info.update(_info_of(tags))
        else:
            with Image.open(path) as image:
                exif = image.getexif()
                if exif:
                    info.update(info_from_exif(exif))
    except Exception:  # any header that cannot be parsed: the time from the file system
        pass
    if info["taken_source"] != "exif":
        if mtime_ns is None:
            try:
                mtime_ns = os.stat(path).st_mtime_ns
            except OSError:
                return info
        info.update(local_time(mtime_ns / 1e9))
        info["taken_source"] = "mtime"
    return info


#: Bytes read first from the start of a file (more when the EXIF block lies further).
_HEAD = 16 * 1024
#: A JPEG's markers are followed this far at most looking for its EXIF block.
_JPEG_SCAN = 1024 * 1024
#: Tags kept from each IFD (IFD0, the EXIF sub-IFD, the GPS IFD).
_WANTED = {
    "ifd0": {_MAKE, _MODEL, _EXIF_IFD, _GPS_IFD},
    "exif": {_ORIGINAL, _DIGITIZED, _OFFSET_ORIGINAL, _OFFSET_DIGITIZED, _LENS_MAKE, _LENS_MODEL},
    "gps": {1, 2, 3, 4},
}
_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 9: 4, 10: 8}


class _Reader:
    """Bytes of a TIFF structure at ``base`` in a file, from the head already read when it
    holds them."""

    def __init__(self, file, base: int, head: bytes) -> None:
        self.file, self.base, self.head = file, base, head

    def get(self, offset: int, size: int) -> bytes:
        start = self.base + offset
        if start + size <= len(self.head):
            return self.head[start : start + size]
        self.file.seek(start)
        return self.file.read(size)


def _jpeg_tags(head: bytes, file) -> dict | None:
    """The wanted tags of a JPEG's APP1 Exif block ({} when it has none)."""
    at = 2
    while True:
        if at + 10 > len(head) and len(head) < _JPEG_SCAN:  # the markers go on: read more
            file.seek(len(head))
            more = file.read(max(_HEAD, at + 10 - len(head)))
            if not more:
                return {}
            head += more
        if at + 10 > len(head):
            return {}
        if head[at] != 0xFF:
            return {}
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            at += 2
            continue
        if marker == 0xDA:  # start of scan: no EXIF before the pixels
            return {}
        length = int.from_bytes(head[at + 2 : at + 4], "big")
        if marker == 0xE1 and head[at + 4 : at + 10] == b"Exif\x00\x00":
            return _tiff_tags(_Reader(file, at + 10, head))
        at += 2 + length
    return {}


def _tiff_tags(reader: _Reader) -> dict:
    """{"ifd0": {tag: value}, "exif": {...}, "gps": {...}} of a TIFF structure."""
    order = reader.get(0, 2)
    endian = "<" if order == b"II" else ">"
    first = struct.unpack(endian + "I", reader.get(4, 4))[0]
    out = {"ifd0": _ifd(reader, endian, first, _WANTED["ifd0"])}
    for name, tag in (("exif", _EXIF_IFD), ("gps", _GPS_IFD)):
        offset = out["ifd0"].get(tag)
        if isinstance(offset, int) and offset > 0:
            out[name] = _ifd(reader, endian, offset, _WANTED[name])
    return out


def _ifd(reader: _Reader, endian: str, offset: int, wanted: set[int]) -> dict:
    count = struct.unpack(endian + "H", reader.get(offset, 2))[0]
    table = reader.get(offset + 2, 12 * min(count, 1000))
    out: dict = {}
    for n in range(len(table) // 12):
        tag, kind, number = struct.unpack_from(endian + "HHI", table, 12 * n)
        if tag not in wanted or kind not in _SIZES:
            continue
        size = _SIZES[kind] * number
        raw = table[12 * n + 8 : 12 * n + 12]
        if size > 4:
            if size > 4096:
                continue
            raw = reader.get(struct.unpack(endian + "I", raw)[0], size)
        out[tag] = _value(endian, kind, number, raw)
    return out


def _value(endian: str, kind: int, number: int, raw: bytes) -> object:
    if kind in (2, 7, 1):
        return raw[:number]
    if kind == 3:
        values = struct.unpack(endian + "H" * number, raw[: 2 * number])
    elif kind in (4, 9):
        values = struct.unpack(endian + ("I" if kind == 4 else "i") * number, raw[: 4 * number])
    else:  # rationals
        pairs = struct.unpack(endian + ("I" if kind == 5 else "i") * 2 * number, raw[: 8 * number])
        values = tuple(
            a / b if b else math.nan for a, b in zip(pairs[::2], pairs[1::2], strict=True)
        )
    return values[0] if number == 1 else values


def _info_of(tags: dict) -> dict:
    """The info of parsed tags (as :func:`info_from_exif` gives for Pillow's EXIF)."""
    ifd0, sub, gps = tags.get("ifd0", {}), tags.get("exif", {}), tags.get("gps", {})
    out: dict = {}
    _fill(out, ifd0.get(_MAKE), ifd0.get(_MODEL), sub, gps)
    return out


def info_from_exif(exif: Image.Exif) -> dict:
    """The info a Pillow EXIF block holds (keys of :data:`INFO_COLUMNS`; ``taken_source`` is
    ``"exif"`` only when a date was found)."""
    out: dict = {}
    try:
        sub = dict(exif.get_ifd(_EXIF_IFD))
    except Exception:
        sub = {}
    try:
        gps = dict(exif.get_ifd(_GPS_IFD))
    except Exception:
        gps = {}
    _fill(out, exif.get(_MAKE), exif.get(_MODEL), sub, gps)
    return out


def _fill(out: dict, make: object, model: object, sub: dict, gps: dict) -> None:
    make, model = _text(make), _text(model)
    if make:
        out["camera_make"] = make
    if model:
        out["camera_model"] = model
    for stamp_tag, offset_tag in ((_ORIGINAL, _OFFSET_ORIGINAL), (_DIGITIZED, _OFFSET_DIGITIZED)):
        taken = parse_exif_time(_text(sub.get(stamp_tag)), _text(sub.get(offset_tag)))
        if taken is not None:
            out["taken_at"], out["taken_offset"] = taken
            out["taken_source"] = "exif"
            break
    lens = _text(sub.get(_LENS_MODEL))
    if lens:
        lens_make = _text(sub.get(_LENS_MAKE))
        out["lens"] = f"{lens_make} {lens}" if lens_make and lens_make not in lens else lens
    position = gps_position(gps)
    if position is not None:
        out["lat"], out["lon"] = position


def parse_exif_time(
    stamp: str | None, offset: str | None = None
) -> tuple[float, int | None] | None:
    """``("2021:05:01 10:00:00", "+02:00")`` -> (wall-clock seconds, offset minutes or None);
    None for an empty or malformed stamp (``0000:00:00 00:00:00`` included).

    Example:
        >>> parse_exif_time("2021:05:01 10:00:00", "+02:00")
        (1619863200.0, 120)
    """
    if not stamp:
        return None
    text = stamp.strip()
    try:  # "YYYY:MM:DD HH:MM:SS" (some cameras write "-" or "/" between the date's parts)
        moment = datetime(
            int(text[0:4]), int(text[5:7]), int(text[8:10]),
            int(text[11:13]), int(text[14:16]), int(text[17:19]),
        )  # fmt: skip
    except ValueError:
        return None
    minutes = None
    if offset and len(offset.strip()) >= 6 and offset.strip()[0] in "+-":
        text = offset.strip()
        try:
            minutes = int(text[1:3]) * 60 + int(text[4:6])
            minutes = -minutes if text[0] == "-" else minutes
        except ValueError:
            minutes = None
    return float(calendar.timegm(moment.timetuple())), minutes


def gps_position(gps: dict) -> tuple[float, float] | None:
    """(latitude, longitude) in degrees from an EXIF GPS IFD, or None."""
    try:
        lat = _degrees(gps[2]) * (-1 if _text(gps.get(1), "N").upper().startswith("S") else 1)
        lon = _degrees(gps[4]) * (-1 if _text(gps.get(3), "E").upper().startswith("W") else 1)
    except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError):
        return None
    if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180:
        return None
    if lat == 0 and lon == 0:  # written by cameras that had no fix
        return None
    return round(lat, 7), round(lon, 7)


def _degrees(value: object) -> float:
    parts = [float(v) for v in value]  # (degrees, minutes, seconds) as rationals
    return (
        parts[0]
        + (parts[1] if len(parts) > 1 else 0) / 60
        + (parts[2] if len(parts) > 2 else 0) / 3600
    )


def _text(value: object, default: str = "") -> str:
    if value is None:
        return default
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).replace("\x00", "").strip()
    return text or default


def local_time(seconds: float) -> dict:
    """``taken_at``/``taken_offset`` of an instant in this machine's zone."""
    offset = int(time.localtime(seconds).tm_gmtoff // 60)
    return {"taken_at": float(seconds + 60 * offset), "taken_offset": offset}


def taken_text(taken_at: float | None, offset: int | None) -> str | None:
    """ISO 8601 text of a stored taken time, with its offset when known.

    Example:
        >>> taken_text(1619863200.0, 120), taken_text(1619863200.0, None)
        ('2021-05-01T10:00:00+02:00', '2021-05-01T10:00:00')
    """
    if taken_at is None:
        return None
    wall = datetime(1970, 1, 1) + timedelta(seconds=float(taken_at))
    if offset is None:
        return wall.isoformat(timespec="seconds")
    zone = timezone(timedelta(minutes=int(offset)))
    return wall.replace(tzinfo=zone).isoformat(timespec="seconds")
