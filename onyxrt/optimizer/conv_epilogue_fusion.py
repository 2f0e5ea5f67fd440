"""Conv + HardSwish / QuickGelu (SiLU) -> FusedConv with that activation, for onyxrt's CPU kernels only.

onnxruntime's FusedConv applies MLAS's activations (Relu, Tanh, Sigmoid, LeakyRelu, Clip, HardSigmoid:
``conv_activation_fusion``); the activations of MobileNetV3 (HardSwish) and EfficientNet (SiLU, which
``silu_fusion`` makes a QuickGelu) stay separate nodes there, each a pass over the convolution's output
and, for small models, a kernel call that costs more than the pass. onyxrt's FusedConv also applies
these two in the convolution's epilogue (the same pass that adds the bias, while the block is in cache).

A node with such an activation runs in onyxrt only, so this rewrite is not one of the optimizer's
passes: the session applies it after the optimized model was saved (``optimized_model_filepath`` keeps
onnxruntime's forms) and after partitioning, to convolutions and activations the CPU provider took
(``session/placement.py``), at the EXTENDED level and above, unless ``disabled_optimizers`` names
``ConvEpilogueFusion``.
"""

from __future__ import annotations

import onnx_ir as ir

from ..framework.partitioner import PROVIDER_KEY, on_cpu_kernels
from .matching import is_float32, only_reader, replace_with, self_contained

NAME = "ConvEpilogueFusion"


def fuse_conv_epilogues(graph: ir.Graph, opsets: dict[str, int]) -> int:
    """Fold each HardSwish / QuickGelu that alone reads a float32 convolution into it; returns how many."""
    fused = 0
    for conv in [node for node in graph if _convolution_without_activation(node)]:
        output = conv.outputs[0]
        activation = only_reader(output)
        params = None if activation is None else _activation_params(activation)
        if params is None or not on_cpu_kernels(activation) or activation.inputs[0] is not output:
            continue
        nodes = [conv, activation]
        if not self_contained(nodes, activation.outputs[0]):
            continue
        attributes = [attr for name, attr in conv.attributes.items() if name not in ("activation", "activation_params")]
        attributes.append(ir.AttrString("activation", activation.op_type))
        if params:
            attributes.append(ir.AttrFloat32s("activation_params", params))
        fused_conv = ir.Node("com.microsoft", "FusedConv", list(conv.inputs), attributes=attributes, num_outputs=1,
                             name=f"{conv.name or 'conv'}_{activation.op_type.lower()}")
        fused_conv.meta[PROVIDER_KEY] = conv.meta[PROVIDER_KEY]
        replace_with(graph, nodes, activation.outputs[0], fused_conv)
        opsets.setdefault("com.microsoft", 1)
        fused += 1
    return fused


def _convolution_without_activation(node: ir.Node) -> bool:
    """An ONNX Conv, or a FusedConv without an activation, on float32, that the CPU provider runs."""
    if not on_cpu_kernels(node) or not is_float32(node.outputs[0]):
        return False
    if node.domain == "" and node.op_type == "Conv":
        return True
    if node.domain == "com.microsoft" and node.op_type == "FusedConv":
        activation = node.attributes.get("activation")
        return activation is None or not activation.value
    return False


def _activation_params(node: ir.Node) -> list[float] | None:
    """FusedConv's activation parameters for ``node`` ([] for none), None when it is not one this fuses."""
    if node.domain == "" and node.op_type == "HardSwish":
        return []
    if node.domain == "com.microsoft" and node.op_type == "QuickGelu":
        return [node.attributes.get_float("alpha", 1.702)]
    return None
