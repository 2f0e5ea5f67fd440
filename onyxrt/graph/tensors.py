"""Constant tensors between onnx_ir and numpy: what kernels see and what passes write back.

Kernels take numpy arrays; string tensors are object arrays of ``str`` (ONNX stores
UTF-8 bytes). Sparse tensors are densified, as onnxruntime does for sparse
initializers and ``Constant(sparse_value=...)``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from ..errors import Fail


def to_array(tensor: ir.TensorProtocol) -> np.ndarray:
    """The numpy value of an IR tensor (string tensors as object arrays of str).

    Raises Fail, naming the tensor, when its stored data does not fit its type and dims
    (a corrupt file), as onnxruntime does.
    """
    try:
        if tensor.dtype == ir.DataType.STRING:
            raw = tensor.numpy()
            return np.array([_decode(b) for b in raw.reshape(-1)], dtype=object).reshape(raw.shape)
        return tensor.numpy()
    except (ValueError, TypeError, AssertionError) as exc:  # numpy's and onnx_ir's words for bad data
        raise Fail(
            f"Tensor '{tensor.name}': its data does not match its type {tensor.dtype.name} and dims "
            f"{list(tensor.shape)} ({exc})"
        ) from None


def constant_array(value: ir.Value) -> np.ndarray:
    """The numpy value of an initializer, read from the model once.

    A tensor still backed by the loaded protobuf is replaced by an in-memory tensor holding
    the array, so later readers (folding, the plan, a second session plan) get the same
    array instead of another copy of the protobuf's bytes. External-data tensors stay lazy.
    """
    tensor = value.const_value
    array = to_array(tensor)
    if isinstance(tensor, ir.serde.TensorProtoTensor):
        value.const_value = ir.Tensor(array, name=tensor.name) if array.dtype != object else tensor
    return array


def _decode(value: bytes | str) -> str:
    return value.decode("utf-8", errors="surrogateescape") if isinstance(value, bytes) else value


def from_array(array: np.ndarray, name: str | None = None) -> ir.TensorProtocol:
    """An IR tensor holding ``array`` (object arrays of str become STRING tensors)."""
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind in "US":
        data = np.array([s if isinstance(s, bytes) else str(s).encode("utf-8", errors="surrogateescape")
                         for s in array.reshape(-1)], dtype=object).reshape(array.shape)
        return ir.StringTensor(data, name=name)
    return ir.Tensor(array, name=name)


def sparse_to_dense_proto(sparse: onnx.SparseTensorProto, base_dir: str | None = None) -> onnx.TensorProto:
    """The dense TensorProto of a SparseTensorProto (COO, linear or [NNZ, rank] indices)."""
    values = numpy_helper.to_array(sparse.values, base_dir or "")
    indices = numpy_helper.to_array(sparse.indices, base_dir or "").astype(np.int64)
    dense = np.zeros(tuple(sparse.dims), dtype=values.dtype)
    if indices.ndim == 2:
        dense[tuple(indices.T)] = values
    else:
        dense.reshape(-1)[indices] = values
    return numpy_helper.from_array(dense, sparse.values.name)


def dense_to_sparse_proto(tensor: onnx.TensorProto) -> onnx.SparseTensorProto:
    """A COO SparseTensorProto (linear indices) holding ``tensor``'s non-zero elements."""
    dense = numpy_helper.to_array(tensor)
    flat = dense.reshape(-1)
    indices = np.flatnonzero(flat).astype(np.int64)
    return onnx.helper.make_sparse_tensor(
        numpy_helper.from_array(flat[indices], tensor.name),
        numpy_helper.from_array(indices, tensor.name + "_indices"),
        list(dense.shape),
    )
