"""Metric learning (``lookalike train``): a tiny head trained for a few steps on made-up classes.

The classes are scikit-image photos; each class holds random crops of one photo with small
colour changes, so the identities are real but the dataset is made in the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from lookalike.collection import Collection
from lookalike.models import load_embedder
from lookalike.train import (
    TrainConfig,
    backbone_features,
    load_labelled,
    retrieval_metrics,
    split_classes,
    train,
    validation_split,
)
from tests.conftest import skimage_photo

CLASSES = ("astronaut", "chelsea", "coffee", "rocket", "coins", "horse")
PER_CLASS = 8


def _crops(photo: Image.Image, count: int, rng: np.random.Generator) -> list[Image.Image]:
    w, h = photo.size
    out = []
    for _ in range(count):
        scale = rng.uniform(0.45, 0.8)
        cw, ch = int(w * scale), int(h * scale)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = photo.crop((x, y, x + cw, y + ch)).resize((128, 128))
        out.append(ImageEnhance.Color(crop).enhance(rng.uniform(0.6, 1.4)))
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six classes (folders) of eight crops each."""
    root = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir()
        for i, crop in enumerate(_crops(skimage_photo(name), PER_CLASS, rng)):
            crop.save(root / name / f"{name}_{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def trained(dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("model") / "crops-model"
    cfg = TrainConfig(
        loss="multisimilarity", epochs=12, hidden=64, dim=32, batch_size=24, lr=3e-3,
        patience=100, val_fraction=0.25, init="random",  # from random: the loss has to fall
    )  # fmt: skip
    return train(dataset, out, config=cfg)


def test_loss_falls_and_validation_is_measured(trained) -> None:
    losses = [h["loss"] for h in trained.history[1:]]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    assert trained.images == {
        "train": 36, "train_classes": 6, "validation": 12, "validation_classes": 6,
    }  # fmt: skip
    assert 0 <= trained.validation["mAP@R"] <= 1
    assert trained.validation["mAP@R"] >= trained.history[0]["val_mAP@R"]  # beats the random head


def test_model_folder_round_trips(trained, dataset: Path) -> None:
    import torch

    from lookalike.models.trained import TrainedEmbedder
    from lookalike.train import make_head

    folder = trained.model_dir
    for name in ("config.json", "head.pt", "head.onnx", "metrics.json", "curves.png"):
        assert (folder / name).stat().st_size > 0, name
    config = json.loads((folder / "config.json").read_text())
    assert config["base"]["name"] == "efficientnet-lite0" and config["dim"] == 32
    assert json.loads((folder / "metrics.json").read_text())["best_epoch"] == trained.best_epoch

    model = load_embedder(str(folder))
    assert isinstance(model, TrainedEmbedder)
    assert model.name == str(folder.resolve()) and model.dim == 32
    assert model.version == load_embedder(str(folder)).version  # stable across loads

    # The ONNX head computes what the saved PyTorch weights compute.
    data = load_labelled(dataset)
    base = load_embedder("efficientnet-lite0")
    features, ok = backbone_features(base, data.paths)
    assert ok.all()
    head = make_head(config["head"]["in_dim"], 64, 32)
    head.load_state_dict(torch.load(folder / "head.pt", weights_only=True))
    head.eval()
    with torch.no_grad():
        expected = head(torch.from_numpy(features[:8])).numpy()
    np.testing.assert_allclose(model.embed_descriptors(features[:8]), expected, atol=1e-4)
    images = [Image.open(p) for p in data.paths[:3]]
    vectors = model.embed_images(images)
    assert vectors.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    prepared = model.embed_prepared([model.prepare(im) for im in images])  # the indexing path
    np.testing.assert_allclose(prepared, vectors, atol=1e-5)


def test_collection_indexes_and_searches_with_trained_model(trained, dataset, tmp_path) -> None:
    path = tmp_path / "col"
    with Collection.create(path, model=str(trained.model_dir)) as col:
        report = col.sync([dataset])
        assert report.added == len(CLASSES) * PER_CLASS
        query = dataset / "chelsea" / "chelsea_0.jpg"
        hits = col.search(query, k=4)
    assert hits[0].path == str(query.resolve()) and hits[0].score > 0.99
    assert sum("/chelsea/" in h.path for h in hits[1:]) >= 2
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["model"]["name"] == str(trained.model_dir.resolve())
    assert manifest["model"]["dim"] == 32
    assert manifest["model"]["version"].startswith("trained/head/")
    # Reopened by the model folder's path (relative or not), it finds its model again.
    with Collection.open(path, model=str(trained.model_dir)) as col:
        assert col.search(query, k=1)[0].path == str(query.resolve())


def test_cli_train_eval_prints_before_after(dataset, tmp_path) -> None:
    from typer.testing import CliRunner

    from lookalike.cli.application import app

    out = tmp_path / "cli-model"
    result = CliRunner().invoke(
        app,
        ["train", str(dataset), "--out", str(out), "--epochs", "2", "--eval", "--dim", "16",
         "--batch-size", "12", "--no-map", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["images"]["train_classes"] == 3  # --eval holds half the classes out
    for side in ("before", "after"):
        for metric in ("mAP", "mAP@R", "Rank-1", "Rank-5", "Rank-10", "Rank-20", "ms_per_image"):
            assert data["test"][side][metric] is not None
    assert data["test"]["after"]["dim"] == 16
    assert json.loads((out / "metrics.json").read_text())["test"]["before"]["queries"] == 24


def test_cli_train_refuses_unknown_loss(dataset, tmp_path) -> None:
    from typer.testing import CliRunner

    from lookalike.cli.application import app

    result = CliRunner().invoke(
        app, ["train", str(dataset), "--out", str(tmp_path / "m"), "--loss", "nope"]
    )
    assert result.exit_code == 1
    assert "unknown loss" in result.output


def test_splits_and_metrics() -> None:
    labels = np.repeat([f"c{i}" for i in range(10)], 5)
    held = split_classes(labels, 0.5, seed=3)
    assert len(set(labels[held])) == 5 and not set(labels[held]) & set(labels[~held])
    val = validation_split(labels, 0.2, seed=0)  # 10 classes: whole classes held out
    assert len(set(labels[val])) == 2 and not set(labels[val]) & set(labels[~val])
    few = validation_split(np.repeat(["a", "b"], 6), 0.25, seed=0)  # 2 classes: images
    assert few.sum() == 4 and set(np.repeat(["a", "b"], 6)[few]) == {"a", "b"}

    perfect = np.eye(2, dtype=np.float32)[[0, 0, 1, 1]]
    m = retrieval_metrics(perfect, ["a", "a", "b", "b"])
    assert m["mAP"] == m["mAP@R"] == m["Rank-1"] == 1.0
    # Query/gallery: only the query row searches; its match ranks second of three.
    v = np.array([[1, 0], [0.9, 0.1], [0.5, 0.5], [1, 0.05]], np.float32)
    q = np.array([True, False, False, False])
    m = retrieval_metrics(v, ["x", "y", "x", "z"], q, ~q)
    assert m["queries"] == 1 and m["Rank-1"] == 0.0 and m["mAP"] == pytest.approx(1 / 3)


def test_learned_whitening_discounts_within_class_variation() -> None:
    from lookalike.train import learned_whitening

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20).astype(str), 10)
    centres = rng.normal(size=(20, 8))
    signal = centres[labels.astype(int)] * 0.3  # classes differ a little on 8 axes...
    noise = rng.normal(size=(200, 24)) * np.r_[np.full(8, 0.05), np.full(16, 1.0)]
    x = np.concatenate([signal, np.zeros((200, 16))], axis=1) + noise  # ...noise is large on 16
    train, test = labels.astype(int) < 10, labels.astype(int) >= 10  # unseen classes
    mean, projection = learned_whitening(x[train], labels[train], dim=8)
    assert projection.shape == (24, 8)
    raw = retrieval_metrics(x[test] / np.linalg.norm(x[test], axis=1, keepdims=True), labels[test])
    z = (x[test] - mean) @ projection
    learned = retrieval_metrics(z / np.linalg.norm(z, axis=1, keepdims=True), labels[test])
    assert learned["mAP@R"] > raw["mAP@R"] + 0.2


def test_finetune_mode_trains_and_exports_a_whole_network(dataset, tmp_path) -> None:
    """One short epoch of the last block at 64 px: the GPU mode's plumbing, run on the CPU."""
    cfg = TrainConfig(
        mode="finetune", epochs=1, batch_size=12, image_size=64, hidden=0, dim=16, blocks=1
    )
    import contextlib

    import torch

    on_cpu = not torch.cuda.is_available()
    warns = pytest.warns(UserWarning, match="finetune runs on the CPU")
    with warns if on_cpu else contextlib.nullcontext():
        result = train(dataset, tmp_path / "ft", config=cfg)
    assert (tmp_path / "ft" / "model.onnx").exists() and len(result.history) == 2
    model = load_embedder(str(tmp_path / "ft"))
    vectors = model.embed_images([Image.open(next(dataset.rglob("*.jpg")))])
    assert vectors.shape == (1, 16) and model.version.startswith("trained/finetune/")
