"""Pictures of a training run: loss and validation curves, 2-D maps of embeddings, Grad-CAM.

Example:
    >>> from lookalike.train.plots import plot_curves
    >>> plot_curves(result.history, "curves.png", baseline=0.31)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    history: Sequence[dict[str, float]],
    path: str | Path,
    *,
    baseline: float | None = None,
    whitening: float | None = None,
) -> Path:
    """Training loss and validation mAP@R per epoch (the default search's mAP@R dashed, the
    whitening start's dotted; epoch 0 is the start).

    Example:
        >>> plot_curves([{"epoch": 1, "loss": 0.1, "val_mAP@R": 0.4}], "c.png")  # doctest: +SKIP
    """
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(epochs[1:], [h["loss"] for h in history[1:]], marker="o", ms=3)
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    ax_val.plot(epochs, [h["val_mAP@R"] for h in history], marker="o", ms=3, label="trained")
    if baseline is not None and not math.isnan(baseline):
        ax_val.axhline(baseline, ls="--", color="grey", label="default search")
    if whitening is not None and not math.isnan(whitening):
        ax_val.axhline(whitening, ls=":", color="tab:green", label="whitening only")
    ax_val.set(title="validation mAP@R", xlabel="epoch", ylabel="mAP@R")
    ax_val.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def project_2d(vectors: NDArray[np.float32], method: str = "auto", seed: int = 0):
    """2-D coordinates of ``vectors`` and the method used: UMAP (``umap-learn``) when it is
    installed, else scikit-learn's t-SNE; ``"umap"``/``"tsne"`` force one."""
    if method in ("auto", "umap"):
        try:
            import umap

            reducer = umap.UMAP(n_neighbors=15, min_dist=0.1, metric="cosine", random_state=seed)
            return reducer.fit_transform(vectors), "UMAP"
        except ImportError:
            if method == "umap":
                raise
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(vectors) - 1) // 3)))
    tsne = TSNE(2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed)
    return tsne.fit_transform(vectors), "t-SNE"


def plot_embedding_map(
    before: NDArray[np.float32],
    after: NDArray[np.float32],
    labels: Sequence[str],
    path: str | Path,
    *,
    max_classes: int = 12,
    method: str = "auto",
    seed: int = 0,
) -> str:
    """Side-by-side 2-D maps of the same images before and after training, coloured by identity.

    At most ``max_classes`` identities are drawn (the first in sorted order) so that colours
    stay distinguishable. Returns the projection method used ("UMAP" or "t-SNE").

    Example:
        >>> plot_embedding_map(frozen, trained, labels, "map.png")  # doctest: +SKIP
        'UMAP'
    """
    plt = _pyplot()
    labels = np.asarray(labels, dtype=str)
    shown = np.unique(labels)[:max_classes]
    keep = np.isin(labels, shown)
    colours = plt.get_cmap("tab20" if len(shown) > 10 else "tab10")
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    used = ""
    for ax, vectors, title in (
        (axes[0], before, "default descriptor"),
        (axes[1], after, "trained"),
    ):
        xy, used = project_2d(np.asarray(vectors)[keep], method, seed)
        for i, label in enumerate(shown):
            rows = labels[keep] == label
            ax.scatter(xy[rows, 0], xy[rows, 1], s=8, color=colours(i % colours.N), label=label)
        ax.set(title=f"{title} ({used})", xticks=[], yticks=[])
    axes[1].legend(loc="center left", bbox_to_anchor=(1, 0.5), fontsize=7, markerscale=2)
    fig.tight_layout()
    fig.savefig(Path(path), dpi=110)
    plt.close(fig)
    return used


def gradcam_pair(model_dir: str | Path, query: str | Path, match: str | Path, path: str | Path):
    """Grad-CAM of the trained similarity over a query and a match, written as one PNG.

    The score is the cosine similarity of the two trained embeddings; the maps show which regions
    of the last feature map raise it (gradient-weighted activations, Selvaraju et al. 2017). Runs
    the fp32 PyTorch EfficientNet-Lite (the index uses int8 ONNX: the maps are indicative).
    Needs a ``head`` or ``blocks`` model on an EfficientNet-Lite base with fused probabilities.

    Example:
        >>> gradcam_pair("parts-model", "q.jpg", "best.jpg", "cam.png")  # doctest: +SKIP
    """
    import torch

    from lookalike.images import decode
    from lookalike.models.efficientnet import preprocess, weights_path
    from lookalike.models.trained import read_config
    from lookalike.train.network import make_blocks_net, make_head, make_prefix_net

    config = read_config(model_dir)
    if config["mode"] not in ("head", "blocks"):
        raise ValueError("Grad-CAM is implemented for head and blocks models")
    base = config["base"]["name"]
    head_cfg = config["head"]
    blend = head_cfg.get("blend")
    head = make_head(
        head_cfg["in_dim"],
        head_cfg["hidden"],
        head_cfg["dim"],
        blend=math.inf if blend is None else float(blend),
    )
    fusion = (
        0.5  # EfficientNetLite's default fusion weight (the base version string says avg+probs0.5)
    )
    size = int(config["input_size"])
    images = [decode(p, min_side=size) for p in (query, match)]
    x = torch.from_numpy(preprocess(images, size))
    if config["mode"] == "blocks":
        blocks = int(head_cfg["blocks"])
        trained = make_blocks_net(base, blocks, head, fusion)
        trained.load_state_dict(torch.load(Path(model_dir) / "blocks.pt", weights_only=True))
        trained.eval()
        with torch.no_grad():
            cut = make_prefix_net(base, blocks)(x)
        fmap = trained.feature_map(cut)
        fmap.retain_grad()
        embedding = trained.head(trained.pooled(fmap))
    else:
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(base)
        state = torch.load(weights_path(base), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        net.eval()
        head.load_state_dict(torch.load(Path(model_dir) / "head.pt", weights_only=True))
        head.eval()
        fmap = net.extract_features(x)
        fmap.retain_grad()
        pooled = torch.nn.functional.normalize(fmap.mean((2, 3)), dim=-1)
        probs = torch.sqrt(torch.softmax(net._fc(fmap.mean((2, 3))), dim=-1) + 1e-12)
        descriptor = torch.cat([pooled, fusion * torch.nn.functional.normalize(probs, dim=-1)], 1)
        embedding = head(torch.nn.functional.normalize(descriptor, dim=-1))
    score = (embedding[0] * embedding[1]).sum()
    score.backward()
    weights = fmap.grad.mean((2, 3), keepdim=True)
    cams = torch.relu((weights * fmap).sum(1)).detach().numpy()
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    for ax, image, cam, title in zip(axes, images, cams, ("query", "match"), strict=True):
        crop = preprocess([image], size)[0].transpose(1, 2, 0) * 0.5 + 0.5
        cam = cam / cam.max() if cam.max() > 0 else cam
        ax.imshow(np.clip(crop, 0, 1))
        ax.imshow(cam, cmap="jet", alpha=0.45, extent=(0, size, size, 0), interpolation="bilinear")
        ax.set(title=title, xticks=[], yticks=[])
    fig.suptitle(f"Grad-CAM of the trained similarity ({float(score.detach()):.3f})")
    fig.tight_layout()
    fig.savefig(Path(path), dpi=110)
    plt.close(fig)
    return Path(path)
