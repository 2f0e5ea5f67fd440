"""Per-output-channel affine ops after a Conv folded into the Conv's weights and bias.

Three passes, each an onnxruntime transformer of the same name, share one rewrite:
``y = Conv(x, W[, B]); z = F(y)`` where ``F`` scales and shifts each output channel
by constants becomes ``z = Conv(x, W', B')`` with ``W'[m] = W[m] * scale[m]`` and
``B'[m] = B[m] * scale[m] + shift[m]``.

* :class:`ConvBatchNormFusion` (``ConvBNFusion``): ``F`` an inference
  BatchNormalization, ``scale = gamma / sqrt(var + epsilon)``, ``shift = beta - mean * scale``.
* :class:`ConvMulFusion` (``ConvMulFusion``): ``F`` a Mul by a constant, ``shift = 0``.
* :class:`ConvAddFusion` (``ConvAddFusion``): ``F`` an Add of a constant, ``scale = 1``.

Preconditions: a Conv of the ONNX domain in the same graph as ``F``, its weight (and bias,
if any) constant initializers no caller can override, float32 or float64, the bias of
shape ``[M]`` (M output channels; grouped convs alike); ``y`` read by ``F`` alone (reads
inside subgraphs count) and no graph output; ``F``'s per-channel constants of the Conv's
float type, broadcasting over ``y`` only along the channel axis (scalars, ``[M, 1, 1]``,
``[1, M, 1, 1]``...), so ``z`` has ``y``'s shape. ``z`` keeps its name. New weights are
new initializers (the old ones may have other readers; dead-code elimination drops them
otherwise), computed in float64 and rounded once to the Conv's type.
"""

from __future__ import annotations

import abc

import numpy as np
import onnx_ir as ir

from ..graph.builder import UniqueNames
from ..graph.tensors import constant_array
from .matching import is_constant, new_initializer
from .pass_manager import GraphPass, OptimizationContext

_FOLDABLE_TYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE)

# Per-output-channel scale (None: 1) and shift (None: 0), each of shape [M], in float64.
ChannelAffine = tuple[np.ndarray | None, np.ndarray | None]


class _ConvChannelAffineFusion(GraphPass):
    """Folds the ``follower_op`` nodes reading a Conv's output into that Conv (see the module docstring)."""

    follower_op: str = ""

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        names = UniqueNames(graph)
        fused = 0
        for follower in list(graph):
            if follower.op_type != self.follower_op or follower.domain != "":
                continue
            for conv_input_index in self.conv_input_indices(follower):
                conv = _foldable_conv(follower, conv_input_index, graph)
                if conv is None:
                    continue
                weight = constant_array(conv.inputs[1])
                affine = self.channel_affine(follower, conv_input_index, weight, context)
                if affine is None:
                    continue
                _fold(conv, weight, affine, follower, graph, names)
                fused += 1
                break
        return fused

    def conv_input_indices(self, follower: ir.Node) -> tuple[int, ...]:
        """The inputs of ``follower`` that may be the Conv's output."""
        return (0, 1)  # Mul and Add commute

    @abc.abstractmethod
    def channel_affine(
        self, follower: ir.Node, conv_input_index: int, weight: np.ndarray, context: OptimizationContext
    ) -> ChannelAffine | None:
        """What ``follower`` does to each output channel of the Conv; None when not a per-channel affine map."""


class ConvBatchNormFusion(_ConvChannelAffineFusion):
    """Conv followed by an inference BatchNormalization (onnxruntime's ConvBNFusion)."""

    name = "conv_bn_fusion"
    ort_names = ("ConvBNFusion",)
    follower_op = "BatchNormalization"

    def conv_input_indices(self, follower: ir.Node) -> tuple[int, ...]:
        return (0,)

    def channel_affine(
        self, follower: ir.Node, conv_input_index: int, weight: np.ndarray, context: OptimizationContext
    ) -> ChannelAffine | None:
        # Opset 6 and older: is_test and per-element statistics; a training-mode node updates
        # running statistics and returns batch ones; its extra outputs we could not keep.
        if context.opset(follower) < 7 or follower.attributes.get_int("training_mode", 0) != 0:
            return None
        if follower.attributes.get_int("spatial", 1) != 1:
            return None
        if len(follower.inputs) != 5 or any(_used(value) for value in follower.outputs[1:]):
            return None
        gamma, beta, mean, variance = (_float_constant(value) for value in follower.inputs[1:])
        channels = weight.shape[0]
        if any(array is None or array.shape != (channels,) for array in (gamma, beta, mean, variance)):
            return None
        epsilon = follower.attributes.get_float("epsilon", 1e-5)
        scale = gamma / np.sqrt(variance + np.float64(epsilon))
        return scale, beta - mean * scale


class ConvMulFusion(_ConvChannelAffineFusion):
    """Conv followed by a Mul by a per-channel or scalar constant (onnxruntime's ConvMulFusion)."""

    name = "conv_mul_fusion"
    ort_names = ("ConvMulFusion",)
    follower_op = "Mul"

    def channel_affine(
        self, follower: ir.Node, conv_input_index: int, weight: np.ndarray, context: OptimizationContext
    ) -> ChannelAffine | None:
        scale = _channel_constant(follower.inputs[1 - conv_input_index], weight)
        return None if scale is None else (scale, None)


class ConvAddFusion(_ConvChannelAffineFusion):
    """Conv followed by an Add of a per-channel or scalar constant (onnxruntime's ConvAddFusion)."""

    name = "conv_add_fusion"
    ort_names = ("ConvAddFusion",)
    follower_op = "Add"

    def channel_affine(
        self, follower: ir.Node, conv_input_index: int, weight: np.ndarray, context: OptimizationContext
    ) -> ChannelAffine | None:
        shift = _channel_constant(follower.inputs[1 - conv_input_index], weight)
        return None if shift is None else (None, shift)


def _foldable_conv(follower: ir.Node, input_index: int, graph: ir.Graph) -> ir.Node | None:
    """The Conv producing ``follower``'s input ``input_index`` when the fusion's Conv preconditions hold, else None."""
    if input_index >= len(follower.inputs) or follower.inputs[input_index] is None:
        return None
    conv_output = follower.inputs[input_index]
    conv = conv_output.producer()
    if conv is None or conv.op_type != "Conv" or conv.domain != "" or conv.graph is not graph:
        return None
    # The Conv's output must vanish with the fusion: no other reader (the same node reading
    # it twice, or a subgraph, counts), no graph output.
    if len(conv_output.uses()) != 1 or conv_output.is_graph_output():
        return None
    if len(conv.inputs) < 2 or not is_constant(conv.inputs[1]):
        return None
    weight_tensor = conv.inputs[1].const_value
    if weight_tensor.dtype not in _FOLDABLE_TYPES or len(weight_tensor.shape) < 3:
        return None
    bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    if bias is not None and (
        not is_constant(bias)
        or bias.const_value.dtype != weight_tensor.dtype
        or tuple(bias.const_value.shape) != (weight_tensor.shape[0],)
    ):
        return None
    return conv


def _channel_constant(value: ir.Value | None, weight: np.ndarray) -> np.ndarray | None:
    """``value``'s constant as float64 per output channel ([M]), if it broadcasts over the Conv's output along channels only."""
    if not is_constant(value) or value.const_value.dtype != _dtype_of(weight):
        return None
    array = constant_array(value)
    rank, channels = weight.ndim, weight.shape[0]  # the Conv output's rank is its weight's
    if array.ndim > rank:
        return None  # would add axes to the output
    aligned = (1,) * (rank - array.ndim) + array.shape
    if any(dim != 1 for axis, dim in enumerate(aligned) if axis != 1) or aligned[1] not in (1, channels):
        return None
    return np.broadcast_to(array.reshape(-1).astype(np.float64), (channels,))


def _fold(
    conv: ir.Node, weight: np.ndarray, affine: ChannelAffine, follower: ir.Node, graph: ir.Graph, names: UniqueNames
) -> None:
    """Give ``conv`` the folded weight and bias, then let its output stand for ``follower``'s."""
    scale, shift = affine
    bias_value = conv.inputs[2] if len(conv.inputs) > 2 else None
    bias = np.zeros(weight.shape[0]) if bias_value is None else constant_array(bias_value).astype(np.float64)
    if scale is not None:
        channel_shape = (-1,) + (1,) * (weight.ndim - 1)
        new_weight = (weight.astype(np.float64) * scale.reshape(channel_shape)).astype(weight.dtype)
        conv.replace_input_with(1, new_initializer(graph, names, conv.inputs[1].name or "folded_weight", new_weight))
        bias = bias * scale
    if shift is not None:
        bias = bias + shift
    if bias_value is not None or shift is not None:
        new_bias = new_initializer(graph, names, f"{conv.name or 'conv'}_bias", bias.astype(weight.dtype))
        if len(conv.inputs) < 3:
            conv.resize_inputs(3)
        conv.replace_input_with(2, new_bias)

    conv_output, follower_output = conv.outputs[0], follower.outputs[0]
    name = follower_output.name
    follower_output.replace_all_uses_with(conv_output, replace_graph_outputs=True)
    graph.remove(follower, safe=True)
    conv_output.name = name


def _float_constant(value: ir.Value | None) -> np.ndarray | None:
    """A float32/float64 constant as float64, else None."""
    if not is_constant(value) or value.const_value.dtype not in _FOLDABLE_TYPES:
        return None
    return constant_array(value).astype(np.float64)


def _used(value: ir.Value) -> bool:
    return bool(value.uses()) or value.is_graph_output()


def _dtype_of(array: np.ndarray) -> ir.DataType:
    return ir.DataType.from_numpy(array.dtype)
