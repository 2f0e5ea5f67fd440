"""OrtValue: a value (tensor, sequence, map) held by the runtime, on the host or on a provider's device.

As in onnxruntime, a tensor OrtValue lives on one device: ``device_name()`` names it,
``numpy()`` returns the host array (a copy when the tensor is on another device) and
``data_ptr()`` the address of its memory on its device.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import InvalidArgument
from ..framework.device import HOST, Device, data_transfer_for, device_of, parse_device
from ..graph.types import np_dtype, onnx_elem_type, value_type_string

def as_dtype(element_type: Any) -> np.dtype:
    """The numpy dtype for a numpy type or an ONNX element type enum."""
    if isinstance(element_type, int) and not isinstance(element_type, bool):
        return np_dtype(element_type)
    return np.dtype(element_type)


class OrtValue:
    """A runtime value: a host value (numpy, or lists/dicts of it) or a tensor on a device."""

    def __init__(self, value: Any, device: Device | None = None) -> None:
        self._value = value
        self._device = device if device is not None else device_of(value)

    @staticmethod
    def ortvalue_from_numpy(numpy_obj: np.ndarray, device_type: str = "cpu", device_id: int = 0) -> OrtValue:
        """``numpy_obj`` as a tensor on the device: shares its memory on the host, a copy elsewhere."""
        device = parse_device(device_type, device_id)
        array = np.asarray(numpy_obj)
        if device.is_host:
            return OrtValue(array, HOST)
        return OrtValue(data_transfer_for(device).to_device(array), device)

    @staticmethod
    def ortvalue_from_shape_and_type(shape: Sequence[int], element_type: Any = np.float32,
                                     device_type: str = "cpu", device_id: int = 0) -> OrtValue:
        """A new, uninitialized tensor of ``shape`` and ``element_type`` (numpy type or ONNX enum) on the device."""
        device = parse_device(device_type, device_id)
        return OrtValue(data_transfer_for(device).allocate(tuple(shape), as_dtype(element_type)), device)

    @staticmethod
    def ortvalue_from_numpy_with_onnx_type(data: np.ndarray, onnx_element_type: int) -> OrtValue:
        return OrtValue(np.asarray(data).view(np_dtype(onnx_element_type)), HOST)

    def numpy(self) -> Any:
        """The value on the host (a list/dict of arrays for sequences/maps); a copy for device tensors."""
        if self._device.is_host:
            return self._value
        return data_transfer_for(self._device).to_host(self._value)

    def data_ptr(self) -> int:
        """The address of the tensor's memory on its device."""
        return data_transfer_for(self._device).data_ptr(self._value)

    def device_name(self) -> str:
        return self._device.type

    def shape(self) -> list[int]:
        return list(self._value.shape)

    def data_type(self) -> str:
        if self._device.is_host:
            return value_type_string(self._value)
        return value_type_string(np.empty(0, self._value.dtype))

    def element_type(self) -> int:
        return onnx_elem_type(self._value.dtype)

    def is_tensor(self) -> bool:
        return self.has_value() and not isinstance(self._value, (list, dict))

    def is_tensor_sequence(self) -> bool:
        return isinstance(self._value, list)

    def has_value(self) -> bool:
        return self._value is not None

    def is_sparse_tensor(self) -> bool:
        return False

    def update_inplace(self, np_arr: np.ndarray) -> None:
        """Copy the host array ``np_arr`` into this tensor's memory (same shape and dtype)."""
        src = np.asarray(np_arr)
        if list(src.shape) != self.shape() or src.dtype != self._value.dtype:
            raise InvalidArgument(
                f"update_inplace needs the same shape and type: have {self.shape()} {self._value.dtype}, "
                f"got {list(src.shape)} {src.dtype}"
            )
        data_transfer_for(self._device).copy_into(self._value, src)

    @property
    def device(self) -> Device:
        """The device holding the value (onyxrt's; onnxruntime has ``device_name()`` only)."""
        return self._device

    @property
    def value(self) -> Any:
        """The value as stored on its device, without a copy (what the plan reads and writes)."""
        return self._value

    def __repr__(self) -> str:
        return f"OrtValue({self.data_type()} on {self._device})"
