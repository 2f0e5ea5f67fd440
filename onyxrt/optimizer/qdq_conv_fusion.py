"""QDQ Conv fusion: ``Q(Conv(DQ(x), DQ(w), DQ(b)))`` becomes one QLinearConv on the quantized tensors.

What onnxruntime's ``quantize_static`` writes in QDQ format around every Conv: the uint8/int8
activation and the int8 weight (per tensor or per output channel) are dequantized, convolved
in float and the result quantized again. QLinearConv computes the same thing as an integer
GEMM (``providers/cpu/nn/integer_conv.py``): int32 accumulation of (x - x_zp)(w - w_zp), the
int32 bias added, then ``round(acc * x_scale * w_scale / y_scale) + y_zp``. The float path
rounds the float sum instead, so an output may differ by one quantization step where the
exact value lies next to a rounding boundary (onnxruntime's own QDQ fusion has the same
difference); nothing else changes.

Preconditions: every scale and zero point constant; x and y per tensor (8-bit); w a constant
8-bit filter, per tensor or per output channel (DequantizeLinear axis 0), with zero points
given; the bias, when present, a DequantizeLinear of a constant int32 vector with zero point
0 and scale x_scale * w_scale (as the quantizer writes it, checked to float32 rounding);
DequantizeLinear without ``block_size``, QuantizeLinear to uint8/int8; the Conv output read
by the QuantizeLinear only. The DequantizeLinear nodes stay for other readers and are removed
by dead-code elimination otherwise. onnxruntime: QDQSelectorActionTransformer (its Conv rule).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .matching import only_reader, replace_with, self_contained
from .pass_manager import OptimizationContext
from .qdq_matching import QdqFusion, constant, is_eight_bit, per_tensor

_CONV_ATTRIBUTES = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


class QdqConvFusion(QdqFusion):
    """Replaces a quantize-dequantize Conv by QLinearConv (integer kernel) where the pattern is exact."""

    name = "qdq_conv_fusion"

    def fuse(self, graph: ir.Graph, context: OptimizationContext) -> int:
        fused = 0
        for conv in [node for node in graph if node.op_type == "Conv" and node.domain == ""]:
            inputs = _match(conv)
            if inputs is None:
                continue
            quantize = only_reader(conv.outputs[0])
            nodes = [conv, quantize]
            if not self_contained(nodes, quantize.outputs[0]):
                continue
            attributes = [conv.attributes[name] for name in _CONV_ATTRIBUTES if name in conv.attributes]
            qlinear = ir.Node("", "QLinearConv", inputs, attributes=attributes, num_outputs=1,
                              name=f"{conv.name or 'conv'}_quant")
            replace_with(graph, nodes, quantize.outputs[0], qlinear)
            fused += 1
        return fused


def _dequantize(value: ir.Value | None) -> ir.Node | None:
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "DequantizeLinear" or node.domain != "":
        return None
    if node.attributes.get_int("block_size", 0):
        return None
    return node


def _match(conv: ir.Node) -> list[ir.Value] | None:
    """QLinearConv's inputs for ``conv`` when it sits in an exact QDQ pattern, else None."""
    if len(conv.inputs) not in (2, 3) or conv.outputs[0].is_graph_output():
        return None
    quantize = only_reader(conv.outputs[0])
    if quantize is None or quantize.op_type != "QuantizeLinear" or quantize.domain != "":
        return None
    if quantize.inputs[0] is not conv.outputs[0] or not is_eight_bit(quantize.outputs[0]):
        return None
    if quantize.attributes.get_int("block_size", 0):
        return None
    y = per_tensor(quantize)
    dq_x = _dequantize(conv.inputs[0])
    dq_w = _dequantize(conv.inputs[1])
    if y is None or dq_x is None or dq_w is None:
        return None
    x = per_tensor(dq_x)
    if x is None or not is_eight_bit(x[0]):
        return None
    weight = _weight(dq_w)
    if weight is None:
        return None
    inputs = [*x, *weight, y[1], y[2]]
    bias = conv.inputs[2] if len(conv.inputs) == 3 else None
    if bias is not None:
        quantized_bias = _bias(bias, constant(x[1]), constant(weight[1]))
        if quantized_bias is None:
            return None
        inputs.append(quantized_bias)
    return inputs


def _weight(dequantize: ir.Node) -> tuple[ir.Value, ir.Value, ir.Value] | None:
    """(w, scale, zero point): a constant 8-bit filter, per tensor or per output channel (axis 0)."""
    if len(dequantize.inputs) != 3 or dequantize.inputs[2] is None:
        return None
    data, scale, zero = dequantize.inputs
    w, scale_array, zero_array = constant(data), constant(scale), constant(zero)
    if w is None or scale_array is None or zero_array is None:
        return None
    if w.dtype not in (np.uint8, np.int8) or w.ndim < 3 or zero_array.dtype != w.dtype or scale_array.dtype != np.float32:
        return None
    if scale_array.size != 1:
        axis = dequantize.attributes.get_int("axis", 1)
        if axis not in (0, -w.ndim) or scale_array.shape != (w.shape[0],) or zero_array.shape != (w.shape[0],):
            return None
    elif zero_array.size != 1:
        return None
    return data, scale, zero


def _bias(bias: ir.Value, x_scale: np.ndarray, w_scale: np.ndarray) -> ir.Value | None:
    """The int32 bias when ``bias`` is DQ(int32 b, x_scale * w_scale, 0), else None."""
    dequantize = _dequantize(bias)
    if dequantize is None:
        return None
    data = dequantize.inputs[0]
    values = constant(data)
    scale = constant(dequantize.inputs[1]) if len(dequantize.inputs) > 1 else None
    zero = constant(dequantize.inputs[2]) if len(dequantize.inputs) > 2 and dequantize.inputs[2] is not None else None
    if values is None or values.dtype != np.int32 or values.ndim != 1 or scale is None or scale.dtype != np.float32:
        return None
    if zero is not None and np.any(zero):
        return None
    expected = (x_scale.astype(np.float32).reshape(()) * w_scale.astype(np.float32).reshape(-1)).astype(np.float32)
    if scale.size not in (1, values.size) or expected.size not in (1, values.size):
        return None
    if not np.allclose(np.broadcast_to(scale.reshape(-1), values.shape), np.broadcast_to(expected, values.shape),
                       rtol=2e-7, atol=0):
        return None
    return data
