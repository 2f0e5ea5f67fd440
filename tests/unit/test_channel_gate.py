"""A squeeze-and-excitation gate (spatial mean, two 1x1 convolutions) runs as one ai.onyxrt ChannelGate
(optimizer/channel_gate_fusion.py, providers/cpu/nn/channel_gate.py), never in a saved model."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onyxrt as ort
from onyxrt.errors import NodeInputError
from onyxrt.providers.cpu.nn.channel_gate import channel_gate

onnxruntime = pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(11)
C, R = 16, 4


def _gate_model(mean: str = "GlobalAveragePool", opset: int = 17, first: str = "Relu", second: str = "Sigmoid",
                read_twice: bool = False) -> onnx.ModelProto:
    """x -> mean -> Conv 1x1 -> first -> Conv 1x1 -> second = gate; y = x * gate."""
    weights = {"w1": RNG.standard_normal((R, C, 1, 1)), "b1": RNG.standard_normal(R),
               "w2": RNG.standard_normal((C, R, 1, 1)), "b2": RNG.standard_normal(C)}
    initializers = [helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.astype(np.float32).ravel())
                    for k, v in weights.items()]
    if mean == "GlobalAveragePool":
        nodes = [helper.make_node("GlobalAveragePool", ["x"], ["m"])]
    elif opset >= 18:
        initializers.append(helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]))
        nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1)]
    else:
        nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1, -2], keepdims=1)]
    nodes += [helper.make_node("Conv", ["m", "w1", "b1"], ["c1"]), helper.make_node(first, ["c1"], ["a1"]),
              helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"])]
    if second == "SiLU":
        nodes += [helper.make_node("Sigmoid", ["c2"], ["s2"]), helper.make_node("Mul", ["c2", "s2"], ["gate"])]
    else:
        nodes.append(helper.make_node(second, ["c2"], ["gate"]))
    nodes.append(helper.make_node("Mul", ["x", "gate"], ["y"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if read_twice:
        outputs.append(helper.make_tensor_value_info("c1", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "gate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", C, 6, 6])],
                              outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ops(session) -> list[str]:
    return [n.op_type for n in session._plan.nodes]


@pytest.mark.parametrize("mean, opset", [("GlobalAveragePool", 17), ("ReduceMean", 13), ("ReduceMean", 18)])
@pytest.mark.parametrize("first, second", [("Relu", "Sigmoid"), ("LeakyRelu", "HardSigmoid"), ("Relu", "SiLU")])
def test_gate_runs_as_one_node(mean, opset, first, second):
    model = _gate_model(mean, opset, first, second).SerializeToString()
    session = ort.InferenceSession(model)
    assert _ops(session) == ["ChannelGate", "Mul"]
    x = {"x": RNG.standard_normal((3, C, 6, 6)).astype(np.float32)}
    expected = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, x)[0]
    for _ in range(2):  # the route is made, then reused
        np.testing.assert_allclose(session.run(None, x)[0], expected, rtol=1e-5, atol=1e-5)
    unfused = ort.InferenceSession(model, disabled_optimizers=["ChannelGateFusion"])
    assert "ChannelGate" not in _ops(unfused)


def test_no_fusion_for_a_value_read_twice_or_below_extended(tmp_path):
    assert "ChannelGate" not in _ops(ort.InferenceSession(_gate_model(read_twice=True).SerializeToString()))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert "ChannelGate" not in _ops(ort.InferenceSession(_gate_model().SerializeToString(), options))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    assert "ChannelGate" in _ops(ort.InferenceSession(_gate_model().SerializeToString(), options))
    saved = onnx.load(options.optimized_model_filepath)
    assert any(n.op_type == "GlobalAveragePool" for n in saved.graph.node)


def test_kernel_checks_its_operands():
    x = RNG.standard_normal((2, C, 3, 3)).astype(np.float32)
    w1 = RNG.standard_normal((R, C, 1, 1)).astype(np.float32)
    w2 = RNG.standard_normal((C, R, 1, 1)).astype(np.float32)
    gate = channel_gate(x, w1, None, w2, None)  # no biases, no activations
    expected = (x.mean(axis=(2, 3)) @ w1[:, :, 0, 0].T) @ w2[:, :, 0, 0].T
    np.testing.assert_allclose(gate.reshape(2, C), expected, rtol=1e-5, atol=1e-6)
    empty = channel_gate(np.zeros((2, C, 0, 3), np.float32), w1, None, w2, None)  # no values: NaN, as the mean's
    assert empty.shape == (2, C, 1, 1) and np.isnan(empty).all()
    with pytest.raises(NodeInputError, match="channels"):
        channel_gate(x[:, :5], w1, None, w2, None)
    with pytest.raises(NodeInputError, match="W2"):
        channel_gate(x, w1, None, w2[:, :3], None)


@pytest.mark.parametrize("first, second", [("Relu", "Sigmoid"), ("QuickGelu", "HardSigmoid"), ("", "")])
@pytest.mark.parametrize("biases", [True, False])
def test_compiled_gate_equals_the_numpy_route(monkeypatch, first, second, biases):
    """The gate in one compiled call (``jit_rows.channel_gate_rows``: means, both products, biases, activations) gives
    what the separate products and epilogues give, with and without biases, and for 1-pixel planes."""
    from onyxrt.providers.cpu import jit
    from onyxrt.providers.cpu.nn import channel_gate as module

    w1 = RNG.standard_normal((R, C, 1, 1)).astype(np.float32)
    w2 = RNG.standard_normal((C, R, 1, 1)).astype(np.float32)
    b1, b2 = (RNG.standard_normal(R).astype(np.float32), RNG.standard_normal(C).astype(np.float32)) if biases \
        else (None, None)
    params = {"QuickGelu": [1.702], "HardSigmoid": [0.2, 0.5]}
    keywords = dict(activation1=first, activation1_params=params.get(first), activation2=second,
                    activation2_params=params.get(second))
    for shape in [(3, C, 7, 5), (2, C, 1, 1)]:
        x = RNG.standard_normal(shape).astype(np.float32)
        compiled = channel_gate(x, w1, b1, w2, b2, **keywords)
        with monkeypatch.context() as m:
            m.setattr(module, "_compiled_gate", lambda *args: None)
            m.setenv(jit.DISABLE_ENV, "1")
            plain = channel_gate(x, w1, b1, w2, b2, **keywords)
        assert compiled.shape == plain.shape == shape[:2] + (1, 1)
        np.testing.assert_allclose(compiled, plain, rtol=1e-5, atol=1e-6)


def test_session_node_takes_the_prepared_route_directly():
    """A session's ChannelGate step is the kernel's fast path (``kernel_registry``), which still names the kernel and
    its keywords: the first run makes the route through the kernel, the next ones (any batch) call it directly."""
    import functools

    model = _gate_model().SerializeToString()
    session = ort.InferenceSession(model)
    reference = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    step = session._plan._steps[0][0]
    assert not isinstance(step, functools.partial)
    assert step.func is channel_gate and step.keywords["activation2"] == "Sigmoid"
    for shape in [(2, C, 6, 6), (2, C, 6, 6), (1, C, 6, 6)]:
        x = {"x": RNG.standard_normal(shape).astype(np.float32)}
        np.testing.assert_allclose(session.run(None, x)[0], reference.run(None, x)[0], rtol=1e-5, atol=1e-5)
    assert len(step.keywords["_packed"].routes) == 1  # (a route per plane size and activations)
