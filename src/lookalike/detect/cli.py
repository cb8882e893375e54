"""``lookalike detect``: which catalogue items are in a photo, and where.

Example::

    lookalike detect shelf.jpg --collection shop.lookalike --json
    lookalike detect shelf.jpg -c shop.lookalike --grid boxes.png      # one photo: a file
    lookalike detect a.jpg b.jpg -c shop.lookalike --grid boxes/       # boxes/a.png, boxes/b.png
    lookalike detect shelf.jpg -c shop.lookalike --detector best.onnx --labels classes.txt
    lookalike detect --video aisle.mp4 --every-frames 5 -c shop.lookalike --json  # line per frame
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lookalike.cli import validate
from lookalike.cli.common import CollectionOpt, JsonOpt, default_collection, err, errors, out
from lookalike.collection import Collection

#: Where boxes come from (``--proposals``).
PROPOSAL_SOURCES = ("keypoints", "grid", "selective", "ssd", "yolo")
#: Shown in --help; tests/test_cli_rules.py checks them against detect.photo and detect.matcher
#: (imported lazily: this module must not load OpenCV for `--help`).
MIN_SCORE_HELP = 0.75
MIN_INLIERS_HELP = 8


def detect_command(
    images: Annotated[
        list[Path] | None, typer.Argument(metavar="PHOTO...", help="Photos to look into.")
    ] = None,
    collection: CollectionOpt = None,
    k: Annotated[
        int,
        typer.Option(
            "-k", "--top", min=1, metavar="N", help="Catalogue matches per found item (1 or more)."
        ),
    ] = 3,
    proposals: Annotated[
        list[str] | None,
        typer.Option(
            "--proposals",
            metavar="SOURCE",
            callback=validate.choices(*PROPOSAL_SOURCES, what="proposal source"),
            help="Where boxes come from: keypoints (default), grid, selective, ssd (the bundled "
            "Open Images detector), yolo (your --detector); repeat to combine.",
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option(
            metavar="SCORE",
            callback=validate.score,
            help="Leave out items whose best catalogue match scores below SCORE (a cosine); "
            f"proposal boxes (grid, selective, ssd, yolo) need {MIN_SCORE_HELP} unless given.",
        ),
    ] = None,
    as_json: JsonOpt = False,
    grid: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="Draw the boxes and labels: a .png file for one photo, a folder (one PNG per "
            "photo, named after it) for several.",
        ),
    ] = None,
    detector: Annotated[
        Path | None,
        typer.Option(
            metavar="MODEL.onnx",
            callback=validate.onnx_file,
            help="Your object detector: a YOLOv5/v8/11 model exported to ONNX (source 'yolo'; "
            "used alone unless --proposals says otherwise).",
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            callback=validate.existing_file,
            help="Class names of --detector, one per line [the model's metadata].",
        ),
    ] = None,
    detector_threshold: Annotated[
        float | None,
        typer.Option(
            metavar="SCORE",
            min=0.0,
            max=1.0,
            help="Lowest detector score of an ssd/yolo box [0.1 ssd, 0.25 yolo].",
        ),
    ] = None,
    video: Annotated[
        Path | None,
        typer.Option(
            metavar="VIDEO",
            help="Look into a video instead: items per sampled frame, then when each item was "
            "first and last seen and the frames per second (keypoint source only).",
        ),
    ] = None,
    every_frames: Annotated[
        int | None,
        typer.Option(
            "--every-frames", min=1, metavar="N", help="With --video: look at one frame in N [5]."
        ),
    ] = None,
    every_old: Annotated[
        int | None, typer.Option("--every", min=1, hidden=True, help="Old --every-frames.")
    ] = None,
    min_inliers: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help=f"Keypoint inliers an item needs to be reported [{MIN_INLIERS_HELP} when the "
            "whole catalogue is matched at once, 15 through a shortlist].",
        ),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            help="Let the detectors' own log lines (TensorFlow Lite's INFO) through to stderr.",
        ),
    ] = False,
) -> None:
    """Find catalogue items inside photos: a box, the best matches and keypoint confirmation per
    item. Boxes that match nothing in the catalogue are not reported. Exit code 1 when a photo
    cannot be read (the others are answered)."""
    every = validate.pick(every_frames, every_old, "--every", "--every-frames", None)
    if labels is not None and detector is None:
        validate.refuse("--labels names the classes of --detector: add --detector MODEL.onnx")
    sources = proposals or (["yolo"] if detector is not None else ["keypoints"])
    if "yolo" in sources and detector is None:
        validate.refuse("the yolo source runs your --detector: add --detector MODEL.onnx")
    if detector_threshold is not None and not {"ssd", "yolo"} & set(sources):
        validate.refuse("--detector-threshold applies to the ssd and yolo sources")
    path = collection or default_collection()
    if video is not None:
        if images or grid is not None or (proposals and proposals != ["keypoints"]):
            validate.refuse("--video takes no photos, --grid or other proposals")
        if detector is not None or min_score is not None:
            validate.refuse("--video matches keypoints only: no --detector or --min-score")
        _detect_video(path, video, every or 5, k, min_inliers, as_json)
        return
    if every is not None:
        validate.refuse("--every-frames samples the frames of --video: add --video CLIP")
    if not images:
        validate.refuse("give photos to look into, or --video CLIP")
    if grid is not None:
        if len(images) > 1:
            validate.picture_folder_or_refuse(grid)
        else:
            validate.picture_file_or_refuse(grid)
    from lookalike.detect.photo import MIN_SCORE, detect_many, draw_detections

    options = {
        "k": k,
        "proposals": sources,
        "min_score": MIN_SCORE if min_score is None else min_score,
        "detector": detector,
        "labels": labels,
        "detector_threshold": detector_threshold,
        "min_inliers": min_inliers,
    }
    readable = [p for p in images if p.is_file()]
    failed = False
    with errors(), Collection.open(path) as col:
        if readable:
            try:
                with _native_logs_quiet("ssd" in sources and not verbose):
                    answers = dict(
                        (a[0], a) for a in detect_many(col, [str(p) for p in readable], **options)
                    )
            except (ValueError, RuntimeError) as exc:  # no opencv-contrib, a detector failing
                err.print(f"[red]error:[/red] {exc}", highlight=False)
                raise typer.Exit(1) from None
        else:
            answers = {}
    for image in images:
        if not image.is_file():
            problem = "is a folder: give photos" if image.is_dir() else "no such file"
            photo, found, seconds = str(image), None, 0.0
        else:
            photo, found, problem, seconds = answers[str(image)]
        if found is None:
            failed = True
            if as_json:
                print(json.dumps({"image": photo, "detections": [], "error": problem}))
            else:
                err.print(f"[red]error:[/red] {photo}: {problem}", highlight=False)
            continue
        if min_score is not None:
            found = [d for d in found if d.score >= min_score]
        if as_json:
            data = {"image": photo, "detections": [d.to_dict() for d in found]}
            print(json.dumps({**data, "seconds": round(seconds, 3)}))
        else:
            _print_detections(photo, found, seconds)
        if grid is not None:
            target = grid if len(images) == 1 else grid / f"{Path(photo).stem}.png"
            err.print(f"boxes drawn in {draw_detections(photo, found, target)}", highlight=False)
    if failed:
        raise typer.Exit(1)


@contextmanager
def _native_logs_quiet(enabled: bool) -> Iterator[None]:
    """Keep what native libraries write to file descriptor 2 while a detector loads and runs
    (TensorFlow Lite's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.") off the
    terminal. Lines that are not such INFO logs are written out afterwards, so no warning or
    error is lost; ``--verbose`` turns this off."""
    if not enabled:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [
                line
                for line in sink.read().decode("utf-8", "replace").splitlines()
                if line.strip() and not line.startswith("INFO: ")
            ]
            for line in kept:
                err.print(line, highlight=False, markup=False, soft_wrap=True)


def _print_detections(photo: str, found: list, seconds: float) -> None:
    table = Table(
        title=f"{photo}: {len(found)} items ({seconds:.1f} s)",
        title_justify="left",
        show_edge=False,
    )
    for column in ("box", "score", "keypoints", "match", "others"):
        table.add_column(column, overflow="fold")
    for d in found:
        confirmed = f"{d.inliers} inliers" if d.verified else "no"
        others = ", ".join(f"{Path(m.path).name} {m.score:.2f}" for m in d.matches[1:])
        table.add_row(",".join(map(str, d.box)), f"{d.score:.3f}", confirmed, d.best.path, others)
    out.print(table)


def _detect_video(
    path: Path, video: Path, every: int, k: int, min_inliers: int | None, as_json: bool
) -> None:
    """``detect --video``: a JSON line (or a text line) per sampled frame, then the summary."""
    from lookalike.detect.video import detect_video
    from lookalike.videos import VideoError

    with errors(), Collection.open(path) as col:
        run = detect_video(col, video, every=every, k=k, min_inliers=min_inliers)
        try:
            for frame in run:
                if as_json:
                    print(json.dumps(frame.to_dict()), flush=True)
                elif frame.detections:
                    names = ", ".join(
                        f"{Path(d.best.path).name} {','.join(map(str, d.box))} ({d.inliers})"
                        for d in frame.detections
                    )
                    out.print(f"{frame.time:8.2f} s  frame {frame.index}: {names}")
        except (FileNotFoundError, VideoError, ValueError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
    summary = run.summary
    if as_json:
        print(json.dumps({"summary": summary.to_dict()}))
        return
    table = Table(
        title=f"{video}: {len(summary.items)} items in {summary.frames_sampled} frames "
        f"(one in {every}: {summary.fps:.1f} frames/s looked at, "
        f"{summary.decoded_fps:.0f} decoded)",
        title_justify="left",
        show_edge=False,
    )
    for column in ("item", "first seen (s)", "last seen (s)", "frames", "copies", "inliers"):
        table.add_column(column, overflow="fold")
    for item in summary.items:
        table.add_row(
            item.path,
            f"{item.first_seen:.2f}",
            f"{item.last_seen:.2f}",
            str(item.frames),
            str(item.copies),
            str(item.max_inliers),
        )
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add ``detect`` to ``app``."""
    app.command("detect")(detect_command)
