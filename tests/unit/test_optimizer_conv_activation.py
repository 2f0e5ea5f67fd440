"""Conv + activation fusion: each activation runs inside com.microsoft FusedConv with the same outputs."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt

_RNG = np.random.default_rng(0)
_X = _RNG.standard_normal((1, 3, 6, 6)).astype(np.float32)


def _conv_then(activation: onnx.NodeProto, extra_outputs=(), opset: int = 17, initializers=()) -> onnx.ModelProto:
    conv = helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    weights = [numpy_helper.from_array(_RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(_RNG.standard_normal(4).astype(np.float32), "b"), *initializers]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", *extra_outputs)]
    graph = helper.make_graph([conv, activation], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              outputs, weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _fused_ops(model: onnx.ModelProto, tmp_path) -> collections.Counter:
    options = onyxrt.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = onyxrt.InferenceSession(model.SerializeToString(), options)
    saved = onnx.load(options.optimized_model_filepath)
    want = onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"x": _X})
    for got, expected in zip(session.run(None, {"x": _X}), want):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(onnxruntime.InferenceSession(saved.SerializeToString()).run(None, {"x": _X})[0], want[0],
                               rtol=1e-5, atol=1e-5)
    return collections.Counter(node.op_type for node in saved.graph.node)


_BOUNDS = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in (("lo", 0.0), ("hi", 6.0))]


@pytest.mark.parametrize(
    "activation, opset, initializers",
    [
        (helper.make_node("Relu", ["c"], ["y"]), 17, ()),
        (helper.make_node("Sigmoid", ["c"], ["y"]), 17, ()),
        (helper.make_node("Tanh", ["c"], ["y"]), 17, ()),
        (helper.make_node("LeakyRelu", ["c"], ["y"], alpha=0.2), 17, ()),
        (helper.make_node("HardSigmoid", ["c"], ["y"], alpha=0.3, beta=0.4), 17, ()),
        (helper.make_node("Clip", ["c", "lo", "hi"], ["y"]), 17, _BOUNDS),
        (helper.make_node("Clip", ["c", "", "hi"], ["y"]), 17, _BOUNDS),
        (helper.make_node("Clip", ["c"], ["y"], min=0.0, max=6.0), 6, ()),
    ],
    ids=["relu", "sigmoid", "tanh", "leaky_relu", "hard_sigmoid", "clip", "clip_max_only", "clip_opset6"],
)
def test_activation_after_conv_fuses(activation, opset, initializers, tmp_path):
    assert _fused_ops(_conv_then(activation, opset=opset, initializers=initializers), tmp_path) == {"FusedConv": 1}


def test_conv_output_read_elsewhere_is_left_alone(tmp_path):
    model = _conv_then(helper.make_node("Relu", ["c"], ["y"]), extra_outputs=("c",))
    assert _fused_ops(model, tmp_path) == {"Conv": 1, "Relu": 1}
