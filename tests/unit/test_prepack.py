"""Kernels with a prepack function prepare constant weights once, at session creation."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort
from onyxrt.providers.cpu.kernel_table import op

DOMAIN = "test.onyxrt.prepack"
calls: list[tuple] = []


def _prepack(inputs, attributes):
    calls.append((tuple(x is not None for x in inputs), attributes["factor"]))
    weight = inputs[1]
    return None if weight is None else (weight * attributes["factor"]).T.copy()


@op("ScaledMatMul", versions=1, domain=DOMAIN, prepack=_prepack)
def scaled_matmul(x, w, *, factor=1.0, _packed=None):
    """x @ (w * factor)^T, with the transposed, scaled weight prepared once when w is constant."""
    return x @ (_packed if _packed is not None else (w * factor).T)


def _model(weight_is_initializer: bool) -> bytes:
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])]
    initializers = [numpy_helper.from_array(w, "w")]
    if not weight_is_initializer:  # an overridable initializer: a feed may replace it, so no prepack
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3]))
    graph = helper.make_graph(
        [helper.make_node("ScaledMatMul", ["x", "w"], ["y"], domain=DOMAIN, factor=2.0)],
        "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    return model.SerializeToString()


def test_prepack_runs_once_with_the_constant_weight():
    calls.clear()
    session = ort.InferenceSession(_model(weight_is_initializer=True))
    x = np.ones((1, 3), np.float32)
    for _ in range(3):
        np.testing.assert_allclose(session.run(None, {"x": x})[0], [[6.0, 24.0]])
    assert calls == [((False, True), 2.0)]


def test_overridable_initializers_are_not_prepacked():
    calls.clear()
    session = ort.InferenceSession(_model(weight_is_initializer=False))
    x = np.ones((1, 3), np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x, "w": np.ones((2, 3), np.float32)})[0], [[6.0, 6.0]])
    assert calls == [((False, False), 2.0)]


def _dequantize_model(zero_point_fed: bool, opset: int = 19) -> bytes:
    w = numpy_helper.from_array(np.arange(-6, 6, dtype=np.int8).reshape(3, 4), "w_q")
    scale = numpy_helper.from_array(np.array([0.5, 0.25, 2.0, 1.0], np.float32), "w_scale")
    zero = numpy_helper.from_array(np.array([1, 0, -1, 2], np.int8), "w_zero")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])]
    if zero_point_fed:  # an overridable initializer: the run may feed another zero point
        inputs.append(helper.make_tensor_value_info("w_zero", TensorProto.INT8, [4]))
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=1),
         helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w, scale, zero],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def _count_dequantize_calls(monkeypatch) -> list:
    from onyxrt.providers.cpu.math import quantization

    calls, real = [], quantization._dequantize
    monkeypatch.setattr(quantization, "_dequantize", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_dequantize_linear_of_a_constant_weight_is_computed_once(monkeypatch):
    """QDQ models keep DequantizeLinear (folding skips it): its constant weight is dequantized at creation."""
    calls = _count_dequantize_calls(monkeypatch)
    session = ort.InferenceSession(_dequantize_model(zero_point_fed=False))
    assert len(calls) == 1
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    w = (np.arange(-6, 6).reshape(3, 4) - np.array([1, 0, -1, 2])) * np.array([0.5, 0.25, 2.0, 1.0])
    for _ in range(2):
        np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ w, rtol=1e-6)
    assert len(calls) == 1


def test_dequantize_linear_recomputes_when_an_input_is_fed(monkeypatch):
    calls = _count_dequantize_calls(monkeypatch)
    session = ort.InferenceSession(_dequantize_model(zero_point_fed=True))
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    zero = np.array([0, 0, 0, 0], np.int8)
    w = np.arange(-6, 6).reshape(3, 4) * np.array([0.5, 0.25, 2.0, 1.0])
    np.testing.assert_allclose(session.run(None, {"x": x, "w_zero": zero})[0], x @ w, rtol=1e-6)
    # prepack cannot tell a fed input from an absent one: what it prepared (without a zero point)
    # is refused at run time, which dequantizes with the fed zero point
    assert len(calls) == 2
