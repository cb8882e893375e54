"""Keep FAISS's ``search(..., params=)`` working after ``faiss.contrib.torch_utils`` is imported.

pytorch-metric-learning imports ``faiss.contrib.torch_utils``, which replaces ``search`` on every
FAISS index class with a torch-aware version that has no ``params`` keyword. Our tuned HNSW/IVF
searches and Milvus Lite (FAISS inside) pass ``params=``, so in a process that also used
pytorch-metric-learning they failed with "unexpected keyword argument 'params'". This wraps each
patched ``search``: NumPy queries go to FAISS's own method with every keyword, torch tensors to
torch_utils as before.

Example:
    >>> keep_search_params()  # idempotent and cheap; call before a search that passes params=
"""

from __future__ import annotations

import inspect
from typing import Any

_SEEN: list[Any] = [None]  # the IndexFlat.search last looked at: a new one means a new patch


def keep_search_params() -> None:
    """Make every patched FAISS ``search`` accept ``params=`` again (no-op when unpatched)."""
    import faiss

    current = faiss.IndexFlat.search
    if current is _SEEN[0]:
        return
    for name in dir(faiss):
        cls = getattr(faiss, name)
        if not inspect.isclass(cls) or "search_numpy" not in cls.__dict__:
            continue
        patched = cls.__dict__.get("search")
        if getattr(patched, "__name__", "") == "torch_replacement_search":
            cls.search = _wrap(cls.__dict__["search_numpy"], patched)
    _SEEN[0] = faiss.IndexFlat.search


def _wrap(numpy_search: Any, torch_search: Any) -> Any:
    import numpy as np

    def search_with_params(self, x, k, *args, **kwargs):
        if isinstance(x, np.ndarray):
            return numpy_search(self, x, k, *args, **kwargs)
        return torch_search(self, x, k, *args, **kwargs)

    search_with_params.__name__ = "search_with_params"
    return search_with_params
