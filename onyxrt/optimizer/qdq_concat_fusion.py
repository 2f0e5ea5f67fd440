"""QDQ Concat fusion: ``Q(Concat(DQ(a), DQ(b), ...))`` becomes one com.microsoft QLinearConcat.

``quantize_static`` (QDQ format) dequantizes every 8-bit input of a Concat and quantizes the result;
QLinearConcat copies each input whose scale and zero point are the output's as it is, and
requantizes the others through a 256-entry table (the float detour's values, rounded once), so
the float tensor never exists. An output may differ by one step where the float detour rounds a
value lying next to a boundary differently (onnxruntime's fusion behaves the same); inputs already
on the output's quantization, the usual case, are copied byte for byte.

Preconditions: every input a per-tensor DequantizeLinear of an 8-bit tensor of one type with
constant parameters; the result read by a per-tensor QuantizeLinear to that type alone; no
``block_size``. onnxruntime: QDQSelectorActionTransformer (its variadic rule).
"""

from __future__ import annotations

import onnx_ir as ir

from ..graph.builder import UniqueNames
from .matching import replace_with, self_contained
from .pass_manager import OptimizationContext
from .qdq_matching import QdqFusion, activation, quantize_reader, zero_point_type

_MICROSOFT = "com.microsoft"


class QdqConcatFusion(QdqFusion):
    """Replaces quantize-dequantize Concat units by QLinearConcat."""

    name = "qdq_concat_fusion"

    def fuse(self, graph: ir.Graph, context: OptimizationContext) -> int:
        names = UniqueNames(graph)
        fused = 0
        for node in [node for node in graph if node.op_type == "Concat" and node.domain == ""]:
            if not node.inputs or "axis" not in node.attributes:
                continue
            parts = [activation(value) for value in node.inputs]
            reader = quantize_reader(node.outputs[0])
            if reader is None or any(part is None for part in parts):
                continue
            quantize, y_scale, y_zero = reader
            if {part[0].type.dtype for part in parts} != {zero_point_type(y_zero)}:
                continue
            if not self_contained([node, quantize], quantize.outputs[0]):
                continue
            context.require_opset(_MICROSOFT, 1)
            inputs = [y_scale, y_zero, *(value for part in parts for value in part)]
            fused_node = ir.Node(_MICROSOFT, "QLinearConcat", inputs, attributes=[node.attributes["axis"]],
                                 num_outputs=1, name=names.fresh(f"{node.name or 'Concat'}_quant"))
            replace_with(graph, [node, quantize], quantize.outputs[0], fused_node)
            fused += 1
        return fused
