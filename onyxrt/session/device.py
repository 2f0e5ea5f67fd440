"""OrtDevice and OrtMemoryInfo: where a tensor lives, as onnxruntime's Python API describes it.

onnxruntime has two device classes: the native ``capi.onnxruntime_pybind11_state.OrtDevice``
(``OrtDevice(device_type, mem_type, [vendor_id,] device_id)`` with integer codes) and the
Python wrapper ``onnxruntime.OrtDevice`` (``OrtDevice.make("cuda", 0)``), which holds one.
onyxrt keeps both, with the same methods, and maps them to its own :class:`Device`
(a device type name and an index) through :func:`device_of_native`.

As in onnxruntime, OrtDevice and OrtMemoryInfo compare by identity: a session hands out
one memory info per device, so the infos of inputs on the same device compare equal.
"""

from __future__ import annotations

import enum
import operator
from typing import Any

from ..framework.device import Device, data_transfer_for
from .session_options import OrtAllocatorType, OrtMemType


class OrtDeviceVendorId(enum.IntEnum):
    """PCI vendor ids onnxruntime names (``OrtDevice::VendorIds``)."""

    NONE = 0x0000
    AMD = 0x1002
    NVIDIA = 0x10DE
    ARM = 0x13B5
    MICROSOFT = 0x1414
    HUAWEI = 0x19E5
    QUALCOMM = 0x5143
    INTEL = 0x8086


class OrtMemoryInfoDeviceType(enum.IntEnum):
    """The kind of device an OrtMemoryInfo's memory belongs to (``OrtMemoryInfoDeviceType``)."""

    CPU = 0
    GPU = 1
    FPGA = 2
    NPU = 3


class OrtDeviceMemoryType(enum.IntEnum):
    """Device memory, or host memory the device can also reach (pinned)."""

    DEFAULT = 0
    HOST_ACCESSIBLE = 5


# onnxruntime's native device type codes (OrtDevice::CPU/GPU/FPGA/NPU, and the legacy DML code)
_CPU, _GPU, _FPGA, _NPU, _DML = 0, 1, 2, 3, 4

# Device names ``OrtDevice.make`` accepts: native type code and the vendor the name implies.
_NAMED_DEVICES: dict[str, tuple[int, int | None]] = {
    "cpu": (_CPU, None),
    "cuda": (_GPU, OrtDeviceVendorId.NVIDIA),
    "dml": (_DML, OrtDeviceVendorId.MICROSOFT),
    "cann": (_NPU, OrtDeviceVendorId.HUAWEI),
    "webgpu": (_GPU, OrtDeviceVendorId.NONE),
    "gpu": (_GPU, None),
    "npu": (_NPU, None),
}


def _index(value: Any, what: str) -> int:
    if isinstance(value, (float, str, bytes)):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}") from None


class NativeOrtDevice:
    """onnxruntime's native OrtDevice (``capi.onnxruntime_pybind11_state.OrtDevice``).

    ``NativeOrtDevice(device_type, mem_type, device_id)`` or
    ``NativeOrtDevice(device_type, mem_type, vendor_id, device_id)``, with onnxruntime's codes
    (``NativeOrtDevice.cpu()``, ``.cuda()``, ``.default_memory()``, ...).
    """

    __slots__ = ("_type", "_mem_type", "_vendor_id", "_device_id", "_name")

    def __init__(self, device_type: int, mem_type: int, *ids: int) -> None:
        if len(ids) not in (1, 2):
            raise TypeError("OrtDevice(device_type, mem_type, device_id) or "
                            "OrtDevice(device_type, mem_type, vendor_id, device_id)")
        self._type = _index(device_type, "device_type")
        self._mem_type = _index(mem_type, "mem_type")
        self._vendor_id = _index(ids[0], "vendor_id") if len(ids) == 2 else 0
        if self._type == _DML:  # the legacy DML code: onnxruntime stores a Microsoft GPU
            self._type, self._vendor_id = _GPU, int(OrtDeviceVendorId.MICROSOFT)
        self._device_id = _index(ids[-1], "device_id")
        self._name: str | None = None  # onyxrt's device type name, when made from one

    @staticmethod
    def cpu() -> int:
        return _CPU

    @staticmethod
    def gpu() -> int:
        return _GPU

    @staticmethod
    def cuda() -> int:
        return _GPU

    @staticmethod
    def webgpu() -> int:
        return _GPU

    @staticmethod
    def fpga() -> int:
        return _FPGA

    @staticmethod
    def npu() -> int:
        return _NPU

    @staticmethod
    def cann() -> int:
        return _NPU

    @staticmethod
    def dml() -> int:
        return _DML

    @staticmethod
    def default_memory() -> int:
        return 0

    def device_type(self) -> int:
        return self._type

    def device_id(self) -> int:
        return self._device_id

    def vendor_id(self) -> int:
        return self._vendor_id

    def mem_type(self) -> int:
        return self._mem_type


class OrtDevice:
    """onnxruntime's ``OrtDevice``: made with :meth:`make`, it wraps a native device."""

    def __init__(self, c_ort_device: NativeOrtDevice) -> None:
        if not isinstance(c_ort_device, NativeOrtDevice):
            raise ValueError("`Provided object` needs to be of type `onyxrt.capi.onnxruntime_pybind11_state.OrtDevice`")
        self._ort_device = c_ort_device

    def _get_c_device(self) -> NativeOrtDevice:
        return self._ort_device

    @staticmethod
    def make(ort_device_name: str, device_id: int, vendor_id: int = -1) -> OrtDevice:
        """The device named as in ``ortvalue_from_numpy`` ('cpu', 'cuda', 'gpu', ...; onyxrt's registered
        device types too), with ``vendor_id`` for the generic 'gpu' and 'npu'."""
        named = _NAMED_DEVICES.get(ort_device_name) if isinstance(ort_device_name, str) else None
        custom = named is None and isinstance(ort_device_name, str) and _is_registered(ort_device_name)
        if named is None and not custom:
            raise Exception(f"Unsupported device type: {ort_device_name}")  # noqa: TRY002 - onnxruntime's class
        device_type, implied_vendor = named if named is not None else (_GPU, None)
        vendor = vendor_id if vendor_id >= 0 else (implied_vendor if implied_vendor is not None else 0)
        native = NativeOrtDevice(device_type, NativeOrtDevice.default_memory(), int(vendor), device_id)
        if custom:
            native._name = ort_device_name
        return OrtDevice(native)

    def device_id(self) -> int:
        return self._ort_device.device_id()

    def device_type(self) -> int:
        return self._ort_device.device_type()

    def device_vendor_id(self) -> int:
        return self._ort_device.vendor_id()

    def device_mem_type(self) -> int:
        return self._ort_device.mem_type()


def _is_registered(device_type: str) -> bool:
    try:
        data_transfer_for(Device(device_type, 0))
    except Exception:  # noqa: BLE001 - unknown device type
        return False
    return True


def device_name_of_native(native: NativeOrtDevice) -> str:
    """The device type name (onyxrt's, lower case) a native OrtDevice stands for."""
    if native._name is not None:
        return native._name
    code, vendor = native.device_type(), native.vendor_id()
    if code == _CPU:
        return "cpu"
    if code == _GPU and vendor == OrtDeviceVendorId.MICROSOFT:
        return "dml"
    if code == _NPU:
        return "cann" if vendor == OrtDeviceVendorId.HUAWEI else "npu"
    if code == _GPU:
        if vendor == OrtDeviceVendorId.NVIDIA:
            return "cuda"
        return "webgpu" if vendor == OrtDeviceVendorId.NONE else "gpu"
    return "fpga"


def device_of_native(native: NativeOrtDevice) -> Device:
    """onyxrt's Device for a native OrtDevice (whether or not a provider serves it)."""
    return Device(device_name_of_native(native), native.device_id())


def native_of_device(device: Device) -> NativeOrtDevice:
    """The native OrtDevice describing onyxrt's ``device``."""
    if device.type in _NAMED_DEVICES:
        return OrtDevice.make(device.type, device.id)._get_c_device()
    native = NativeOrtDevice(_GPU, 0, 0, device.id)
    native._name = device.type
    return native


# OrtMemoryInfo names onnxruntime's CreateMemoryInfo knows: (stored name, kind, vendor, memory type)
_MEMORY_NAMES: dict[str, tuple[str, OrtMemoryInfoDeviceType, int, OrtDeviceMemoryType]] = {
    "Cpu": ("Cpu", OrtMemoryInfoDeviceType.CPU, 0, OrtDeviceMemoryType.DEFAULT),
    "Cuda": ("Cuda", OrtMemoryInfoDeviceType.GPU, OrtDeviceVendorId.NVIDIA, OrtDeviceMemoryType.DEFAULT),
    "CudaPinned": ("CudaPinned", OrtMemoryInfoDeviceType.GPU, OrtDeviceVendorId.NVIDIA,
                   OrtDeviceMemoryType.HOST_ACCESSIBLE),
    "Hip": ("Hip", OrtMemoryInfoDeviceType.GPU, OrtDeviceVendorId.AMD, OrtDeviceMemoryType.DEFAULT),
    "HipPinned": ("HipPinned", OrtMemoryInfoDeviceType.GPU, OrtDeviceVendorId.AMD, OrtDeviceMemoryType.HOST_ACCESSIBLE),
    "DML": ("DML", OrtMemoryInfoDeviceType.GPU, OrtDeviceVendorId.MICROSOFT, OrtDeviceMemoryType.DEFAULT),
    "OpenVINO_GPU": ("OpenVINO_GPU", OrtMemoryInfoDeviceType.GPU, OrtDeviceVendorId.INTEL, OrtDeviceMemoryType.DEFAULT),
    "OpenVINO_RT_NPU": ("OpenVINO_RT_NPU", OrtMemoryInfoDeviceType.NPU, OrtDeviceVendorId.INTEL,
                        OrtDeviceMemoryType.DEFAULT),
    "WebGPU_Buffer": ("WebGPU_Buf", OrtMemoryInfoDeviceType.GPU, 0, OrtDeviceMemoryType.DEFAULT),
    "WebGPU_Buf": ("WebGPU_Buf", OrtMemoryInfoDeviceType.GPU, 0, OrtDeviceMemoryType.DEFAULT),
    "WebNN_Tensor": ("WebNN_Ten", OrtMemoryInfoDeviceType.GPU, 0, OrtDeviceMemoryType.DEFAULT),
    "QnnHtpShared": ("QnnHtpShared", OrtMemoryInfoDeviceType.NPU, OrtDeviceVendorId.QUALCOMM,
                     OrtDeviceMemoryType.HOST_ACCESSIBLE),
}


class OrtMemoryInfo:
    """Which allocator a tensor's memory comes from: name, device id, memory and allocator types.

    ``OrtMemoryInfo(name, alloc_type, device_id, mem_type)`` takes onnxruntime's allocator names
    ('Cpu', 'Cuda', 'CudaPinned', 'DML', ...); :meth:`create_v2` any name with an explicit device.
    Sessions report theirs with ``get_input_memory_infos``/``get_output_memory_infos``.
    """

    __slots__ = ("_name", "_device_id", "_mem_type", "_allocator_type", "_device_mem_type", "_vendor_id",
                 "_device_kind")

    def __init__(self, name: str, alloc_type: OrtAllocatorType, device_id: int, mem_type: OrtMemType) -> None:
        _check_args(name, alloc_type, mem_type)
        known = _MEMORY_NAMES.get(name)
        if known is None:
            raise RuntimeError("Specified device is not supported. Try CreateMemoryInfo_V2.")
        stored, kind, vendor, device_mem_type = known
        device_id = 0 if kind == OrtMemoryInfoDeviceType.CPU else _index(device_id, "device_id")
        self._set(stored, kind, vendor, device_id, device_mem_type, mem_type, alloc_type)

    def _set(self, name: str, kind: OrtMemoryInfoDeviceType, vendor: int, device_id: int,
             device_mem_type: OrtDeviceMemoryType, mem_type: OrtMemType, alloc_type: OrtAllocatorType) -> None:
        self._name, self._device_kind, self._vendor_id, self._device_id = name, kind, int(vendor), device_id
        self._device_mem_type, self._mem_type, self._allocator_type = device_mem_type, mem_type, alloc_type

    @staticmethod
    def create_v2(name: str, device_type: OrtMemoryInfoDeviceType, vendor_id: int, device_id: int,
                  device_mem_type: OrtDeviceMemoryType, alignment: int, allocator_type: OrtAllocatorType) -> OrtMemoryInfo:
        """A memory info for any device: its kind, vendor and index given explicitly."""
        if not isinstance(name, str) or not isinstance(device_type, OrtMemoryInfoDeviceType) \
                or not isinstance(device_mem_type, OrtDeviceMemoryType) \
                or not isinstance(allocator_type, OrtAllocatorType):
            raise TypeError("create_v2(name: str, device_type: OrtMemoryInfoDeviceType, vendor_id: int, device_id: int, "
                            "device_mem_type: OrtDeviceMemoryType, alignment: int, allocator_type: OrtAllocatorType)")
        _index(alignment, "alignment")
        info = OrtMemoryInfo.__new__(OrtMemoryInfo)
        mem_type = OrtMemType.CPU_OUTPUT if device_mem_type == OrtDeviceMemoryType.HOST_ACCESSIBLE else OrtMemType.DEFAULT
        info._set(name, device_type, _index(vendor_id, "vendor_id"), _index(device_id, "device_id"),
                  device_mem_type, mem_type, allocator_type)
        return info

    @classmethod
    def for_device(cls, device: Device, allocator_type: OrtAllocatorType) -> OrtMemoryInfo:
        """The memory info of onyxrt's allocator on ``device`` (as sessions report it)."""
        info = cls.__new__(cls)
        if device.is_host:
            info._set("Cpu", OrtMemoryInfoDeviceType.CPU, 0, 0, OrtDeviceMemoryType.DEFAULT, OrtMemType.DEFAULT,
                      allocator_type)
            return info
        native = native_of_device(device)
        name = "Cuda" if device.type == "cuda" else "DML" if device.type == "dml" else device.type
        kind = OrtMemoryInfoDeviceType.NPU if native.device_type() == _NPU else OrtMemoryInfoDeviceType.GPU
        info._set(name, kind, native.vendor_id(), device.id, OrtDeviceMemoryType.DEFAULT, OrtMemType.DEFAULT,
                  allocator_type)
        return info

    def _device(self) -> Device:
        """onyxrt's Device for this memory (the host for CPU and host-accessible memory)."""
        if self._device_kind == OrtMemoryInfoDeviceType.CPU or self._device_mem_type == OrtDeviceMemoryType.HOST_ACCESSIBLE:
            return Device("cpu", 0)
        if _is_registered(self._name):
            return Device(self._name, self._device_id)
        code = _NPU if self._device_kind == OrtMemoryInfoDeviceType.NPU else _GPU
        if self._name == "DML":
            code = _DML
        return device_of_native(NativeOrtDevice(code, 0, self._vendor_id, self._device_id))

    def __repr__(self) -> str:
        return (f"OrtMemoryInfo(name='{self._name}', device_id={self._device_id}, mem_type={self._mem_type.name}, "
                f"allocator_type={self._allocator_type.name}, device_mem_type={self._device_mem_type.name})")

    @property
    def name(self) -> str:
        return self._name

    @property
    def device_id(self) -> int:
        return self._device_id

    @property
    def mem_type(self) -> OrtMemType:
        return self._mem_type

    @property
    def allocator_type(self) -> OrtAllocatorType:
        return self._allocator_type

    @property
    def device_mem_type(self) -> OrtDeviceMemoryType:
        return self._device_mem_type

    @property
    def device_vendor_id(self) -> int:
        return self._vendor_id


def _check_args(name: Any, alloc_type: Any, mem_type: Any) -> None:
    if not isinstance(name, str) or not isinstance(alloc_type, OrtAllocatorType) or not isinstance(mem_type, OrtMemType):
        raise TypeError(
            "OrtMemoryInfo(name: str, alloc_type: OrtAllocatorType, device_id: int, mem_type: OrtMemType): got "
            f"{type(name).__name__}, {type(alloc_type).__name__}, {type(mem_type).__name__}"
        )


__all__ = [
    "NativeOrtDevice", "OrtDevice", "OrtDeviceMemoryType", "OrtDeviceVendorId", "OrtMemoryInfo",
    "OrtMemoryInfoDeviceType", "device_name_of_native", "device_of_native", "native_of_device",
]
