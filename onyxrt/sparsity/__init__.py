"""Sparsity: pruning weights by magnitude (``prune``, CLI ``onyxrt prune``) and reporting what it did.

``prune(model_input, model_output, sparsity=0.9, pattern="unstructured" | "N:M" | "blockRxC", ...)``
zeros the smallest weights of MatMul/Gemm/Conv nodes and returns a ``PruneReport``; with
``store_sparse=True`` the pruned weights are written as ONNX sparse initializers. Sessions run
such models with sparse kernels when the session option ``onyxrt.sparse.enable`` allows it.
"""

from .prune import SUPPORTED_OP_TYPES, Pattern, prune
from .report import PrunedWeight, PruneReport, weight_sparsity_lines

__all__ = ["SUPPORTED_OP_TYPES", "Pattern", "PruneReport", "PrunedWeight", "prune", "weight_sparsity_lines"]
