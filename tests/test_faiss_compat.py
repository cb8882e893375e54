"""FAISS searches with ``params=`` keep working after pytorch-metric-learning patched FAISS."""

from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")


def test_params_search_survives_the_torch_patch() -> None:
    import pytorch_metric_learning.utils.inference  # noqa: F401  (imports torch_utils)
    import torch

    from lookalike.index.faiss_compat import keep_search_params

    rng = np.random.default_rng(0)
    index = faiss.IndexHNSWFlat(8, 16)
    index.add(rng.random((200, 8), dtype=np.float32))
    params = faiss.SearchParametersHNSW()
    params.efSearch = 64
    queries = rng.random((3, 8), dtype=np.float32)
    keep_search_params()
    _, found = index.search(queries, 5, params=params)
    flat = faiss.IndexFlatL2(8)
    flat.add(index.reconstruct_n(0, 200))
    assert (found[:, 0] == flat.search(queries, 1)[1][:, 0]).all()
    # torch tensors still go through torch_utils
    assert index.search(torch.from_numpy(queries), 5)[1].shape == (3, 5)
