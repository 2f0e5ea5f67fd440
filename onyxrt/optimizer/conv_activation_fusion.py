"""Conv + activation fusion: a float Conv whose only reader is an activation becomes com.microsoft FusedConv.

Relu, Sigmoid, Tanh, LeakyRelu (alpha), HardSigmoid (alpha, beta) and Clip (constant or absent
min/max) run inside the convolution, per block while it is in cache. Only float32 Conv nodes
of the ONNX domain fuse (FusedConv's kernels). onnxruntime: ConvActivationFusion.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from ..graph.tensors import constant_array
from .matching import is_constant, is_float32, only_reader, replace_with, self_contained
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel


class ConvActivationFusion(GraphPass):
    """Folds the activation after a Conv into FusedConv's ``activation`` and ``activation_params``."""

    name = "conv_activation_fusion"
    ort_names = ("ConvActivationFusion",)
    level = OptimizationLevel.EXTENDED
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        fused = 0
        for conv in [node for node in graph if node.op_type == "Conv" and node.domain == ""]:
            output = conv.outputs[0]
            activation = only_reader(output)
            if activation is None or activation.domain != "" or not is_float32(output):
                continue
            params = activation_params(activation)
            if params is None or activation.inputs[0] is not output:
                continue
            nodes = [conv, activation]
            if not self_contained(nodes, activation.outputs[0]):
                continue
            context.require_opset("com.microsoft", 1)
            attributes = list(conv.attributes.values())
            attributes.append(ir.AttrString("activation", activation.op_type))
            if params:
                attributes.append(ir.AttrFloat32s("activation_params", params))
            fused_conv = ir.Node("com.microsoft", "FusedConv", list(conv.inputs), attributes=attributes, num_outputs=1,
                                 name=f"{conv.name or 'conv'}_{activation.op_type.lower()}")
            replace_with(graph, nodes, activation.outputs[0], fused_conv)
            fused += 1
        return fused


def activation_params(node: ir.Node) -> list[float] | None:
    """FusedConv's parameters for activation ``node`` ([] for none), None when it cannot fuse."""
    op = node.op_type
    if op in ("Relu", "Sigmoid", "Tanh"):
        return []
    if op == "LeakyRelu":
        return [node.attributes.get_float("alpha", 0.01)]
    if op == "HardSigmoid":
        return [node.attributes.get_float("alpha", 0.2), node.attributes.get_float("beta", 0.5)]
    if op == "Clip":
        return _clip_bounds(node)
    return None


def _clip_bounds(clip: ir.Node) -> list[float] | None:
    if "min" in clip.attributes or "max" in clip.attributes:  # Clip before opset 11
        return [clip.attributes.get_float("min", -math.inf), clip.attributes.get_float("max", math.inf)]
    bounds = []
    for position, default in ((1, -math.inf), (2, math.inf)):
        value = clip.inputs[position] if len(clip.inputs) > position else None
        if value is None:
            bounds.append(default)
        elif is_constant(value):
            array = np.asarray(constant_array(value))
            if array.size != 1:
                return None
            bounds.append(float(array.reshape(-1)[0]))
        else:
            return None
    return bounds
