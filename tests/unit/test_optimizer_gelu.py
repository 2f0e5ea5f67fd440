"""GELU fusion: every exported erf spelling becomes one Gelu (or BiasGelu) node with the same outputs."""

from __future__ import annotations

import collections
import math

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt

_SCALARS = {"sqrt2": math.sqrt(2), "inv_sqrt2": 1 / math.sqrt(2), "one": 1.0, "half": 0.5}


def _gelu_model(association: str, divide: bool = True, bias: bool = True, opset: int = 17,
                extra_erf_reader: bool = False) -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["a", "w"], ["mm"])]
    x = "mm"
    if bias:
        nodes.append(helper.make_node("Add", ["mm", "b"], ["x"]))
        x = "x"
    nodes.append(helper.make_node("Div", [x, "sqrt2"], ["scaled"]) if divide
                 else helper.make_node("Mul", ["inv_sqrt2", x], ["scaled"]))
    nodes += [helper.make_node("Erf", ["scaled"], ["erf"]), helper.make_node("Add", ["one", "erf"], ["plus_one"])]
    if association == "x_first":  # (x * (1 + erf)) * 0.5, TorchScript's
        nodes += [helper.make_node("Mul", [x, "plus_one"], ["p"]), helper.make_node("Mul", ["p", "half"], ["y"])]
    elif association == "half_first":  # x * ((1 + erf) * 0.5), the dynamo exporter's
        nodes += [helper.make_node("Mul", ["plus_one", "half"], ["q"]), helper.make_node("Mul", [x, "q"], ["y"])]
    else:  # (x * 0.5) * (1 + erf)
        nodes += [helper.make_node("Mul", [x, "half"], ["r"]), helper.make_node("Mul", ["r", "plus_one"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])]
    if extra_erf_reader:
        outputs.append(helper.make_tensor_value_info("erf", TensorProto.FLOAT, ["n", 8]))
    rng = np.random.default_rng(0)
    initializers = [numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "w"),
                    numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")]
    initializers += [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in _SCALARS.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 4])], outputs,
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _optimized(model: onnx.ModelProto, tmp_path, level=onyxrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, disabled=()):
    options = onyxrt.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = onyxrt.InferenceSession(model.SerializeToString(), options, disabled_optimizers=list(disabled))
    saved = onnx.load(options.optimized_model_filepath)
    return session, saved, collections.Counter(node.op_type for node in saved.graph.node)


@pytest.mark.parametrize("association", ["x_first", "half_first", "half_of_x"])
@pytest.mark.parametrize("divide", [True, False])
def test_erf_gelu_with_bias_becomes_bias_gelu_with_the_same_outputs(association, divide, tmp_path):
    model = _gelu_model(association, divide)
    # The MatMul is 2-D: MatMulAddFusion (BASIC, first) would take the bias into a Gemm, as onnxruntime does.
    session, saved, ops = _optimized(model, tmp_path, disabled=["MatMulAddFusion"])
    assert ops == {"MatMul": 1, "BiasGelu": 1}
    a = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    want = onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"a": a})[0]
    np.testing.assert_allclose(session.run(None, {"a": a})[0], want, rtol=1e-5, atol=1e-6)
    # onnxruntime loads the saved model (com.microsoft BiasGelu) and agrees.
    np.testing.assert_allclose(onnxruntime.InferenceSession(saved.SerializeToString()).run(None, {"a": a})[0], want,
                               rtol=1e-5, atol=1e-6)


def test_without_bias_it_is_the_onnx_gelu_op_from_opset_20():
    ops = {}
    for opset, expected in ((17, "com.microsoft"), (20, "")):
        model = _gelu_model("x_first", bias=False, opset=opset)
        options = onyxrt.SessionOptions()
        session = onyxrt.InferenceSession(model.SerializeToString(), options)
        node = next(n for n in session._model.graph if n.op_type == "Gelu")
        ops[opset] = node.domain
        assert node.domain == expected
    assert ops == {17: "com.microsoft", 20: ""}


def test_nothing_fuses_below_extended_or_when_an_inner_value_is_read_elsewhere(tmp_path):
    _, _, basic = _optimized(_gelu_model("x_first"), tmp_path, onyxrt.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    assert basic["Erf"] == 1
    _, _, shared = _optimized(_gelu_model("x_first", extra_erf_reader=True), tmp_path)
    assert shared["Erf"] == 1 and "BiasGelu" not in shared
