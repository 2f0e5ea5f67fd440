"""FastGelu fusion: every exported spelling of the tanh GELU becomes one com.microsoft FastGelu."""

from __future__ import annotations

import collections
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer_checks import saved_extended_ops

_RNG = np.random.default_rng(0)
_X = (_RNG.standard_normal((2, 3, 8)) * 3).astype(np.float32)
_C = math.sqrt(2 / math.pi)


def _constants(**values: float) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in values.items()]


def _model(nodes, initializers, opset=17, outputs=("y",)) -> onnx.ModelProto:
    bias = numpy_helper.from_array(_RNG.standard_normal(8).astype(np.float32), "bias")
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, 8])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                              [bias, *initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _hf_gelu_new(cube: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """transformers' gelu_new: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * pow(x, 3))))."""
    cubes = {
        "pow": [helper.make_node("Pow", ["x", "three"], ["cube"])],
        "muls": [helper.make_node("Mul", ["x", "x"], ["square"]), helper.make_node("Mul", ["square", "x"], ["cube"])],
    }[cube]
    nodes = [
        helper.make_node("Add", ["a", "bias"], ["x"]),
        *cubes,
        helper.make_node("Mul", ["k", "cube"], ["scaled_cube"]),
        helper.make_node("Add", ["x", "scaled_cube"], ["inner"]),
        helper.make_node("Mul", ["inner", "c"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["t"]),
        helper.make_node("Add", ["one", "t"], ["one_plus"]),
        helper.make_node("Mul", ["half", "x"], ["half_x"]),
        helper.make_node("Mul", ["half_x", "one_plus"], ["y"]),
    ]
    return nodes, _constants(three=3.0, k=0.044715, c=_C, one=1.0, half=0.5)


def _megatron_gelu() -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """x * 0.5 * (1 + tanh(0.79788456 * x * (1 + 0.044715 * x * x)))."""
    nodes = [
        helper.make_node("Add", ["bias", "a"], ["x"]),
        helper.make_node("Mul", ["c", "x"], ["cx"]),
        helper.make_node("Mul", ["k", "x"], ["kx"]),
        helper.make_node("Mul", ["kx", "x"], ["kxx"]),
        helper.make_node("Add", ["one", "kxx"], ["poly"]),
        helper.make_node("Mul", ["cx", "poly"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["t"]),
        helper.make_node("Add", ["t", "one"], ["one_plus"]),
        helper.make_node("Mul", ["x", "one_plus"], ["x_times"]),
        helper.make_node("Mul", ["x_times", "half"], ["y"]),
    ]
    return nodes, _constants(k=0.044715, c=0.79788456, one=1.0, half=0.5)


def _saved_ops(model: onnx.ModelProto, tmp_path) -> collections.Counter:
    return saved_extended_ops(model, tmp_path, {"a": _X})


@pytest.mark.parametrize("spelling", ["pow", "muls", "megatron"])
def test_tanh_gelu_spellings_become_fast_gelu_with_bias(spelling, tmp_path):
    nodes, constants = _megatron_gelu() if spelling == "megatron" else _hf_gelu_new(spelling)
    assert _saved_ops(_model(nodes, constants), tmp_path) == {"FastGelu": 1}


def test_gelu_op_with_tanh_approximation_takes_its_bias(tmp_path):
    nodes = [helper.make_node("Add", ["a", "bias"], ["x"]), helper.make_node("Gelu", ["x"], ["y"], approximate="tanh")]
    assert _saved_ops(_model(nodes, [], opset=20), tmp_path) == {"FastGelu": 1}
    # without a bias the ONNX op is already one node
    assert _saved_ops(_model([helper.make_node("Gelu", ["a"], ["y"], approximate="tanh")], [], opset=20), tmp_path) == {"Gelu": 1}


def test_wrong_constant_or_shared_intermediate_blocks_the_fusion(tmp_path):
    nodes, constants = _hf_gelu_new("pow")
    wrong = [c if c.name != "k" else numpy_helper.from_array(np.array(0.05, np.float32), "k") for c in constants]
    assert "FastGelu" not in _saved_ops(_model(nodes, wrong), tmp_path)
    # the tanh is also a graph output: fusing would lose it
    assert "FastGelu" not in _saved_ops(_model(nodes, constants, outputs=("y", "t")), tmp_path)


def test_bias_add_read_elsewhere_stays_outside(tmp_path):
    nodes, constants = _hf_gelu_new("pow")
    histogram = _saved_ops(_model(nodes, constants, outputs=("y", "x")), tmp_path)
    assert histogram == {"Add": 1, "FastGelu": 1}


def test_exact_gelu_op_takes_its_bias_as_bias_gelu(tmp_path):
    nodes = [helper.make_node("Add", ["bias", "a"], ["x"]), helper.make_node("Gelu", ["x"], ["y"])]
    assert _saved_ops(_model(nodes, [], opset=20), tmp_path) == {"BiasGelu": 1}
