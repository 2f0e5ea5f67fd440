"""OrtValue: a value (tensor, sequence, map) held by the runtime, convertible to/from numpy."""

from __future__ import annotations

import ctypes
from typing import Any, Sequence

import numpy as np

from ..errors import InvalidArgument
from ..graph.types import np_dtype, onnx_elem_type, value_type_string


def _check_cpu(device_type: str) -> None:
    if str(device_type).lower() != "cpu":
        raise InvalidArgument(f"Unsupported device type '{device_type}': onyxrt's providers hold data on the CPU")


def _as_dtype(element_type: Any) -> np.dtype:
    if isinstance(element_type, int) and not isinstance(element_type, bool):
        return np_dtype(element_type)
    return np.dtype(element_type)


def array_from_pointer(buffer_ptr: int, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """A numpy view of CPU memory at ``buffer_ptr`` (used by IOBinding's pointer binds)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = (ctypes.c_char * nbytes).from_address(int(buffer_ptr))
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(shape))


class OrtValue:
    """A runtime value; tensors live in a numpy array on the CPU."""

    def __init__(self, value: Any) -> None:
        self._value = value

    @staticmethod
    def ortvalue_from_numpy(numpy_obj: np.ndarray, device_type: str = "cpu", device_id: int = 0) -> OrtValue:
        """Wrap ``numpy_obj`` (shares its memory, as onnxruntime does for CPU)."""
        _check_cpu(device_type)
        return OrtValue(np.asarray(numpy_obj))

    @staticmethod
    def ortvalue_from_shape_and_type(shape: Sequence[int], element_type: Any = np.float32,
                                     device_type: str = "cpu", device_id: int = 0) -> OrtValue:
        """A new tensor of ``shape`` and ``element_type`` (numpy type or ONNX enum), uninitialized."""
        _check_cpu(device_type)
        return OrtValue(np.empty(tuple(shape), dtype=_as_dtype(element_type)))

    @staticmethod
    def ortvalue_from_numpy_with_onnx_type(data: np.ndarray, onnx_element_type: int) -> OrtValue:
        return OrtValue(np.asarray(data).view(np_dtype(onnx_element_type)))

    def numpy(self) -> Any:
        """The value as numpy (a list/dict of arrays for sequences/maps)."""
        return self._value

    def data_ptr(self) -> int:
        return int(self._value.ctypes.data)

    def device_name(self) -> str:
        return "cpu"

    def shape(self) -> list[int]:
        return list(self._value.shape)

    def data_type(self) -> str:
        return value_type_string(self._value)

    def element_type(self) -> int:
        return onnx_elem_type(self._value.dtype)

    def is_tensor(self) -> bool:
        return isinstance(self._value, np.ndarray)

    def is_tensor_sequence(self) -> bool:
        return isinstance(self._value, list)

    def has_value(self) -> bool:
        return self._value is not None

    def is_sparse_tensor(self) -> bool:
        return False

    def update_inplace(self, np_arr: np.ndarray) -> None:
        """Copy ``np_arr`` into this tensor's memory (same shape and dtype)."""
        src = np.asarray(np_arr)
        if src.shape != self._value.shape or src.dtype != self._value.dtype:
            raise InvalidArgument(
                f"update_inplace needs the same shape and type: have {self._value.shape} {self._value.dtype}, "
                f"got {src.shape} {src.dtype}"
            )
        np.copyto(self._value, src)

    def __repr__(self) -> str:
        return f"OrtValue({self.data_type()})"
