"""``lookalike train``: learn an embedding on labelled images, optionally measure it before/after.

Registered in :mod:`lookalike.cli.application` as ``app.command("train")(train_command)``.

Example:
    $ lookalike train parts/ --out parts-model --epochs 20 --eval
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

from lookalike.cli.common import err, errors, out

METRIC_ROWS = ("mAP", "mAP@R", "Rank-1", "Rank-5", "Rank-10", "Rank-20", "dim", "ms_per_image")


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
            help="Labelled images: one folder per class, or query/ + gallery/ with "
            "<identity>_<image> file names."
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    base: Annotated[str, typer.Option(help="Base embedder.")] = "efficientnet-lite0",
    loss: Annotated[str, typer.Option(help="triplet, multisimilarity or arcface.")] = "triplet",
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs (early stopping).")] = 30,
    mode: Annotated[
        str, typer.Option(help="head (frozen backbone, CPU) or finetune (last blocks, GPU).")
    ] = "head",
    eval_: Annotated[
        bool,
        typer.Option(
            "--eval",
            help="Report metrics before/after on --test, else on held-out classes (--holdout, "
            "0.5 when not given).",
        ),
    ] = False,
    test: Annotated[
        Path | None, typer.Option(help="Separate test set for --eval (any layout).")
    ] = None,
    holdout: Annotated[
        float | None,
        typer.Option(min=0.0, max=0.9, help="Fraction of classes kept out of training for test."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (splits, sampling, weights).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 128,
    dim: Annotated[int, typer.Option(help="Embedding size.")] = 512,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-4,
    patience: Annotated[int, typer.Option(help="Epochs without progress before stopping.")] = 5,
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
                base=base, loss=loss, mode=mode, epochs=epochs, seed=seed,
                batch_size=batch_size, dim=dim, lr=lr, patience=patience,
            )  # fmt: skip
            log = None if as_json else (lambda line: err.print(line, highlight=False))
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
        return
    _print_result(result, comparison)


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
        f"validation mAP@R: frozen {_fmt(result.baseline['mAP@R'])} -> trained "
        f"{_fmt(result.validation['mAP@R'])}"
    )
    if comparison is None:
        return
    table = Table(title="test split: before / after")
    for column in ("metric", "frozen backbone", "trained", "change"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name in METRIC_ROWS:
        before, after = comparison.before.get(name), comparison.after.get(name)
        if before is None:
            continue
        change = ""
        if name not in ("dim",) and isinstance(before, float) and isinstance(after, float):
            change = f"{after - before:+.4f}"
        table.add_row(name, _fmt(before), _fmt(after), change)
    out.print(table)
    out.print(f"queries: {comparison.after['queries']}; figures in {result.model_dir}")


def register(app: typer.Typer) -> None:
    """Add ``train`` to ``app``."""
    app.command("train")(train_command)
