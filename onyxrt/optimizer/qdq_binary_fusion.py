"""QDQ Add/Mul fusion: ``Q(Add(DQ(a), DQ(b)))`` becomes one com.microsoft QLinearAdd (Mul: QLinearMul).

What ``quantize_static`` (QDQ format) writes around a residual Add: both 8-bit operands are
dequantized, added in float and the sum quantized again. QLinearAdd computes
``round(a_scale / c_scale * (a - a_zp) + b_scale / c_scale * (b - b_zp)) + c_zp`` in one pass
over the bytes (QLinearMul: ``round(a_scale * b_scale / c_scale * (a - a_zp)(b - b_zp)) + c_zp``):
the float path divides the rounded float sum by c_scale instead, so an output may differ by one
quantization step where a value lies next to a rounding boundary (onnxruntime's own fusion
behaves the same).

Preconditions: both operands DequantizeLinear of 8-bit tensors of one type, per tensor with
constant float32 scales and zero points; the result's only reader a per-tensor QuantizeLinear
to that type; no ``block_size``. The DequantizeLinear nodes stay for other readers and are
removed by dead-code elimination otherwise. onnxruntime: QDQSelectorActionTransformer (its
binary rule).
"""

from __future__ import annotations

import onnx_ir as ir

from ..graph.builder import UniqueNames
from .matching import replace_with, self_contained
from .pass_manager import OptimizationContext
from .qdq_matching import QdqFusion, activation, quantize_reader, zero_point_type

_MICROSOFT = "com.microsoft"
_FUSED = {"Add": "QLinearAdd", "Mul": "QLinearMul"}


class QdqBinaryFusion(QdqFusion):
    """Replaces quantize-dequantize Add and Mul units by QLinearAdd / QLinearMul."""

    name = "qdq_binary_fusion"

    def fuse(self, graph: ir.Graph, context: OptimizationContext) -> int:
        names = UniqueNames(graph)
        fused = 0
        for node in [node for node in graph if node.op_type in _FUSED and node.domain == ""]:
            if len(node.inputs) != 2:
                continue
            a, b = activation(node.inputs[0]), activation(node.inputs[1])
            reader = quantize_reader(node.outputs[0])
            if a is None or b is None or reader is None:
                continue
            quantize, y_scale, y_zero = reader
            dtypes = {a[0].type.dtype, b[0].type.dtype, zero_point_type(y_zero)}
            if len(dtypes) != 1 or not self_contained([node, quantize], quantize.outputs[0]):
                continue
            context.require_opset(_MICROSOFT, 1)
            fused_node = ir.Node(_MICROSOFT, _FUSED[node.op_type], [*a, *b, y_scale, y_zero], num_outputs=1,
                                 name=names.fresh(f"{node.name or node.op_type}_quant"))
            replace_with(graph, [node, quantize], quantize.outputs[0], fused_node)
            fused += 1
        return fused
