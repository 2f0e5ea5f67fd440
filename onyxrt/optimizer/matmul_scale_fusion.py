"""MatMul scale fusion: constant scalar scales around a MatMul become one com.microsoft FusedMatMul's alpha.

A scale is ``Mul`` by a scalar constant (either side) or ``Div`` by one, on the MatMul's output
or on either input (transformers scale Q and K before QKᵀ): ``(a·s)(b·t)/c`` →
``FusedMatMul(a, b, alpha=s·t/c)``. Each absorbed value must have no other reader.
onnxruntime: MatMulScaleFusion.
"""

from __future__ import annotations

import onnx_ir as ir

from .matching import only_reader, partner, replace_with, scalar, self_contained
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel


class MatMulScaleFusion(GraphPass):
    """Folds a constant scalar scale after a float MatMul into FusedMatMul's alpha."""

    name = "matmul_scale_fusion"
    ort_names = ("MatMulScaleFusion",)
    level = OptimizationLevel.EXTENDED
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        fused = 0
        for matmul in [node for node in graph if node.op_type == "MatMul" and node.domain == ""]:
            if not _is_float(matmul.outputs[0]) or any(value is None for value in matmul.inputs):
                continue
            alpha, inputs, nodes = 1.0, [], []
            for value in matmul.inputs:
                scale = value.producer()
                unscaled = _unscaled(scale) if scale is not None and only_reader(value) is matmul else None
                if unscaled is None:
                    inputs.append(value)
                else:
                    alpha *= unscaled[1]
                    inputs.append(unscaled[0])
                    nodes.append(scale)
            nodes.append(matmul)
            output = matmul.outputs[0]
            after = only_reader(output)
            factor = _scale_factor(after, output) if after is not None else None
            if factor is not None:
                alpha *= factor
                nodes.append(after)
                output = after.outputs[0]
            if len(nodes) == 1 or not self_contained(nodes, output):
                continue
            context.require_opset("com.microsoft", 1)
            fused_matmul = ir.Node("com.microsoft", "FusedMatMul", inputs, num_outputs=1,
                                   attributes=[ir.AttrFloat32("alpha", alpha)], name=f"{matmul.name or 'matmul'}_scaled")
            replace_with(graph, nodes, output, fused_matmul, anchor=matmul)
            fused += 1
        return fused


def _unscaled(node: ir.Node) -> tuple[ir.Value, float] | None:
    """(the value ``node`` scales, the factor) when ``node`` is a scale by a scalar constant."""
    for value in node.inputs:
        factor = _scale_factor(node, value) if value is not None and scalar(value) is None else None
        if factor is not None:
            return value, factor
    return None


def _scale_factor(node: ir.Node, scaled: ir.Value) -> float | None:
    """What ``node`` multiplies ``scaled`` by, when it is a Mul or Div by a nonzero scalar constant."""
    if node.domain != "" or node.op_type not in ("Mul", "Div") or len(node.inputs) != 2:
        return None
    if node.op_type == "Div" and node.inputs[0] is not scaled:
        return None
    factor = scalar(partner(node, scaled))
    if factor is None or factor == 0.0:
        return None
    return 1.0 / factor if node.op_type == "Div" else factor


def _is_float(value: ir.Value) -> bool:
    # Not float16/bfloat16: there each scale rounds on its own, and one alpha on the product
    # does not reproduce those roundings (onnx's fp16 attention cases notice).
    return isinstance(value.type, ir.TensorType) and value.type.dtype in (ir.DataType.FLOAT, ir.DataType.DOUBLE)
