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
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel
from .qdq_matching import activation, quantize_reader, same_quantization, zero_point_type

_DATA_MOVEMENT = frozenset({"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Expand", "Slice",
                            "Gather", "GatherElements"})
_MAX_POOL_8_BIT_OPSET = 12


class DropQdqNodes(GraphPass):
    """Runs data-movement ops on the 8-bit tensor where a DequantizeLinear/QuantizeLinear pair brackets them."""

    name = "drop_qdq_nodes"
    ort_names = ("QDQSelectorActionTransformer",)
    level = OptimizationLevel.EXTENDED
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        if context.fold_dequantize_linear:  # the session asked for the float path (disable_quant_qdq)
            return 0
        dropped = 0
        for node in [node for node in graph if node.op_type in _DATA_MOVEMENT and node.domain == ""]:
            if len(node.outputs) != 1 or not node.inputs or any(v is node.inputs[0] for v in node.inputs[1:]):
                continue
            if node.op_type == "MaxPool" and context.opset(node) < _MAX_POOL_8_BIT_OPSET:
                continue
            x = activation(node.inputs[0])
            reader = quantize_reader(node.outputs[0])
            if x is None or reader is None:
                continue
            quantize, y_scale, y_zero = reader
            if x[0].type.dtype != zero_point_type(y_zero) or not same_quantization(x[1:], (y_scale, y_zero)):
                continue
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
