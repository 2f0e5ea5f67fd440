"""What the QDQ fusions share: their pass settings (:class:`QdqFusion`) and what they ask of a graph,
per-tensor DequantizeLinear producers and QuantizeLinear readers with constant parameters, as
``quantize_static`` (QDQ format) writes them around each op."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

import abc

from ..graph.tensors import constant_array
from .matching import is_constant, is_float32, only_reader
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel

EIGHT_BIT = (np.dtype(np.uint8), np.dtype(np.int8))


class QdqFusion(GraphPass):
    """A rule of onnxruntime's QDQSelectorActionTransformer (EXTENDED, CPU provider): :meth:`fuse` rewrites
    ``graph``; nothing is fused where the session asked for the float path (``session.disable_quant_qdq``)."""

    ort_names = ("QDQSelectorActionTransformer",)
    level = OptimizationLevel.EXTENDED
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        return 0 if context.fold_dequantize_linear else self.fuse(graph, context)

    @abc.abstractmethod
    def fuse(self, graph: ir.Graph, context: OptimizationContext) -> int:
        """The number of rewrites made."""


def constant(value: ir.Value | None) -> np.ndarray | None:
    """``value``'s array when it is a constant no caller can override, else None."""
    return np.asarray(constant_array(value)) if is_constant(value) else None


def dequantize_producer(value: ir.Value | None) -> ir.Node | None:
    """The DequantizeLinear (no block_size, zero point given) producing float32 ``value``."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "DequantizeLinear" or node.domain != "":
        return None
    if node.attributes.get_int("block_size", 0) or len(node.inputs) != 3 or node.inputs[2] is None:
        return None
    if not is_float32(node.outputs[0]):
        return None
    return node


def is_eight_bit(value: ir.Value | None) -> bool:
    """A value typed uint8 or int8."""
    return value is not None and isinstance(value.type, ir.TensorType) and value.type.dtype in (ir.DataType.UINT8,
                                                                                                ir.DataType.INT8)


def per_tensor(node: ir.Node) -> tuple[ir.Value, ir.Value, ir.Value] | None:
    """(data, scale, zero point) of a per-tensor 8-bit (De)QuantizeLinear with constant parameters."""
    if len(node.inputs) != 3 or node.inputs[2] is None:
        return None
    data, scale, zero = node.inputs
    scale_array, zero_array = constant(scale), constant(zero)
    if scale_array is None or zero_array is None or scale_array.size != 1 or zero_array.size != 1:
        return None
    if scale_array.dtype != np.float32 or zero_array.dtype not in EIGHT_BIT:
        return None
    return data, scale, zero


def activation(value: ir.Value | None) -> tuple[ir.Value, ir.Value, ir.Value] | None:
    """(x, scale, zero point) when float32 ``value`` dequantizes an 8-bit ``x`` per tensor."""
    dequantize = dequantize_producer(value)
    if dequantize is None:
        return None
    x = per_tensor(dequantize)
    return x if x is not None and is_eight_bit(x[0]) else None


def quantize_reader(value: ir.Value) -> tuple[ir.Node, ir.Value, ir.Value] | None:
    """(QuantizeLinear, y_scale, y_zero_point) when ``value``'s only reader quantizes it per tensor to 8 bits."""
    quantize = only_reader(value)
    if quantize is None or quantize.op_type != "QuantizeLinear" or quantize.domain != "":
        return None
    if quantize.inputs[0] is not value or len(quantize.inputs) != 3 or quantize.inputs[2] is None:
        return None
    if quantize.attributes.get_int("block_size", 0) or quantize.attributes.get_int("saturate", 1) != 1:
        return None
    y = per_tensor(quantize)
    if y is None:
        return None
    return quantize, y[1], y[2]


def zero_point_type(zero_point: ir.Value) -> ir.DataType:
    """The 8-bit type a (De)QuantizeLinear with this constant zero point produces or reads (known even where
    inference left the value untyped)."""
    return ir.DataType.from_numpy(constant(zero_point).dtype)


def quantized_unit(node: ir.Node) -> tuple[tuple[ir.Value, ir.Value, ir.Value], ir.Node, ir.Value, ir.Value] | None:
    """((x, x_scale, x_zero), QuantizeLinear, y_scale, y_zero) when ``node``'s first input dequantizes an 8-bit x
    per tensor and its first output's only reader quantizes it per tensor to x's type, else None."""
    x = activation(node.inputs[0]) if node.inputs else None
    reader = quantize_reader(node.outputs[0])
    if x is None or reader is None or x[0].type.dtype != zero_point_type(reader[2]):
        return None
    return (x, *reader)


def same_quantization(first: tuple[ir.Value, ir.Value], second: tuple[ir.Value, ir.Value]) -> bool:
    """Whether two (scale, zero point) pairs of constants hold the same values and zero-point type."""
    (scale_a, zero_a), (scale_b, zero_b) = first, second
    arrays = [constant(v) for v in (scale_a, zero_a, scale_b, zero_b)]
    if any(a is None for a in arrays):
        return False
    return (arrays[1].dtype == arrays[3].dtype and np.array_equal(arrays[0].reshape(-1), arrays[2].reshape(-1))
            and np.array_equal(arrays[1].reshape(-1), arrays[3].reshape(-1)))
