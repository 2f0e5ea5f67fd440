"""Conv + residual Add (+ activation) fusion: the residual becomes FusedConv's Z input, outputs unchanged.

Each case also runs the saved optimized model in onnxruntime (whose FusedConv takes Z the same way).
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optimizer_checks import saved_extended_ops

_RNG = np.random.default_rng(0)
_X = _RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)


def _weights(name: str, out_channels: int = 4) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(_RNG.standard_normal((out_channels, 4, 3, 3)).astype(np.float32), f"{name}_w"),
            numpy_helper.from_array(_RNG.standard_normal(out_channels).astype(np.float32), f"{name}_b")]


def _model(nodes, outputs=("y",), initializers=(), x_shape=("N", 4, 6, 6)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        _weights("a") + _weights("s") + list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _conv(name: str, source: str, output: str) -> onnx.NodeProto:
    return helper.make_node("Conv", [source, f"{name}_w", f"{name}_b"], [output], kernel_shape=[3, 3], pads=[1, 1, 1, 1])


def _saved_ops(model: onnx.ModelProto, tmp_path) -> collections.Counter:
    return saved_extended_ops(model, tmp_path, {"x": _X})


def test_residual_block_with_relu_becomes_one_fused_conv(tmp_path):
    nodes = [_conv("a", "x", "c"), helper.make_node("Add", ["c", "x"], ["sum"]), helper.make_node("Relu", ["sum"], ["y"])]
    assert _saved_ops(_model(nodes), tmp_path) == {"FusedConv": 1}


def test_residual_computed_after_the_conv_fuses_without_activation(tmp_path):
    # the shortcut conv comes later in the node list: the fused node must sit where the Add was
    nodes = [_conv("a", "x", "c"), _conv("s", "x", "shortcut"), helper.make_node("Add", ["shortcut", "c"], ["y"])]
    histogram = _saved_ops(_model(nodes), tmp_path)
    assert histogram == {"FusedConv": 1, "Conv": 1} or histogram == {"FusedConv": 2}


def test_broadcast_add_is_not_a_residual(tmp_path):
    bias = numpy_helper.from_array(_RNG.standard_normal((4, 1, 1)).astype(np.float32), "channel_bias")
    x_input = helper.make_node("Relu", ["x"], ["rx"])
    nodes = [x_input, _conv("a", "rx", "c"), helper.make_node("Mul", ["rx", "channel_bias"], ["scaled"]),
             helper.make_node("ReduceSum", ["scaled"], ["partial"], keepdims=1),
             helper.make_node("Add", ["c", "partial"], ["y"])]
    assert "Add" in _saved_ops(_model(nodes, initializers=[bias]), tmp_path)


def test_conv_output_read_elsewhere_or_activation_shared_limits_the_fusion(tmp_path):
    nodes = [_conv("a", "x", "c"), helper.make_node("Add", ["c", "x"], ["y"]), helper.make_node("Relu", ["y"], ["z"])]
    # the sum is a graph output: FusedConv gives it, the Relu stays outside
    assert _saved_ops(_model(nodes, outputs=("y", "z")), tmp_path) == {"FusedConv": 1, "Relu": 1}
    nodes = [_conv("a", "x", "c"), helper.make_node("Add", ["c", "x"], ["y"])]
    # the conv's own output is a graph output: nothing fuses
    assert _saved_ops(_model(nodes, outputs=("y", "c")), tmp_path) == {"Conv": 1, "Add": 1}


def test_unknown_shapes_do_not_fuse(tmp_path):
    nodes = [_conv("a", "x", "c"), helper.make_node("Add", ["c", "x"], ["y"])]
    model = _model(nodes, x_shape=(None, None, None, None))
    model.graph.input[0].type.tensor_type.shape.ClearField("dim")
    model.graph.input[0].type.tensor_type.ClearField("shape")
    assert _saved_ops(model, tmp_path) == {"Conv": 1, "Add": 1}
