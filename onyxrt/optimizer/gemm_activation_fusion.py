"""Gemm + activation fusion: a float Gemm whose only reader is an activation becomes com.microsoft FusedGemm.

The activation's attributes travel as FusedGemm's ``activation_alpha`` / ``activation_beta`` /
``activation_gamma``, always written out (the activation's value or its ONNX default), so
onnxruntime's FusedGemm computes the same function. Activations: those onnxruntime's
element-wise functors run (Relu, LeakyRelu, Sigmoid, Tanh, HardSigmoid, Elu, Selu, Softplus,
Softsign). onnxruntime: GemmActivationFusion.
"""

from __future__ import annotations

import onnx_ir as ir

from .matching import is_float32, only_reader, replace_with, self_contained
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel

# activation -> its attributes as (name, ONNX default, FusedGemm attribute)
_ACTIVATIONS: dict[str, tuple[tuple[str, float, str], ...]] = {
    "Relu": (),
    "Sigmoid": (),
    "Tanh": (),
    "Softplus": (),
    "Softsign": (),
    "LeakyRelu": (("alpha", 0.01, "activation_alpha"),),
    "HardSigmoid": (("alpha", 0.2, "activation_alpha"), ("beta", 0.5, "activation_beta")),
    "Elu": (("alpha", 1.0, "activation_alpha"),),
    "Selu": (("alpha", 1.67326319217681884765625, "activation_alpha"), ("gamma", 1.05070102214813232421875, "activation_gamma")),
}


class GemmActivationFusion(GraphPass):
    """Folds the activation after a float32 Gemm into FusedGemm's ``activation``."""

    name = "gemm_activation_fusion"
    ort_names = ("GemmActivationFusion",)
    level = OptimizationLevel.EXTENDED
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        fused = 0
        for gemm in [node for node in graph if node.op_type == "Gemm" and node.domain == ""]:
            output = gemm.outputs[0]
            activation = only_reader(output)
            if activation is None or activation.domain != "" or activation.op_type not in _ACTIVATIONS:
                continue
            if not is_float32(output):
                continue
            nodes = [gemm, activation]
            if activation.inputs[0] is not output or not self_contained(nodes, activation.outputs[0]):
                continue
            context.require_opset("com.microsoft", 1)
            attributes = list(gemm.attributes.values()) + [ir.AttrString("activation", activation.op_type)]
            for name, default, fused_name in _ACTIVATIONS[activation.op_type]:
                attributes.append(ir.AttrFloat32(fused_name, activation.attributes.get_float(name, default)))
            fused_gemm = ir.Node("com.microsoft", "FusedGemm", list(gemm.inputs), attributes=attributes, num_outputs=1,
                                 name=f"{gemm.name or 'gemm'}_{activation.op_type.lower()}")
            replace_with(graph, nodes, activation.outputs[0], fused_gemm)
            fused += 1
        return fused
