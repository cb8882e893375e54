"""Catalogue items inside photos and videos: which ones, and where (``lookalike detect``).

Modules: :mod:`~lookalike.detect.boxes` (boxes and their maths, the ``Detection`` record),
:mod:`~lookalike.detect.matcher` (the catalogue keypoint matcher), :mod:`~lookalike.detect.photo`
(still photos), :mod:`~lookalike.detect.video` (video), and the object detectors
(:mod:`~lookalike.detect.detectors`, :mod:`~lookalike.detect.ssd`, :mod:`~lookalike.detect.yolo`,
:mod:`~lookalike.detect.objects`).

Example:
    >>> from lookalike.detect.photo import detect
    >>> [(d.box, d.best.path) for d in detect(col, "shelf.jpg")]  # doctest: +SKIP
    [((412, 80, 690, 371), '/catalogue/mug.jpg')]
"""
