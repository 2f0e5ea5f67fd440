"""Devices and the data transfer between them and the host.

A :class:`Device` names where a tensor lives (``Device("cpu", 0)`` is the host). A value
on the host is a numpy array; a value on any other device is whatever array type that
device's :class:`DataTransfer` makes, with ``shape`` and ``dtype`` (a numpy dtype)
attributes. Each device type registers one data transfer class
(:func:`register_data_transfer`); the plan, OrtValue and IOBinding find it with
:func:`data_transfer_for` and tell which device holds a value with :func:`device_of`.
"""

from __future__ import annotations

import ctypes
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InvalidArgument


@dataclass(frozen=True)
class Device:
    """Where a tensor lives: a device type (lower case, as onnxruntime's ``device_name()``) and an index."""

    type: str
    id: int = 0

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"

    @property
    def is_host(self) -> bool:
        return self.type == "cpu"


HOST = Device("cpu", 0)


class DataTransfer(ABC):
    """Moves tensors between the host and one device, and allocates on that device."""

    def __init__(self, device: Device) -> None:
        self.device = device

    @abstractmethod
    def holds(self, value: Any) -> bool:
        """Whether ``value`` is a tensor in this device's memory."""

    @abstractmethod
    def to_device(self, array: np.ndarray) -> Any:
        """A copy of the host ``array`` in this device's memory."""

    @abstractmethod
    def to_host(self, value: Any) -> np.ndarray:
        """A host copy of the device tensor ``value``."""

    @abstractmethod
    def allocate(self, shape: Sequence[int], dtype: np.dtype) -> Any:
        """An uninitialized tensor of ``shape`` and ``dtype`` in this device's memory."""

    @abstractmethod
    def copy_into(self, target: Any, source: Any) -> None:
        """Write ``source`` (a host array or a tensor on this device) into the device tensor ``target``."""

    def data_ptr(self, value: Any) -> int:
        """The address of the device tensor's memory."""
        raise InvalidArgument(f"Device '{self.device}' does not expose memory addresses")

    def from_pointer(self, buffer_ptr: int, shape: Sequence[int], dtype: np.dtype) -> Any:
        """The device tensor at ``buffer_ptr`` (IOBinding's pointer binds), without copying."""
        raise InvalidArgument(f"Device '{self.device}' cannot bind memory by address")


class HostDataTransfer(DataTransfer):
    """The host's own 'transfer': numpy arrays, no copies across a border."""

    def holds(self, value: Any) -> bool:
        return isinstance(value, np.ndarray)

    def to_device(self, array: np.ndarray) -> np.ndarray:
        return array

    def to_host(self, value: Any) -> np.ndarray:
        return value

    def allocate(self, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        return np.empty(tuple(shape), dtype)

    def copy_into(self, target: Any, source: Any) -> None:
        np.copyto(target, source)

    def data_ptr(self, value: Any) -> int:
        return int(value.ctypes.data)

    def from_pointer(self, buffer_ptr: int, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        return array_from_pointer(buffer_ptr, shape, dtype)


def array_from_pointer(buffer_ptr: int, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """A numpy view of host memory at ``buffer_ptr``."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = (ctypes.c_char * nbytes).from_address(int(buffer_ptr))
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(shape))


_TRANSFER_TYPES: dict[str, Callable[[Device], DataTransfer]] = {"cpu": HostDataTransfer}
_TRANSFERS: dict[Device, DataTransfer] = {}
_LOCK = threading.Lock()


def register_data_transfer(device_type: str, factory: Callable[[Device], DataTransfer]) -> None:
    """Make ``device_type``'s tensors reachable: ``factory(device)`` builds its data transfer once per device."""
    with _LOCK:
        _TRANSFER_TYPES[device_type.lower()] = factory
        for device in [d for d in _TRANSFERS if d.type == device_type.lower()]:
            del _TRANSFERS[device]


def data_transfer_for(device: Device) -> DataTransfer:
    """The (shared) data transfer of ``device``; INVALID_ARGUMENT for an unknown device type."""
    transfer = _TRANSFERS.get(device)
    if transfer is not None:
        return transfer
    with _LOCK:
        factory = _TRANSFER_TYPES.get(device.type)
        if factory is None:
            known = ", ".join(sorted(_TRANSFER_TYPES))
            raise InvalidArgument(f"Unsupported device type '{device.type}' (known: {known})")
        return _TRANSFERS.setdefault(device, factory(device))


def parse_device(device_type: str, device_id: int = 0) -> Device:
    """The Device for onnxruntime's ``(device_type, device_id)`` arguments ('cpu', 'CPU', ...)."""
    device = Device(str(device_type).lower(), int(device_id))
    data_transfer_for(device)  # rejects unknown device types here, with the known ones listed
    return device


def device_of(value: Any) -> Device:
    """The device holding ``value``: the host for numpy (and non-tensor) values."""
    if isinstance(value, (np.ndarray, np.generic)) or value is None:
        return HOST
    for device, transfer in list(_TRANSFERS.items()):
        if not device.is_host and transfer.holds(value):
            return device
    return HOST


@dataclass(frozen=True)
class BoundOutput:
    """Where a run hands over one graph output: a device, and optionally a tensor there to write into."""

    device: Device = HOST
    buffer: Any = None


def deliver(value: Any, target: BoundOutput) -> Any:
    """``value`` handed over as ``target`` asks: moved to its device, or written into its buffer."""
    if target.buffer is None:
        return move_to(value, target.device)
    buffer = target.buffer
    if value is buffer:  # the kernel wrote into the bound buffer itself (see allocation_planner.Arena)
        return buffer
    if tuple(buffer.shape) != tuple(value.shape) or np.dtype(buffer.dtype) != np.dtype(value.dtype):
        raise InvalidArgument(
            f"The bound output buffer is {list(buffer.shape)} {np.dtype(buffer.dtype)} but the output is "
            f"{list(value.shape)} {np.dtype(value.dtype)}"
        )
    source = device_of(value)
    if source != target.device and not source.is_host:
        value = data_transfer_for(source).to_host(value)
    data_transfer_for(target.device).copy_into(buffer, value)
    return buffer


def move_to(value: Any, device: Device) -> Any:
    """``value`` on ``device``, copied through the host where it lives elsewhere (unchanged when already there)."""
    source = device_of(value)
    if source == device:
        return value
    if not source.is_host:
        value = data_transfer_for(source).to_host(value)
    return value if device.is_host else data_transfer_for(device).to_device(np.asarray(value))
