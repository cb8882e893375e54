"""The base embedder's descriptors of the training images, computed once and cached.

``head`` mode trains on these descriptors only, so every later run over the same files (or a
subset of them, such as a split) reads them back instead of embedding the images again.

Example:
    >>> from lookalike.models import load_embedder
    >>> from lookalike.train.features import backbone_features
    >>> base = load_embedder("efficientnet-lite0")  # doctest: +SKIP
    >>> x, ok = backbone_features(base, paths)  # doctest: +SKIP
    >>> x.shape  # doctest: +SKIP
    (1000, 2280)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from lookalike.images import ImageError, decode
from lookalike.models import Embedder
from lookalike.train.config import Progress

__all__ = ["backbone_features", "default_cache", "file_keys"]


def default_cache() -> Path:
    """Where backbone features are cached (under ``$LOOKALIKE_CACHE`` or the user cache)."""
    from lookalike.models.efficientnet import cache_dir

    return cache_dir() / "features"


def file_keys(paths: Sequence[Path]) -> list[str]:
    """One key per file: resolved path, size and mtime (a changed file gets a new key)."""
    keys = []
    for p in paths:
        st = os.stat(p)
        keys.append(f"{Path(p).resolve()}\0{st.st_size}\0{st.st_mtime_ns}")
    return keys


def _cache_file(cache: Path, embedder: Embedder, paths: Sequence[Path]) -> Path:
    """One cache file per embedder version and folder (the files' deepest common folder)."""
    root = os.path.commonpath([str(Path(p).resolve().parent) for p in paths]) if paths else ""
    digest = hashlib.blake2b(f"{embedder.version}\0{root}".encode(), digest_size=8).hexdigest()
    return cache / f"{Path(root).name or 'images'}-{digest}.npz"


def backbone_features(
    embedder: Embedder,
    paths: Sequence[Path],
    *,
    cache: Path | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """The embedder's descriptor of every image, and which images could be read.

    Cached in ``cache`` (default :func:`default_cache`), one file per embedder version and
    folder, a row per file keyed by its path, size and mtime: a later run over these files, or
    a subset of them (a split), embeds only new or changed ones. Unreadable images get a zero
    row and ``False``.

    Example:
        >>> x, ok = backbone_features(load_embedder("efficientnet-lite0"), paths)  # doctest: +SKIP
        >>> x.shape  # doctest: +SKIP
        (1000, 2280)
    """
    cache = default_cache() if cache is None else Path(cache)
    target = _cache_file(cache, embedder, paths)
    keys = file_keys(paths)
    stored_keys, stored_x, stored_ok = np.zeros(0, str), None, None
    if target.exists():
        with np.load(target) as data:
            stored_keys, stored_x, stored_ok = data["keys"], data["x"], data["ok"]
    row_of = {k: i for i, k in enumerate(stored_keys.tolist())}
    x = np.zeros((len(paths), embedder.dim), np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    missing = []
    for i, key in enumerate(keys):
        if key in row_of:
            x[i], ok[i] = stored_x[row_of[key]], stored_ok[row_of[key]]
        else:
            missing.append(i)
    if progress:
        progress("features", len(paths) - len(missing), len(paths))
    if not missing:
        return x, ok

    def load(path: Path) -> Image.Image | None:
        try:
            return decode(path, min_side=embedder.input_size)
        except (ImageError, OSError):
            return None

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode") as pool:
        for start in range(0, len(missing), batch_size):
            rows = missing[start : start + batch_size]
            images = list(pool.map(load, [paths[i] for i in rows]))
            good = [r for r, im in zip(rows, images, strict=True) if im is not None]
            if good:
                x[good] = embedder.embed_images([im for im in images if im is not None])
                ok[good] = True
            if progress:
                progress("features", len(paths) - len(missing) + start + len(rows), len(paths))
    new_keys = np.asarray([keys[i] for i in missing])
    merged_x = x[missing] if stored_x is None else np.concatenate([stored_x, x[missing]])
    merged_ok = ok[missing] if stored_ok is None else np.concatenate([stored_ok, ok[missing]])
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, keys=np.concatenate([stored_keys, new_keys]), x=merged_x, ok=merged_ok)
    os.replace(tmp, target)  # atomic: a concurrent reader sees the old or the new file
    return x, ok
