"""Gemm + activation fusion: the activation runs inside com.microsoft FusedGemm, in onyxrt and in onnxruntime."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer_checks import saved_extended_ops

_RNG = np.random.default_rng(0)
_X = _RNG.standard_normal((3, 5)).astype(np.float32)


def _gemm_then(activation: onnx.NodeProto, outputs=("y",), dtype=TensorProto.FLOAT) -> onnx.ModelProto:
    np_type = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    gemm = helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1, alpha=0.5)
    weights = [numpy_helper.from_array(_RNG.standard_normal((4, 5)).astype(np_type), "w"),
               numpy_helper.from_array(_RNG.standard_normal(4).astype(np_type), "b")]
    graph = helper.make_graph([gemm, activation], "g", [helper.make_tensor_value_info("x", dtype, [3, 5])],
                              [helper.make_tensor_value_info(n, dtype, None) for n in outputs], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _saved_ops(model: onnx.ModelProto, tmp_path, x=_X) -> collections.Counter:
    return saved_extended_ops(model, tmp_path, {"x": x}, atol=1e-6)


@pytest.mark.parametrize(
    "activation",
    [
        helper.make_node("Relu", ["g"], ["y"]),
        helper.make_node("Sigmoid", ["g"], ["y"]),
        helper.make_node("Tanh", ["g"], ["y"]),
        helper.make_node("Softplus", ["g"], ["y"]),
        helper.make_node("Softsign", ["g"], ["y"]),
        helper.make_node("LeakyRelu", ["g"], ["y"], alpha=0.3),
        helper.make_node("LeakyRelu", ["g"], ["y"]),
        helper.make_node("HardSigmoid", ["g"], ["y"], alpha=0.3, beta=0.4),
        helper.make_node("Elu", ["g"], ["y"], alpha=0.7),
        helper.make_node("Selu", ["g"], ["y"]),
    ],
    ids=["relu", "sigmoid", "tanh", "softplus", "softsign", "leaky_relu", "leaky_relu_default", "hard_sigmoid", "elu", "selu"],
)
def test_activation_after_gemm_fuses(activation, tmp_path):
    assert _saved_ops(_gemm_then(activation), tmp_path) == {"FusedGemm": 1}


def test_gemm_read_elsewhere_or_other_ops_stay(tmp_path):
    assert _saved_ops(_gemm_then(helper.make_node("Relu", ["g"], ["y"]), outputs=("y", "g")), tmp_path) == {"Gemm": 1, "Relu": 1}
    assert _saved_ops(_gemm_then(helper.make_node("Exp", ["g"], ["y"])), tmp_path) == {"Gemm": 1, "Exp": 1}


def test_double_gemm_is_left_alone(tmp_path):
    model = _gemm_then(helper.make_node("Relu", ["g"], ["y"]), dtype=TensorProto.DOUBLE)
    assert _saved_ops(model, tmp_path, _X.astype(np.float64)) == {"Gemm": 1, "Relu": 1}
