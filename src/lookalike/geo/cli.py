"""``lookalike index-video`` and ``lookalike locate``: frames with GPS positions, and where a photo
was taken along them.

    lookalike index-video walk.mp4 --track gps.csv --collection walk.lookalike --every-seconds 0.5
    lookalike locate photo.jpg --collection walk.lookalike --json
    {"query": "photo.jpg", "lat": 33.12677, "lon": -117.32734, "radius_m": 0.41, "support": [...]}
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from lookalike.cli import validate
from lookalike.cli.common import (
    CollectionOpt,
    JsonOpt,
    default_collection,
    err,
    errors,
    out,
    progress_bar,
)
from lookalike.collection import Collection


@contextmanager
def _geo_errors() -> Iterator[None]:
    """The CLI's one-line errors, for track, video and locate failures too."""
    from lookalike.geo.frames import VideoError
    from lookalike.geo.locate import LocateError
    from lookalike.geo.tracks import TrackError

    with errors():
        try:
            yield
        except (TrackError, VideoError, LocateError) as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None


def index_video(
    video: Annotated[
        Path, typer.Argument(metavar="VIDEO", help="Video file (anything FFmpeg decodes).")
    ],
    track: Annotated[
        Path,
        typer.Option(
            metavar="FILE",
            callback=validate.existing_file,
            help="GPS track: GPX, or CSV of time, latitude, longitude[, altitude].",
        ),
    ],
    collection: CollectionOpt = None,
    every: Annotated[
        float | None,
        typer.Option(
            "--every-seconds",
            "--every",
            metavar="SECONDS",
            callback=validate.positive,
            help="Keep one frame every this many seconds of video [1].",
        ),
    ] = None,
    every_metres: Annotated[
        float | None,
        typer.Option(
            metavar="METRES",
            callback=validate.positive,
            help="Keep one frame every this many metres along the track instead.",
        ),
    ] = None,
    offset: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="Seconds added to video times to get track times."),
    ] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Index frames of a video with their positions interpolated from a GPS track."""
    from lookalike.geo.frames import index_video as run
    from lookalike.geo.tracks import read_track

    if every is not None and every_metres is not None:
        validate.refuse("give --every-seconds or --every-metres, not both")
    path = collection or default_collection()
    with _geo_errors(), Collection.open(path, create=True) as col:
        gps = read_track(track)
        with progress_bar("frames") as bar:
            report = run(
                col,
                video,
                gps,
                every=None if every_metres else (every or 1.0),
                every_metres=every_metres,
                offset=offset,
                progress=bar,
            )
        total = len(col)
    if as_json:
        print(json.dumps({"collection": str(path), "images": total, **report.to_dict()}))
        return
    out.print(
        f"[bold]{path}[/bold]: {total} images. {report.kept} frames of {video.name} kept "
        f"(added {report.added}, already there {report.unchanged}, outside the track "
        f"{report.outside_track}) in {report.seconds:.1f} s; frames in {report.folder}",
        soft_wrap=True,
    )
    for skipped, reason in report.skipped:
        out.print(f"  [yellow]skipped[/yellow] {skipped}: {reason}", soft_wrap=True)


def locate(
    images: Annotated[
        list[Path],
        typer.Argument(metavar="IMAGE...", help="Query images (in order for --sequence)."),
    ],
    collection: CollectionOpt = None,
    voters: Annotated[
        int | None,
        typer.Option(
            min=1, metavar="N", help="Nearest positioned neighbours that vote on a position [10]."
        ),
    ] = None,
    voters_old: Annotated[
        int | None, typer.Option("-k", "--top", min=1, hidden=True, help="Old --voters.")
    ] = None,
    sequence: Annotated[
        bool, typer.Option("--sequence", help="The images are an ordered series: smooth over it.")
    ] = False,
    map_: Annotated[
        Path | None,
        typer.Option(
            "--map",
            metavar="FILE",
            callback=validate.map_file,
            help="Write a map, by extension: .html (a page with an SVG drawing), .png (a "
            "picture) or .geojson (for GIS tools).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Estimate where each image was taken: latitude, longitude, uncertainty radius (m). Exit
    code 1 when an image cannot be read or located (the others are answered)."""
    from lookalike.geo.locate import locate_hits
    from lookalike.geo.tracks import haversine, photo_position
    from lookalike.images import ImageError

    k = validate.pick(voters, voters_old, "-k/--top", "--voters", 10)
    path = collection or default_collection()
    failed = False
    problems: dict[str, str] = {}
    with _geo_errors(), Collection.open(path) as col:
        vectors, usable = [], []
        for image in images:
            if not image.is_file():
                problems[str(image)] = "is a folder" if image.is_dir() else "no such file"
                continue
            try:
                vectors.append(col.embed([image])[0])
            except (ImageError, OSError) as exc:
                problems[str(image)] = getattr(exc, "reason", None) or str(exc)
                continue
            usable.append(image)
        locations = []
        if usable:
            hits = col.search_vectors(np.stack(vectors), k, expand=0)
            locations = locate_hits(hits, [str(i) for i in usable], sequence)
        truth = [photo_position(i) for i in usable]  # GPS EXIF, when the queries carry one
        if map_ is not None and locations:
            from lookalike.geo.frames import positions
            from lookalike.geo.maps import write_map

            ref_lat, ref_lon, _ = positions(col)
            written = write_map(map_, ref_lat, ref_lon, predicted=locations, truth=truth)
            err.print(f"map written to {written}", highlight=False)
    by_query = dict(zip([str(i) for i in usable], zip(locations, truth, strict=True), strict=True))
    for image in map(str, images):
        if image in problems:
            failed = True
            if as_json:
                print(json.dumps({"query": image, "error": problems[image]}))
            else:
                err.print(f"[red]error:[/red] {image}: {problems[image]}", highlight=False)
            continue
        location, true = by_query[image]
        if not math.isfinite(location.lat):
            failed = True
            problem = f"none of its {k} nearest neighbours has a position"
            if as_json:
                print(json.dumps({"query": image, "error": problem}))
            else:
                err.print(f"[red]error:[/red] {image}: {problem}", highlight=False)
            continue
        data = location.to_dict()
        if true is not None:
            data["exif_error_m"] = round(float(haversine(location.lat, location.lon, *true)), 3)
        if as_json:
            print(json.dumps(data))
            continue
        best = location.support[0] if location.support else None
        out.print(
            f"{location.query}: {location.lat:.7f}, {location.lon:.7f} ± {location.radius_m:.2f} m"
            + (f"  (best match {best.path}, score {best.score:.3f})" if best else "")
            + (f"  [EXIF says {data['exif_error_m']} m away]" if true is not None else ""),
            highlight=False,
            soft_wrap=True,
        )
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``index-video`` and ``locate`` to ``app``."""
    app.command("index-video")(index_video)
    app.command("locate")(locate)
