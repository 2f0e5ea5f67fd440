"""SparseTensor: onnxruntime's COO and CSR(C) sparse tensors over numpy buffers.

As in onnxruntime, numeric values and indices are not copied: ``values()`` and the views'
index arrays share memory with the arrays the tensor was made from. Sparse tensors live on
the host only (onnxruntime's CPU build has no other device for them either).
"""

from __future__ import annotations

import enum
from typing import Any, Sequence

import numpy as np

from ..graph.types import onnx_elem_type, value_type_string
from .device import OrtDevice, device_name_of_native


class OrtSparseFormat(enum.IntEnum):
    """The layout of a SparseTensor's indices."""

    ORT_SPARSE_UNDEFINED = 0
    ORT_SPARSE_COO = 1
    ORT_SPARSE_CSRC = 2
    ORT_SPARSE_BLOCK_SPARSE = 4


class SparseCooView:
    """The COO indices of a SparseTensor: linear (nnz,) or coordinate pairs (nnz, 2)."""

    def __init__(self, indices: np.ndarray) -> None:
        self._indices = indices

    def indices(self) -> np.ndarray:
        return self._indices


class SparseCsrView:
    """The CSR(C) indices of a SparseTensor: ``inner`` (column of each value) and ``outer`` (row starts)."""

    def __init__(self, inner: np.ndarray, outer: np.ndarray) -> None:
        self._inner, self._outer = inner, outer

    def inner(self) -> np.ndarray:
        return self._inner

    def outer(self) -> np.ndarray:
        return self._outer


class SparseTensor:
    """A sparse tensor: its dense shape, non-zero values and their indices in one format."""

    def __init__(self, sparse_tensor: SparseTensor) -> None:
        if not isinstance(sparse_tensor, SparseTensor):
            raise ValueError("`Provided object` needs to be of type `SparseTensor`")
        self._copy_from(sparse_tensor)

    def _copy_from(self, other: SparseTensor) -> None:
        self._dense_shape, self._values, self._format = other._dense_shape, other._values, other._format
        self._indices = other._indices

    def _get_c_tensor(self) -> SparseTensor:
        return self

    @classmethod
    def _make(cls, dense_shape: list[int], values: np.ndarray, sparse_format: OrtSparseFormat,
              indices: tuple[np.ndarray, ...]) -> SparseTensor:
        tensor = cls.__new__(cls)
        tensor._dense_shape, tensor._values, tensor._format, tensor._indices = dense_shape, values, sparse_format, indices
        return tensor

    @classmethod
    def sparse_coo_from_numpy(cls, dense_shape: Sequence[int], values: np.ndarray, coo_indices: np.ndarray,
                              ort_device: OrtDevice) -> SparseTensor:
        """A COO tensor: ``coo_indices`` are linear indices (one per value) or (row, column) pairs."""
        shape, values = _dense_shape(dense_shape), _values(values, ort_device, "COO")
        indices = _int64_indices(coo_indices, "coo_indices")
        count = values.shape[0]
        if indices.size == 2 * count and len(shape) == 2:
            indices = indices.reshape(count, 2)
        elif indices.size != count:
            raise RuntimeError(f"Index size: {indices.size} must be equal to or twice the values size: {count}")
        return cls._make(shape, values, OrtSparseFormat.ORT_SPARSE_COO, (indices,))

    @classmethod
    def sparse_csr_from_numpy(cls, dense_shape: Sequence[int], values: np.ndarray, inner_indices: np.ndarray,
                              outer_indices: np.ndarray, ort_device: OrtDevice) -> SparseTensor:
        """A CSR tensor of a 2-D shape: ``inner_indices`` (one per value), ``outer_indices`` (rows + 1)."""
        shape, values = _dense_shape(dense_shape), _values(values, ort_device, "CSR")
        inner = _int64_indices(inner_indices, "inner_indices")
        outer = _int64_indices(outer_indices, "outer_indices")
        if len(shape) != 2:
            raise RuntimeError(f"CSR(C) sparse tensors must be 2-D, got dense shape {shape}")
        if inner.ndim != 1 or inner.size != values.shape[0]:
            raise RuntimeError(f"Inner indices size: {inner.size} must be equal to the values size: {values.shape[0]}")
        if outer.ndim != 1 or outer.size != shape[0] + 1:
            raise RuntimeError(f"Outer indices size: {outer.size} must be the number of rows + 1: {shape[0] + 1}")
        return cls._make(shape, values, OrtSparseFormat.ORT_SPARSE_CSRC, (inner, outer))

    def values(self) -> np.ndarray:
        """The non-zero values (sharing memory with the array given, for numeric types)."""
        return self._values

    def as_coo_view(self) -> SparseCooView:
        if self._format != OrtSparseFormat.ORT_SPARSE_COO:
            raise RuntimeError("This sparse tensor does not contain COO format")
        return SparseCooView(self._indices[0])

    def as_csrc_view(self) -> SparseCsrView:
        if self._format != OrtSparseFormat.ORT_SPARSE_CSRC:
            raise RuntimeError("This sparse tensor does not contain CSR(C) format")
        return SparseCsrView(*self._indices)

    def as_blocksparse_view(self) -> Any:
        raise RuntimeError("This sparse tensor does not contain BlockSparse format")

    def to_cuda(self, ort_device: OrtDevice) -> SparseTensor:
        raise RuntimeError("Cuda is not available in this build")

    def format(self) -> OrtSparseFormat:
        return self._format

    def dense_shape(self) -> list[int]:
        return list(self._dense_shape)

    def data_type(self) -> str:
        """``'sparse_tensor(float)'`` and the like."""
        return "sparse_" + value_type_string(np.empty(0, self._values.dtype))

    def element_type(self) -> int:
        return onnx_elem_type(self._values.dtype)

    def device_name(self) -> str:
        return "cpu"


def _dense_shape(dense_shape: Any) -> list[int]:
    items = list(np.asarray(dense_shape).reshape(-1)) if isinstance(dense_shape, np.ndarray) else list(dense_shape)
    if any(isinstance(d, (float, np.floating, str, bytes)) for d in items):
        raise TypeError(f"dense_shape must be a sequence of ints, got {dense_shape!r}")
    return [int(d) for d in items]


def _values(values: Any, ort_device: OrtDevice, layout: str) -> np.ndarray:
    if not isinstance(values, np.ndarray):
        raise TypeError(f"values must be a numpy array, got {type(values).__name__}")
    device = ort_device._get_c_device()  # AttributeError for a native device, as in onnxruntime
    if device_name_of_native(device) != "cpu":
        raise RuntimeError(f"Unsupported OrtDevice type: {device_name_of_native(device)} (sparse tensors live on the host)")
    if values.ndim != 1:
        raise RuntimeError(f"Expecting values 1-D numpy values array for {layout} format. Got dims: {values.ndim}")
    if values.dtype == object:
        raise RuntimeError("Unsupported values data type: object (use a numpy str array for strings)")
    if not values.flags.c_contiguous:
        raise RuntimeError("Require contiguous numpy array of values")
    return values.astype(object) if values.dtype.kind == "U" else values  # strings: copied, as str objects


def _int64_indices(indices: Any, what: str) -> np.ndarray:
    array = np.asarray(indices)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{what} must be an integer numpy array, got {array.dtype}")
    if array.dtype != np.int64:
        array = array.astype(np.int64)
    return np.ascontiguousarray(array)
