"""Skip-LayerNorm fusion: a residual Add before a LayerNormalization runs inside SkipLayerNormalization."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt

_RNG = np.random.default_rng(0)
_FEEDS = {name: _RNG.standard_normal((2, 3, 8)).astype(np.float32) for name in ("a", "b")}


def _model(norm: str = "LayerNormalization", residual_read: bool = False, b_shape=(2, 3, 8)):
    params = ["gamma", "beta"] if norm == "LayerNormalization" else ["gamma"]
    nodes = [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node(norm, ["sum", *params], ["y"], axis=-1)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if residual_read:  # the residual stream goes on past the norm
        nodes.append(helper.make_node("Mul", ["sum", "y"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, 8]),
              helper.make_tensor_value_info("b", TensorProto.FLOAT, list(b_shape))]
    initializers = [numpy_helper.from_array(_RNG.standard_normal(8).astype(np.float32), n) for n in ("gamma", "beta")]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers[: len(params)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def _ops(model: onnx.ModelProto, tmp_path, feeds=_FEEDS) -> collections.Counter:
    options = onyxrt.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = onyxrt.InferenceSession(model.SerializeToString(), options)
    saved = onnx.load(options.optimized_model_filepath)
    want = onnxruntime.InferenceSession(model.SerializeToString()).run(None, feeds)
    for ours, from_saved, expected in zip(session.run(None, feeds),
                                          onnxruntime.InferenceSession(saved.SerializeToString()).run(None, feeds), want):
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(from_saved, expected, rtol=1e-5, atol=1e-5)
    return collections.Counter(node.op_type for node in saved.graph.node)


@pytest.mark.parametrize("residual_read", [False, True])
def test_add_then_layer_norm_becomes_skip_layer_norm(residual_read, tmp_path):
    ops = _ops(_model(residual_read=residual_read), tmp_path)
    assert ops["SkipLayerNormalization"] == 1 and "Add" not in ops and "LayerNormalization" not in ops


def test_add_then_simplified_layer_norm_becomes_its_skip_form(tmp_path):
    assert _ops(_model("SimplifiedLayerNormalization"), tmp_path) == {"SkipSimplifiedLayerNormalization": 1}


def test_a_broadcast_skip_is_left_alone(tmp_path):
    feeds = {"a": _FEEDS["a"], "b": _FEEDS["b"][:1]}
    assert _ops(_model(b_shape=(1, 3, 8)), tmp_path, feeds) == {"Add": 1, "LayerNormalization": 1}


def test_sum_read_between_the_add_and_the_norm_stays_in_order(tmp_path):
    # pre-norm blocks read the residual (its Shape, a second branch) before the norm runs
    model = _model()
    reader = helper.make_node("Neg", ["sum"], ["early"])
    nodes = list(model.graph.node)
    model.graph.ClearField("node")
    model.graph.node.extend([nodes[0], reader, nodes[1]])
    model.graph.output.append(helper.make_tensor_value_info("early", TensorProto.FLOAT, None))
    assert _ops(model, tmp_path) == {"SkipLayerNormalization": 1, "Neg": 1}


def _dense_model(norm: str, bias_read_elsewhere: bool = False, residual_read: bool = False):
    """x @ w + bias (a dense layer) + the residual r, then the norm."""
    params = ["gamma", "beta"] if norm == "LayerNormalization" else ["gamma"]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Add", ["t", "bias"], ["dense"]),
             helper.make_node("Add", ["r", "dense"], ["sum"]), helper.make_node(norm, ["sum", *params], ["y"], axis=-1)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if bias_read_elsewhere:
        outputs.append(helper.make_tensor_value_info("dense", TensorProto.FLOAT, None))
    if residual_read:
        nodes.append(helper.make_node("Mul", ["sum", "y"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3, 8]) for n in ("x", "r")]
    initializers = [numpy_helper.from_array(_RNG.standard_normal(shape).astype(np.float32), n)
                    for n, shape in (("w", (8, 8)), ("bias", (8,)), ("gamma", (8,)), ("beta", (8,)))
                    if n not in ("beta",) or norm == "LayerNormalization"]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


_DENSE_FEEDS = {"x": _FEEDS["a"], "r": _FEEDS["b"]}


@pytest.mark.parametrize("norm, fused", [("LayerNormalization", "SkipLayerNormalization"),
                                         ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization")])
@pytest.mark.parametrize("residual_read", [False, True])
def test_a_dense_layers_bias_becomes_the_skip_norms_bias(norm, fused, residual_read, tmp_path):
    ops = _ops(_dense_model(norm, residual_read=residual_read), tmp_path, _DENSE_FEEDS)
    assert ops[fused] == 1 and "Add" not in ops and ops["MatMul"] == 1


def test_a_bias_sum_read_elsewhere_stays_an_add(tmp_path):
    ops = _ops(_dense_model("LayerNormalization", bias_read_elsewhere=True), tmp_path, _DENSE_FEEDS)
    assert ops["SkipLayerNormalization"] == 1 and ops["Add"] == 1
