"""Saving a trained model as a model folder: weights, ONNX and ``config.json``.

The folder loads as an embedder (:mod:`lookalike.models.trained`), e.g.
``lookalike index FOLDER --model MODEL_DIR``. A ``blocks`` model is one ONNX graph from the image
to the embedding: the base's int8 graph up to the trained blocks (exactly what the cached views
came from), then the trained blocks, pooling and head in float32 (:func:`export_blocks`); it
loads like a ``finetune`` model (``model.onnx``, input ``image``), so the loader needs nothing
new. ``whitening.npz`` holds the learned whitening the head started from (the "whitening only"
row of ``--eval``).

Example:
    >>> from lookalike.train.export import save_model
    >>> save_model(Path("parts-model"), head, cfg, base, in_dim=2280)  # doctest: +SKIP
    PosixPath('parts-model')
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lookalike.models import Embedder
from lookalike.train.config import TrainConfig, jsonable
from lookalike.train.network import torch_module

__all__ = ["MODEL_FORMAT", "MODEL_FORMAT_VERSION", "export_blocks", "export_onnx", "save_model"]

MODEL_FORMAT = "lookalike-trained-model"
MODEL_FORMAT_VERSION = 1


def export_onnx(module, example, path: Path, input_name: str, dynamic: dict) -> Path:
    """Export ``module`` to ONNX (opset 17) atomically; output name ``embedding``."""
    torch = torch_module()
    module = module.cpu().eval()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(tmp),
            input_names=[input_name],
            output_names=["embedding"],
            dynamic_axes={input_name: dynamic, "embedding": {0: "n"}},
            opset_version=17,
            dynamo=False,
        )
    os.replace(tmp, path)
    return path


def export_blocks(model, base: str, blocks: int, channels: int, path: Path) -> Path:
    """One ONNX graph image -> embedding: the base's int8 prefix (:func:`~lookalike.train.views.
    prefix_model`) joined to ``model`` (:func:`~lookalike.train.network.make_blocks_net`)
    exported in float32 with input ``maps`` of ``channels`` channels."""
    import onnx

    from lookalike.train.views import prefix_model

    suffix_path = path.with_name(f".{path.stem}.{os.getpid()}.suffix.onnx")
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        torch = torch_module()
        export_onnx(
            model, torch.zeros(2, channels, 7, 7), suffix_path, "maps", {0: "n", 2: "h", 3: "w"}
        )
        prefix = onnx.load(str(prefix_model(base, blocks)))
        suffix = onnx.load(str(suffix_path))
        cut = prefix.graph.output[0].name
        version = max(prefix.ir_version, suffix.ir_version)
        prefix.ir_version = suffix.ir_version = version
        opsets = {o.domain: o.version for o in prefix.opset_import}
        for o in suffix.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
        for m in (prefix, suffix):
            del m.opset_import[:]
            m.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
        merged = onnx.compose.merge_models(
            prefix, suffix, io_map=[(cut, "maps")], prefix2="trained/"
        )
        merged.graph.output[0].name = "embedding"
        for node in merged.graph.node:  # the output keeps its plain name
            node.output[:] = ["embedding" if o == "trained/embedding" else o for o in node.output]
        onnx.save(merged, str(tmp))
        os.replace(tmp, path)
    finally:
        suffix_path.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return path


def save_model(
    out_dir: Path,
    model,
    cfg: TrainConfig,
    base: Embedder,
    *,
    in_dim: int,
    image_size: int | None = None,
    extra: dict | None = None,
    whitening: tuple | None = None,
    channels: int | None = None,
    blend: float = math.inf,
) -> Path:
    """Write the model folder: weights (``.pt``), ONNX, ``config.json``; returns the folder.

    ``head`` mode: ``head.onnx`` maps the base descriptor (``descriptor``, (n, in_dim)) to the
    embedding. ``blocks`` and ``finetune``: ``model.onnx`` maps the preprocessed image
    (``image``) to it (``blocks``: ``channels`` is the trained blocks' input width).
    ``whitening = (mean, projection)``: the head's learned-whitening start, kept in
    ``whitening.npz`` with its ``blend`` (:func:`~lookalike.train.whitening.start_vectors`).
    """
    torch = torch_module()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    if cfg.mode == "head":
        torch.save(model.state_dict(), out_dir / "head.pt")
        onnx_name = "head.onnx"
        export_onnx(model, torch.zeros(2, in_dim), out_dir / onnx_name, "descriptor", {0: "n"})
        head = {
            "type": "linear+residual-mlp",
            "in_dim": in_dim,
            "hidden": cfg.hidden,
            "dim": cfg.dim,
            "blend": None if math.isinf(blend) else blend,
        }
    elif cfg.mode == "blocks":
        torch.save(model.state_dict(), out_dir / "blocks.pt")
        onnx_name = "model.onnx"
        export_blocks(model, cfg.base, cfg.blocks, int(channels or 0), out_dir / onnx_name)
        head = {
            "type": "blocks+gem+linear+residual-mlp",
            "blocks": cfg.blocks,
            "in_dim": in_dim,
            "hidden": cfg.hidden,
            "dim": cfg.dim,
            "blend": None if math.isinf(blend) else blend,
        }
    else:
        torch.save(model.state_dict(), out_dir / "finetuned.pt")
        onnx_name = "model.onnx"
        size = image_size or base.input_size
        export_onnx(
            model,
            torch.zeros(1, 3, size, size),
            out_dir / onnx_name,
            "image",
            {0: "n", 2: "h", 3: "w"},
        )
        head = {"type": "linear+residual-mlp", "in_dim": 1280, "hidden": cfg.hidden, "dim": cfg.dim}
    config = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "mode": cfg.mode,
        "base": {"name": base.name, "version": base.version, "dim": base.dim},
        "input_size": image_size or base.input_size,
        "dim": int(getattr(model, "out_dim", cfg.dim)),
        "head": head,
        "onnx": onnx_name,
        "training": asdict(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    if whitening is not None:
        np.savez(
            out_dir / "whitening.npz",
            mean=whitening[0],
            projection=whitening[1],
            blend=np.float64(blend),
        )
    (out_dir / "config.json").write_text(json.dumps(jsonable(config), indent=2) + "\n")
    return out_dir
