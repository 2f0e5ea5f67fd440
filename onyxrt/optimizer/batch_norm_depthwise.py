"""Inference BatchNormalization (+ the activation reading it) -> a depthwise 1x1 Conv / FusedConv, for onyxrt's
CPU kernels only.

A BatchNormalization that follows no convolution (``conv_bn_fusion`` folds those), as DenseNet's and
pre-activation ResNets' BN -> ReLU -> Conv, scales and shifts each channel: it is the depthwise 1x1
convolution of weights ``gamma / sqrt(var + epsilon)`` and bias ``beta - mean * scale``. onyxrt runs a 1x1
depthwise convolution as one pass over rows (``row_kernels.prepared_channel_affine``) with the activation
after it (Relu, LeakyRelu, Sigmoid, Tanh, HardSigmoid, constant Clip; HardSwish and QuickGelu through
``conv_epilogue_fusion``, which runs next), where BatchNormalization's numpy kernel and the activation take
three passes (float32 on 2 AVX2 cores, with a Relu: 8x40x32x32 390 -> 77 us, 64x56x56 228 -> 45,
128x112x112 1338 -> 380).

onnxruntime keeps such a BatchNormalization (its own kernel is one pass), so, like ``conv_epilogue_fusion``,
this runs after the optimized model was saved and after partitioning (``session/placement.py``), on nodes
the CPU provider took, at the EXTENDED level and above, unless ``disabled_optimizers`` names
``BatchNormDepthwise``. Preconditions: opset 7 or later, inference mode (no training outputs read), spatial
statistics, a float32 input of rank 4 with a known channel count, and constant float32 parameters of one
value per channel. The scale and shift are computed in float64 and rounded once.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..framework.partitioner import PROVIDER_KEY, on_cpu_kernels
from ..graph.builder import UniqueNames
from ..graph.tensors import constant_array
from .conv_activation_fusion import activation_params
from .matching import (drop_unused_initializers, is_constant, is_float32, new_initializer, only_reader, replace_with,
                       self_contained)

NAME = "BatchNormDepthwise"
_MIN_OPSET = 7  # (older ones: is_test, per-element statistics)


def batch_norm_as_depthwise(graph: ir.Graph, opsets: dict[str, int]) -> int:
    """Rewrite each matching BatchNormalization of ``graph`` (see the module docstring); returns how many."""
    if opsets.get("", 0) < _MIN_OPSET:
        return 0
    names = UniqueNames(graph)
    rewritten = 0
    for norm in [node for node in graph if _inference_batch_norm(node)]:
        affine = _channel_affine(norm)
        if affine is None:
            continue
        scale, shift = affine
        channels = scale.shape[0]
        base = norm.name or "batch_norm"
        weight = new_initializer(graph, names, f"{base}_scale", scale.astype(np.float32).reshape(channels, 1, 1, 1))
        bias = new_initializer(graph, names, f"{base}_shift", shift.astype(np.float32))
        attributes = [ir.AttrInt64("group", channels), ir.AttrInt64s("kernel_shape", [1, 1]),
                      ir.AttrInt64s("pads", [0, 0, 0, 0]), ir.AttrInt64s("strides", [1, 1])]
        nodes, output = [norm], norm.outputs[0]
        activation = only_reader(output)
        params = _fusable_activation(activation, output)
        if params is not None and self_contained([norm, activation], activation.outputs[0]):
            attributes.append(ir.AttrString("activation", activation.op_type))
            if params:
                attributes.append(ir.AttrFloat32s("activation_params", params))
            conv = ir.Node("com.microsoft", "FusedConv", [norm.inputs[0], weight, bias], attributes=attributes,
                           num_outputs=1, name=names.fresh(f"{base}_{activation.op_type.lower()}"))
            nodes, output = [norm, activation], activation.outputs[0]
            opsets.setdefault("com.microsoft", 1)
        else:
            conv = ir.Node("", "Conv", [norm.inputs[0], weight, bias], attributes=attributes, num_outputs=1,
                           name=names.fresh(base))
        conv.meta[PROVIDER_KEY] = norm.meta[PROVIDER_KEY]
        parameters = list(norm.inputs[1:])
        replace_with(graph, nodes, output, conv)
        drop_unused_initializers(graph, parameters)
        rewritten += 1
    return rewritten


def _inference_batch_norm(node: ir.Node) -> bool:
    """An ONNX BatchNormalization in inference mode over a float32 4-D input, run by the CPU provider."""
    if node.domain != "" or node.op_type != "BatchNormalization" or not on_cpu_kernels(node):
        return False
    if node.attributes.get_int("training_mode", 0) != 0 or node.attributes.get_int("spatial", 1) != 1:
        return False
    if len(node.inputs) != 5 or any(out.uses() or out.is_graph_output() for out in node.outputs[1:]):
        return False
    x = node.inputs[0]
    return is_float32(x) and x.shape is not None and len(x.shape) == 4 and isinstance(x.shape[1], int)


def _channel_affine(norm: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) per channel in float64, or None when a parameter is not a constant float32 vector of
    the input's channels."""
    channels = norm.inputs[0].shape[1]
    arrays = []
    for value in norm.inputs[1:]:
        if value is None or not is_constant(value) or not is_float32(value):
            return None
        array = constant_array(value)
        if array.shape != (channels,):
            return None
        arrays.append(array.astype(np.float64))
    gamma, beta, mean, variance = arrays
    scale = gamma / np.sqrt(variance + np.float64(norm.attributes.get_float("epsilon", 1e-5)))
    return scale, beta - mean * scale


def _fusable_activation(activation: ir.Node | None, output: ir.Value) -> list[float] | None:
    """FusedConv's parameters for the activation reading ``output`` alone (see ``activation_params``), or None."""
    if activation is None or activation.domain != "" or not on_cpu_kernels(activation):
        return None
    if activation.inputs[0] is not output:
        return None
    return activation_params(activation)
