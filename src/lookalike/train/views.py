"""The frozen part of the base network, run once: feature maps at the input of its last blocks.

``blocks`` mode trains only the last MBConv block(s) of EfficientNet-Lite, its 1x1 head
convolution, the pooling and a projection head. Everything before them is frozen, so its output
(the *block input*, e.g. 192 x 9 x 9 at 288 px before the last block) is computed once per image
and cached: epochs then cost a few milliseconds per image on a CPU instead of a whole network.

Each image is cached as several *views*: view 0 is exactly what inference sees (resized,
centre-cropped, the int8 network of the default descriptor), the others are random crops of 35-100%
of the image, mirrored half of the time, with colour jitter (brightness, contrast, saturation),
so that training sees the variation it must ignore. The same pass gives the base embedder's own
descriptor of view 0 (the default search's vector), which the whitening start, the validation of
the default search and early stopping use.

The frozen part is the default embedder's int8 ONNX graph cut at the block input
(:func:`prefix_model`), so training sees the numbers inference will compute: the exported model is
that same int8 prefix followed by the trained fp32 blocks (:mod:`lookalike.train.export`).

Example:
    >>> from lookalike.train.views import block_views
    >>> cached = block_views("efficientnet-lite0", paths, size=224, blocks=1)  # doctest: +SKIP
    >>> cached.maps.shape, cached.descriptors.shape  # doctest: +SKIP
    ((1000, 3, 192, 7, 7), (1000, 2280))
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageEnhance

from lookalike.descriptors import fuse, gem
from lookalike.errors import TrainError
from lookalike.images import ImageError, decode
from lookalike.train.config import Progress
from lookalike.train.features import default_cache, file_keys

__all__ = [
    "FUSION",
    "BlockViews",
    "augment_view",
    "block_input_name",
    "block_views",
    "choose_input_size",
    "prefix_model",
]

#: The weight of the class probabilities in the default descriptor (EfficientNetLite's default).
FUSION = 0.5
#: Bump when the views change (augmentations, cut, preprocessing): old caches are then ignored.
_VIEWS_VERSION = "1"


def block_input_name(graph, blocks: int) -> str:
    """The tensor that enters the ``blocks``-th MBConv block from the end (``0``: the 1x1 head
    convolution) in an exported EfficientNet-Lite graph (its dequantised value in an int8 one)."""
    indices = sorted(
        {int(n.name.split("/")[1].split(".")[1]) for n in graph.node if "/_blocks." in n.name}
    )
    if blocks > len(indices):
        raise TrainError(f"the base network has {len(indices)} blocks; asked to train {blocks}")
    scope = f"/_blocks.{indices[-blocks]}/" if blocks > 0 else "/_conv_head/"
    for node in graph.node:
        if node.name.startswith(scope) and node.op_type == "Conv":
            return node.input[0]
    raise TrainError(f"no convolution found in {scope} of the base network's graph")


def prefix_model(base: str, blocks: int, *, with_outputs: bool = False) -> Path:
    """The base embedder's int8 ONNX graph cut at the input of its last ``blocks`` blocks.

    ``with_outputs``: keep the graph's own outputs (feature map, logits) too, so one pass gives
    the default descriptor and the block input. Written once next to the ONNX model (cache).

    Example:
        >>> prefix_model("efficientnet-lite0", 1).name  # doctest: +SKIP
        'efficientnet-lite0-c28fcf2579daa481-v1-int8-288-upto1.onnx'
    """
    import onnx
    from onnx import helper

    from lookalike.models.efficientnet import VARIANTS, onnx_model

    if base not in VARIANTS:
        raise TrainError(f"blocks mode needs an EfficientNet-Lite base, not {base!r}")
    source = onnx_model(base, "int8")
    target = source.with_name(f"{source.stem}-upto{blocks}{'-full' if with_outputs else ''}.onnx")
    if target.exists():
        return target
    model = onnx.load(str(source))
    name = block_input_name(model.graph, blocks)
    cut = helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
    if with_outputs:
        model.graph.output.append(cut)
    else:
        needed, kept = {name}, []
        for node in reversed(model.graph.node):  # only what the block input depends on
            if any(o in needed for o in node.output):
                kept.append(node)
                needed.update(node.input)
        del model.graph.node[:]
        model.graph.node.extend(reversed(kept))
        initialisers = [i for i in model.graph.initializer if i.name in needed]
        del model.graph.initializer[:]
        model.graph.initializer.extend(initialisers)
        del model.graph.output[:]
        model.graph.output.append(cut)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, target)
    return target


def choose_input_size(base: str, paths: Sequence[Path], sample: int = 200) -> int:
    """The training and inference resolution: the base's input size when most images have the
    pixels for it, else its native size (the base embedder's own rule, image by image; small
    images such as Tiny ImageNet's 64-px ones run at 224 px, not 288)."""
    from lookalike.models.efficientnet import VARIANTS

    variant = VARIANTS[base]
    step = max(1, len(paths) // sample)
    large = []
    for path in list(paths)[::step]:
        try:
            with Image.open(path) as image:
                large.append(min(image.size) >= variant.native_size)
        except OSError:
            continue
    return variant.input_size if large and np.mean(large) >= 0.5 else variant.native_size


def augment_view(image: Image.Image, size: int, rng: np.random.Generator) -> NDArray[np.uint8]:
    """A random view of ``image`` as (size, size, 3) uint8: a crop of 35-100% of the area with
    aspect 3/4-4/3, mirrored half of the time, brightness/contrast/saturation x0.7-1.3."""
    w, h = image.size
    box = (0, 0, w, h)
    for _ in range(10):
        area = rng.uniform(0.35, 1.0) * w * h
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            box = (x, y, x + cw, y + ch)
            break
    view = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        view = enhance(view).enhance(float(rng.uniform(0.7, 1.3)))
    return np.asarray(view.convert("RGB"), dtype=np.uint8)


def _centre_view(image: Image.Image, size: int) -> NDArray[np.uint8]:
    """What inference sees: the shorter side resized to ``size``, the centre square."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return np.asarray(
        image.resize(
            (size, size),
            Image.Resampling.BILINEAR,
            box=(left, top, left + side, top + side),
            reducing_gap=3.0,
        ),
        dtype=np.uint8,
    )


def _network_input(views: Sequence[NDArray[np.uint8]]) -> NDArray[np.float32]:
    batch = np.stack(views).astype(np.float32)
    batch -= 127.0  # the Lite models were trained on (x - 127) / 128
    batch *= 1.0 / 128.0
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


@dataclass
class BlockViews:
    """Cached block inputs of some images.

    Attributes:
        maps: (n, views, channels, h, w) float16; view 0 is the inference view.
        descriptors: (n, base dim) the default descriptor of view 0 (float32, unit length).
        ok: which images could be read (the others are zeros).
        size: the input resolution; blocks: how many blocks they enter.
    """

    maps: NDArray[np.float16]
    descriptors: NDArray[np.float32]
    ok: NDArray[np.bool_]
    size: int
    blocks: int

    def take(self, keep: NDArray) -> BlockViews:
        return BlockViews(
            self.maps[keep], self.descriptors[keep], self.ok[keep], self.size, self.blocks
        )


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def block_views(
    base: str,
    paths: Sequence[Path],
    *,
    size: int,
    blocks: int = 1,
    views: int = 3,
    seed: int = 0,
    cache: Path | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> BlockViews:
    """The cached block inputs (``views`` per image) and default descriptors of ``paths``.

    Cached under ``cache`` (default: the features cache), one file per base version, size, cut,
    view count and seed, and folder; a row per file keyed by its path, size and mtime, so a later
    run over these files or a subset of them (a split) computes only new or changed ones.

    Example:
        >>> cached = block_views("efficientnet-lite0", paths, size=288)  # doctest: +SKIP
        >>> cached.maps.dtype  # doctest: +SKIP
        dtype('float16')
    """
    from lookalike.models.efficientnet import onnx_model

    if not paths:  # e.g. no validation images
        empty = np.zeros((0, views, 1, 1, 1), np.float16)
        return BlockViews(
            empty, np.zeros((0, 1280 + 1000), np.float32), np.zeros(0, bool), size, blocks
        )
    full_path = prefix_model(base, blocks, with_outputs=True)
    cache = default_cache() if cache is None else Path(cache)
    root = os.path.commonpath([str(Path(p).resolve().parent) for p in paths]) if paths else ""
    what = f"{onnx_model(base, 'int8').name}\0{size}\0{blocks}\0{views}\0{seed}\0{_VIEWS_VERSION}"
    digest = hashlib.blake2b(f"{what}\0{root}".encode(), digest_size=8).hexdigest()
    target = cache / f"views-{Path(root).name or 'images'}-{digest}.npz"
    keys = file_keys(paths)
    stored: dict[str, NDArray] = {}
    if target.exists():
        with np.load(target) as data:
            stored = {k: data[k] for k in data.files}
    row_of = {k: i for i, k in enumerate(stored.get("keys", np.zeros(0, str)).tolist())}
    missing = [i for i, key in enumerate(keys) if key not in row_of]
    if progress:
        progress("views", len(paths) - len(missing), len(paths))
    new_maps, new_desc, new_ok = None, None, np.zeros(len(missing), bool)
    if missing:
        full, prefix = _session(full_path), None
        if views > 1:
            prefix = _session(prefix_model(base, blocks))

        def load(i: int) -> tuple[int, list[NDArray[np.uint8]] | None]:
            try:
                image = decode(paths[i], min_side=size)
            except (ImageError, OSError):
                return i, None
            # Seeded per file (its key), so that a subset or a re-run draws the same views.
            digest = hashlib.blake2b(f"{seed}\0{keys[i]}".encode(), digest_size=8).digest()
            rng = np.random.default_rng(int.from_bytes(digest, "little"))
            return i, [_centre_view(image, size)] + [
                augment_view(image, size, rng) for _ in range(views - 1)
            ]

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode") as pool:
            for start in range(0, len(missing), batch_size):
                rows = missing[start : start + batch_size]
                loaded = [(i, v) for i, v in pool.map(load, rows) if v is not None]
                if loaded:
                    where = [missing.index(i) for i, _ in loaded]
                    first = _network_input([v[0] for _, v in loaded])
                    fmap, logits, cut = full.run(None, {"image": first})
                    desc = fuse(gem(fmap, 1.0), logits, FUSION)
                    maps = [cut]
                    for k in range(1, views):
                        batch = _network_input([v[k] for _, v in loaded])
                        (more,) = prefix.run(None, {"image": batch})
                        maps.append(more)
                    stacked = np.stack(maps, axis=1).astype(np.float16)
                    if new_maps is None:
                        new_maps = np.zeros((len(missing), *stacked.shape[1:]), np.float16)
                        new_desc = np.zeros((len(missing), desc.shape[1]), np.float32)
                    new_maps[where], new_desc[where], new_ok[where] = stacked, desc, True
                if progress:
                    progress("views", len(paths) - len(missing) + start + len(rows), len(paths))
        if new_maps is None:  # nothing readable
            raise TrainError("none of the images could be read")
        stored = _merged(stored, keys, missing, new_maps, new_desc, new_ok)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **stored)
        os.replace(tmp, target)  # atomic: a concurrent reader sees the old or the new file
        row_of = {k: i for i, k in enumerate(stored["keys"].tolist())}
    rows = np.asarray([row_of[k] for k in keys], dtype=np.intp)
    return BlockViews(
        stored["maps"][rows], stored["descriptors"][rows], stored["ok"][rows], size, blocks
    )


def _merged(
    stored: dict[str, NDArray],
    keys: list[str],
    missing: list[int],
    maps: NDArray[np.float16],
    descriptors: NDArray[np.float32],
    ok: NDArray[np.bool_],
) -> dict[str, NDArray]:
    new = {
        "keys": np.asarray([keys[i] for i in missing]),
        "maps": maps,
        "descriptors": descriptors,
        "ok": ok,
    }
    if not stored or stored["maps"].shape[1:] != maps.shape[1:]:
        return new
    return {k: np.concatenate([stored[k], new[k]]) for k in new}
