"""Locating photos along a route: tracks (CSV, GPX), interpolation, distances, GPS EXIF, video
frames indexed with positions (a video made here with PyAV), locate, the CLI and the map."""

from __future__ import annotations

import io
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from lookalike.collection import Collection
from lookalike.geo.frames import index_video, iter_frames
from lookalike.geo.locate import estimate, locate, viterbi
from lookalike.geo.tracks import (
    EARTH_RADIUS_M,
    Track,
    TrackError,
    haversine,
    photo_position,
    read_csv,
    read_gpx,
    read_track,
)
from tests.conftest import skimage_photo

av = pytest.importorskip("av")

FPS = 10
SECONDS = 4.0
SPEED_M_S = 1.0  # the "camera" walks east at 1 m/s while the crop window slides right
LAT0, LON0 = 48.0, 2.0
SIZE = (224, 160)


def east_lon(metres: float) -> float:
    return LON0 + math.degrees(metres / (EARTH_RADIUS_M * math.cos(math.radians(LAT0))))


def panorama() -> Image.Image:
    """A wide strip of different real photos, so that each position along it looks different."""
    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
    tiles = [skimage_photo(n) for n in names]
    tiles = [t.resize((int(t.width * 240 / t.height), 240)) for t in tiles]
    strip = Image.new("RGB", (sum(t.width for t in tiles), 240))
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width
    return strip


def frame_at(strip: Image.Image, t: float) -> Image.Image:
    """The camera's view at ``t`` seconds: a window sliding 60 px per second along the strip."""
    x = int(t * 60 * (strip.width - 360) / (60 * SECONDS))
    return strip.crop((x, 0, x + 336, 240)).resize(SIZE)


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 4 s, 10 fps video of the sliding window, and its track as CSV and as GPX."""
    folder = tmp_path_factory.mktemp("walk")
    strip = panorama()
    video = folder / "walk.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000
        for n in range(int(SECONDS * FPS)):
            image = frame_at(strip, n / FPS)
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    times = np.arange(0, SECONDS + 0.01, 0.5)  # a GPS fix every 0.5 s
    csv_path = folder / "track.csv"
    csv_path.write_text(
        "time,latitude,longitude,altitude\n"
        + "".join(f"{t:.2f},{LAT0},{east_lon(SPEED_M_S * t):.9f},35.0\n" for t in times)
    )
    import gpxpy.gpx

    gpx = gpxpy.gpx.GPX()
    segment = gpxpy.gpx.GPXTrackSegment()
    start = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
    for t in times:
        segment.points.append(
            gpxpy.gpx.GPXTrackPoint(
                LAT0, east_lon(SPEED_M_S * t), elevation=35.0, time=start + timedelta(seconds=t)
            )
        )
    gpx.tracks.append(gpxpy.gpx.GPXTrack())
    gpx.tracks[0].segments.append(segment)
    gpx_path = folder / "track.gpx"
    gpx_path.write_text(gpx.to_xml())
    return {"video": video, "csv": csv_path, "gpx": gpx_path, "strip": strip, "dir": folder}


@pytest.fixture(scope="module")
def indexed(walk: dict, tmp_path_factory: pytest.TempPathFactory, embedder) -> Collection:
    """The walk indexed one frame every 0.2 s (0.2 m apart)."""
    col = Collection.open(tmp_path_factory.mktemp("col") / "c", create=True, embedder=embedder)
    report = index_video(col, walk["video"], read_track(walk["csv"]), every=0.2)
    assert report.kept == 20 and report.added == 20 and report.outside_track == 0
    yield col
    col.close()


def second_pass(image: Image.Image) -> Image.Image:
    """Another camera pass: darker, softer, re-compressed."""
    image = ImageEnhance.Brightness(image).enhance(0.8).filter(ImageFilter.GaussianBlur(0.8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=70)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


# -- geometry by hand --------------------------------------------------------------------------
def test_haversine_by_hand() -> None:
    # A quarter meridian is R * pi / 2; one degree of longitude on the equator is R * pi / 180.
    assert haversine(0.0, 0.0, 90.0, 0.0) == pytest.approx(EARTH_RADIUS_M * math.pi / 2)
    assert haversine(0.0, 10.0, 0.0, 11.0) == pytest.approx(111_195.08, abs=0.01)
    assert haversine(LAT0, LON0, LAT0, east_lon(5.0)) == pytest.approx(5.0, abs=1e-3)
    assert haversine(12.3, 45.6, 12.3, 45.6) == 0.0
    many = haversine(np.zeros(3), np.zeros(3), np.zeros(3), np.array([0.0, 1.0, 2.0]))
    assert many.shape == (3,) and many[2] == pytest.approx(2 * many[1])


def test_interpolation_by_hand() -> None:
    track = Track(np.array([10.0, 0.0]), np.array([1.0, 0.0]), np.array([4.0, 2.0]))  # unsorted
    lat, lon = track.at([0.0, 2.5, 10.0])
    assert lat.tolist() == pytest.approx([0.0, 0.25, 1.0])
    assert lon.tolist() == pytest.approx([2.0, 2.5, 4.0])
    with pytest.raises(TrackError, match=r"2\.000 s after its last fix"):
        track.at([12.0])
    with pytest.raises(TrackError, match=r"0\.500 s before its first fix"):
        track.at([-0.5])
    assert track.at([10.4], tolerance=0.5)[0][0] == pytest.approx(1.0)  # held at the end


# -- reading tracks ----------------------------------------------------------------------------
def test_csv_and_gpx_agree(walk: dict) -> None:
    from_csv, from_gpx = read_csv(walk["csv"]), read_gpx(walk["gpx"])
    assert from_csv.span == (0.0, 4.0) and from_gpx.span == (0.0, 4.0)
    assert from_gpx.start is not None and from_csv.start is None
    assert from_csv.alt is not None and from_csv.alt[0] == 35.0
    for track in (from_csv, from_gpx):
        lat, lon = track.at([1.25])
        assert haversine(lat[0], lon[0], LAT0, east_lon(1.25)) < 1e-3
        assert track.length_m() == pytest.approx(4.0, abs=1e-3)


def test_csv_without_header_and_iso_times(tmp_path: Path) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_text("0,48.0,2.0\n1,48.0,2.0001\n")
    assert read_track(plain).span == (0.0, 1.0)
    iso = tmp_path / "iso.csv"
    iso.write_text(
        "lon;lat;timestamp\n2.0;48.0;2024-05-01T10:00:00Z\n2.0001;48.0;2024-05-01T10:00:05Z\n"
    )
    track = read_track(iso)
    assert track.span == (0.0, 5.0) and track.lon[1] == 2.0001 and track.start is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no rows"),
        ("time,lat,lon\n", "no GPS fixes"),
        ("time,lat,lon\n0,48.0,2.0\n1,48.0,east\n", "line 3: bad latitude/longitude"),
        ("time,lat,lon\n0,48.0,2.0\nlater,48.0,2.0\n", "line 3: bad time"),
        ("time,lat,lon\n0,48.0\n", "line 2: 2 fields"),
        ("time,lat,lon\n0,148.0,2.0\n", "out of range"),
        ("when,lat,lon\n0,48.0,2.0\n", "no time column"),
    ],
)
def test_bad_csv_tracks_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TrackError, match=message):
        read_track(path)


def test_bad_gpx_and_missing_track(tmp_path: Path) -> None:
    untimed = tmp_path / "untimed.gpx"
    untimed.write_text(
        '<?xml version="1.0"?><gpx version="1.1" creator="t"><trk><trkseg>'
        '<trkpt lat="48.0" lon="2.0"></trkpt></trkseg></trk></gpx>'
    )
    with pytest.raises(TrackError, match="no <time>"):
        read_track(untimed)
    broken = tmp_path / "broken.gpx"
    broken.write_text("<gpx><trk>")
    with pytest.raises(TrackError, match="cannot read GPX"):
        read_track(broken)
    with pytest.raises(TrackError, match="no such track"):
        read_track(tmp_path / "absent.csv")


def test_photo_position_from_gps_exif(tmp_path: Path) -> None:
    exif = Image.Exif()
    gps = exif.get_ifd(0x8825)
    gps.update({1: "S", 2: (33.0, 7.0, 36.0), 3: "W", 4: (117.0, 19.0, 38.4)})
    tagged = tmp_path / "tagged.jpg"
    skimage_photo("coffee").save(tagged, exif=exif)
    lat, lon = photo_position(tagged)
    assert lat == pytest.approx(-(33 + 7 / 60 + 36 / 3600))
    assert lon == pytest.approx(-(117 + 19 / 60 + 38.4 / 3600))
    plain = tmp_path / "plain.jpg"
    skimage_photo("coffee").save(plain)
    assert photo_position(plain) is None


# -- frames ------------------------------------------------------------------------------------
def test_iter_frames_every_seconds_and_metres(walk: dict) -> None:
    every_half = [t for t, _ in iter_frames(walk["video"], every=0.5)]
    assert every_half == pytest.approx([0.5 * n for n in range(8)], abs=1e-6)
    track = read_csv(walk["csv"])
    every_metre = [t for t, _ in iter_frames(walk["video"], every_metres=1.0, track=track)]
    assert every_metre == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=0.06)
    frames = list(iter_frames(walk["video"]))
    assert len(frames) == SECONDS * FPS and frames[0][1].size == SIZE


def test_index_video_stores_frames_with_positions(indexed: Collection, walk: dict) -> None:
    records = sorted(indexed.records(), key=lambda r: r.metadata["time"])
    assert len(records) == 20
    first, fifth = records[0], records[5]
    assert Path(first.path).name == "t00000.000.jpg"
    assert Path(first.path).parent == indexed.path / "frames" / "walk"
    assert fifth.metadata["time"] == pytest.approx(1.0)
    assert fifth.metadata["distance_m"] == pytest.approx(1.0, abs=1e-3)
    assert haversine(fifth.metadata["lat"], fifth.metadata["lon"], LAT0, east_lon(1.0)) < 1e-3
    assert fifth.metadata["video"] == str(walk["video"].resolve())
    again = index_video(indexed, walk["video"], read_track(walk["csv"]), every=0.2)
    assert again.added == 0 and again.unchanged == 20  # a second run re-adds nothing


def test_track_without_time_overlap_is_refused(indexed: Collection, walk: dict) -> None:
    late = Track(np.array([100.0, 110.0]), np.array([LAT0, LAT0]), np.array([LON0, LON0]))
    with pytest.raises(TrackError, match=r"starts 96\.0\d\d s after the video .* ends"):
        index_video(indexed, walk["video"], late, every=1.0)
    early = Track(np.array([-50.0, -20.0]), np.array([LAT0, LAT0]), np.array([LON0, LON0]))
    with pytest.raises(TrackError, match=r"ends 20\.000 s before the video"):
        index_video(indexed, walk["video"], early, every=1.0)


# -- locating ----------------------------------------------------------------------------------
def test_locate_a_second_pass_frame_near_its_true_position(indexed: Collection, walk) -> None:
    t = 2.3  # between two indexed frames (2.2 and 2.4)
    query = second_pass(frame_at(walk["strip"], t))
    where = locate(indexed, [query], k=5)[0]
    error = haversine(where.lat, where.lon, LAT0, east_lon(SPEED_M_S * t))
    assert error < 0.5, error
    assert where.support and where.support[0].inlier
    assert abs(where.support[0].time - t) <= 0.21
    assert 0 < where.radius_m < 2.0


def test_locate_a_sequence(indexed: Collection, walk) -> None:
    times = [0.5, 0.9, 1.3, 1.7, 2.1, 2.5, 2.9, 3.3]
    queries = [second_pass(frame_at(walk["strip"], t)) for t in times]
    alone = locate(indexed, queries, k=5)
    together = locate(indexed, queries, k=5, sequence=True)
    truth = [east_lon(SPEED_M_S * t) for t in times]
    errors = [haversine(x.lat, x.lon, LAT0, lon) for x, lon in zip(together, truth, strict=True)]
    assert max(errors) < 0.6, errors
    assert len(alone) == len(together) == len(times)


def test_estimate_rejects_a_far_outlier() -> None:
    east = np.array([0.0, 0.3, 0.6, 50.0])
    lon = np.array([east_lon(e) for e in east])
    result = estimate(np.array([0.95, 0.95, 0.94, 0.95]), np.full(4, LAT0), lon, temperature=0.02)
    assert result.inliers.tolist() == [True, True, True, False]
    assert haversine(result.lat, result.lon, LAT0, east_lon(0.3)) < 0.1
    assert result.radius_m < 1.0


def test_viterbi_prefers_a_continuous_path() -> None:
    # Three queries walking east; at the middle one a look-alike 40 m away scores a bit higher.
    xy = np.array([[[0.0, 0], [40, 0]], [[1.0, 0], [40, 0]], [[2.0, 0], [40, 0]]])
    scores = np.array([[0.9, 0.5], [0.88, 0.9], [0.9, 0.5]])
    assert viterbi(scores, xy, step_m=1.0).tolist() == [0, 0, 0]
    assert np.argmax(scores, axis=1).tolist() == [0, 1, 0]


# -- command line and map ----------------------------------------------------------------------
def test_cli_index_video_and_locate(walk: dict, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lookalike.cli.application import app

    runner = CliRunner()
    col = str(tmp_path / "col")
    result = runner.invoke(
        app,
        ["index-video", str(walk["video"]), "--track", str(walk["gpx"]), "-c", col, "--every",
         "0.5", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kept"] == 8 and report["images"] == 8

    query = tmp_path / "q.jpg"
    second_pass(frame_at(walk["strip"], 1.5)).save(query)
    page = tmp_path / "map.html"
    result = runner.invoke(app, ["locate", str(query), "-c", col, "--json", "--map", str(page)])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout.strip().splitlines()[0])
    assert set(answer) >= {"query", "lat", "lon", "radius_m", "support"}
    assert haversine(answer["lat"], answer["lon"], LAT0, east_lon(1.5)) < 0.5
    assert "<svg" in page.read_text() and "polyline" in page.read_text()

    late = tmp_path / "late.csv"
    late.write_text("time,lat,lon\n100,48.0,2.0\n110,48.0,2.0001\n")
    result = runner.invoke(
        app, ["index-video", str(walk["video"]), "--track", str(late), "-c", col]
    )
    assert result.exit_code == 1 and "no overlap" in result.output

    empty = tmp_path / "empty"
    Collection.open(empty, create=True).close()
    result = runner.invoke(app, ["locate", str(query), "-c", str(empty)])
    assert result.exit_code == 1


def test_png_map(tmp_path: Path) -> None:
    from lookalike.geo.locate import Location
    from lookalike.geo.maps import write_map

    lon = np.array([east_lon(e) for e in (0.0, 1.0, 2.0)])
    predicted = [Location("q", LAT0, east_lon(1.1), 0.3)]
    out = write_map(tmp_path / "m.png", np.full(3, LAT0), lon, predicted=predicted,
                    truth=[(LAT0, east_lon(1.0))])  # fmt: skip
    assert out.stat().st_size > 1000 and Image.open(out).format == "PNG"
