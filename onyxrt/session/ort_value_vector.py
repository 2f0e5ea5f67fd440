"""OrtValueVector: the list of OrtValues ``run_with_ortvaluevector`` and IOBinding exchange.

onnxruntime exposes it from ``capi.onnxruntime_pybind11_state`` (not the top-level module),
with ``push_back``, indexing, ``len``, iteration and DLPack export of its tensors.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..framework.device import data_transfer_for
from .device import NativeOrtDevice, device_of_native
from .ort_value import OrtValue, as_dtype


class OrtValueVector:
    """A growable sequence of OrtValues."""

    def __init__(self, values: Iterable[OrtValue] = ()) -> None:
        self._values: list[OrtValue] = list(values)

    def push_back(self, value: Any) -> None:
        """Append an OrtValue, or the tensor a DLPack capsule holds."""
        self._values.append(value if isinstance(value, OrtValue) else OrtValue.from_dlpack(_capsule_only(value)))

    def push_back_batch(self, tensors: Sequence[Any], data_ptrs: Sequence[int], element_types: Sequence[Any],
                        shapes: Sequence[Sequence[int]], devices: Sequence[NativeOrtDevice]) -> None:
        """Append tensors given by address (e.g. torch tensors' ``data_ptr()``), without copying.

        Each OrtValue keeps its ``tensors`` object alive, which must own the memory.
        """
        if not len(tensors) == len(data_ptrs) == len(element_types) == len(shapes) == len(devices):
            raise RuntimeError("push_back_batch: tensors, data_ptrs, element_types, shapes and devices differ in length")
        for owner, pointer, element_type, shape, native in zip(tensors, data_ptrs, element_types, shapes, devices):
            device = device_of_native(native)
            tensor = data_transfer_for(device).from_pointer(int(pointer), [int(d) for d in shape], as_dtype(element_type))
            value = OrtValue(tensor, device)
            value._owner = owner
            self._values.append(value)

    def reserve(self, capacity: int) -> None:
        """Kept for onnxruntime's API: a Python list grows as needed."""
        operator.index(capacity)

    def shrink_to_fit(self) -> None:
        """Kept for onnxruntime's API: a Python list grows as needed."""

    def element_type_at(self, idx: int) -> int:
        """The ONNX element type of the tensor at ``idx``."""
        return self[idx].element_type()

    def dlpack_at(self, idx: int) -> Any:
        """A DLPack capsule over the tensor at ``idx``."""
        return self[idx].__dlpack__()

    def to_dlpacks(self, to_tensor: Callable[[Any], Any] | None) -> list[Any]:
        """Every tensor as a DLPack capsule, or as ``to_tensor(capsule)`` when given."""
        capsules = [value.__dlpack__() for value in self._values]
        return capsules if to_tensor is None else [to_tensor(capsule) for capsule in capsules]

    def __getitem__(self, idx: int) -> OrtValue:
        index = operator.index(idx)
        if index < 0:
            raise TypeError(f"OrtValueVector index must be a non-negative int, got {idx}")
        if index >= len(self._values):
            raise IndexError(f"OrtValueVector index {index} out of range (size {len(self._values)})")
        return self._values[index]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[OrtValue]:
        return iter(list(self._values))

    def _replace(self, values: Sequence[OrtValue]) -> None:
        self._values[:] = values


def _capsule_only(value: Any) -> Any:
    if type(value).__name__ != "PyCapsule":
        raise TypeError("from_dlpack expected a valid DLPack capsule named 'dltensor'")
    return value
