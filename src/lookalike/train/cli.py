"""``lookalike train``: learn an embedding on labelled images, optionally measure it before/after.

Registered in :mod:`lookalike.cli.application` as ``app.command("train")(train_command)``.

Modes, from the cheapest: ``head`` (a projection head on the cached default descriptor),
``blocks`` (default: the last block(s) of EfficientNet-Lite, its pooling and the head, trained on
cached feature maps; minutes on a CPU), ``finetune`` (on images, for a GPU). ``--eval`` compares
the trained model with the default search (the same base descriptor, searched as a collection
searches it: PCA past 1000 images, alpha-query expansion) and with the whitening-only start. A
failed run (loss stuck at zero, or below the default search on validation) prints a warning,
writes its verdict to metrics.json and exits with status 3.

Example:
    $ lookalike train parts/ --out parts-model --eval
    $ lookalike train parts/ --out parts-model --goal unseen --mode head
    $ lookalike index photos/ --model parts-model --collection parts.lookalike
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lookalike.cli import validate
from lookalike.cli.common import err, errors, out
from lookalike.train.config import GOALS, LOSSES, MODES

METRIC_ROWS = ("mAP", "mAP@R", "Rank-1", "Rank-5", "Rank-10", "Rank-20", "dim", "ms_per_image")
#: Exit status of a run whose verdict is a failure (the model folder is still written).
FAILED_EXIT = 3


@contextmanager
def _stages_bar(enabled: bool) -> Iterator:
    """A rich progress bar with one line per stage (features, epochs)."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, disable=not (enabled and err.is_terminal)) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def train_command(
    dataset: Annotated[
        Path,
        typer.Argument(
            metavar="DATASET",
            callback=validate.existing_path,
            help="Labelled images: one folder per class, or query/ + gallery/ with "
            "<identity>_<image> file names.",
        ),
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", metavar="DIR", help="Model folder to write.")
    ],
    base: Annotated[str, typer.Option(metavar="MODEL", help="Base embedder.")] = (
        "efficientnet-lite0"
    ),
    loss: Annotated[
        str,
        typer.Option(
            metavar="LOSS",
            callback=validate.choice(*LOSSES, what="loss"),
            help=f"Metric-learning loss: {', '.join(LOSSES)} (triplet: batch-hard).",
        ),
    ] = "multisimilarity",
    epochs: Annotated[
        int, typer.Option(min=1, metavar="N", help="Most epochs (early stopping).")
    ] = 12,
    mode: Annotated[
        str,
        typer.Option(
            metavar="MODE",
            callback=validate.choice(*MODES, what="training mode"),
            help=f"One of {', '.join(MODES)}: blocks trains the last block(s), pooling and a "
            "head on cached feature maps (minutes on a CPU), head only a head on the cached "
            "descriptor (fastest), finetune on images (GPU).",
        ),
    ] = "blocks",
    goal: Annotated[
        str,
        typer.Option(
            metavar="GOAL",
            callback=validate.choice(*GOALS, what="goal"),
            help="What early stopping measures: seen (new images of the training classes) or "
            "unseen (held-out classes).",
        ),
    ] = "seen",
    eval_: Annotated[
        bool,
        typer.Option(
            "--eval",
            help="Report metrics before/after on --test, else on held-out classes (--holdout, "
            "0.5 when not given).",
        ),
    ] = False,
    test: Annotated[
        Path | None,
        typer.Option(
            metavar="DATASET",
            callback=validate.existing_path,
            help="Separate test set for --eval (any layout).",
        ),
    ] = None,
    holdout: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=0.9,
            metavar="FRACTION",
            help="Fraction of classes kept out of training for test.",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(metavar="N", help="Random seed (splits, sampling, weights).")
    ] = 0,
    batch_size: Annotated[int, typer.Option(min=1, metavar="N", help="Images per batch.")] = 64,
    dim: Annotated[int, typer.Option(min=1, metavar="N", help="Embedding size.")] = 512,
    lr: Annotated[float, typer.Option(min=0.0, metavar="RATE", help="Learning rate.")] = 1e-4,
    patience: Annotated[
        int, typer.Option(min=1, metavar="N", help="Epochs without progress before stopping.")
    ] = 3,
    blocks: Annotated[
        int,
        typer.Option(
            min=0, metavar="N", help="blocks, finetune: last MBConv blocks trained (0: 1x1 only)."
        ),
    ] = 1,
    views: Annotated[
        int,
        typer.Option(
            min=1, metavar="N", help="blocks: colour/crop views cached per training image."
        ),
    ] = 3,
    memory: Annotated[
        int,
        typer.Option(
            min=0, metavar="N", help="Cross-batch memory: past embeddings mined (0: off)."
        ),
    ] = 1024,
    distill: Annotated[
        float,
        typer.Option(
            min=0.0, metavar="WEIGHT", help="Distillation of the start's similarities (0: off)."
        ),
    ] = 1.0,
    draw_map: Annotated[
        bool,
        typer.Option(
            "--map/--no-map", help="With --eval: write map.png (UMAP, else t-SNE) and gradcam.png."
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Learn a similarity on labelled images (metric learning) and write a model folder."""
    from lookalike.evaluate.datasets import DatasetError
    from lookalike.train import (
        TrainConfig,
        TrainError,
        compare,
        load_labelled,
        split_classes,
    )
    from lookalike.train import train as run_training

    with errors():
        try:
            data = load_labelled(dataset)
            test_data = load_labelled(test) if test is not None else None
            if eval_ and test_data is None and holdout is None:
                holdout = 0.5
            if holdout:
                held = split_classes(data.labels, holdout, seed)
                data, test_data = data.take(~held), data.take(held)
            cfg = TrainConfig(
                base=base, loss=loss, mode=mode, goal=goal, epochs=epochs, seed=seed,
                batch_size=batch_size, dim=dim, lr=lr, patience=patience, blocks=blocks,
                views=views, memory=memory, distill=distill,
            )  # fmt: skip

            def log(line: str) -> None:
                if line.startswith("warning:"):
                    err.print(f"[yellow]warning:[/yellow]{line[8:]}", highlight=False)
                elif not as_json:
                    err.print(line, highlight=False)

            with _stages_bar(not as_json) as bar, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                result = run_training(data, out_dir, config=cfg, progress=bar, log=log)
            for w in caught:
                if "finetune runs on the CPU" in str(w.message):
                    err.print(f"[yellow]warning:[/yellow] {w.message}")
            comparison = None
            if eval_ and test_data is not None:
                comparison = compare(out_dir, test_data)
                _save_test(out_dir, comparison, draw_map)
        except (DatasetError, TrainError) as exc:
            err.print(f"[red]error:[/red] {str(exc).splitlines()[0]}", highlight=False)
            raise typer.Exit(1) from None
    if as_json:
        data_out = result.to_dict()
        if comparison is not None:
            data_out["test"] = comparison.to_dict()
        print(json.dumps(data_out))
    else:
        _print_result(result, comparison)
    if result.failed:
        raise typer.Exit(FAILED_EXIT)


def _save_test(out_dir: Path, comparison, draw_map: bool) -> None:
    """Add the test figures to metrics.json, and the before/after map."""
    metrics_path = out_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["test"] = comparison.to_dict()
    if draw_map:
        try:
            from lookalike.train.plots import plot_embedding_map

            metrics["test"]["map"] = plot_embedding_map(
                comparison.frozen, comparison.trained, comparison.labels, out_dir / "map.png"
            )
        except ImportError as exc:  # matplotlib / scikit-learn missing: figures only
            err.print(f"[yellow]no map:[/yellow] {exc}")
        metrics["test"]["gradcam"] = _gradcam(out_dir, comparison)
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")


def _gradcam(out_dir: Path, comparison) -> str | None:
    """Grad-CAM over the first test query and its best match; the PNG's name, or None."""
    from lookalike.train.plots import gradcam_pair

    scores = comparison.trained[1:] @ comparison.trained[0]
    best = int(scores.argmax()) + 1
    try:
        gradcam_pair(out_dir, comparison.paths[0], comparison.paths[best], out_dir / "gradcam.png")
    except (ImportError, ValueError, KeyError) as exc:  # e.g. a fine-tuned or non-EfficientNet
        err.print(f"[yellow]no Grad-CAM:[/yellow] {exc}")
        return None
    return "gradcam.png"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _print_result(result, comparison) -> None:
    out.print(
        f"[bold]{result.model_dir}[/bold]: {result.config.mode} / {result.config.loss}, "
        f"best epoch {result.best_epoch} of {len(result.history) - 1}"
        f"{' (early stop)' if result.stopped_early else ''}, {result.seconds:.1f} s "
        f"(features {result.feature_seconds:.1f} s) on {result.device}; "
        f"{result.images['train']} training images in {result.images['train_classes']} classes"
    )
    out.print(
        f"validation mAP@R ({result.config.goal} classes, searched as a collection): default "
        f"search {_fmt(result.baseline['mAP@R'])}, whitening only "
        f"{_fmt(result.whitening.get('mAP@R', math.nan))} -> trained "
        f"{_fmt(result.validation['mAP@R'])}"
    )
    colour = "red" if result.failed else "green" if result.verdict == "improved" else "yellow"
    out.print(f"verdict: [{colour}]{result.verdict}[/{colour}]")
    if comparison is None:
        return
    table = Table(title="test split, searched as a collection (PCA past 1000 images, expansion)")
    for column in ("metric", "default search", "whitening only", "trained", "change"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name in METRIC_ROWS:
        before, after = comparison.before.get(name), comparison.after.get(name)
        if before is None:
            continue
        change = ""
        if name not in ("dim",) and isinstance(before, float) and isinstance(after, float):
            change = f"{after - before:+.4f}"
        whitened = comparison.whitening.get(name, math.nan)
        table.add_row(name, _fmt(before), _fmt(whitened), _fmt(after), change)
    out.print(table)
    out.print(f"queries: {comparison.after['queries']}; figures in {result.model_dir}")


def register(app: typer.Typer) -> None:
    """Add ``train`` to ``app``."""
    app.command("train")(train_command)
