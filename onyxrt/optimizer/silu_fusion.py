"""SiLU fusion: ``x * Sigmoid(x)`` becomes one com.microsoft QuickGelu with alpha 1 (onnxruntime: QuickGeluFusion)."""

from __future__ import annotations

import onnx_ir as ir

from .matching import only_reader, partner, replace_with, self_contained
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel


class SiluFusion(GraphPass):
    """Replaces ``Mul(x, Sigmoid(x))`` (either input order) when the Sigmoid has no other reader."""

    name = "silu_fusion"
    ort_names = ("QuickGeluFusion",)
    level = OptimizationLevel.EXTENDED
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        fused = 0
        for sigmoid in [node for node in graph if node.op_type == "Sigmoid" and node.domain == ""]:
            x = sigmoid.inputs[0]
            mul = only_reader(sigmoid.outputs[0])
            if x is None or mul is None or mul.op_type != "Mul" or mul.domain != "" or partner(mul, sigmoid.outputs[0]) is not x:
                continue
            nodes = [sigmoid, mul]
            if not self_contained(nodes, mul.outputs[0]):
                continue
            context.require_opset("com.microsoft", 1)
            quick_gelu = ir.Node("com.microsoft", "QuickGelu", [x], attributes=[ir.AttrFloat32("alpha", 1.0)],
                                 num_outputs=1, name=f"{mul.name or 'silu'}_fused")
            replace_with(graph, nodes, mul.outputs[0], quick_gelu)
            fused += 1
        return fused
