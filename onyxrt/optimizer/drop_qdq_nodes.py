"""Drop QDQ around data-movement ops: ``Q(op(DQ(x)))`` with the same scale and zero point becomes ``op(x)``.

MaxPool, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Expand, Slice, Gather and
GatherElements only move or select values (MaxPool picks the largest, and dequantization is
monotonic): run on the 8-bit tensor, they give exactly the bytes the float detour quantizes
back when the QuantizeLinear uses the DequantizeLinear's own scale and zero point
(``round((x - zp) * s / s) + zp == x``), as ``quantize_static`` writes them. The op then reads
``x`` and its result takes the QuantizeLinear's readers and name; the DequantizeLinear stays for
other readers (dead-code elimination removes it otherwise).

Preconditions: per-tensor 8-bit DequantizeLinear and QuantizeLinear with constant, equal
parameters; the op's data input (its first) the dequantized value, its only output read by
the QuantizeLinear alone; MaxPool from opset 12 (the first to take 8-bit tensors) and without
its indices output. onnxruntime: QDQSelectorActionTransformer (its DropQDQNodes rule).
"""

from __future__ import annotations

import onnx_ir as ir

from .matching import bypass
from .pass_manager import OptimizationContext
from .qdq_matching import QdqFusion, quantized_unit, same_quantization

_DATA_MOVEMENT = frozenset({"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Expand", "Slice",
                            "Gather", "GatherElements"})
_MAX_POOL_8_BIT_OPSET = 12


class DropQdqNodes(QdqFusion):
    """Runs data-movement ops on the 8-bit tensor where a DequantizeLinear/QuantizeLinear pair brackets them."""

    name = "drop_qdq_nodes"

    def fuse(self, graph: ir.Graph, context: OptimizationContext) -> int:
        dropped = 0
        for node in [node for node in graph if node.op_type in _DATA_MOVEMENT and node.domain == ""]:
            if len(node.outputs) != 1 or not node.inputs or any(v is node.inputs[0] for v in node.inputs[1:]):
                continue
            if node.op_type == "MaxPool" and context.opset(node) < _MAX_POOL_8_BIT_OPSET:
                continue
            unit = quantized_unit(node)
            if unit is None or not same_quantization(unit[0][1:], unit[2:]):
                continue
            x, quantize = unit[0], unit[1]
            result = node.outputs[0]
            float_input, float_type = node.inputs[0], result.type
            node.replace_input_with(0, x[0])
            result.type = ir.TensorType(x[0].type.dtype)
            if not bypass(quantize, result, graph):  # (a graph output's name moves to the op's result)
                node.replace_input_with(0, float_input)
                result.type = float_type
                continue
            dropped += 1
        return dropped
