"""Sparsity: pruning weights by magnitude (``prune``, CLI ``onyxrt prune``) and reporting what it did.

``prune(model_input, model_output, sparsity=0.9, pattern="unstructured" | "N:M" | "blockRxC", ...)``
zeros the smallest weights of MatMul/Gemm/Conv nodes and returns a ``PruneReport``; with
``store_sparse=True`` the pruned weights are written as ONNX sparse initializers. Sessions run
such models with sparse kernels when the session option ``onyxrt.sparse.enable`` allows it.

The pruning names are imported on first use: sessions import ``onyxrt.sparsity.formats`` while
onyxrt itself is loading, before the quantization tooling that ``prune`` reuses can be imported.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "SUPPORTED_OP_TYPES": "pruning", "Pattern": "pruning", "prune": "pruning",
    "PruneReport": "report", "PrunedWeight": "report", "weight_sparsity_lines": "report",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'onyxrt.sparsity' has no attribute '{name}'")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
