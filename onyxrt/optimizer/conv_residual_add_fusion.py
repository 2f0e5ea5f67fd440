"""Conv + residual Add (+ activation) fusion: the sum joins the convolution as FusedConv's ``Z`` input.

Pattern: a float32 Conv (or a FusedConv with neither Z nor activation) whose only reader is an
Add of a tensor of exactly the convolution's output shape (the residual branch of ResNet- and
MobileNet-style blocks), optionally followed by the Add's only reader being an activation
FusedConv runs (Relu, Sigmoid, Tanh, LeakyRelu, HardSigmoid, Clip with constant bounds). The
result is com.microsoft FusedConv(X, W, B, Z) computing activation(conv(X) + B + Z), which
onnxruntime's CPU kernel runs as written. Broadcasting Adds (a bias) are ConvAddFusion's and
stay out. onnxruntime: ConvAddActivationFusion.
"""

from __future__ import annotations

import onnx_ir as ir

from .conv_activation_fusion import activation_params
from .matching import is_float32, only_reader, partner, replace_with, self_contained
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel


class ConvResidualAddFusion(GraphPass):
    """Moves a same-shape residual Add (and the activation after it) into FusedConv."""

    name = "conv_residual_add_fusion"
    ort_names = ("ConvAddActivationFusion",)
    level = OptimizationLevel.EXTENDED
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        fused = 0
        for conv in [node for node in graph if _plain_conv(node)]:
            if conv.graph is not graph:
                continue  # consumed by an earlier fusion in this run
            output = conv.outputs[0]
            add = only_reader(output)
            if add is None or add.op_type != "Add" or add.domain != "":
                continue
            residual = partner(add, output)
            if residual is None or residual is output or not _same_float32_shape(residual, output):
                continue
            nodes, result = [conv, add], add.outputs[0]
            attributes = [attr for name, attr in conv.attributes.items() if name not in ("activation", "activation_params")]
            activation = only_reader(result)
            params = activation_params(activation) if activation is not None and activation.domain == "" else None
            if params is not None and activation.inputs[0] is result:
                nodes.append(activation)
                result = activation.outputs[0]
                attributes.append(ir.AttrString("activation", activation.op_type))
                if params:
                    attributes.append(ir.AttrFloat32s("activation_params", params))
            if not self_contained(nodes, result):
                continue
            context.require_opset("com.microsoft", 1)
            inputs = list(conv.inputs) + [None] * (3 - len(conv.inputs)) + [residual]
            fused_conv = ir.Node("com.microsoft", "FusedConv", inputs, attributes=attributes, num_outputs=1,
                                 name=f"{conv.name or 'conv'}_residual")
            # Z may be computed after the Conv: the fused node goes where the Add was.
            replace_with(graph, nodes, result, fused_conv, anchor=add)
            fused += 1
        return fused


def _plain_conv(node: ir.Node) -> bool:
    if node.op_type == "Conv" and node.domain == "":
        return True
    return (
        node.op_type == "FusedConv" and node.domain == "com.microsoft"
        and len(node.inputs) < 4 and not node.attributes.get_string("activation", "")
    )


def _same_float32_shape(value: ir.Value, reference: ir.Value) -> bool:
    """``value`` is float32 and its shape equals ``reference``'s, dim for dim (symbolic dims by name)."""
    if not (is_float32(value) and is_float32(reference)):
        return False
    if value.shape is None or reference.shape is None or len(value.shape) != len(reference.shape):
        return False
    for mine, theirs in zip(value.shape, reference.shape):
        if isinstance(mine, int) or isinstance(theirs, int):
            if mine != theirs:
                return False
        elif mine.value is None or mine.value != theirs.value:
            return False  # unnamed dims may differ
    return True
