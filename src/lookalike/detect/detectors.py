"""Object detectors that give ``lookalike detect`` its boxes: choosing, loading, installing.

Two detectors, both offline once installed, each returning
:class:`~lookalike.detect.objects.ObjectBox` es (a box in the photo's upright pixels, a class
label and a score):

- ``"ssd"``: MediaPipe Objectron's SSD (Open Images, 23 classes), bundled;
  :mod:`lookalike.detect.ssd`. Installed once by ``make install``, or by
  ``python -m lookalike.detect.detectors fetch [--tarball FILE.tgz] [--to FOLDER]``
  (:func:`main`).
- a ``.onnx`` path: the user's own YOLOv5/v8/11 export, with its labels;
  :mod:`lookalike.detect.yolo`.

:func:`load_detector` makes one from such a spec; :func:`detector_for` gives the detector of
a proposal source of ``lookalike.detect.photo`` and keeps loaded models for the next photo.

Example:
    >>> from PIL import Image
    >>> yolo = load_detector("best.onnx", labels="classes.txt")  # doctest: +SKIP
    >>> [(b.label, b.box) for b in yolo.detect(Image.open("shelf.jpg"))]  # doctest: +SKIP
    [('my-product', (412, 80, 690, 371))]
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from pathlib import Path

from lookalike.detect.objects import ObjectDetector
from lookalike.detect.ssd import SSD_THRESHOLD, ObjectronSSD, fetch_objectron
from lookalike.detect.yolo import YOLO_THRESHOLD, YoloOnnxDetector
from lookalike.errors import DetectorError


def load_detector(
    spec: str | Path | ObjectDetector | None = None,
    labels: Sequence[str] | str | Path | None = None,
    threshold: float | None = None,
) -> ObjectDetector:
    """A detector from a spec: None or "ssd" -> :class:`ObjectronSSD`; a ``.onnx`` path ->
    :class:`YoloOnnxDetector`; a detector object is returned as it is.

    Raises:
        DetectorError: the spec names no detector, or it cannot be loaded.
    """
    if spec is not None and not isinstance(spec, str | Path):
        return spec
    if spec is None or str(spec) == "ssd":
        if labels is not None:
            raise DetectorError("--labels is for your own detector (--detector model.onnx)")
        return ObjectronSSD(threshold=SSD_THRESHOLD if threshold is None else threshold)
    if Path(spec).suffix.lower() != ".onnx":
        raise DetectorError(f"a detector is 'ssd' or a YOLO model exported to .onnx, not {spec}")
    return YoloOnnxDetector(
        spec, labels, threshold=YOLO_THRESHOLD if threshold is None else threshold
    )


@functools.lru_cache(maxsize=4)
def _cached(spec: str | None, labels: tuple[str, ...] | str | None, threshold: float | None):
    return load_detector(spec, labels if not isinstance(labels, tuple) else list(labels), threshold)


def detector_for(
    source: str,
    detector: str | Path | ObjectDetector | None = None,
    labels: Sequence[str] | str | Path | None = None,
    threshold: float | None = None,
) -> ObjectDetector:
    """The detector of a proposal source of ``lookalike.detect.photo``: "ssd" -> the Objectron SSD,
    "yolo" -> ``detector`` (a ``.onnx`` path or a detector object). Loaded models are kept
    (a few), so detecting in many photos loads each once.

    Raises:
        ValueError: "yolo" without a detector.
        DetectorError: the detector cannot be loaded.
    """
    if source == "ssd":
        return _cached(None, None, threshold)
    if detector is None:
        raise ValueError(
            "proposal source 'yolo' needs your detector: detect(..., detector='model.onnx') "
            "or `lookalike detect --detector model.onnx`"
        )
    if not isinstance(detector, str | Path):
        return detector
    if labels is None or isinstance(labels, str | Path):
        key: tuple[str, ...] | str | None = None if labels is None else str(labels)
    else:
        key = tuple(labels)
    return _cached(str(detector), key, threshold)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lookalike.detect.detectors fetch [--tarball FILE.tgz] [--to FOLDER]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m lookalike.detect.detectors", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download and install the SSD detector (once)")
    fetch.add_argument("--tarball", help="install from a local @mediapipe/objectron .tgz")
    fetch.add_argument("--to", help="folder (default: the user cache)")
    args = parser.parse_args(argv)
    try:
        path = fetch_objectron(args.to, tarball=args.tarball)
    except DetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"SSD detector ready: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
