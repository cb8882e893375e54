"""Pictures of results: a query beside its best matches, with scores.

:func:`render` draws rows of :class:`Tile` s into one image; :func:`search_grid` makes one row
per query (``lookalike search --grid``); :func:`font` is the caption font, shared with other
drawings (``lookalike.detect.photo.draw_detections``).

Example:
    >>> search_grid([("mug.jpg", col.search("mug.jpg"))], "grid.png")  # doctest: +SKIP
    PosixPath('grid.png')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from lookalike.images import ImageError, decode, thumbnail

CELL = 160
LABEL = 34
GAP = 8
GOOD, BAD, QUERY = (46, 160, 67), (200, 40, 40), (40, 90, 200)


@dataclass
class Tile:
    """One cell of a grid: an image (path or PIL image) and two lines of caption."""

    image: str | Path | Image.Image | None
    title: str
    subtitle: str = ""
    frame: tuple[int, int, int] | None = None


def render(rows: Sequence[Sequence[Tile]], out: str | Path, cell: int = CELL) -> Path:
    """Draw rows of tiles into one PNG (or JPEG, by suffix) and return its path."""
    columns = max((len(r) for r in rows), default=1)
    width = GAP + columns * (cell + GAP)
    height = GAP + len(rows) * (cell + LABEL + GAP)
    canvas = Image.new("RGB", (width, max(height, 1)), "white")
    draw = ImageDraw.Draw(canvas)
    caption = font(13)
    for r, row in enumerate(rows):
        y = GAP + r * (cell + LABEL + GAP)
        for c, tile in enumerate(row):
            x = GAP + c * (cell + GAP)
            _draw_tile(canvas, draw, caption, tile, x, y, cell)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def _draw_tile(canvas, draw, font, tile: Tile, x: int, y: int, cell: int) -> None:
    if tile.image is None:  # a text query: its words in a box
        draw.rectangle([x, y, x + cell, y + cell], fill=(240, 244, 252))
        words, line, lines = tile.title.split(), "", []
        for word in words:
            if font.getlength(f"{line} {word}") > cell - 16 and line:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
        for i, text in enumerate(lines[:7]):
            draw.text((x + 8, y + 12 + 18 * i), text, fill="black", font=font)
        draw.rectangle([x - 3, y - 3, x + cell + 2, y + cell + 2], outline=tile.frame, width=4)
        draw.text((x, y + cell + 3), "text query", fill="black", font=font)
        return
    try:
        image = (
            tile.image if isinstance(tile.image, Image.Image) else decode(tile.image, min_side=cell)
        )
        image = thumbnail(image, cell)
        canvas.paste(image, (x + (cell - image.width) // 2, y + (cell - image.height) // 2))
    except (ImageError, OSError):
        draw.rectangle([x, y, x + cell, y + cell], fill=(230, 230, 230))
        draw.text((x + 8, y + cell // 2), "unreadable", fill="black", font=font)
    if tile.frame:
        draw.rectangle([x - 3, y - 3, x + cell + 2, y + cell + 2], outline=tile.frame, width=4)
    draw.text((x, y + cell + 3), _fit(tile.title, font, cell), fill="black", font=font)
    if tile.subtitle:
        draw.text((x, y + cell + 18), _fit(tile.subtitle, font, cell), fill=(90, 90, 90), font=font)


def _fit(text: str, font: ImageFont.ImageFont, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength("…" + text) > width:
        text = text[1:]
    return "…" + text


def font(size: int) -> ImageFont.ImageFont:
    """Pillow's default font at ``size`` px (its bitmap font on Pillow < 10.1).

    Example:
        >>> font(13).getbbox("mug")[3] > 0
        True
    """
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def search_grid(queries: Sequence[tuple[object, Sequence]], out: str | Path) -> Path:
    """One row per query: the query (framed blue), then its results with their scores.

    ``queries`` holds (query image or path, list of SearchResult) pairs.
    """
    rows = []
    for query, results in queries:
        if isinstance(query, str) and not Path(query).is_file():
            row = [Tile(None, query, frame=QUERY)]  # a text query
        else:
            name = Path(query).name if isinstance(query, str | Path) else "query"
            row = [Tile(query, "query", name, frame=QUERY)]
        row += [
            Tile(r.path, f"#{i} score {r.score:.3f}", Path(r.path).name)
            for i, r in enumerate(results, 1)
        ]
        rows.append(row)
    return render(rows, out)
