"""A test execution provider whose "device" is a separate memory space on the host.

Its tensors are :class:`DeviceArray` s, which are not numpy arrays: a CPU kernel handed
one fails loudly, so a missing copy at a device border cannot go unnoticed. The data
transfer counts every copy across the border. The provider claims connected regions of
elementwise ops and MatMul (a region provider: ``get_capability`` + ``compile``) and runs
them on its device arrays.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onyxrt.framework.device import DataTransfer, Device, array_from_pointer
from onyxrt.providers import ExecutionProvider, NodeGroup
from onyxrt.providers.base import connected_groups, is_assigned

DEVICE_TYPE = "sepmem"


class DeviceArray:
    """A tensor in the separate memory space: shape and dtype readable, data only through the transfer."""

    __slots__ = ("_data",)

    def __init__(self, data: np.ndarray) -> None:
        self._data = data

    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError("a sepmem device tensor was read as a host array: a copy to the host is missing")

    def __repr__(self) -> str:
        return f"DeviceArray({list(self.shape)}, {self.dtype})"


class SeparateMemoryTransfer(DataTransfer):
    """Copies between the host and the separate memory, counted."""

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        self.to_device_count = 0
        self.to_host_count = 0

    def reset_counts(self) -> None:
        self.to_device_count = self.to_host_count = 0

    @property
    def copies(self) -> int:
        return self.to_device_count + self.to_host_count

    def holds(self, value: Any) -> bool:
        return isinstance(value, DeviceArray)

    def to_device(self, array: np.ndarray) -> DeviceArray:
        if not isinstance(array, np.ndarray):
            raise TypeError(f"to_device expects a host array, got {type(array).__name__}")
        self.to_device_count += 1
        return DeviceArray(np.array(array, copy=True))

    def to_host(self, value: Any) -> np.ndarray:
        if not isinstance(value, DeviceArray):
            raise TypeError(f"to_host expects a device tensor, got {type(value).__name__}")
        self.to_host_count += 1
        return value._data.copy()

    def allocate(self, shape: Sequence[int], dtype: np.dtype) -> DeviceArray:
        return DeviceArray(np.empty(tuple(shape), dtype))

    def copy_into(self, target: Any, source: Any) -> None:
        if isinstance(source, DeviceArray):
            np.copyto(target._data, source._data)
        else:
            self.to_device_count += 1
            np.copyto(target._data, source)

    def data_ptr(self, value: Any) -> int:
        return int(value._data.ctypes.data)

    def from_pointer(self, buffer_ptr: int, shape: Sequence[int], dtype: np.dtype) -> DeviceArray:
        # the separate memory is host memory underneath, so an address can be viewed in place
        return DeviceArray(array_from_pointer(buffer_ptr, shape, dtype))


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, x.dtype.type(0))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


DEVICE_OPS = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "MatMul": np.matmul,
    "Relu": _relu, "Neg": np.negative, "Exp": np.exp, "Tanh": np.tanh, "Sigmoid": _sigmoid,
}


class SeparateMemoryProvider(ExecutionProvider):
    """Claims connected regions of :data:`DEVICE_OPS` nodes and runs each as one step on DeviceArrays."""

    name = "SeparateMemoryExecutionProvider"
    device_type = DEVICE_TYPE
    data_transfer_type = SeparateMemoryTransfer

    def __init__(self, options: dict[str, str] | None = None) -> None:
        super().__init__(options)
        self.compiled_groups: list[NodeGroup] = []

    def get_capability(self, graph: ir.Graph, opset_imports: Mapping[str, int]) -> list[NodeGroup]:
        supported = [n for n in graph if not is_assigned(n) and n.domain == "" and n.op_type in DEVICE_OPS]
        return [NodeGroup.of(nodes, opset_imports) for nodes in connected_groups(graph, supported)]

    def compile(self, group: NodeGroup):
        self.compiled_groups.append(group)
        program = [(DEVICE_OPS[node.op_type], node.inputs, node.outputs[0]) for node in group.nodes]

        def run_on_device(*inputs: Any) -> list[DeviceArray]:
            values: dict[ir.Value, np.ndarray] = {}
            for value, tensor in zip(group.inputs, inputs):
                if not isinstance(tensor, DeviceArray):
                    raise TypeError(f"input '{value.name}' reached the device as {type(tensor).__name__}")
                values[value] = tensor._data
            for fn, node_inputs, output in program:
                values[output] = np.asarray(fn(*[values[v] for v in node_inputs]))
            return [DeviceArray(values[v]) for v in group.outputs]

        return run_on_device
