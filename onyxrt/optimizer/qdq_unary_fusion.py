"""QDQ unary fusion: ``Q(op(DQ(x)))`` becomes the com.microsoft QLinear form of Sigmoid, LeakyRelu,
GlobalAveragePool or AveragePool.

``quantize_static`` (QDQ format) brackets these ops with dequantize/quantize; their QLinear forms
compute on the 8-bit tensor (Sigmoid and LeakyRelu through a 256-entry table of the float
function's requantized values; the pools summing integers), so the float tensor never exists.
An output may differ by one quantization step from the float detour where a value lies next to a
rounding boundary (onnxruntime's fusion behaves the same).

Preconditions: per-tensor 8-bit DequantizeLinear and QuantizeLinear of one type with constant
parameters; the op's result read by the QuantizeLinear alone; AveragePool without dilations
(QLinearAveragePool has none). onnxruntime: QDQSelectorActionTransformer (its unary rule).
"""

from __future__ import annotations

import onnx_ir as ir

from ..graph.builder import UniqueNames
from .matching import replace_with, self_contained
from .pass_manager import OptimizationContext
from .qdq_matching import QdqFusion, quantized_unit

_MICROSOFT = "com.microsoft"
# op -> (its QLinear form, the attributes carried over)
_FUSED = {
    "Sigmoid": ("QLinearSigmoid", ()),
    "LeakyRelu": ("QLinearLeakyRelu", ("alpha",)),
    "GlobalAveragePool": ("QLinearGlobalAveragePool", ()),
    "AveragePool": ("QLinearAveragePool", ("auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads",
                                           "strides")),
}


class QdqUnaryFusion(QdqFusion):
    """Replaces quantize-dequantize Sigmoid, LeakyRelu and average pools by their QLinear forms."""

    name = "qdq_unary_fusion"

    def fuse(self, graph: ir.Graph, context: OptimizationContext) -> int:
        names = UniqueNames(graph)
        fused = 0
        for node in [node for node in graph if node.op_type in _FUSED and node.domain == ""]:
            if len(node.inputs) != 1 or len(node.outputs) != 1:
                continue
            op_type, carried = _FUSED[node.op_type]
            if any(name not in carried for name in node.attributes if name != "dilations"):
                continue
            dilations = node.attributes.get_ints("dilations")
            if dilations is not None and any(d != 1 for d in dilations):
                continue
            unit = quantized_unit(node)
            if unit is None:
                continue
            x, quantize, y_scale, y_zero = unit
            if not self_contained([node, quantize], quantize.outputs[0]):
                continue
            context.require_opset(_MICROSOFT, 1)
            attributes = [node.attributes[name] for name in carried if name in node.attributes]
            fused_node = ir.Node(_MICROSOFT, op_type, [*x, y_scale, y_zero], attributes=attributes, num_outputs=1,
                                 name=names.fresh(f"{node.name or node.op_type}_quant"))
            replace_with(graph, [node, quantize], quantize.outputs[0], fused_node)
            fused += 1
        return fused
