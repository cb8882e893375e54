"""Maps of located photos: the reference track, true positions when known, predicted positions.

The file's extension says what is written: ``.html`` (or ``.htm``) one self-contained page with
an SVG drawing (no tiles, no scripts, nothing fetched), ``.png`` the same drawn with matplotlib,
``.geojson`` the positions as GeoJSON features for GIS tools (a reference ``LineString``, a
``Point`` per prediction and per true position, a ``LineString`` per error). Any other extension
is refused. Each legend names only what the map draws.

Example:
    >>> write_map("map.html", ref_lat, ref_lon, predicted=locations)  # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lookalike.geo.locate import Location
from lookalike.geo.tracks import to_local

SIZE = 800
MARGIN = 40
#: What :func:`write_map` writes, by extension.
FORMATS = {".html": "html", ".htm": "html", ".png": "png", ".geojson": "geojson"}


def write_map(
    path: str | Path,
    ref_lat: np.ndarray,
    ref_lon: np.ndarray,
    *,
    predicted: Sequence[Location] = (),
    truth: Sequence[tuple[float, float] | None] | None = None,
    title: str = "lookalike locate",
) -> Path:
    """Draw the reference positions (a line in their order), each prediction with its
    uncertainty circle, and the true position with an error line when ``truth`` gives one.

    ``path`` ending in ``.png`` is drawn with matplotlib, ``.html``/``.htm`` is HTML with SVG,
    ``.geojson`` is GeoJSON.

    Raises:
        ValueError: another extension, or nothing to draw.
    """
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"{path}: a map is written as .html, .png or .geojson, "
            f"not {path.suffix or 'a name without extension'}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    located = [p for p in predicted if math.isfinite(p.lat)]
    truth = list(truth) if truth is not None else [None] * len(predicted)
    pairs = [(p, t) for p, t in zip(predicted, truth, strict=True) if math.isfinite(p.lat)]
    all_lat = np.concatenate([ref_lat, [p.lat for p in located], [t[0] for _, t in pairs if t]])
    all_lon = np.concatenate([ref_lon, [p.lon for p in located], [t[1] for _, t in pairs if t]])
    if len(all_lat) == 0:
        raise ValueError("nothing to draw: no reference positions and no predictions")
    lat0, lon0 = float(np.mean(all_lat)), float(np.mean(all_lon))
    if kind == "png":
        _png(path, lat0, lon0, ref_lat, ref_lon, pairs, title)
    elif kind == "geojson":
        path.write_text(json.dumps(_geojson(ref_lat, ref_lon, pairs, title)))
    else:
        path.write_text(_html(lat0, lon0, all_lat, all_lon, ref_lat, ref_lon, pairs, title))
    return path


def _legend(has_reference: bool, pairs: Sequence) -> list[str]:
    """What the map draws, for its legend: only the kinds of marks present."""
    parts = ["grey: reference track"] if has_reference else []
    if pairs:
        circle = any(math.isfinite(p.radius_m) and p.radius_m > 0 for p, _ in pairs)
        parts.append("blue: predicted" + (" (circle: uncertainty radius)" if circle else ""))
    if any(t is not None for _, t in pairs):
        parts += ["green: true position", "red: error"]
    return parts


def _geojson(ref_lat, ref_lon, pairs, title) -> dict:
    """GeoJSON (RFC 7946: longitude first) of the reference track, predictions, truths."""
    from lookalike.geo.tracks import haversine

    features = []
    reference = [[float(lo), float(la)] for la, lo in zip(ref_lat, ref_lon, strict=True)]
    if len(reference) > 1:
        geometry = {"type": "LineString", "coordinates": reference}
        features.append(
            {"type": "Feature", "geometry": geometry, "properties": {"kind": "reference"}}
        )
    elif reference:
        geometry = {"type": "Point", "coordinates": reference[0]}
        features.append(
            {"type": "Feature", "geometry": geometry, "properties": {"kind": "reference"}}
        )
    for location, true in pairs:
        here = [float(location.lon), float(location.lat)]
        radius = location.radius_m if math.isfinite(location.radius_m) else None
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": here},
                "properties": {"kind": "predicted", "query": location.query, "radius_m": radius},
            }
        )
        if true is not None:
            there = [float(true[1]), float(true[0])]
            error = float(haversine(location.lat, location.lon, *true))
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": there},
                    "properties": {"kind": "truth", "query": location.query},
                }
            )
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "LineString", "coordinates": [there, here]},
                    "properties": {"kind": "error", "query": location.query, "error_m": error},
                }
            )
    return {"type": "FeatureCollection", "name": title, "features": features}


def _html(lat0, lon0, all_lat, all_lon, ref_lat, ref_lon, pairs, title) -> str:
    everything = to_local(all_lat, all_lon, lat0, lon0)
    low, high = everything.min(0), everything.max(0)
    extent = max(float((high - low).max()), 1.0)
    scale = (SIZE - 2 * MARGIN) / extent

    def xy(lat, lon) -> np.ndarray:
        p = to_local(lat, lon, lat0, lon0)
        return np.stack(
            [MARGIN + (p[..., 0] - low[0]) * scale, SIZE - MARGIN - (p[..., 1] - low[1]) * scale],
            -1,
        )

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE}" height="{SIZE}" '
        f'viewBox="0 0 {SIZE} {SIZE}" style="background:#fafafa;border:1px solid #ccc">'
    ]
    if len(ref_lat):
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy(ref_lat, ref_lon))
        parts.append(f'<polyline points="{points}" fill="none" stroke="#999" stroke-width="2"/>')
        parts += [
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="#666"/>'
            for x, y in xy(ref_lat, ref_lon)
        ]
    for location, true in pairs:
        px, py = xy(location.lat, location.lon)
        label = html.escape(
            f"{location.query}: {location.lat:.7f}, {location.lon:.7f} ± {location.radius_m:.2f} m"
        )
        if true is not None:
            tx, ty = xy(*true)
            parts.append(
                f'<line x1="{tx:.1f}" y1="{ty:.1f}" x2="{px:.1f}" y2="{py:.1f}" stroke="#d33" '
                'stroke-width="1"/>'
                f'<circle cx="{tx:.1f}" cy="{ty:.1f}" r="3.5" fill="#2a2">'
                "<title>truth</title></circle>"
            )
        radius = location.radius_m * scale if math.isfinite(location.radius_m) else 0
        parts.append(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="{radius:.1f}" fill="#36c" fill-opacity="0.08" '
            'stroke="#36c" stroke-opacity="0.3"/>'
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="#36c">'
            f"<title>{label}</title></circle>"
        )
    bar = 10 ** math.floor(math.log10(extent / 4)) if extent > 0 else 1
    parts.append(
        f'<line x1="{MARGIN}" y1="{SIZE - 15}" x2="{MARGIN + bar * scale:.1f}" y2="{SIZE - 15}" '
        f'stroke="#000" stroke-width="2"/><text x="{MARGIN}" y="{SIZE - 20}" font-size="12">'
        f"{bar:g} m</text></svg>"
    )
    rows = "".join(
        f"<tr><td>{html.escape(p.query)}</td><td>{p.lat:.7f}</td><td>{p.lon:.7f}</td>"
        f"<td>{p.radius_m:.2f}</td><td>{_error(p, t)}</td></tr>"
        for p, t in pairs
    )
    return (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:20px}td,th{padding:2px 8px;text-align:right}"
        "</style>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(' · '.join(_legend(len(ref_lat) > 0, pairs)))}</p>"
        + "".join(parts)
        + "<table><tr><th>query</th><th>lat</th><th>lon</th><th>radius m</th><th>error m</th></tr>"
        + rows
        + "</table>"
    )


def _error(location: Location, true: tuple[float, float] | None) -> str:
    from lookalike.geo.tracks import haversine

    if true is None:
        return ""
    return f"{haversine(location.lat, location.lon, *true):.2f}"


def _png(path, lat0, lon0, ref_lat, ref_lon, pairs, title) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 8))
    if len(ref_lat):
        ref = to_local(ref_lat, ref_lon, lat0, lon0)
        axes.plot(ref[:, 0], ref[:, 1], "-o", color="#999", markersize=3, label="reference track")
    labelled: set[str] = set()

    def once(name: str) -> str | None:  # each kind of mark in the legend once, when drawn
        if name in labelled:
            return None
        labelled.add(name)
        return name

    for location, true in pairs:
        p = to_local(location.lat, location.lon, lat0, lon0)
        if true is not None:
            t = to_local(*true, lat0, lon0)
            axes.plot([t[0], p[0]], [t[1], p[1]], color="#d33", linewidth=0.8, label=once("error"))
            axes.plot(*t, "o", color="#2a2", markersize=4, label=once("true position"))
        axes.plot(*p, "o", color="#36c", markersize=4, label=once("predicted"))
        if math.isfinite(location.radius_m) and location.radius_m > 0:
            axes.add_patch(
                plt.Circle(
                    p, location.radius_m, color="#36c", alpha=0.06, label=once("uncertainty radius")
                )
            )
    axes.set_aspect("equal")
    axes.set_xlabel("east (m)")
    axes.set_ylabel("north (m)")
    axes.set_title(title)
    axes.legend(loc="best")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
