"""Pictures of results: a query beside its best matches, with scores.

:func:`render` draws rows of :class:`Tile` s into one image; :func:`search_grid` makes one row
per query (``lookalike search --grid``); :func:`font` is the caption font, shared with other
drawings (``lookalike.detect.photo.draw_detections``). A tile may box a region of its image
(the part a verified query covers) and span several cells; :func:`pair_panel` draws a query
beside a result with lines between their matched keypoints (``search --grid --verify``).

Example:
    >>> search_grid([("mug.jpg", col.search("mug.jpg"))], "grid.png")  # doctest: +SKIP
    PosixPath('grid.png')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from lookalike.images import ImageError, decode

CELL = 160
LABEL = 34
GAP = 8
GOOD, BAD, QUERY = (46, 160, 67), (200, 40, 40), (40, 90, 200)
#: The colour of a matched region's box (amber: apart from the green and red frames).
REGION = (255, 176, 0)


@dataclass
class Tile:
    """One cell of a grid: an image (path or PIL image) and two lines of caption; optionally
    a ``box`` (x0, y0, x1, y1) drawn on the image, in the pixels of ``box_size`` (by default the
    image's own: a PIL image as given, a file as decoded in full), and ``span`` cells wide."""

    image: str | Path | Image.Image | None
    title: str
    subtitle: str = ""
    frame: tuple[int, int, int] | None = None
    box: tuple[float, float, float, float] | None = None
    box_size: tuple[int, int] | None = None
    span: int = 1


def render(rows: Sequence[Sequence[Tile]], out: str | Path, cell: int = CELL) -> Path:
    """Draw rows of tiles into one PNG (or JPEG, by suffix) and return its path."""
    columns = max((sum(max(1, t.span) for t in r) for r in rows), default=1)
    width = GAP + columns * (cell + GAP)
    height = GAP + len(rows) * (cell + LABEL + GAP)
    canvas = Image.new("RGB", (width, max(height, 1)), "white")
    draw = ImageDraw.Draw(canvas)
    caption = font(13)
    for r, row in enumerate(rows):
        y = GAP + r * (cell + LABEL + GAP)
        x = GAP
        for tile in row:
            _draw_tile(canvas, draw, caption, tile, x, y, cell)
            x += max(1, tile.span) * (cell + GAP)
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
    width = max(1, tile.span) * (cell + GAP) - GAP
    try:
        if isinstance(tile.image, Image.Image):
            image = tile.image
        else:  # in full when a box is given in the file's own pixels
            side = None if tile.box is not None and tile.box_size is None else cell
            image = decode(tile.image, min_side=side)
        frame = tile.box_size or image.size
        image = image.copy()
        image.thumbnail((width, cell), Image.Resampling.LANCZOS)
        left, top = x + (width - image.width) // 2, y + (cell - image.height) // 2
        canvas.paste(image, (left, top))
        if tile.box is not None:
            sx, sy = image.width / max(frame[0], 1), image.height / max(frame[1], 1)
            x0, y0, x1, y1 = tile.box
            draw.rectangle(
                [left + x0 * sx, top + y0 * sy, left + x1 * sx - 1, top + y1 * sy - 1],
                outline=REGION,
                width=3,
            )
    except (ImageError, OSError):
        draw.rectangle([x, y, x + width, y + cell], fill=(230, 230, 230))
        draw.text((x + 8, y + cell // 2), "unreadable", fill="black", font=font)
    if tile.frame:
        draw.rectangle([x - 3, y - 3, x + width + 2, y + cell + 2], outline=tile.frame, width=4)
    draw.text((x, y + cell + 3), _fit(tile.title, font, width), fill="black", font=font)
    if tile.subtitle:
        draw.text(
            (x, y + cell + 18), _fit(tile.subtitle, font, width), fill=(90, 90, 90), font=font
        )


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


def pair_panel(
    query: Image.Image,
    candidate: Image.Image,
    pairs: Sequence[Sequence[float]],
    region: Sequence[float] | None = None,
    height: int = CELL,
) -> Image.Image:
    """The query beside a candidate at one ``height``, a line from each matched keypoint of the
    query to its place in the candidate (``pairs``: rows of query x, y, candidate x, y in each
    image's pixels), and the candidate's matched ``region`` (x0, y0, x1, y1) boxed.

    Example:
        >>> black = Image.new("RGB", (80, 40))
        >>> pair_panel(black, black.crop((0, 0, 40, 40)), [[1, 2, 3, 4]], height=40).size
        (128, 40)
    """
    scales = [height / max(image.height, 1) for image in (query, candidate)]
    sizes = [
        (max(1, round(image.width * s)), height)
        for image, s in zip((query, candidate), scales, strict=True)
    ]
    panel = Image.new("RGB", (sizes[0][0] + GAP + sizes[1][0], height), "white")
    panel.paste(query.convert("RGB").resize(sizes[0], Image.Resampling.LANCZOS), (0, 0))
    right = sizes[0][0] + GAP
    panel.paste(candidate.convert("RGB").resize(sizes[1], Image.Resampling.LANCZOS), (right, 0))
    draw = ImageDraw.Draw(panel)
    qs, cs = scales
    for i, (qx, qy, cx, cy) in enumerate(pairs):
        draw.line([qx * qs, qy * qs, right + cx * cs, cy * cs], fill=_hue((i * 47) % 360))
    if region is not None:
        x0, y0, x1, y1 = region
        draw.rectangle(
            [right + x0 * cs, y0 * cs, right + x1 * cs - 1, y1 * cs - 1], outline=REGION, width=3
        )
    return panel


def _hue(degrees: int) -> tuple[int, int, int]:
    """A saturated colour of the hue ``degrees`` (lines told apart from their neighbours)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(degrees / 360, 0.85, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)
