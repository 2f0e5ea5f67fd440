"""OrtValue: a value (tensor, sequence, map) held by the runtime, on the host or on a provider's device.

As in onnxruntime, a tensor OrtValue lives on one device: ``device_name()`` names it,
``numpy()`` returns the host array (a copy when the tensor is on another device) and
``data_ptr()`` the address of its memory on its device.
"""

from __future__ import annotations

import operator
import warnings
from typing import Any, Sequence

import numpy as np

from ..errors import InvalidArgument
from ..framework.device import HOST, Device, data_transfer_for, device_of, parse_device
from ..graph.types import np_dtype, onnx_elem_type, value_type_string
from . import dlpack
from .sparse_tensor import SparseTensor

def as_dtype(element_type: Any) -> np.dtype:
    """The numpy dtype for a numpy type or an ONNX element type enum."""
    if isinstance(element_type, int) and not isinstance(element_type, bool):
        return np_dtype(element_type)
    return np.dtype(element_type)


# Element types onnxruntime packs below a byte (UINT4, INT4, FLOAT4E2M1, UINT2, INT2): bits per element.
_PACKED_BITS = {21: 4, 22: 4, 23: 4, 25: 2, 26: 2}
# What onnxruntime counts for a string element: sizeof(std::string) on 64-bit Linux.
_STRING_OBJECT_BYTES = 32


def _shape_of(shape: Any) -> tuple[int, ...]:
    """A tensor shape from a sequence of ints (TypeError for other items, RuntimeError for negative dims)."""
    items = list(np.asarray(shape).reshape(-1)) if isinstance(shape, np.ndarray) else list(shape)
    if any(isinstance(d, (float, np.floating, str, bytes)) for d in items):
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}")
    dims = tuple(operator.index(d) for d in items)
    if any(d < 0 for d in dims):
        raise RuntimeError(f"Tensor shape.Size() must be >= 0: got shape {list(dims)}")
    return dims


def _numeric_dtype(element_type: Any) -> np.dtype:
    """The dtype of a new tensor: numpy types and ONNX enums; strings refused as onnxruntime refuses them."""
    if isinstance(element_type, int) and not isinstance(element_type, bool):
        try:
            dtype = np_dtype(element_type)
        except Exception:  # noqa: BLE001 - unknown enum values
            raise RuntimeError(f"tensor type {element_type} is not supported") from None
    else:
        try:
            dtype = np.dtype(element_type)
        except TypeError as exc:
            raise TypeError(f"element_type must be a numpy type or an ONNX element type, got {element_type!r}") from exc
    if dtype == object or dtype.kind in "US":
        raise RuntimeError("Creation of OrtValues is currently only supported from non-string numpy arrays")
    if dtype.kind == "c":
        raise RuntimeError(f"Numpy type {dtype} can't be converted to MLDataType.")
    return dtype


def _allocation_device(device_type: Any, device_id: Any, vendor_id: Any) -> Device:
    """The device ``ortvalue_from_shape_and_type`` allocates on; RuntimeError for one no provider serves."""
    from .device import OrtDevice, device_of_native

    device = device_of_native(OrtDevice.make(device_type, device_id, vendor_id)._get_c_device())
    try:
        data_transfer_for(device)
    except InvalidArgument:
        if device.type in ("cuda", "gpu"):
            raise RuntimeError("Can't allocate memory on the CUDA device using this package of OnnxRuntime. "
                               "Please use the CUDA package of OnnxRuntime to use this feature.") from None
        raise RuntimeError(f"Can't allocate memory on the '{device.type}' device: no provider of this build serves it") from None
    return device


def _device_of_memory_info(memory_info: Any) -> Device:
    from .device import OrtMemoryInfo

    if not isinstance(memory_info, OrtMemoryInfo):
        raise TypeError(f"memory_info must be an OrtMemoryInfo, got {type(memory_info).__name__}")
    device = memory_info._device()
    try:
        data_transfer_for(device)
    except InvalidArgument:
        raise RuntimeError(f"No allocator for memory info '{memory_info.name}' in this build") from None
    return device


# Device names onnxruntime knows, where its CPU build (and onyxrt without such a provider) cannot allocate.
_ORT_DEVICE_NAMES = frozenset({"cuda", "gpu", "dml", "cann", "webgpu", "npu"})


def _source_device(device_type: Any, device_id: Any) -> Device:
    """``ortvalue_from_numpy``'s device: onnxruntime's lower-case names; what it refuses fails with its classes."""
    if isinstance(device_type, str) and device_type == device_type.lower():
        try:
            return parse_device(device_type, operator.index(device_id))
        except InvalidArgument:
            if device_type in _ORT_DEVICE_NAMES:
                raise RuntimeError(f"Can't allocate memory on the '{device_type}' device: "
                                   "no provider of this build serves it") from None
    if not isinstance(device_type, str):
        raise TypeError(f"device_type must be a str, got {type(device_type).__name__}")
    raise Exception(f"Unsupported device type: {device_type}")  # noqa: TRY002 - onnxruntime's (bare) class


class OrtValue:
    """A runtime value: a host value (numpy, or lists/dicts of it) or a tensor on a device."""

    def __init__(self, value: Any, device: Device | None = None) -> None:
        if isinstance(value, OrtValue):  # onnxruntime's OrtValue(c_ortvalue): wrap an OrtValueVector's item
            value, device = value._value, value._device if device is None else device
        self._value = value
        self._device = device if device is not None else device_of(value)

    @property
    def _ortvalue(self) -> OrtValue:
        """onnxruntime's native OrtValue behind the wrapper: in onyxrt, the same object."""
        return self

    def _get_c_value(self) -> OrtValue:
        return self

    @staticmethod
    def ortvalue_from_numpy(numpy_obj: np.ndarray, device_type: str = "cpu", device_id: int = 0) -> OrtValue:
        """``numpy_obj`` as a tensor on the device: shares its memory on the host, a copy elsewhere.

        As onnxruntime: a numpy array of a numeric or bool type only (RuntimeError for lists, scalars,
        strings), and device names in lower case ('cpu'; 'CPU' is a bare Exception there, and here).
        """
        if not isinstance(numpy_obj, np.ndarray):
            raise RuntimeError("Creation of OrtValues is currently only supported from non-string numpy arrays "
                               f"(got {type(numpy_obj).__name__})")
        _numeric_dtype(numpy_obj.dtype)
        device = _source_device(device_type, device_id)
        array = np.asarray(numpy_obj)
        if device.is_host:
            return OrtValue(array, HOST)
        return OrtValue(data_transfer_for(device).to_device(array), device)

    @staticmethod
    def ortvalue_from_shape_and_type(shape: Sequence[int], element_type: Any, device_type: str = "cpu",
                                     device_id: int = 0, vendor_id: int = -1, memory_info: Any = None) -> OrtValue:
        """A new, uninitialized tensor of ``shape`` and ``element_type`` (numpy type or ONNX enum) on the device.

        With ``memory_info`` (an OrtMemoryInfo) the tensor is allocated where it says instead.
        """
        if memory_info is not None:
            if device_type != "cpu" or device_id != 0 or vendor_id != -1:
                warnings.warn("device_type, device_id, and vendor_id are ignored when memory_info is provided.",
                              stacklevel=2)
            device = _device_of_memory_info(memory_info)
        else:
            device = _allocation_device(device_type, device_id, vendor_id)
        dims = _shape_of(shape)
        dtype = _numeric_dtype(element_type)
        return OrtValue(data_transfer_for(device).allocate(dims, dtype), device)

    @staticmethod
    def ortvalue_from_numpy_with_onnx_type(data: np.ndarray, onnx_element_type: int) -> OrtValue:
        return OrtValue(np.asarray(data).view(np_dtype(onnx_element_type)), HOST)

    @staticmethod
    def ort_value_from_sparse_tensor(sparse_tensor: SparseTensor) -> OrtValue:
        """An OrtValue holding ``sparse_tensor`` (feed it to a model's sparse_tensor inputs)."""
        return OrtValue(sparse_tensor._get_c_tensor(), HOST)

    def as_sparse_tensor(self) -> SparseTensor:
        """The SparseTensor this OrtValue holds."""
        if not isinstance(self._value, SparseTensor):
            raise RuntimeError("This OrtValue does not contain SparseTensor. Check data_type() value.")
        return self._value

    @staticmethod
    def from_dlpack(data: Any, /) -> OrtValue:
        """An OrtValue over the host tensor of a DLPack producer (numpy, torch, ...) or ``"dltensor"`` capsule.

        No copy: the OrtValue shares the producer's memory.
        """
        return OrtValue(dlpack.from_dlpack(data), HOST)

    def __dlpack__(self, *, stream: Any = None) -> Any:
        """A DLPack capsule over this tensor's memory (no copy); ``stream`` is unused, as in onnxruntime."""
        self._require_tensor("are supported by DLPack")
        if self._device.is_host:
            return dlpack.to_capsule(self._value)
        if hasattr(self._value, "__dlpack__"):  # a device array type that speaks DLPack itself
            return self._value.__dlpack__()
        raise BufferError(f"Tensors on '{self._device}' cannot be exported through DLPack")

    def __dlpack_device__(self) -> tuple[int, int]:
        """``(DLPack device type, device id)``: ``(1, 0)`` for the host."""
        self._require_tensor("are supported by DLPack")
        if self._device.is_host:
            return (dlpack.DL_CPU, 0)
        if hasattr(self._value, "__dlpack_device__"):
            return tuple(self._value.__dlpack_device__())
        raise BufferError(f"Tensors on '{self._device}' cannot be exported through DLPack")

    def to_dlpack(self) -> Any:
        """onnxruntime's native ``to_dlpack``: the same capsule as ``__dlpack__()``."""
        return self.__dlpack__()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """``np.asarray(ortvalue)``: the host tensor, shared when no dtype change or copy is asked."""
        array = self.numpy()
        if copy is not None:
            return np.array(array, dtype=dtype, copy=copy)
        return np.asarray(array, dtype=dtype) if dtype is not None else array

    def numpy(self) -> Any:
        """The value on the host (a list/dict of arrays for sequences/maps); a copy for device tensors."""
        if isinstance(self._value, SparseTensor):
            raise RuntimeError("Only OrtValues that are Tensors are convertible to Numpy objects")
        if self._device.is_host:
            return self._value
        return data_transfer_for(self._device).to_host(self._value)

    def data_ptr(self) -> int:
        """The address of the tensor's memory on its device."""
        self._require_tensor("are currently supported")
        return data_transfer_for(self._device).data_ptr(self._value)

    def device_name(self) -> str:
        if not self.is_tensor() and not isinstance(self._value, SparseTensor):
            raise RuntimeError("Only OrtValues that are Tensors/SparseTensors are currently supported")
        return self._device.type

    def shape(self) -> list[int]:
        if isinstance(self._value, SparseTensor):
            return self._value.dense_shape()
        self._require_tensor("are currently supported", "Tensors/SpareTensors")
        return list(self._value.shape)

    def tensor_size_in_bytes(self) -> int:
        """The size of the tensor's data in bytes."""
        self._require_tensor("are currently supported")
        dtype = np.dtype(self._value.dtype)
        count = int(np.prod(self._value.shape, dtype=np.int64))
        if dtype == object:
            return count * _STRING_OBJECT_BYTES
        bits = _PACKED_BITS.get(onnx_elem_type(dtype)) if dtype.kind == "V" else None
        return (count * bits + 7) // 8 if bits else count * dtype.itemsize

    def _require_tensor(self, supported: str, kinds: str = "Tensors") -> None:
        if not self.is_tensor():
            raise RuntimeError(f"Only OrtValues that are {kinds} {supported}")

    def data_type(self) -> str:
        if isinstance(self._value, SparseTensor):
            return self._value.data_type()
        if self._device.is_host:
            return value_type_string(self._value)
        return value_type_string(np.empty(0, self._value.dtype))

    def element_type(self) -> int:
        if isinstance(self._value, SparseTensor):
            return self._value.element_type()
        if isinstance(self._value, list) and self._value:  # a sequence: its tensors' element type
            return onnx_elem_type(np.asarray(self._value[0]).dtype)
        return onnx_elem_type(self._value.dtype)

    def is_tensor(self) -> bool:
        return self.has_value() and not isinstance(self._value, (list, dict, SparseTensor))

    def is_tensor_sequence(self) -> bool:
        return isinstance(self._value, list)

    def has_value(self) -> bool:
        return self._value is not None

    def is_sparse_tensor(self) -> bool:
        return isinstance(self._value, SparseTensor)

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


def copy_tensors(src: Sequence[OrtValue], dst: Sequence[OrtValue], stream: Any = None) -> None:
    """Copy each tensor of ``src`` into the tensor of ``dst`` at the same position (same shape and type),
    across devices through their data transfers; ``stream`` is unused (every copy completes on return)."""
    sources, targets = list(src), list(dst)
    if len(sources) != len(targets):
        raise RuntimeError(f"copy_tensors: {len(sources)} source values for {len(targets)} destinations")
    for position, (source, target) in enumerate(zip(sources, targets)):
        if not (isinstance(source, OrtValue) and isinstance(target, OrtValue) and source.is_tensor() and target.is_tensor()):
            raise RuntimeError(f"copy_tensors: value {position}: OrtValue must contain Tensor with data.")
        if source.shape() != target.shape() or np.dtype(source.value.dtype) != np.dtype(target.value.dtype):
            raise RuntimeError(f"copy_tensors: value {position}: source {source.shape()} {source.data_type()} "
                               f"does not match destination {target.shape()} {target.data_type()}")
        value = source.value if source.device.is_host or source.device == target.device else source.numpy()
        data_transfer_for(target.device).copy_into(target.value, value)
