"""DLPack exchange for host tensors, as onnxruntime's OrtValue does it.

Export hands out a legacy ``"dltensor"`` capsule over the tensor's own memory (numpy's
exporter does the work, so the capsule keeps the array alive and its deleter runs when the
consumer is done). Import takes an object with ``__dlpack__`` (called without arguments,
as onnxruntime calls it) or a raw capsule, and gives back a host array sharing the memory.
Like onnxruntime, a tensor marked read-only is exported all the same (legacy DLPack has no
read-only flag) and an imported tensor is writable.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

# DLPack device and data type codes (dlpack.h)
DL_CPU = 1
_DL_COMPLEX = 5
_CAPSULE_NAME = b"dltensor"


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


_capsule_is_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_is_valid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_is_valid.restype = ctypes.c_int
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_pointer.restype = ctypes.c_void_p


class _WritableAlias:
    """Exposes an array's memory as writable through ``__array_interface__``, keeping the array alive."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array
        interface = dict(array.__array_interface__)
        interface["data"] = (interface["data"][0], False)
        self.__array_interface__ = interface


def writable_view(array: np.ndarray) -> np.ndarray:
    """``array`` itself when writable, else a writable view of its memory (which keeps it alive)."""
    if array.flags.writeable:
        return array
    return np.asarray(_WritableAlias(array))


def to_capsule(array: np.ndarray) -> Any:
    """A legacy DLPack capsule over the host ``array``'s memory (no copy)."""
    if array.dtype == object or array.dtype.kind in "USV":
        raise RuntimeError(f"DLPack cannot carry tensors of type {array.dtype}: only numeric and bool tensors")
    return writable_view(array).__dlpack__()


class _CapsuleProducer:
    """Hands numpy's ``from_dlpack`` an already made capsule."""

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, **_protocol_options: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (DL_CPU, 0)


def from_dlpack(data: Any) -> np.ndarray:
    """The host array ``data`` (a DLPack producer or a ``"dltensor"`` capsule) holds, sharing its memory.

    TypeError when there is no valid capsule; RuntimeError (as onnxruntime) for a tensor on a
    device other than the host, of an unsupported type, or not contiguous.
    """
    capsule = data.__dlpack__() if hasattr(data, "__dlpack__") else data
    if type(capsule).__name__ != "PyCapsule" or not _capsule_is_valid(capsule, _CAPSULE_NAME):
        raise TypeError("from_dlpack expected a valid DLPack capsule named 'dltensor'")
    tensor = _DLTensor.from_address(_capsule_pointer(capsule, _CAPSULE_NAME))
    if tensor.device.device_type != DL_CPU:
        raise RuntimeError(
            f"DLPack tensor on device type {tensor.device.device_type}: onyxrt imports host (CPU) tensors only"
        )
    if tensor.dtype.code == _DL_COMPLEX:
        raise RuntimeError(f"Unsupported DLPack data type: code {tensor.dtype.code}, bits {tensor.dtype.bits}")
    try:
        array = np.from_dlpack(_CapsuleProducer(capsule))
    except (BufferError, TypeError, ValueError) as exc:
        raise RuntimeError(f"Unsupported DLPack tensor: {exc}") from None
    if not array.flags.c_contiguous:
        raise RuntimeError("DLPack tensor is not contiguous: onyxrt, as onnxruntime, only supports contiguous tensors")
    return writable_view(array)
