"""SSCD descriptors for ``benchmarks/copies_hard.py``, with the preprocessing as a parameter.

The packaged SSCD graphs (``lookalike.models.sscd``) take uint8 NHWC RGB of any size and do the
normalisation, GeM pooling and L2 normalisation inside; the only thing a caller chooses is the
resizing. :class:`Engine` runs the graph's ONNX session directly with lookalike's own resize
(``lookalike.models.sscd.resize``: ``square=True`` squashes to N x N, ``False`` keeps the aspect
with the short side at N), batching images of one shape, and caches every vector under
``bench-out/copies_hard/<set>/emb/<model>.npz`` keyed by item and input shape. A square image
gets the same vector both ways, so the aspect-kept variant only re-embeds non-square images.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.descriptors import l2n
from lookalike.models.sscd import packaged_model, resize


def target_shape(size: tuple[int, int], n: int, square: bool) -> tuple[int, int]:
    """The (width, height) ``lookalike.models.sscd.resize`` gives an image of ``size``."""
    if square:
        return n, n
    w, h = size
    scale = n / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


class Engine:
    """One SSCD model's ONNX session plus a vector cache."""

    def __init__(self, model: str, cache_dir: Path, threads: int | None = None) -> None:
        self.model = model
        self.path = cache_dir / f"{model}.npz"
        self.stats_path = cache_dir / f"{model}.stats.json"
        self.threads = threads or os.cpu_count() or 1
        self._run: Callable[[np.ndarray], np.ndarray] | None = None
        self.index: dict[str, int] = {}
        self.rows: list[np.ndarray] = []
        if self.path.exists():
            z = np.load(self.path)
            self.index = {str(k): i for i, k in enumerate(z["keys"])}
            self.rows = list(z["vecs"])
        #: variant -> [images embedded, seconds] (decode + resize + network), over all runs
        self.stats: dict[str, list[float]] = (
            json.loads(self.stats_path.read_text()) if self.stats_path.exists() else {}
        )
        self._dirty = 0
        self._saved = time.monotonic()

    def session(self) -> Callable[[np.ndarray], np.ndarray]:
        if self._run is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(
                str(packaged_model(self.model)), options, providers=["CPUExecutionProvider"]
            )
            name = session.get_inputs()[0].name
            self._run = lambda batch: session.run(None, {name: batch})[0]
        return self._run

    def forward(self, images: Sequence[Image.Image], n: int, square: bool) -> np.ndarray:
        """Descriptors of images (uncached), each resized as lookalike does; batch 1 unless
        they share a shape."""
        out = []
        for im in images:
            x = np.asarray(resize(im, n, square), np.uint8)[None]
            out.append(np.asarray(self.session()(x), np.float32))
        return l2n(np.concatenate(out))

    def embed(
        self,
        keys: Sequence[str],
        sizes: Sequence[tuple[int, int]],
        loader: Callable[[str], Image.Image],
        n: int,
        square: bool,
        *,
        ids: Sequence[str] | None = None,
        batch: int = 16,
        label: str = "",
    ) -> np.ndarray:
        """(len(keys), 512) descriptors; ``sizes`` are the images' (w, h), ``loader(key)`` the
        image, ``ids`` the content ids the cache uses (default: the keys). Missing ones are
        computed in batches of one input shape."""
        shapes = [target_shape(s, n, square) for s in sizes]
        cache_keys = [f"{k}|{w}x{h}" for k, (w, h) in zip(ids or keys, shapes, strict=True)]
        missing: dict[tuple[int, int], list[int]] = {}
        for i, ck in enumerate(cache_keys):
            if ck not in self.index:
                missing.setdefault(shapes[i], []).append(i)
        todo = sum(len(v) for v in missing.values())
        if todo:
            variant = f"{'sq' if square else 'short'}{n}"
            start = time.perf_counter()
            done = 0
            for shape, idx in sorted(missing.items(), key=lambda kv: -len(kv[1])):
                for j in range(0, len(idx), batch):
                    part = idx[j : j + batch]
                    arr = np.stack(
                        [np.asarray(resize(loader(keys[i]), n, square), np.uint8) for i in part]
                    )
                    assert arr.shape[1:3] == (shape[1], shape[0]), (arr.shape, shape)
                    vecs = l2n(np.asarray(self.session()(arr), np.float32))
                    for i, v in zip(part, vecs, strict=True):
                        self.index[cache_keys[i]] = len(self.rows)
                        self.rows.append(v.astype(np.float32))
                    done += len(part)
                    self._dirty += len(part)
                    if time.monotonic() - self._saved > 120:
                        self.save()
                        rate = done / (time.perf_counter() - start)
                        print(
                            f"    {self.model} {variant} {label}: {done}/{todo} ({rate:.1f}/s)",
                            flush=True,
                        )
            seconds = time.perf_counter() - start
            stat = self.stats.setdefault(variant, [0, 0.0])
            stat[0] += todo
            stat[1] += seconds
            self.save()
        return np.stack([self.rows[self.index[ck]] for ck in cache_keys])

    def rate(self, n: int, square: bool) -> float | None:
        """Images per second measured for a variant (decode + resize + network)."""
        stat = self.stats.get(f"{'sq' if square else 'short'}{n}")
        return stat[0] / stat[1] if stat and stat[1] > 0 else None

    def save(self) -> None:
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(list(self.index)), vecs=np.stack(self.rows))
        os.replace(tmp, self.path)
        self.stats_path.write_text(json.dumps(self.stats))
        self._dirty = 0
        self._saved = time.monotonic()
