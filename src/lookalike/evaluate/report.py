"""An evaluation report to look at: one ``index.html`` with the PNGs it shows beside it.

The page has the summary metrics, a per-class table (worst class first, with bars), the
precision-recall curve, and the worst queries first, each as a strip: the query, then its top
results framed green (correct, with a tick) or red (wrong, with a cross), with their scores. Shapes
as well as colours mark right and wrong, so the grids read without colour vision too.

The HTML has no scripts and no external resources; copy the folder anywhere and open it.

Example:
    >>> from lookalike.evaluate.report import Hit, QueryResult, write_report
    >>> hits = [Hit("a.jpg", 0.91, True), Hit("b.jpg", 0.88, False)]
    >>> worst = [QueryResult("q.jpg", "cats", hits, score=0.5)]
    >>> write_report("report", {"mAP": 0.71}, {"cats": {"AP": 0.5}}, None, worst)  # doctest: +SKIP
    PosixPath('report/index.html')
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image, ImageDraw, ImageFont, ImageOps

from lookalike.evaluate.metrics import PrecisionRecallCurve
from lookalike.images import ImageError, decode

__all__ = ["Hit", "QueryResult", "render_pr_curve", "render_query_strip", "write_report"]

GREEN = (22, 163, 74)
RED = (220, 38, 38)
BLUE = (37, 99, 235)
INK = (31, 41, 55)
PAPER = (255, 255, 255)
TILE_BACKGROUND = (243, 244, 246)


class Hit(NamedTuple):
    """One result of a query: the image, its score, whether it is a correct answer."""

    path: str | Path
    score: float
    correct: bool


@dataclass(frozen=True)
class QueryResult:
    """A query and its top results, for the "worst queries" grids.

    Attributes:
        query: the query image.
        label: its class or identity, shown in the caption.
        hits: its top results in rank order; plain ``(path, score, correct)`` tuples do.
        score: how well the query did (its AP, say); lower is worse and is shown first. When
            ``nan``, the fraction of correct hits is used.
    """

    query: str | Path
    label: str
    hits: Sequence[Hit | tuple[str | Path, float, bool]]
    score: float = field(default=float("nan"))

    @property
    def badness_key(self) -> float:
        """Sort key: the query's score, or the fraction of correct hits when it has none."""
        if not math.isnan(self.score):
            return self.score
        return sum(bool(h[2]) for h in self.hits) / len(self.hits) if self.hits else 0.0


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow >= 10.1 ships a scalable default font; older builds without FreeType get the bitmap.
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # pragma: no cover - depends on the Pillow build
        return ImageFont.load_default()


def _thumbnail(path: str | Path, side: int) -> Image.Image:
    """The image fitted in a ``side`` square, or a grey tile saying why it could not be read."""
    tile = Image.new("RGB", (side, side), TILE_BACKGROUND)
    try:
        image = ImageOps.contain(decode(path, min_side=side), (side, side))
    except (ImageError, OSError):
        draw = ImageDraw.Draw(tile)
        draw.text((side // 2, side // 2), "unreadable", fill=INK, font=_font(12), anchor="mm")
        return tile
    tile.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return tile


def _badge(draw: ImageDraw.ImageDraw, x: int, y: int, correct: bool, size: int = 22) -> None:
    """A round tick (correct) or cross (wrong) badge with its top-left corner at (x, y)."""
    draw.ellipse((x, y, x + size, y + size), fill=GREEN if correct else RED, outline=PAPER, width=2)
    w = max(2, size // 8)
    if correct:
        draw.line(
            [(x + size * 0.27, y + size * 0.52), (x + size * 0.44, y + size * 0.70)],
            fill=PAPER,
            width=w,
        )
        draw.line(
            [(x + size * 0.44, y + size * 0.70), (x + size * 0.74, y + size * 0.32)],
            fill=PAPER,
            width=w,
        )
    else:
        a, b = size * 0.32, size * 0.68
        draw.line([(x + a, y + a), (x + b, y + b)], fill=PAPER, width=w)
        draw.line([(x + a, y + b), (x + b, y + a)], fill=PAPER, width=w)


def render_query_strip(result: QueryResult, *, side: int = 140) -> Image.Image:
    """One row: the query (blue frame) then each hit (green or red frame) with rank and score.

    Example:
        >>> strip = render_query_strip(QueryResult("q.jpg", "cat", [("a.jpg", 0.9, True)]))
        >>> strip.size
        (360, 206)
    """
    frame, gap, caption = 6, 14, 40
    cell = side + 2 * frame
    width = gap + cell + 2 * gap + len(result.hits) * (cell + gap)
    height = gap + cell + caption
    strip = Image.new("RGB", (width, height), PAPER)
    draw = ImageDraw.Draw(strip)
    small, bold = _font(13), _font(15)

    def tile(x: int, path: str | Path, colour: tuple[int, int, int]) -> None:
        draw.rectangle((x, gap, x + cell - 1, gap + cell - 1), fill=colour)
        strip.paste(_thumbnail(path, side), (x + frame, gap + frame))

    x = gap
    tile(x, result.query, BLUE)
    draw.text((x + cell // 2, gap + cell + 6), "query", fill=BLUE, font=bold, anchor="ma")
    label = result.label if len(result.label) <= 22 else result.label[:21] + "…"
    draw.text((x + cell // 2, gap + cell + 24), label, fill=INK, font=small, anchor="ma")
    # A wider gap and a rule separate the query from its results.
    x += cell + gap
    draw.line([(x, gap), (x, gap + cell)], fill=(209, 213, 219), width=2)
    x += gap
    for rank, (path, score, correct) in enumerate(result.hits, start=1):
        colour = GREEN if correct else RED
        tile(x, path, colour)
        _badge(draw, x + cell - 28, gap + 6, bool(correct))
        draw.text((x + cell // 2, gap + cell + 6), f"#{rank}", fill=INK, font=bold, anchor="ma")
        draw.text(
            (x + cell // 2, gap + cell + 24), f"{score:.3f}", fill=colour, font=small, anchor="ma"
        )
        x += cell + gap
    return strip


def _thin(x: np.ndarray, y: np.ndarray, limit: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    # A million-point curve draws slowly and looks the same as a few thousand points of it.
    if len(x) <= limit:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, limit).round().astype(int))
    return x[keep], y[keep]


def render_pr_curve(
    precision: ArrayLike,
    recall: ArrayLike,
    path: str | Path,
    *,
    min_precision: float = 0.9,
) -> Path:
    """Plot precision against recall to a PNG, marking the best recall at ``min_precision``.

    Example:
        >>> render_pr_curve([1.0, 0.5, 0.67], [0.5, 0.5, 1.0], "pr.png")  # doctest: +SKIP
        PosixPath('pr.png')
    """
    # The object API with the Agg canvas draws without touching pyplot's global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    p = np.asarray(precision, dtype=float)
    r = np.asarray(recall, dtype=float)
    fig = Figure(figsize=(6.4, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # "pre" steps: precision p_i holds over the recall step that ends at r_i, so the shaded area
    # is exactly the AP of lookalike.evaluate.metrics.micro_average_precision.
    rx, py = _thin(np.concatenate([[0.0], r]), np.concatenate([[p[0] if p.size else 1.0], p]))
    ax.fill_between(rx, py, step="pre", alpha=0.15, color="#2563eb")
    area = float((np.diff(r, prepend=0.0) * p).sum()) if np.all(np.diff(r) >= 0) else None
    curve_label = f"AP = {area:.3f}" if area is not None else "precision-recall"
    ax.step(rx, py, where="pre", color="#2563eb", linewidth=2, label=curve_label)
    ok = p >= min_precision
    if ok.any():
        best = int(np.argmax(np.where(ok, r, -np.inf)))
        ax.axhline(min_precision, color="#6b7280", linestyle="--", linewidth=1)
        ax.plot(
            [r[best]],
            [p[best]],
            "o",
            color="#dc2626",
            markersize=8,
            zorder=3,
            label=f"recall {r[best]:.3f} at precision ≥ {min_precision:.0%}",
        )
    # "best" keeps the legend off the curve, wherever the curve is.
    ax.legend(loc="best", frameon=True, framealpha=0.95)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    ax.set_title("Precision–recall", loc="left", fontweight="bold")
    ax.grid(True, alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2937;
       margin: 0 auto; max-width: 1200px; padding: 24px; }
h1 { margin: 0 0 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #e5e7eb; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 5px 12px; text-align: left; border-bottom: 1px solid #f3f4f6; }
th { background: #f9fafb; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.bar { background-repeat: no-repeat; min-width: 90px; }
.summary td.num { font-size: 18px; font-weight: 600; }
.query { margin: 18px 0; } .query h3 { margin: 0 0 6px; font-size: 15px; }
.query img, .curve img { max-width: 100%; border: 1px solid #e5e7eb; border-radius: 6px; }
.muted { color: #6b7280; }
"""


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


def _cell(value: object) -> str:
    text = html.escape(_fmt(value))
    if isinstance(value, float | np.floating) and 0.0 <= value <= 1.0:
        # A light bar behind scores in [0, 1]: the eye finds the weak classes at once.
        pct = f"{100 * float(value):.1f}%"
        bar = f"linear-gradient(90deg, #dbeafe {pct}, transparent {pct})"
        return f'<td class="num bar" style="background-image:{bar}">{text}</td>'
    if isinstance(value, int | float | np.number):
        return f'<td class="num">{text}</td>'
    return f"<td>{text}</td>"


def _summary_table(summary: Mapping[str, object]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th>{_cell(v)}</tr>" for k, v in summary.items())
    return f'<table class="summary">{rows}</table>'


def _per_class_table(per_class: Mapping[str, Mapping[str, object]]) -> str:
    columns = list(dict.fromkeys(c for row in per_class.values() for c in row))
    first = columns[0] if columns else None

    def key(item: tuple[str, Mapping[str, object]]) -> float:
        value = item[1].get(first) if first else None
        return float(value) if isinstance(value, int | float | np.number) else math.inf

    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["class", *columns])
    body = "".join(
        f"<tr><td>{html.escape(str(name))}</td>{''.join(_cell(row.get(c)) for c in columns)}</tr>"
        for name, row in sorted(per_class.items(), key=key)
    )
    note = f'<p class="muted">Worst {html.escape(first)} first.</p>' if first else ""
    return f"{note}<table><tr>{head}</tr>{body}</table>"


def _query_section(result: QueryResult, image_name: str) -> str:
    correct = sum(bool(h[2]) for h in result.hits)
    score = "" if math.isnan(result.score) else f" · score {result.score:.4f}"
    title = html.escape(f"{Path(result.query).name} — {result.label}")
    detail = html.escape(f"{correct} of {len(result.hits)} shown results correct{score}")
    alt = html.escape(f"query {Path(result.query).name} and its top {len(result.hits)} results")
    return (
        f'<div class="query"><h3>{title} <span class="muted">{detail}</span></h3>'
        f'<img src="{image_name}" alt="{alt}"></div>'
    )


def write_report(
    out_dir: str | Path,
    summary: Mapping[str, object],
    per_class: Mapping[str, Mapping[str, object]],
    pr_curve: PrecisionRecallCurve | tuple[ArrayLike, ArrayLike] | None,
    worst_queries: Sequence[QueryResult],
    *,
    title: str = "lookalike evaluation",
    max_queries: int = 25,
    thumb: int = 140,
) -> Path:
    """Write ``index.html`` and its PNGs (``pr_curve.png``, ``query_001.png``...) to ``out_dir``.

    Args:
        out_dir: created if needed; files of an earlier report there are overwritten.
        summary: metric name -> value (floats, ints or text), shown in order.
        per_class: class -> {metric: value}; rows are sorted worst first on the first metric.
        pr_curve: ``(precision, recall, ...)`` such as a
            :class:`lookalike.evaluate.metrics.PrecisionRecallCurve`, or None to leave the plot out.
        worst_queries: queries to show; they are sorted worst first (by ``score``) and the
            ``max_queries`` worst are drawn.
        title: the page heading.
        max_queries: how many query strips to draw at most.
        thumb: side of each thumbnail in pixels.

    Returns:
        The path of ``index.html``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Summary</h2>", _summary_table(summary)]

    if pr_curve is not None:
        render_pr_curve(pr_curve[0], pr_curve[1], out / "pr_curve.png")
        parts += [
            "<h2>Precision–recall</h2>",
            '<div class="curve"><img src="pr_curve.png" alt="precision-recall curve"></div>',
        ]
    if per_class:
        parts += ["<h2>Per class</h2>", _per_class_table(per_class)]

    ordered = sorted(worst_queries, key=lambda q: q.badness_key)[:max_queries]
    if ordered:
        parts += [
            "<h2>Worst queries</h2>",
            '<p class="muted">Query in blue, then its results in rank order: green with a tick '
            "is a correct result, red with a cross a wrong one; the number is the score.</p>",
        ]
    for number, result in enumerate(ordered, start=1):
        name = f"query_{number:03d}.png"
        render_query_strip(result, side=thumb).save(out / name, optimize=True)
        parts.append(_query_section(result, name))

    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
