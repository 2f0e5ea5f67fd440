"""Mul(X, gate) + pointwise convolution -> ai.onyxrt ChannelScaledConv, for onyxrt's CPU kernels only.

A squeeze-and-excitation block (EfficientNet, MobileNetV3, SE-ResNet, RegNetY) scales its input by a gate of one
value per image and channel, ``Mul(X (N, C, H, W), gate (N, C, 1, 1))``, and a pointwise convolution reads the
product. onnxruntime runs the Mul as a pass over X. ``ChannelScaledConv(X, gate, W, B, Z)``
(``providers/cpu/nn/channel_scaled_conv.py``) scales the filter per image instead, (W * gate[n]) @ X[n], with the
convolution's bias, sum and activation as FusedConv applies them.

Preconditions: a float32 ONNX Conv or com.microsoft FusedConv the CPU provider took, with a constant filter of a
single tap (any rank), group 1, unit strides and dilations and no padding, whose input is a float32 Mul read by it
alone; one Mul operand of the Mul's own shape and one of the same rank whose static shape is (N or 1, C, 1, ...)
for the filter's C input channels. Like ``conv_epilogue_fusion`` it runs after the optimized model was saved and
after partitioning (``session/placement.py``), at the EXTENDED level and above, unless ``disabled_optimizers``
names ``ChannelScaleConvFusion``.
"""

from __future__ import annotations

import onnx_ir as ir

from ..framework.partitioner import PROVIDER_KEY, on_cpu_kernels
from ..graph.opsets import ONYXRT_DOMAIN
from .matching import is_float32, only_reader, pointwise_filter, replace_with, self_contained

NAME = "ChannelScaleConvFusion"


def fuse_channel_scale_convs(graph: ir.Graph, opsets: dict[str, int]) -> int:
    """Fold each per-channel gate Mul that alone feeds a pointwise convolution into it; returns how many."""
    fused = 0
    for conv in [node for node in graph if _pointwise_conv(node)]:
        product = conv.inputs[0]
        mul = product.producer() if product is not None else None
        if (mul is None or mul.domain != "" or mul.op_type != "Mul" or len(mul.inputs) != 2
                or not on_cpu_kernels(mul) or only_reader(product) is not conv or conv.inputs.count(product) != 1):
            continue
        operands = _image_and_gate(mul, product, pointwise_filter(conv)[1])
        if operands is None or not self_contained([mul, conv], conv.outputs[0]):
            continue
        x, gate = operands
        rest = list(conv.inputs[2:]) + [None] * (4 - len(conv.inputs))  # B, Z
        node = ir.Node(ONYXRT_DOMAIN, "ChannelScaledConv", [x, gate, conv.inputs[1], *rest[:2]],
                       attributes=list(conv.attributes.values()), num_outputs=1,
                       name=f"{conv.name or 'conv'}_channel_scaled")
        node.meta[PROVIDER_KEY] = conv.meta[PROVIDER_KEY]
        replace_with(graph, [mul, conv], conv.outputs[0], node, anchor=conv)
        opsets.setdefault(ONYXRT_DOMAIN, 1)
        fused += 1
    return fused


def _pointwise_conv(node: ir.Node) -> bool:
    """A float32 pointwise Conv / FusedConv (``matching.pointwise_filter``) the CPU provider runs."""
    return on_cpu_kernels(node) and is_float32(node.outputs[0]) and pointwise_filter(node) is not None


def _image_and_gate(mul: ir.Node, product: ir.Value, channels: int) -> tuple[ir.Value, ir.Value] | None:
    """(X, gate) of ``mul``: X of the product's shape, the gate of shape (N or 1, ``channels``, 1, ...), both float32
    of the same rank; None otherwise."""
    for x, gate in (mul.inputs, mul.inputs[::-1]):
        if x is None or gate is None or x is gate or not (is_float32(x) and is_float32(gate)):
            continue
        if x.shape is None or gate.shape is None or product.shape is None or len(gate.shape) != len(x.shape):
            continue
        dims = list(gate.shape)
        if (len(dims) < 3 or x.shape != product.shape or dims[1] != channels or any(d != 1 for d in dims[2:])
                or not (dims[0] == 1 or dims[0] == x.shape[0])):
            continue
        return x, gate
    return None
