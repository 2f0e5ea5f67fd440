"""The optimizer through ``onyxrt.InferenceSession``: the regressions of issue 6 at the default level."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort


def _model(nodes, inputs, outputs, initializers=(), opset=21) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _session(model, tmp_path=None, level=None, **kwargs):
    options = ort.SessionOptions()
    if level is not None:
        options.graph_optimization_level = level
    if tmp_path is not None:
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"], **kwargs)


def _optimized(tmp_path) -> onnx.ModelProto:
    return onnx.load(str(tmp_path / "optimized.onnx"))


@pytest.mark.parametrize(
    "level",
    [None, ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL],
)
def test_nodes_listed_out_of_dependency_order_run(level):
    nodes = [
        helper.make_node("Add", ["a", "w"], ["y"]),
        helper.make_node("Identity", ["r"], ["a"]),
        helper.make_node("Relu", ["x"], ["r"]),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(np.ones(3, np.float32), "w")],
    )
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    (y,) = _session(model, level=level).run(None, {"x": x})
    np.testing.assert_allclose(y, np.maximum(x, 0) + 1)


def test_quantized_weight_stays_behind_dequantize_linear(tmp_path):
    weight_q = np.arange(-6, 6, dtype=np.int8).reshape(4, 3)
    model = _model(
        [
            helper.make_node("DequantizeLinear", ["w_q", "scale", "zero"], ["w"]),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [
            numpy_helper.from_array(weight_q, "w_q"),
            numpy_helper.from_array(np.float32(0.25), "scale"),
            numpy_helper.from_array(np.int8(0), "zero"),
        ],
    )
    session = _session(model, tmp_path)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ (weight_q.astype(np.float32) * 0.25))
    optimized = _optimized(tmp_path)
    assert [node.op_type for node in optimized.graph.node] == ["DequantizeLinear", "MatMul"]
    assert {t.name: t.data_type for t in optimized.graph.initializer}["w_q"] == TensorProto.INT8


def test_large_constant_of_shape_is_not_folded_into_a_weight(tmp_path):
    model = _model(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["ones"], value=numpy_helper.from_array(np.ones(1, np.float32))),
            helper.make_node("ReduceSum", ["ones"], ["total"], keepdims=0),
            helper.make_node("Mul", ["x", "total"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.array([4096, 4096], np.int64), "shape")],
    )
    session = _session(model, tmp_path)
    np.testing.assert_allclose(session.run(None, {"x": np.ones(1, np.float32)})[0], [4096.0 * 4096.0])
    optimized = _optimized(tmp_path)
    assert "ConstantOfShape" in [node.op_type for node in optimized.graph.node]
    assert all(len(t.raw_data) < 1 << 20 for t in optimized.graph.initializer)


def test_applied_optimizations_and_onnxruntime_names_in_disabled_optimizers():
    model = _model(
        [helper.make_node("Neg", ["w"], ["n"]), helper.make_node("Add", ["x", "n"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.ones(2, np.float32), "w")],
    )
    assert _session(model).applied_optimizations == ["constant_folding", "dead_code_elimination"]
    assert _session(model, disabled_optimizers=["ConstantFolding"]).applied_optimizations == []


def test_constants_folded_inside_a_loop_body_run(tmp_path):
    # body: acc_out = acc_in + Neg(w) * 2, where Neg(w) * 2 reads only the outer initializer w
    body = helper.make_graph(
        [
            helper.make_node("Neg", ["w"], ["neg_w"]),
            helper.make_node("Mul", ["neg_w", "two"], ["step"]),
            helper.make_node("Add", ["acc_in", "step"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [2]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [2]),
        ],
        [numpy_helper.from_array(np.float32(2.0), "two")],
    )
    model = _model(
        [helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [
            numpy_helper.from_array(np.array([1.0, 3.0], np.float32), "w"),
            numpy_helper.from_array(np.int64(3), "trips"),
        ],
    )
    session = _session(model, tmp_path)
    assert "constant_folding" in session.applied_optimizations
    (y,) = session.run(None, {"x": np.zeros(2, np.float32)})
    np.testing.assert_allclose(y, [-6.0, -18.0])
    (optimized_body,) = [a.g for a in _optimized(tmp_path).graph.node[0].attribute if a.name == "body"]
    assert [node.op_type for node in optimized_body.node] == ["Add", "Identity"]


def test_disable_quant_qdq_lets_folding_dequantize_weights():
    """onnxruntime's "session.disable_quant_qdq" = "1": DequantizeLinear of a constant weight is folded."""
    weight = numpy_helper.from_array(np.arange(-4, 4, dtype=np.int8).reshape(2, 4), "w_q")
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "w_scale")
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"]), helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=[weight, scale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    x = np.array([[1.0, 2.0]], np.float32)
    kept = ort.InferenceSession(model)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    folded = ort.InferenceSession(model, options)
    assert "constant_folding" not in kept.applied_optimizations
    assert "constant_folding" in folded.applied_optimizations
    np.testing.assert_array_equal(kept.run(None, {"x": x})[0], folded.run(None, {"x": x})[0])
