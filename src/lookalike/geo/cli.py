"""``lookalike index-video`` and ``lookalike locate``: frames with GPS positions, and where a photo
was taken along them.

    lookalike index-video walk.mp4 --track gps.csv --collection walk.lookalike --every 0.5
    lookalike locate photo.jpg --collection walk.lookalike --json
    {"query": "photo.jpg", "lat": 33.12677, "lon": -117.32734, "radius_m": 0.41, "support": [...]}
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

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
    video: Annotated[Path, typer.Argument(help="Video file (anything FFmpeg decodes).")],
    track: Annotated[
        Path, typer.Option(help="GPS track: GPX, or CSV of time, latitude, longitude[, altitude].")
    ],
    collection: CollectionOpt = None,
    every: Annotated[float, typer.Option(help="Keep one frame every this many seconds.")] = 1.0,
    every_metres: Annotated[
        float | None, typer.Option(help="Keep one frame every this many metres instead.")
    ] = None,
    offset: Annotated[
        float, typer.Option(help="Seconds added to video times to get track times.")
    ] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Index frames of a video with their positions interpolated from a GPS track."""
    from lookalike.geo.frames import index_video as run
    from lookalike.geo.tracks import read_track

    path = collection or default_collection()
    with _geo_errors(), Collection.open(path, create=True) as col:
        gps = read_track(track)
        with progress_bar("frames") as bar:
            report = run(
                col,
                video,
                gps,
                every=None if every_metres else every,
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
        f"{report.outside_track}) in {report.seconds:.1f} s; frames in {report.folder}"
    )
    for skipped, reason in report.skipped:
        out.print(f"  [yellow]skipped[/yellow] {skipped}: {reason}")


def locate(
    images: Annotated[list[Path], typer.Argument(help="Query images (in order for --sequence).")],
    collection: CollectionOpt = None,
    k: Annotated[int, typer.Option("-k", "--top", help="Neighbours that vote.")] = 10,
    sequence: Annotated[
        bool, typer.Option("--sequence", help="The images are an ordered series: smooth over it.")
    ] = False,
    map_: Annotated[
        Path | None, typer.Option("--map", help="Write a map: .html (SVG) or .png.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Estimate where each image was taken: latitude, longitude, uncertainty radius (m)."""
    from lookalike.geo.locate import locate as run
    from lookalike.geo.tracks import haversine, photo_position

    path = collection or default_collection()
    with _geo_errors(), Collection.open(path) as col:
        for image in images:
            if not image.exists():
                raise FileNotFoundError(f"no such image: {image}")
        locations = run(col, [str(i) for i in images], k=k, sequence=sequence)
        truth = [photo_position(i) for i in images]  # GPS EXIF, when the queries carry one
        if map_ is not None:
            from lookalike.geo.frames import positions
            from lookalike.geo.maps import write_map

            ref_lat, ref_lon, _ = positions(col)
            written = write_map(map_, ref_lat, ref_lon, predicted=locations, truth=truth)
            err.print(f"map written to {written}")
    for location, true in zip(locations, truth, strict=True):
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
        )


def register(app: typer.Typer) -> None:
    """Add ``index-video`` and ``locate`` to ``app``."""
    app.command("index-video")(index_video)
    app.command("locate")(locate)
