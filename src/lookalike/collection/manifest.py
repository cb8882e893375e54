"""The collection's manifest: format version, model, and the vector spaces it keeps.

``manifest.json`` is the first file a collection has and the one that says what the rest are::

    {"format": "lookalike-collection", "format_version": 1, "created": "...",
     "model": {"name", "version", "dim"}, "index": {"kind"},
     "spaces": {"image": {"dim", "index", "reduce", "expand"},
                "text": {"dim", "index", "derive": "conse", "version"},
                "copy": {"model", "version", "dim", "index"}}}

A space with a ``model`` is computed by a model of its own (copy detection); the others come from
the collection's model. :func:`upgrade_manifest` reads older formats or says how to migrate.

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
FORMAT_VERSION = 1
DEFAULT_MODEL = "efficientnet-lite0"
DEFAULT_INDEX = "flat"
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
            }
        },
    }
    if has_text_side(embedder):
        manifest["spaces"][TEXT_SPACE] = text_space_spec()
    return manifest


def model_space_spec(embedder: Embedder, index: str = "flat") -> dict:
    """The manifest entry of a space computed by a model of its own (``embedder``)."""
    return {
        "model": embedder.name,
        "version": embedder.version,
        "dim": int(embedder.dim),
        "index": index,
    }


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
    return {"dim": model.dim, "index": "flat", "derive": "conse", "version": model.version}


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
    # Format 1 is the first; future upgrades go here, oldest first, and rewrite the manifest.
    # Early format-1 manifests named only the model's space; derive it.
    manifest.setdefault(
        "spaces",
        {IMAGE_SPACE: {"dim": manifest["model"]["dim"], "index": manifest["index"]["kind"]}},
    )
    return manifest
