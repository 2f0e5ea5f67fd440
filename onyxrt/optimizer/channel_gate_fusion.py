"""A squeeze-and-excitation gate -> one ai.onyxrt ChannelGate, for onyxrt's CPU kernels only.

The gate of an SE block (EfficientNet, MobileNetV3, SE-ResNet, RegNetY) is a spatial mean and two pointwise
convolutions of one-pixel images::

    gate = Conv1x1(Conv1x1(GlobalAveragePool(X), W1, B1) -> act1, W2, B2) -> act2

(the mean also as ReduceMean over the spatial axes with keepdims; the activations as FusedConv's, after
``conv_activation_fusion`` / ``conv_epilogue_fusion``). Three kernel calls for a few thousand multiply-adds:
``ChannelGate(X, W1, B1, W2, B2)`` (``providers/cpu/nn/channel_gate.py``) computes it in one, the products of the
batch's rows at once.

Preconditions: X float32 of known rank >= 3; each convolution an ONNX Conv or com.microsoft FusedConv (without Z)
the CPU provider took, read only by the next step, pointwise (``matching.pointwise_filter``: a constant float32
filter of a single tap, group 1, unit strides and dilations, no padding), with a constant bias or none; the first
reads the mean, the second the first. Like
``conv_epilogue_fusion`` it runs after the optimized model was saved and after partitioning
(``session/placement.py``), at the EXTENDED level and above, unless ``disabled_optimizers`` names
``ChannelGateFusion``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..framework.partitioner import PROVIDER_KEY, on_cpu_kernels
from ..graph.opsets import ONYXRT_DOMAIN
from ..graph.tensors import constant_array
from .matching import is_constant, is_float32, only_reader, pointwise_filter, replace_with, self_contained

NAME = "ChannelGateFusion"


def fuse_channel_gates(graph: ir.Graph, opsets: dict[str, int]) -> int:
    """Rewrite each squeeze-and-excitation gate of ``graph`` (see the module docstring); returns how many."""
    fused = 0
    for mean in [node for node in graph if _spatial_mean(node)]:
        x = mean.inputs[0]
        reduce = only_reader(mean.outputs[0])
        first = _gate_convolution(reduce, mean.outputs[0], x.shape[1])
        if first is None:
            continue
        expand = only_reader(reduce.outputs[0])
        second = _gate_convolution(expand, reduce.outputs[0], first[0])
        if second is None or second[0] != x.shape[1]:
            continue
        nodes = [mean, reduce, expand]
        if not self_contained(nodes, expand.outputs[0]):
            continue
        attributes = [ir.AttrString("activation1", first[1]), ir.AttrFloat32s("activation1_params", first[2]),
                      ir.AttrString("activation2", second[1]), ir.AttrFloat32s("activation2_params", second[2])]
        inputs = [x, reduce.inputs[1], _bias(reduce), expand.inputs[1], _bias(expand)]
        node = ir.Node(ONYXRT_DOMAIN, "ChannelGate", inputs, attributes=attributes, num_outputs=1,
                       name=f"{expand.name or 'gate'}_channel_gate")
        node.meta[PROVIDER_KEY] = expand.meta[PROVIDER_KEY]
        replace_with(graph, nodes, expand.outputs[0], node, anchor=expand)
        opsets.setdefault(ONYXRT_DOMAIN, 1)
        fused += 1
    return fused


def _spatial_mean(node: ir.Node) -> bool:
    """A GlobalAveragePool, or a ReduceMean over exactly the spatial axes keeping them, of a float32 input of known
    rank >= 3 and channel count, on the CPU provider."""
    if node.domain != "" or not on_cpu_kernels(node) or not node.inputs or node.inputs[0] is None:
        return False
    x = node.inputs[0]
    if not is_float32(x) or x.shape is None or len(x.shape) < 3 or not isinstance(x.shape[1], int):
        return False
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type != "ReduceMean" or node.attributes.get_int("keepdims", 1) != 1:
        return False
    if len(node.inputs) > 1 and node.inputs[1] is not None:  # opset 18: the axes as an input
        if not is_constant(node.inputs[1]):
            return False
        axes = [int(a) for a in np.asarray(constant_array(node.inputs[1])).reshape(-1)]
    else:
        axes = list(node.attributes.get_ints("axes", []))
    rank = len(x.shape)
    return sorted(a % rank for a in axes) == list(range(2, rank))


def _gate_convolution(node: ir.Node | None, source: ir.Value, channels: int) -> tuple[int, str, list[float]] | None:
    """(output channels, activation, its parameters) of a single-tap float32 convolution of ``source`` with
    ``channels`` input channels as the gate takes it (see the module docstring), else None."""
    if node is None or not on_cpu_kernels(node) or not node.inputs or node.inputs[0] is not source:
        return None
    if (node.domain, node.op_type) == ("", "Conv"):
        activation, params = "", []
    elif (node.domain, node.op_type) == ("com.microsoft", "FusedConv"):
        if len(node.inputs) > 3 and node.inputs[3] is not None:
            return None  # a sum Z
        activation = node.attributes.get_string("activation", "")
        params = [float(v) for v in node.attributes.get_floats("activation_params", [])]
    else:
        return None
    shape = pointwise_filter(node)
    b = _bias(node)
    if shape is None or shape[1] != channels or (b is not None and not (is_constant(b) and is_float32(b))):
        return None
    return int(shape[0]), activation, params


def _bias(node: ir.Node) -> ir.Value | None:
    return node.inputs[2] if len(node.inputs) > 2 else None
