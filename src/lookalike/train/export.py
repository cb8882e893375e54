"""Saving a trained model as a model folder: weights, ONNX and ``config.json``.

The folder loads as an embedder (:mod:`lookalike.models.trained`), e.g.
``lookalike index FOLDER --model MODEL_DIR``.

Example:
    >>> from lookalike.train.export import save_model
    >>> save_model(Path("parts-model"), head, cfg, base, in_dim=2280)  # doctest: +SKIP
    PosixPath('parts-model')
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from lookalike.models import Embedder
from lookalike.train.config import TrainConfig, jsonable
from lookalike.train.network import torch_module

__all__ = ["MODEL_FORMAT", "MODEL_FORMAT_VERSION", "export_onnx", "save_model"]

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


def save_model(
    out_dir: Path,
    model,
    cfg: TrainConfig,
    base: Embedder,
    *,
    in_dim: int,
    image_size: int | None = None,
    extra: dict | None = None,
) -> Path:
    """Write the model folder: weights (``.pt``), ONNX, ``config.json``; returns the folder.

    ``head`` mode: ``head.onnx`` maps the base descriptor (``descriptor``, (n, in_dim)) to the
    embedding. ``finetune``: ``model.onnx`` maps the preprocessed image (``image``) to it.
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
        "dim": cfg.dim,
        "head": head,
        "onnx": onnx_name,
        "training": asdict(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    (out_dir / "config.json").write_text(json.dumps(jsonable(config), indent=2) + "\n")
    return out_dir
