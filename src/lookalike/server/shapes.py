"""Between the API's shapes and the Collection's: images and hits as API JSON (ids and URLs,
never file paths), query regions cropped from fractions, metadata filters, detected boxes
clipped to the photo.

Example:
    >>> image_json("c_0123456789ab", 7, 640, 480, {"sku": "A-1"})["thumbnail"]
    '/catalogs/c_0123456789ab/images/7/thumbnail'
    >>> matches({"tags": ["red", "shoe"]}, {"tags": "red"})
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

from lookalike.collection import SearchResult
from lookalike.collection.results import described
from lookalike.errors import BadRequestError


def clip_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """A box (x0, y0, x1, y1) in whole pixels inside a width x height image."""
    x0, y0, x1, y1 = (round(float(v)) for v in box)
    x0, x1 = sorted((min(max(x0, 0), width), min(max(x1, 0), width)))
    y0, y1 = sorted((min(max(y0, 0), height), min(max(y1, 0), height)))
    return x0, y0, x1, y1


def record_json(catalog_id: str, record) -> dict:
    """A stored image (an ``ImageRecord``) as the API shows it."""
    return image_json(catalog_id, record.id, record.width, record.height, record.metadata)


def crop(image: Image.Image, region: Sequence[float]) -> Image.Image:
    """The part of ``image`` inside ``region`` = (x, y, width, height) as fractions of its size."""
    if len(region) != 4:
        raise BadRequestError("region is x,y,width,height as fractions of the image (0..1)")
    x, y, w, h = (float(v) for v in region)
    if not all(0 <= v <= 1 for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise BadRequestError("region values must be fractions of the image in 0..1")
    width, height = image.size
    box = (
        round(x * width),
        round(y * height),
        round(min(1.0, x + w) * width),
        round(min(1.0, y + h) * height),
    )
    if box[2] - box[0] < 8 or box[3] - box[1] < 8:
        raise BadRequestError("region is too small (under 8 pixels)")
    return image.crop(box)


def matches(metadata: dict, filters: dict) -> bool:
    """Every filter key equals the metadata value (or is one of them when it is a list)."""
    for key, wanted in filters.items():
        value = metadata.get(key)
        if isinstance(value, list) and not isinstance(wanted, list):
            if wanted not in value:
                return False
        elif value != wanted:
            return False
    return True


#: Stored metadata deeper than this (written before the server checked it on the way in, or
#: by another program) is not shown: it would break every answer that holds it.
SHOWN_DEPTH = 64


def shown_metadata(metadata: object) -> object:
    """``metadata`` if every answer can carry it (not nested deeper than :data:`SHOWN_DEPTH`,
    numbers finite), else a note that says why it is left out."""
    stack: list[tuple[object, int]] = [(metadata, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > SHOWN_DEPTH:
                return {"unshown": f"metadata nested more than {SHOWN_DEPTH} levels deep"}
            stack.extend(
                (v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)
            )
        elif isinstance(item, float) and not math.isfinite(item):
            return {"unshown": "metadata holds a number that is not finite"}
    return metadata


def image_json(catalog_id: str, image_id: int, width: int, height: int, metadata: dict) -> dict:
    """An image as the API shows it: id, size, metadata and the URLs of its files."""
    base = f"/catalogs/{catalog_id}/images/{image_id}"
    return {
        "id": image_id,
        "width": width,
        "height": height,
        "metadata": shown_metadata(metadata),
        "thumbnail": f"{base}/thumbnail",
        "original": f"{base}/original",
    }


def words_json(lines: Sequence[dict], width: int, height: int) -> list[dict]:
    """The matched lines of a words search as the API shows them: each line's ``text``,
    ``confidence``, ``box`` (its four corners in the image's pixels, clockwise from the text's
    top-left), ``bbox`` (the upright rectangle around them, ``[x0, y0, x1, y1]``, inside the
    image) and ``matched`` (which query words it matched, how and how well).

    Example:
        >>> words_json([{"text": "LISBOA", "confidence": 0.9, "box": [[20, 40], [200, 38],
        ...     [201, 80], [21, 82]], "matched": []}], 480, 320)[0]["bbox"]
        [20, 38, 201, 82]
    """
    out = []
    for line in lines:
        corners = [(float(x), float(y)) for x, y in line.get("box") or ()]
        shown = dict(line)
        if corners:
            xs, ys = [x for x, _ in corners], [y for _, y in corners]
            box = (min(xs), min(ys), max(xs), max(ys))
            inside = clip_box(box, width, height) if width and height else box
            shown["bbox"] = [round(v) for v in inside]
        out.append(shown)
    return out


def hit_json(catalog_id: str, hit: SearchResult) -> dict:
    """A search hit: the image as the API shows it, with its score."""
    return {
        "score": round(float(hit.score), 6),
        **image_json(catalog_id, hit.id, hit.width, hit.height, hit.metadata),
        **described(hit.info),  # taken, taken_from, gps, camera, lens (when known)
    }
