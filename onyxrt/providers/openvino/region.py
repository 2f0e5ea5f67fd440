"""One fused region compiled by OpenVINO and run from numpy arrays.

The region's body becomes an ONNX model (its weights as initializers, its other inputs as
inputs with their dimensions as the graph declares them, symbolic ones left dynamic),
which OpenVINO reads and compiles once: a new sequence or past length runs on the same
compiled model. With ``disable_dynamic_shapes`` the model is instead compiled for each
new set of input shapes (cached), as onnxruntime's provider does.

Each thread runs on its own infer request (an infer request is not safe to share).
Inputs are handed over without copies where their dtype and layout allow; outputs are
copied out of the request, so the next run cannot overwrite arrays already returned.
"""

from __future__ import annotations

import io
import threading
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from ...errors import EPFail
from ..base import NodeGroup
from ...graph.tensors import constant_array
from .onnx_export import EMBEDDED_BYTES, ValueNames, export_nodes
from .options import OpenVINOOptions


class CompiledRegion:
    """A region's OpenVINO model, compiled for the provider's device; called as the fused node's step."""

    def __init__(self, group: NodeGroup, constants: Mapping[str, ir.Value], core: Any, options: OpenVINOOptions,
                 name: str) -> None:
        self.name = name
        self.compilations = 0  # how many times OpenVINO compiled this region (once, unless shapes are static)
        self._core, self._options = core, options
        # inputs the graph fixes (weights no feed can override) are part of the model, not fed
        fixed = {value: constants[value.name] for value in group.inputs if value.name in constants}
        self._output_dtypes = [_numpy_dtype(value) for value in group.outputs]
        # small constants (shapes, axes) go into the ONNX copy, where the frontend may need their values;
        # weights are attached to the converted model as constants (sparing the protobuf's copies)
        small = {value: constant for value, constant in fixed.items() if constant.const_value.nbytes <= EMBEDDED_BYTES}
        names = ValueNames()
        proto = export_nodes(group.nodes, group.inputs, group.outputs, group.opset_imports, names,
                             {value: constant.const_value for value, constant in small.items()})
        from openvino.frontend import FrontEndManager

        frontend = FrontEndManager().load_by_framework("onnx")
        try:
            model = frontend.convert(frontend.load(io.BytesIO(proto.SerializeToString())))
            _attach_weights(model, {names(value): constant_array(constant)
                                    for value, constant in fixed.items() if value not in small})
        except Exception as exc:  # OpenVINO's own exception types
            raise EPFail(f"OpenVINOExecutionProvider could not convert region {name} "
                         f"({len(group.nodes)} nodes): {exc}") from None
        # OpenVINO's inputs and outputs by the names they carry, in the group's positions
        input_positions = {names(value): position for position, value in enumerate(group.inputs)}
        self._fed_positions = [_position(name, port.get_names(), input_positions) for port in model.inputs]
        output_ports = {tensor: index for index, port in enumerate(model.outputs) for tensor in port.get_names()}
        self._output_positions = [_position(name, [names(value)], output_ports) for value in group.outputs]
        self._input_dtypes = [np.dtype(port.get_element_type().to_dtype()) for port in model.inputs]
        self._static_models: dict[tuple[tuple[int, ...], ...], Any] = {}
        self._compile_lock = threading.Lock()
        self._local = threading.local()
        # the uncompiled model is kept only to be reshaped per input shape
        self._model = model if options.disable_dynamic_shapes else None
        self._compiled = None if options.disable_dynamic_shapes else self._compile(model)

    def _compile(self, model: Any) -> Any:
        try:
            compiled = self._core.compile_model(model, self._options.device_type, self._options.compile_properties())
        except Exception as exc:  # OpenVINO's own exception types
            raise EPFail(f"OpenVINOExecutionProvider could not compile region {self.name} for "
                         f"{self._options.device_type}: {exc}") from None
        self.compilations += 1
        return compiled

    def __call__(self, *inputs: Any) -> list[np.ndarray]:
        fed = [_as_fed(inputs[position], dtype) for position, dtype in zip(self._fed_positions, self._input_dtypes)]
        request = self._request(fed)
        request.infer(fed, share_inputs=True, share_outputs=True)
        # copies: the request's output memory is reused by its next run
        return [np.array(request.get_output_tensor(index).data, dtype=dtype, copy=True)
                for index, dtype in zip(self._output_positions, self._output_dtypes)]

    def _request(self, fed: Sequence[np.ndarray]) -> Any:
        if self._compiled is not None:
            request = getattr(self._local, "request", None)
            if request is None:
                request = self._local.request = self._compiled.create_infer_request()
            return request
        shapes = tuple(array.shape for array in fed)
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        request = requests.get(shapes)
        if request is None:
            request = requests[shapes] = self._static_compiled(shapes).create_infer_request()
        return request

    def _static_compiled(self, shapes: tuple[tuple[int, ...], ...]) -> Any:
        with self._compile_lock:
            compiled = self._static_models.get(shapes)
            if compiled is None:
                model = self._model.clone()
                model.reshape({index: list(shape) for index, shape in enumerate(shapes)})
                compiled = self._static_models[shapes] = self._compile(model)
            return compiled


def _position(region: str, carried: Iterable[str], positions: Mapping[str, int]) -> int:
    """The position ``positions`` gives the first of the tensor names ``carried`` it knows."""
    for name in carried:
        if name in positions:
            return positions[name]
    raise EPFail(f"OpenVINOExecutionProvider: region {region}'s OpenVINO model and its ONNX copy disagree "
                 f"on the input or output named {sorted(carried)}")


def _attach_weights(model: Any, weights: Mapping[str, np.ndarray]) -> None:
    """Replace ``model``'s parameters named in ``weights`` by constants holding those arrays.

    OpenVINO shares only writeable memory: read-only arrays (the session's weights) are copied once.
    """
    import openvino as ov

    for name, array in weights.items():
        parameter = model.input(name).get_node()
        array = np.ascontiguousarray(array)
        constant = ov.op.Constant(array if array.flags.writeable else array.copy(), shared_memory=True)
        constant.set_friendly_name(name)
        parameter.output(0).replace(constant.output(0))
        model.remove_parameter(parameter)
    model.validate_nodes_and_infer_types()


def _numpy_dtype(value: ir.Value) -> np.dtype | None:
    if isinstance(value.type, ir.TensorType):
        return np.dtype(value.type.dtype.numpy())
    return None


def _as_fed(value: Any, dtype: np.dtype) -> np.ndarray:
    """``value`` as a C-contiguous array of the model input's dtype (no copy when it already is one)."""
    array = np.asarray(value)
    if array.dtype != dtype or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=dtype)
    return array
