"""Index the frames of a video with their GPS positions, and geotagged photos.

Frames are decoded with PyAV (FFmpeg), one kept every N seconds (or every N metres along the
track), saved as JPEG under ``<collection>/frames/<video stem>/`` and added to the collection with
their time and interpolated position as metadata::

    {"time": 12.5, "lat": 33.12677, "lon": -117.32734, "distance_m": 6.1, "video": "/abs/walk.mp4"}

Example:
    >>> from lookalike import Collection
    >>> from lookalike.geo.tracks import read_track
    >>> with Collection.open("walk.lookalike", create=True) as col:  # doctest: +SKIP
    ...     report = index_video(col, "walk.mp4", read_track("gps.csv"), every=0.5)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from lookalike.errors import VideoError
from lookalike.geo.tracks import Track, TrackError, photo_metadata
from lookalike.videos import open_video

if TYPE_CHECKING:
    from lookalike.collection import Collection, IndexReport

#: Frames whose time lies this many seconds outside the track take its end position (GPS runs at
#: 1-18 Hz, so the last frames of a clip often come just after the last fix).
TRACK_TOLERANCE_S = 1.0
#: Frames are added to the collection in chunks of this many, so a long video commits as it goes.
CHUNK = 128


@dataclass
class VideoReport:
    """What ``index_video`` did."""

    video: str
    folder: str
    kept: int = 0
    outside_track: int = 0
    added: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    video_span: tuple[float, float] = (0.0, 0.0)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        out["seconds"] = round(self.seconds, 3)
        return out


def video_info(video: str | Path) -> dict:
    """Duration (s), frame rate and frame count of a video's first video stream."""
    import av

    container = open_video(video)
    with container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        duration = (
            float(stream.duration * stream.time_base)
            if stream.duration
            else float(container.duration or 0) / av.time_base
        )
        return {"duration": duration, "fps": rate, "frames": int(stream.frames or 0)}


def iter_frames(
    video: str | Path,
    *,
    every: float | None = None,
    every_metres: float | None = None,
    track: Track | None = None,
    offset: float = 0.0,
) -> Iterator[tuple[float, Image.Image]]:
    """Decoded frames as ``(seconds from the start, RGB image)``, one every ``every`` seconds,
    or one every ``every_metres`` metres travelled along ``track`` (every frame when both are
    None). ``offset`` is added to video times to get track times.

    Example:
        >>> [round(t, 2) for t, _ in iter_frames("walk.mp4", every=1.0)][:3]  # doctest: +SKIP
        [0.0, 1.0, 2.0]
    """
    if every_metres is not None and track is None:
        raise ValueError("every_metres needs a track")
    container = open_video(video)
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame-parallel decoding: about 2x on 2 cores
        rate = float(stream.average_rate or stream.guessed_rate or 30)
        # Half a frame of slack so that "every 10/fps seconds" keeps exactly one frame in ten.
        slack = 0.5 / rate
        origin = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        next_time = next_distance = None
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base) - origin
                if every is not None:
                    next_time = t if next_time is None else next_time
                    if t < next_time - slack:
                        continue
                    while next_time <= t + slack:
                        next_time += every
                elif every_metres is not None:
                    start, end = track.span
                    d = float(track.distance_along([min(max(t + offset, start), end)])[0])
                    next_distance = d if next_distance is None else next_distance
                    # 1% of a step of slack: GPS distances are sums of rounded haversines.
                    if d < next_distance - 0.01 * every_metres:
                        continue
                    while next_distance <= d + 0.01 * every_metres:
                        next_distance += every_metres
                yield t, frame.to_image()
        except Exception as exc:  # PyAV raises its own error classes per FFmpeg error
            if type(exc).__module__.startswith("av"):
                raise VideoError(f"cannot decode {video}: {exc}") from None
            raise


def frame_name(t: float) -> str:
    """The file name of the frame at ``t`` seconds: sortable, e.g. ``t00012.500.jpg``."""
    return f"t{t:09.3f}.jpg"


def index_video(
    collection: Collection,
    video: str | Path,
    track: Track,
    *,
    every: float | None = 1.0,
    every_metres: float | None = None,
    offset: float = 0.0,
    max_side: int | None = 1280,
    quality: int = 90,
    progress: Callable[[int, int], None] | None = None,
) -> VideoReport:
    """Save frames of ``video`` (one every ``every`` seconds, or every ``every_metres`` metres
    along ``track``) as JPEG in ``<collection>/frames/<stem>/`` and add them with their time and
    position. ``offset``: track time = video time + offset.

    Frames outside the track's time span (beyond a second) are left out and counted.

    Raises:
        TrackError: the video and the track do not overlap in time (the message says by how
            much); VideoError: the video cannot be decoded.
    """
    start_clock = time.perf_counter()
    video = Path(video).expanduser().resolve()
    info = video_info(video)
    _check_overlap(track, info["duration"], offset, video)
    folder = collection.path / "frames" / video.stem
    folder.mkdir(parents=True, exist_ok=True)
    report = VideoReport(video=str(video), folder=str(folder))
    first, last = track.span
    expected = _expected_frames(info, every, every_metres, track)
    pending: dict[str, dict] = {}
    times: list[float] = []
    for t, image in iter_frames(
        video, every=every, every_metres=every_metres, track=track, offset=offset
    ):
        times.append(t)
        tt = t + offset
        if tt < first - TRACK_TOLERANCE_S or tt > last + TRACK_TOLERANCE_S:
            report.outside_track += 1
            continue
        lat, lon = track.at([min(max(tt, first), last)])
        path = folder / frame_name(t)
        if not path.exists():  # a second run re-uses the frames it already wrote
            _save_frame(image, path, max_side, quality)
        pending[str(path)] = {
            "time": round(t, 4),
            "lat": float(lat[0]),
            "lon": float(lon[0]),
            "distance_m": round(float(track.distance_along([min(max(tt, first), last)])[0]), 3),
            "video": str(video),
        }
        report.kept += 1
        if len(pending) >= CHUNK:
            _add(collection, pending, report)
        if progress:
            progress(report.kept + report.outside_track, max(expected, len(times)))
    _add(collection, pending, report)
    if report.kept == 0:
        raise TrackError(
            f"no frame of {video.name} falls within the track {track.source} "
            f"({first:.3f}-{last:.3f} s, offset {offset:+.3f} s)"
        )
    report.video_span = (round(times[0], 4), round(times[-1], 4)) if times else (0.0, 0.0)
    report.seconds = time.perf_counter() - start_clock
    return report


def _check_overlap(track: Track, duration: float, offset: float, video: Path) -> None:
    """Refuse a track that does not overlap the video in time, saying by how much."""
    first, last = track.span
    v_start, v_end = offset, duration + offset
    if v_end < first - TRACK_TOLERANCE_S:
        raise TrackError(
            f"the track {track.source} ({first:.3f}-{last:.3f} s) starts {first - v_end:.3f} s "
            f"after the video {video.name} ends ({v_start:.3f}-{v_end:.3f} s in track time): "
            "no overlap; pass an offset to align them"
        )
    if v_start > last + TRACK_TOLERANCE_S:
        raise TrackError(
            f"the track {track.source} ({first:.3f}-{last:.3f} s) ends {v_start - last:.3f} s "
            f"before the video {video.name} starts ({v_start:.3f}-{v_end:.3f} s in track "
            "time): no overlap; pass an offset to align them"
        )


def _expected_frames(
    info: dict, every: float | None, every_metres: float | None, track: Track
) -> int:
    if every_metres:
        return int(track.length_m() / every_metres) + 1
    if every:
        return int(info["duration"] / every) + 1
    return info["frames"] or int(info["duration"] * info["fps"])


def _save_frame(image: Image.Image, path: Path, max_side: int | None, quality: int) -> None:
    if max_side and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    tmp = path.with_suffix(".tmp.jpg")
    image.save(tmp, quality=quality)
    tmp.replace(path)  # never leave half a JPEG where a later run would take it as done


def _add(collection: Collection, pending: dict[str, dict], report: VideoReport) -> None:
    if not pending:
        return
    result = collection.add(list(pending), metadata=pending)
    report.added += result.added + result.updated
    report.unchanged += result.unchanged + len(result.duplicates)
    report.skipped += result.skipped
    pending.clear()


def index_photos(collection: Collection, paths: list[str | Path]) -> IndexReport:
    """Add photos to ``collection``, positioned from their GPS EXIF when they have one
    (metadata ``{"lat", "lon"}``); returns the collection's ``IndexReport``.

    Example:
        >>> index_photos(col, ["holiday/"]).added  # doctest: +SKIP
        12
    """
    from lookalike.ingest import files as ingest

    files: list[Path] = []
    for p in paths:
        path = Path(p).expanduser().resolve()
        files += [Path(f) for f in ingest.walk(path)] if path.is_dir() else [path]
    return collection.add(files, metadata=photo_metadata(files))


def positions(collection: Collection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lat, lon, time) of every positioned image of ``collection``, in time order then id
    (``time`` is NaN for photos): the reference track a map draws."""
    rows = [
        (r.metadata.get("time", np.nan), r.id, r.metadata["lat"], r.metadata["lon"])
        for r in collection.records()
        if "lat" in r.metadata and "lon" in r.metadata
    ]
    rows.sort(key=lambda row: (row[0] if row[0] == row[0] else np.inf, row[1]))
    array = np.array([(r[2], r[3], r[0]) for r in rows], dtype=np.float64).reshape(-1, 3)
    return array[:, 0], array[:, 1], array[:, 2]
