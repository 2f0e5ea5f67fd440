"""An inference BatchNormalization that follows no convolution (+ the activation reading it) runs as a depthwise
1x1 Conv / FusedConv on onyxrt's CPU kernels (optimizer/batch_norm_depthwise.py), never in a saved optimized
model."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onyxrt as ort

onnxruntime = pytest.importorskip("onnxruntime")

C = 12


def _model(activation: str | None = "Relu", *, norm_also_output: bool = False, parameters_as_inputs: bool = False,
           opset: int = 17) -> onnx.ModelProto:
    """x -> BatchNormalization -> [activation] -> 1x1 Conv (DenseNet's pre-activation order)."""
    rng = np.random.default_rng(3)
    params = {"gamma": rng.random(C) + 0.5, "beta": rng.standard_normal(C), "mean": rng.standard_normal(C),
              "var": rng.random(C) + 0.1}
    nodes = [helper.make_node("BatchNormalization", ["x", "gamma", "beta", "mean", "var"], ["n"], epsilon=1e-3)]
    last = "n"
    if activation == "LeakyRelu":
        nodes.append(helper.make_node("LeakyRelu", ["n"], ["a"], alpha=0.2))
        last = "a"
    elif activation is not None:
        nodes.append(helper.make_node(activation, ["n"], ["a"]))
        last = "a"
    weight = (rng.standard_normal((8, C, 1, 1)) / 3).astype(np.float32)
    nodes.append(helper.make_node("Conv", [last, "w"], ["y"]))
    initializers = [helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.ravel())]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", C, 9, 7])]
    for name, value in params.items():
        if parameters_as_inputs:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [C]))
        else:
            initializers.append(helper.make_tensor(name, TensorProto.FLOAT, [C], value.astype(np.float32)))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if norm_also_output:
        outputs.append(helper.make_tensor_value_info("n", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _feeds(model: onnx.ModelProto, batch: int = 2) -> dict:
    rng = np.random.default_rng(4)
    feeds = {"x": rng.standard_normal((batch, C, 9, 7)).astype(np.float32)}
    for name in ("gamma", "beta", "mean", "var"):
        if name in [i.name for i in model.graph.input]:
            feeds[name] = (rng.random(C) + 0.5).astype(np.float32)
    return feeds


def _op_types(session) -> list[str]:
    return [n.op_type for n in session._plan.nodes]


def _check_against_onnxruntime(session, model) -> None:
    feeds = _feeds(model)
    want = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for got, expected in zip(session.run(None, feeds), want):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation, fused", [
    ("Relu", ["FusedConv", "Conv"]), ("LeakyRelu", ["FusedConv", "Conv"]), ("Sigmoid", ["FusedConv", "Conv"]),
    ("HardSwish", ["FusedConv", "Conv"]),  # (conv_epilogue_fusion takes it after this rewrite)
    (None, ["Conv", "Conv"]),
])
def test_batch_norm_runs_as_a_depthwise_convolution(activation, fused):
    model = _model(activation)
    session = ort.InferenceSession(model.SerializeToString())
    assert _op_types(session) == fused
    assert session._plan.nodes[0].attributes["group"].value == C
    _check_against_onnxruntime(session, model)
    kept = ort.InferenceSession(model.SerializeToString(), disabled_optimizers=["BatchNormDepthwise"])
    assert "BatchNormalization" in _op_types(kept)
    feeds = _feeds(model)
    np.testing.assert_allclose(session.run(None, feeds)[0], kept.run(None, feeds)[0], rtol=1e-5, atol=1e-5)


def test_never_saved(tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    model = _model()
    session = ort.InferenceSession(model.SerializeToString(), options)
    assert _op_types(session) == ["FusedConv", "Conv"]
    saved = onnx.load(options.optimized_model_filepath)
    assert "BatchNormalization" in [n.op_type for n in saved.graph.node]


@pytest.mark.parametrize("case", ["parameters_as_inputs", "norm_also_output", "opset_6"])
def test_what_is_left_alone(case):
    model = _model(parameters_as_inputs=case == "parameters_as_inputs", norm_also_output=case == "norm_also_output",
                   opset=6 if case == "opset_6" else 17)
    session = ort.InferenceSession(model.SerializeToString())
    if case == "norm_also_output":  # the normalization itself is rewritten, its Relu stays a node of its own
        assert _op_types(session) == ["Conv", "Relu", "Conv"]
    else:
        assert "BatchNormalization" in _op_types(session)
    if case != "opset_6":
        _check_against_onnxruntime(session, model)
