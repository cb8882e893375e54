"""Opening video files: one place that turns PyAV's failures into :class:`VideoError`.

A small leaf shared by the readers of videos (``lookalike.geo.frames`` indexes frames along a
GPS track, ``lookalike.detect.video`` looks for catalogue items in them), so neither imports
the other.

Example:
    >>> with open_video("walk.mp4") as container:  # doctest: +SKIP
    ...     stream = container.streams.video[0]
    ...     float(stream.average_rate)
    29.97
"""

from __future__ import annotations

from pathlib import Path

from lookalike.errors import VideoError


def open_video(video: str | Path):
    """The PyAV container of ``video`` (``~`` expanded), which has a video stream; close it
    (``with``) when done.

    Raises:
        FileNotFoundError: no such file.
        VideoError: it cannot be opened, or has no video stream.
    """
    import av

    path = Path(video).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such video: {path}")
    try:
        container = av.open(str(path))
    except Exception as exc:
        raise VideoError(f"cannot open video {path}: {exc}") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path} has no video stream")
    return container


__all__ = ["VideoError", "open_video"]
