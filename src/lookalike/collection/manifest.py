"""The collection's manifest: format version, model, and the vector spaces it keeps.

``manifest.json`` is the first file a collection has and the one that says what the rest are::

    {"format": "lookalike-collection", "format_version": 2, "created": "...",
     "model": {"name", "version", "dim"}, "index": {"kind"},
     "spaces": {"image": {"dim", "index", "reduce", "expand", "encoding": "int8z"},
                "text": {"dim", "index", "derive": "conse", "version",
                         "encoding": "sparse:96"},
                "copy": {"model", "version", "dim", "index", "encoding": "int8"}}}

A space with a ``model`` is computed by a model of its own (copy detection); the others come from
the collection's model. ``encoding`` is how the catalogue stores the space's vectors
(``store.encoding``; docs/benchmarks.md, section ``compact``, has the measurements).

Formats: 1 kept every vector as float32 and a flat index per space (``index`` "flat", the
text space a dense 1000-d copy); 2 keeps them compact (``encoding``) and lets ``auto`` choose
every space's index. :func:`upgrade_manifest` reads both; a collection of format 1 is searched
as it is and upgraded in place by its next writer (``Spaces.upgrade``: re-encoding in batches,
resumable), or by ``lookalike check --repair``.

Example:
    >>> manifest = {"format": "lookalike-collection", "format_version": 1,
    ...             "model": {"name": "m", "version": "v", "dim": 4}, "index": {"kind": "flat"}}
    >>> upgrade_manifest(manifest, Path("col"))["spaces"]
    {'image': {'dim': 4, 'index': 'flat'}}
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lookalike.errors import CollectionError
from lookalike.models import Embedder

#: Version of the folder layout and manifest; see :func:`upgrade_manifest` for older ones.
FORMAT_VERSION = 2
DEFAULT_MODEL = "efficientnet-lite0"
#: Every space's index kind by default: chosen by size and memory budget (``index.auto``).
DEFAULT_INDEX = "auto"
#: How the catalogue stores each space's vectors (``store.encoding``), chosen by measurement
#: (docs/benchmarks.md, section ``compact``): int8 changes no retrieval figure of the default
#: descriptor at the 4th decimal, and zlib halves it again (its many small values); the text
#: space keeps each image's 96 largest class scores (Tiny ImageNet text mAP within 0.003 of
#: all 1000, where 64 lost 0.006); model spaces (copy detection) int8.
IMAGE_ENCODING = "int8z"
TEXT_ENCODING = "sparse:96"
SPACE_ENCODING = "int8"
#: The space of the collection's main (semantic) descriptor.
IMAGE_SPACE = "image"
#: The space text queries are matched in (derived from the image descriptors, see models/text.py).
TEXT_SPACE = "text"
#: The space of copy-detection descriptors (``lookalike.copies``), computed by its own model.
COPY_SPACE = "copy"
#: The main space is searched in a PCA-reduced form of this many dimensions, learned on the
#: collection once it holds REDUCE_MIN_IMAGES images (from a sample of PCA_SAMPLE vectors), and
#: with α-query expansion over the first EXPAND results (docs/benchmarks.md: both raise mAP).
REDUCE_DIM = 256
REDUCE_MIN_IMAGES = 1000
PCA_SAMPLE = 20_000
EXPAND = 3
#: The catalogue's meta key holding a copy of the manifest (``Catalogue.set_meta``), from which
#: ``lookalike check --repair`` restores a damaged manifest.json.
MANIFEST_COPY = "manifest"


def new_manifest(embedder: Embedder, index: str) -> dict:
    """The manifest of a new collection of ``embedder``'s descriptors in an ``index`` kind."""
    manifest = {
        "format": "lookalike-collection",
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"name": embedder.name, "version": embedder.version, "dim": embedder.dim},
        "index": {"kind": index},
        "spaces": {
            IMAGE_SPACE: {
                "dim": embedder.dim,
                "index": index,
                "reduce": REDUCE_DIM,
                "expand": EXPAND,
                "encoding": IMAGE_ENCODING,
            }
        },
    }
    if has_text_side(embedder):
        manifest["spaces"][TEXT_SPACE] = text_space_spec()
    return manifest


def model_space_spec(embedder: Embedder, index: str = DEFAULT_INDEX) -> dict:
    """The manifest entry of a space computed by a model of its own (``embedder``)."""
    return {
        "model": embedder.name,
        "version": embedder.version,
        "dim": int(embedder.dim),
        "index": index,
        "encoding": SPACE_ENCODING,
    }


def sparse_top(spec: dict) -> int | None:
    """How many entries a vector of a space keeps when it is stored sparse (``sparse:T``)."""
    name, _, top = str(spec.get("encoding", "")).partition(":")
    return int(top) if name == "sparse" and top.isdigit() else None


def read_manifest(path: Path) -> dict:
    """The manifest of the collection in ``path``, upgraded to :data:`FORMAT_VERSION`.

    Raises:
        CollectionError: it cannot be read, is not JSON, or lacks what every manifest has; the
            message names ``lookalike check --repair``.
    """
    file = path / "manifest.json"
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CollectionError(damaged(file, path, str(exc))) from None
    except OSError as exc:
        raise CollectionError(f"cannot read {file}: {exc.strerror or exc}") from None
    return parse_manifest(data, path)


def damaged(file: Path, path: Path, why: str) -> str:
    """The message for a damaged manifest."""
    return f"{file} is damaged ({why}): run `lookalike check --repair --collection {path}`"


def parse_manifest(data: object, path: Path) -> dict:
    """``data`` (a parsed manifest) checked for what every manifest has and upgraded."""
    file = path / "manifest.json"
    if isinstance(data, dict) and data.get("format") == "lookalike-collection":
        try:
            model, index = data["model"], data["index"]
            str(model["name"]), str(model["version"]), int(model["dim"]), str(index["kind"])
            spaces = data.get("spaces", {})
            for spec in spaces.values():
                int(spec["dim"]), str(spec["index"])
            int(data.get("format_version", 0))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CollectionError(damaged(file, path, f"bad or missing {exc}")) from None
    elif isinstance(data, dict) and "format" in data:
        pass  # upgrade_manifest says it is not a collection manifest
    else:
        raise CollectionError(damaged(file, path, "not a collection manifest"))
    return upgrade_manifest(data, path)


def saved_generation(state_file: Path) -> int | None:
    """The catalogue generation a saved index was stamped with (None: none, or unreadable)."""
    try:
        return int(json.loads(state_file.read_text())["generation"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def joint_text(embedder: Embedder) -> bool:
    """A model that embeds text in its own image space (CLIP)."""
    return hasattr(embedder, "embed_text")


def has_text_side(embedder: Embedder) -> bool:
    """A descriptor that carries ImageNet class probabilities, which text queries are matched
    against (ConSE, :mod:`lookalike.models.text`)."""
    return hasattr(embedder, "class_probabilities") and getattr(embedder, "fusion", 0) > 0


def text_space_spec(model: object | None = None) -> dict:
    """The manifest entry of the text space (derived from the image descriptors)."""
    if model is None:
        from lookalike.models.text import ConSE

        model = ConSE()
    return {
        "dim": model.dim,
        "index": DEFAULT_INDEX,
        "derive": "conse",
        "version": model.version,
        "encoding": TEXT_ENCODING,
    }


def upgrade_manifest(manifest: dict, path: Path) -> dict:
    """Bring an older manifest up to FORMAT_VERSION, or explain why it cannot be opened."""
    if manifest.get("format") != "lookalike-collection":
        raise CollectionError(f"{path}/manifest.json is not a lookalike collection manifest")
    version = int(manifest.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise CollectionError(
            f"{path} has collection format {version}, newer than this lookalike reads "
            f"({FORMAT_VERSION}): upgrade lookalike (pip install -U lookalike)"
        )
    # Early format-1 manifests named only the model's space; derive it.
    manifest.setdefault(
        "spaces",
        {IMAGE_SPACE: {"dim": manifest["model"]["dim"], "index": manifest["index"]["kind"]}},
    )
    # Format 1 is read as it is (its vectors are float32, which every encoding reader takes);
    # its next writer upgrades it in place with upgraded_spaces() (``Spaces.upgrade``).
    return manifest


def upgraded_spaces(manifest: dict) -> dict[str, dict]:
    """The spaces of a format-1 manifest as format 2 has them: each with its ``encoding``, and
    ``auto`` instead of ``flat`` (the former default, which kept every vector in RAM; another
    kind that was asked for stays). Format 2's own spaces are returned as they are.

    Example:
        >>> old = {"image": {"dim": 2280, "index": "flat"}, "text": {"dim": 1000,
        ...        "index": "flat", "derive": "conse", "version": "v"}}
        >>> new = upgraded_spaces({"format_version": 1, "spaces": old})
        >>> new["image"]["encoding"], new["text"]["encoding"], new["text"]["index"]
        ('int8z', 'sparse:96', 'auto')
    """
    spaces = {name: dict(spec) for name, spec in manifest["spaces"].items()}
    if int(manifest.get("format_version", 0)) >= FORMAT_VERSION:
        return spaces
    for name, spec in spaces.items():
        if name == TEXT_SPACE:
            spec.setdefault("encoding", TEXT_ENCODING)
        elif name == IMAGE_SPACE:
            spec.setdefault("encoding", IMAGE_ENCODING)
        else:
            spec.setdefault("encoding", SPACE_ENCODING)
        if spec.get("index") == "flat":
            spec["index"] = DEFAULT_INDEX
    return spaces
