"""IOBinding: bind inputs and outputs once, run many times (onnxruntime's API)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import InvalidArgument
from .ort_value import OrtValue, _as_dtype, _check_cpu, array_from_pointer

if TYPE_CHECKING:
    from .inference_session import InferenceSession


class IOBinding:
    """Inputs and outputs bound to a session by name; see ``InferenceSession.run_with_iobinding``."""

    def __init__(self, session: InferenceSession) -> None:
        self._session = session
        self._inputs: dict[str, Any] = {}
        self._outputs: dict[str, OrtValue | None] = {}
        self._results: list[OrtValue] = []

    def bind_cpu_input(self, name: str, arr_on_cpu: np.ndarray) -> None:
        self._inputs[name] = arr_on_cpu

    def bind_input(self, name: str, device_type: str, device_id: int, element_type: Any,
                   shape: Sequence[int], buffer_ptr: int) -> None:
        """Bind CPU memory at ``buffer_ptr`` holding a tensor of ``shape`` and ``element_type``."""
        _check_cpu(device_type)
        self._inputs[name] = array_from_pointer(buffer_ptr, shape, _as_dtype(element_type))

    def bind_ortvalue_input(self, name: str, ortvalue: OrtValue) -> None:
        self._inputs[name] = ortvalue.numpy()

    def bind_output(self, name: str, device_type: str = "cpu", device_id: int = 0, element_type: Any = None,
                    shape: Sequence[int] | None = None, buffer_ptr: int | None = None) -> None:
        """Bind an output; with ``buffer_ptr`` the result is written into that CPU memory."""
        _check_cpu(device_type)
        if buffer_ptr is None:
            self._outputs[name] = None
            return
        if element_type is None or shape is None:
            raise InvalidArgument(f"bind_output('{name}') with a buffer needs element_type and shape")
        self._outputs[name] = OrtValue(array_from_pointer(buffer_ptr, shape, _as_dtype(element_type)))

    def bind_ortvalue_output(self, name: str, ortvalue: OrtValue) -> None:
        self._outputs[name] = ortvalue

    def clear_binding_inputs(self) -> None:
        self._inputs.clear()

    def clear_binding_outputs(self) -> None:
        self._outputs.clear()

    def synchronize_inputs(self) -> None:
        """No-op: CPU data needs no device synchronization."""

    def synchronize_outputs(self) -> None:
        """No-op: CPU data needs no device synchronization."""

    def get_outputs(self) -> list[OrtValue]:
        return list(self._results)

    def copy_outputs_to_cpu(self) -> list[Any]:
        return [value.numpy().copy() if isinstance(value.numpy(), np.ndarray) else value.numpy()
                for value in self._results]

    def _run(self, run_options) -> None:
        names = list(self._outputs)
        results = self._session.run(names, self._inputs, run_options)
        bound = []
        for name, result in zip(names, results):
            target = self._outputs[name]
            if target is None:
                bound.append(OrtValue(result))
                continue
            if target.shape() != list(np.shape(result)):
                raise InvalidArgument(
                    f"Output '{name}' has shape {list(np.shape(result))} but the bound buffer has {target.shape()}"
                )
            np.copyto(target.numpy(), result)
            bound.append(target)
        self._results = bound
