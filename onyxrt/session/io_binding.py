"""IOBinding: bind inputs and outputs once, run many times (onnxruntime's API).

Inputs and outputs may live on any device a provider registered. An input is read
where it is bound (copied only if the nodes reading it run on another device); an
output is handed over by the plan when its producer runs: moved to the bound device,
or written into the bound buffer. An output bound to the device that produces it is
not copied at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import InvalidArgument
from ..framework.device import HOST, BoundOutput, data_transfer_for, parse_device
from .ort_value import OrtValue, as_dtype

if TYPE_CHECKING:
    from .inference_session import InferenceSession
    from .ort_value_vector import OrtValueVector
    from .session_options import RunOptions


class IOBinding:
    """Inputs and outputs bound to a session by name; see ``InferenceSession.run_with_iobinding``."""

    def __init__(self, session: InferenceSession) -> None:
        self._session = session
        self._inputs: dict[str, Any] = {}
        self._outputs: dict[str, BoundOutput] = {}
        self._output_values: dict[str, OrtValue] = {}  # bound OrtValues, returned as themselves
        self._results: list[OrtValue] = []

    def bind_cpu_input(self, name: str, arr_on_cpu: np.ndarray) -> None:
        """Bind the host array ``arr_on_cpu`` to input ``name`` (checked here, as onnxruntime does)."""
        self._check_input_name(name, "Failed to find NodeArg with name: {name} in the def list")
        if not isinstance(arr_on_cpu, np.ndarray):
            raise RuntimeError(f"Unable to create OrtValue from the given python object: bind_cpu_input('{name}') "
                               f"takes a numpy array, got {type(arr_on_cpu).__name__}")
        self._inputs[name] = arr_on_cpu

    def _check_input_name(self, name: str, message: str) -> None:
        if name not in self._session._input_specs:
            raise RuntimeError(message.format(name=name))

    def bind_input(self, name: str, device_type: str, device_id: int, element_type: Any,
                   shape: Sequence[int], buffer_ptr: int) -> None:
        """Bind the tensor of ``shape`` and ``element_type`` at ``buffer_ptr`` in the device's memory."""
        device = parse_device(device_type, device_id)
        self._inputs[name] = data_transfer_for(device).from_pointer(buffer_ptr, shape, as_dtype(element_type))

    def bind_ortvalue_input(self, name: str, ortvalue: OrtValue) -> None:
        self._check_input_name(name, "Error when binding input: Failed to find input name in the mapping: {name}")
        self._inputs[name] = ortvalue.value

    def bind_output(self, name: str, device_type: str = "cpu", device_id: int = 0, element_type: Any = None,
                    shape: Sequence[int] | None = None, buffer_ptr: int | None = None) -> None:
        """Bind an output to a device; with ``buffer_ptr`` the result is written into that memory there."""
        device = parse_device(device_type, device_id)
        self._output_values.pop(name, None)
        if buffer_ptr is None:
            self._outputs[name] = BoundOutput(device)
            return
        if element_type is None or shape is None:
            raise InvalidArgument(f"bind_output('{name}') with a buffer needs element_type and shape")
        buffer = data_transfer_for(device).from_pointer(buffer_ptr, shape, as_dtype(element_type))
        self._outputs[name] = BoundOutput(device, buffer)

    def bind_ortvalue_output(self, name: str, ortvalue: OrtValue) -> None:
        """Bind an output to the tensor ``ortvalue``: runs write into it."""
        self._outputs[name] = BoundOutput(ortvalue.device, ortvalue.value)
        self._output_values[name] = ortvalue

    def clear_binding_inputs(self) -> None:
        self._inputs.clear()

    def clear_binding_outputs(self) -> None:
        self._outputs.clear()
        self._output_values.clear()
        self._results = []

    def synchronize_inputs(self) -> None:
        """No-op: every device onyxrt runs on completes its copies before returning."""

    def synchronize_outputs(self) -> None:
        """No-op: every device onyxrt runs on completes its copies before returning."""

    def get_outputs(self) -> list[OrtValue]:
        """The outputs of the last run, in binding order, on their bound devices."""
        return list(self._results)

    def get_outputs_as_ortvaluevector(self) -> OrtValueVector:
        """The outputs of the last run as an OrtValueVector (empty before any run)."""
        from .ort_value_vector import OrtValueVector

        return OrtValueVector(self._results)

    def copy_outputs_to_cpu(self) -> list[Any]:
        """Host copies of the last run's outputs."""
        copies = []
        for value in self._results:
            host = value.numpy()
            copies.append(host.copy() if value.device == HOST and isinstance(host, np.ndarray) else host)
        return copies

    def _run(self, run_options: RunOptions | None) -> None:
        # with no output bound, every output comes back on the host
        names = list(self._outputs) or [arg.name for arg in self._session.get_outputs()]
        targets = [self._outputs.get(name, BoundOutput(HOST)) for name in names]
        results = self._session._run_bound(self._inputs, names, targets, run_options)
        self._results = [
            self._output_values.get(name) or OrtValue(result, target.device)
            for name, target, result in zip(names, targets, results)
        ]
