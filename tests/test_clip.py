"""The CLIP backend's plumbing, on a tiny CLIP built from a config with random weights.

No CLIP weights can be installed from a package registry here, so these tests check shapes,
normalisation, the shared image/text space, and saving and reopening a collection, not the
quality of the answers (random weights have none).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lookalike import Collection
from lookalike.models import load_embedder

transformers = pytest.importorskip("transformers")


def make_tiny_clip(folder: Path) -> Path:
    """Save a tiny CLIP with random weights (16-d, 32-px images) and its tokenizer in ``folder``;
    ``clip:<folder>`` loads it. Also used by the embedder contract test."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizerFast(
        vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt")
    )
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    transformers.CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def test_clip_embeds_images_and_text_in_one_space(tiny_clip, photo_dir) -> None:
    from PIL import Image

    clip = load_embedder(f"clip:{tiny_clip}")
    assert clip.dim == 16 and clip.input_size == 32 and clip.name == f"clip:{tiny_clip}"
    images = clip.embed_images([Image.open(p) for p in sorted(photo_dir.iterdir())[:3]])
    texts = clip.embed_text(["a red bus", "a cat"])
    assert images.shape == (3, 16) and texts.shape == (2, 16)
    assert np.allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    assert not np.allclose(images[0], images[1])  # different pictures, different vectors


def test_a_clip_collection_saves_reopens_and_answers_text(tiny_clip, tmp_path, photo_dir) -> None:
    model = f"clip:{tiny_clip}"
    with Collection.create(tmp_path / "col", model=model) as col:
        col.sync([photo_dir])
        assert "text" not in col.spaces() and col.has_text()
        before = [h.id for h in col.search_text("a cat", k=6)]
    with Collection.open(tmp_path / "col") as col:
        assert col.model_name == model and col.dim == 16
        assert [h.id for h in col.search_text("a cat", k=6)] == before
        assert col.search(photo_dir / "rocket.jpg", k=1, expand=0)[0].score == pytest.approx(
            1, abs=1e-4
        )
