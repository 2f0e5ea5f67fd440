"""RMSNorm fusion: the exported spellings become one SimplifiedLayerNormalization with the same outputs."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt


def _rms_model(inverse: str, opset: int = 17, axis: int = -1, constant_weight: bool = True) -> onnx.ModelProto:
    reduce = (helper.make_node("ReduceMean", ["sq", "axes"], ["mean"], keepdims=1) if opset >= 18
              else helper.make_node("ReduceMean", ["sq"], ["mean"], axes=[axis], keepdims=1))
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"]), reduce,
             helper.make_node("Add", ["mean", "eps"], ["var"]), helper.make_node("Sqrt", ["var"], ["rms"])]
    if inverse == "div":
        nodes.append(helper.make_node("Div", ["x", "rms"], ["normalized"]))
    else:
        nodes.append(helper.make_node("Reciprocal", ["rms"], ["inv"]) if inverse == "reciprocal"
                     else helper.make_node("Div", ["one", "rms"], ["inv"]))
        nodes.append(helper.make_node("Mul", ["x", "inv"], ["normalized"]))
    nodes.append(helper.make_node("Mul", ["normalized", "weight"], ["y"]))
    rng = np.random.default_rng(0)
    initializers = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in (("two", 2.0), ("eps", 1e-6), ("one", 1.0))]
    initializers.append(numpy_helper.from_array(np.array([axis], np.int64), "axes"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 8])]
    if constant_weight:
        initializers.append(numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "weight"))
    else:
        inputs.append(helper.make_tensor_value_info("weight", TensorProto.FLOAT, [8]))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 8])],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ops(model: onnx.ModelProto, tmp_path) -> tuple[onyxrt.InferenceSession, collections.Counter, onnx.ModelProto]:
    options = onyxrt.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = onyxrt.InferenceSession(model.SerializeToString(), options)
    saved = onnx.load(options.optimized_model_filepath)
    return session, collections.Counter(node.op_type for node in saved.graph.node), saved


@pytest.mark.parametrize("inverse", ["div", "reciprocal", "one_over"])
@pytest.mark.parametrize("opset", [17, 18])
def test_rms_norm_spellings_fuse_with_the_same_outputs(inverse, opset, tmp_path):
    model = _rms_model(inverse, opset)
    session, ops, saved = _ops(model, tmp_path)
    assert ops == {"SimplifiedLayerNormalization": 1}
    x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)
    want = onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(session.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(onnxruntime.InferenceSession(saved.SerializeToString()).run(None, {"x": x})[0], want,
                               rtol=1e-5, atol=1e-6)


def test_rms_norm_over_another_axis_is_left_alone(tmp_path):
    _, ops, _ = _ops(_rms_model("div", axis=1), tmp_path)
    assert "SimplifiedLayerNormalization" not in ops and ops["Sqrt"] == 1


def test_a_weight_that_is_not_constant_stays_a_mul_after_the_fused_norm(tmp_path):
    model = _rms_model("div", constant_weight=False)
    model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value = 8
    session, ops, _ = _ops(model, tmp_path)
    assert ops == {"SimplifiedLayerNormalization": 1, "Mul": 1}
    feeds = {"x": np.random.default_rng(3).standard_normal((2, 3, 8)).astype(np.float32),
             "weight": np.random.default_rng(4).standard_normal(8).astype(np.float32)}
    want = onnxruntime.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    np.testing.assert_allclose(session.run(None, feeds)[0], want, rtol=1e-5, atol=1e-6)


def test_rms_norm_without_a_weight_gets_a_weight_of_ones(tmp_path):
    model = _rms_model("reciprocal")
    model.graph.node.pop()  # no Mul by the weight: y is the normalized value
    model.graph.node[-1].output[0] = "y"
    model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value = 8
    session, ops, saved = _ops(model, tmp_path)
    assert ops == {"SimplifiedLayerNormalization": 1}
    x = np.random.default_rng(2).standard_normal((2, 3, 8)).astype(np.float32)
    want = onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(session.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-6)
