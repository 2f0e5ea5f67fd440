"""MatMul scale fusion and SiLU fusion: constant scales fold into FusedMatMul's alpha; x·sigmoid(x) is QuickGelu."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt


def _check(nodes, inputs, initializers, expected_ops, tmp_path, feeds):
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = onyxrt.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = onyxrt.InferenceSession(model.SerializeToString(), options)
    saved = onnx.load(options.optimized_model_filepath)
    assert collections.Counter(n.op_type for n in saved.graph.node) == expected_ops
    want = onnxruntime.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    np.testing.assert_allclose(session.run(None, feeds)[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(onnxruntime.InferenceSession(saved.SerializeToString()).run(None, feeds)[0], want,
                               rtol=1e-5, atol=1e-6)


_RNG = np.random.default_rng(0)
_AB = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, 4]),
       helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 4, 5])]
_FEEDS = {"a": _RNG.standard_normal((2, 3, 4)).astype(np.float32), "b": _RNG.standard_normal((2, 4, 5)).astype(np.float32)}
_SCALARS = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in (("s", 0.5), ("t", 3.0), ("c", 8.0))]


@pytest.mark.parametrize(
    "nodes",
    [
        [helper.make_node("MatMul", ["a", "b"], ["m"]), helper.make_node("Div", ["m", "c"], ["y"])],
        [helper.make_node("MatMul", ["a", "b"], ["m"]), helper.make_node("Mul", ["s", "m"], ["y"])],
        [helper.make_node("Mul", ["a", "s"], ["as"]), helper.make_node("Mul", ["t", "b"], ["bt"]),
         helper.make_node("MatMul", ["as", "bt"], ["m"]), helper.make_node("Div", ["m", "c"], ["y"])],
    ],
    ids=["output_div", "output_mul", "inputs_and_output"],
)
def test_constant_scales_fold_into_one_fused_matmul(nodes, tmp_path):
    _check(nodes, _AB, _SCALARS, {"FusedMatMul": 1}, tmp_path, _FEEDS)


def test_scale_read_elsewhere_stays(tmp_path):
    nodes = [helper.make_node("MatMul", ["a", "b"], ["m"]), helper.make_node("Div", ["m", "c"], ["d"]),
             helper.make_node("Add", ["m", "d"], ["y"])]
    _check(nodes, _AB, _SCALARS, {"MatMul": 1, "Div": 1, "Add": 1}, tmp_path, _FEEDS)


@pytest.mark.parametrize("order", [["x", "sig"], ["sig", "x"]])
def test_silu_becomes_quick_gelu(order, tmp_path):
    nodes = [helper.make_node("Sigmoid", ["x"], ["sig"]), helper.make_node("Mul", order, ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])]
    _check(nodes, inputs, [], {"QuickGelu": 1}, tmp_path, {"x": _RNG.standard_normal((3, 4)).astype(np.float32)})


def test_sigmoid_of_another_value_is_no_silu(tmp_path):
    nodes = [helper.make_node("Sigmoid", ["z"], ["sig"]), helper.make_node("Mul", ["x", "sig"], ["y"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3]) for n in ("x", "z")]
    feeds = {n: _RNG.standard_normal(3).astype(np.float32) for n in ("x", "z")}
    _check(nodes, inputs, [], {"Sigmoid": 1, "Mul": 1}, tmp_path, feeds)
