"""Conv + HardSwish / QuickGelu run as one FusedConv on onyxrt's CPU kernels (optimizer/conv_epilogue_fusion.py),
never in a saved optimized model."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onyxrt as ort

onnxruntime = pytest.importorskip("onnxruntime")


def _model(second_reader: bool = False) -> onnx.ModelProto:
    """x -> Conv 3x3 -> HardSwish -> depthwise Conv -> Sigmoid * self (SiLU) -> Conv 1x1 -> QuickGelu(alpha 1.5)."""
    rng = np.random.default_rng(5)
    weights = {
        "w1": rng.standard_normal((8, 3, 3, 3)), "b1": rng.standard_normal(8),
        "w2": rng.standard_normal((8, 1, 3, 3)), "b2": rng.standard_normal(8),
        "w3": rng.standard_normal((6, 8, 1, 1)), "b3": rng.standard_normal(6),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("HardSwish", ["c1"], ["h1"]),
        helper.make_node("Conv", ["h1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Sigmoid", ["c2"], ["s2"]),
        helper.make_node("Mul", ["c2", "s2"], ["h2"]),
        helper.make_node("Conv", ["h2", "w3", "b3"], ["c3"]),
        helper.make_node("QuickGelu", ["c3"], ["y"], domain="com.microsoft", alpha=1.5),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if second_reader:
        outputs.append(helper.make_tensor_value_info("c1", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              outputs, [helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.astype(np.float32).ravel())
                                        for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def _fused_activations(session) -> list:
    return [(n.op_type, n.attributes["activation"].value if "activation" in n.attributes else None)
            for n in session._plan.nodes if "Conv" in n.op_type]


def _inputs():
    return {"x": np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)}


def test_activations_run_in_the_convolutions_epilogue():
    model = _model()
    session = ort.InferenceSession(model.SerializeToString())
    assert _fused_activations(session) == [("FusedConv", "HardSwish"), ("FusedConv", "QuickGelu"),
                                           ("FusedConv", "QuickGelu")]
    assert not any(n.op_type in ("HardSwish", "QuickGelu") for n in session._plan.nodes)
    expected = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, _inputs())[0]
    np.testing.assert_allclose(session.run(None, _inputs())[0], expected, rtol=1e-5, atol=1e-5)
    unfused = ort.InferenceSession(model.SerializeToString(), disabled_optimizers=["ConvEpilogueFusion"])
    assert ("FusedConv", "HardSwish") not in _fused_activations(unfused)
    np.testing.assert_allclose(session.run(None, _inputs())[0], unfused.run(None, _inputs())[0], rtol=1e-6, atol=1e-6)


def test_no_fusion_below_extended_or_for_a_value_read_twice():
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    basic = ort.InferenceSession(_model().SerializeToString(), options)
    assert all(activation is None for _, activation in _fused_activations(basic))
    shared = ort.InferenceSession(_model(second_reader=True).SerializeToString())
    assert _fused_activations(shared)[0] == ("Conv", None)  # c1 is a graph output too
    y, c1 = shared.run(None, _inputs())
    assert c1.shape == (1, 8, 8, 8)


def test_saved_optimized_model_keeps_onnxruntime_forms(tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(_model().SerializeToString(), options)
    assert ("FusedConv", "HardSwish") in _fused_activations(session)
    saved = onnx.load(options.optimized_model_filepath)
    assert any(n.op_type == "HardSwish" for n in saved.graph.node)
    reference = onnxruntime.InferenceSession(options.optimized_model_filepath, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(reference.run(None, _inputs())[0], session.run(None, _inputs())[0], rtol=1e-5,
                               atol=1e-5)
