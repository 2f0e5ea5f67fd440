"""com.microsoft SparseToDenseMatMul: a sparse (COO or CSR) matrix times a dense one.

The sparse input is an :class:`onyxrt.SparseTensor` fed through
``OrtValue.ort_value_from_sparse_tensor`` to a ``sparse_tensor``-typed graph input, as in
onnxruntime. The product is computed from the non-zeros only (no dense copy of A).
"""

from __future__ import annotations

import numpy as np

from ....errors import NodeInputError, NodeInputTypeError
from ..kernel_table import op

_TYPES = frozenset(np.dtype(t) for t in (np.float32, np.float64, np.int32, np.int64, np.uint32, np.uint64))


def _coordinates(a) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of A's non-zeros."""
    from ....session.sparse_tensor import OrtSparseFormat

    rows_count, cols_count = a.dense_shape()
    if a.format() == OrtSparseFormat.ORT_SPARSE_COO:
        indices = a.as_coo_view().indices()
        if indices.ndim == 1:
            return np.divmod(indices, cols_count)
        return indices[:, 0], indices[:, 1]
    view = a.as_csrc_view()
    return np.repeat(np.arange(rows_count), np.diff(view.outer())), view.inner()


@op("SparseToDenseMatMul", versions=1, domain="com.microsoft")
def sparse_to_dense_matmul(a, b, *, alpha=1.0, transA=0, transB=0):  # noqa: N803 - ONNX attribute names
    from ....session.sparse_tensor import SparseTensor

    if not isinstance(a, SparseTensor):
        raise NodeInputTypeError(f"SparseToDenseMatMul: input A must be a sparse tensor, got {type(a).__name__}")
    values = a.values()
    if values.dtype not in _TYPES or b.dtype != values.dtype:
        raise NodeInputTypeError(f"SparseToDenseMatMul: A is {values.dtype} and B {b.dtype}; both must be one of "
                                 "float, double, int32, int64, uint32, uint64")
    if len(a.dense_shape()) != 2 or b.ndim != 2:
        raise NodeInputError(f"SparseToDenseMatMul multiplies 2-D matrices: A {a.dense_shape()}, B {list(b.shape)}")
    rows, cols = _coordinates(a)
    m, k = a.dense_shape()
    if transA:
        rows, cols, m, k = cols, rows, k, m
    dense_b = b.T if transB else b
    if dense_b.shape[0] != k:
        raise NodeInputError(f"SparseToDenseMatMul: A is {m}x{k} but B has {dense_b.shape[0]} rows")
    out = np.zeros((m, dense_b.shape[1]), dtype=values.dtype)
    # each non-zero A[r, c] adds A[r, c] * B[c, :] to row r
    np.add.at(out, rows, values[:, None] * dense_b[cols])
    if alpha != 1.0:
        out = (out * alpha).astype(values.dtype, copy=False)
    return out
