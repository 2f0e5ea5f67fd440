"""Gate/up MatMuls + SiLU gating run as one packed MatMul and a com.microsoft SwiGLU on onyxrt's CPU kernels
(optimizer/swiglu_fusion.py), never in a saved optimized model (onnxruntime's CPU provider has no SwiGLU)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onyxrt as ort

onnxruntime = pytest.importorskip("onnxruntime")

D, F = 24, 40


def _model(*, spelling: str = "sigmoid", gate_also_output: bool = False) -> onnx.ModelProto:
    """x -> down(silu(x @ Wg) * (x @ Wu)), SiLU spelled x * Sigmoid(x) (silu_fusion makes it a QuickGelu) or as
    a QuickGelu of alpha 1.5."""
    rng = np.random.default_rng(6)
    weights = {"wg": rng.standard_normal((D, F)) / 3, "wu": rng.standard_normal((D, F)) / 3,
               "wd": rng.standard_normal((F, D)) / 3}
    nodes = [helper.make_node("MatMul", ["x", "wg"], ["g"]), helper.make_node("MatMul", ["x", "wu"], ["u"])]
    if spelling == "sigmoid":
        nodes += [helper.make_node("Sigmoid", ["g"], ["s"]), helper.make_node("Mul", ["g", "s"], ["a"])]
    else:
        nodes.append(helper.make_node("QuickGelu", ["g"], ["a"], domain="com.microsoft", alpha=1.5))
    nodes += [helper.make_node("Mul", ["u", "a"], ["h"]), helper.make_node("MatMul", ["h", "wd"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if gate_also_output:
        outputs.append(helper.make_tensor_value_info("g", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", D])],
                              outputs, [helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.astype(np.float32).ravel())
                                        for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def _feeds(batch: int = 2, seq: int = 3) -> dict:
    return {"x": np.random.default_rng(7).standard_normal((batch, seq, D)).astype(np.float32)}


def _op_types(session) -> list[str]:
    return [n.op_type for n in session._plan.nodes]


@pytest.mark.parametrize("spelling", ["sigmoid", "quick_gelu"])
@pytest.mark.parametrize("seq", [1, 5])
def test_gated_block_runs_as_packed_product_and_swiglu(spelling, seq):
    model = _model(spelling=spelling)
    session = ort.InferenceSession(model.SerializeToString())
    assert _op_types(session) == ["MatMul", "SwiGLU", "MatMul"]
    feeds = _feeds(seq=seq)
    want = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(session.run(None, feeds)[0], want[0], rtol=1e-5, atol=1e-5)
    unfused = ort.InferenceSession(model.SerializeToString(), disabled_optimizers=["SwiGLUFusion"])
    assert "SwiGLU" not in _op_types(unfused)
    np.testing.assert_allclose(session.run(None, feeds)[0], unfused.run(None, feeds)[0], rtol=1e-6, atol=1e-6)


def test_never_saved(tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(_model().SerializeToString(), options)
    assert "SwiGLU" in _op_types(session)
    saved = onnx.load(options.optimized_model_filepath)
    assert "SwiGLU" not in [n.op_type for n in saved.graph.node]
    feeds = _feeds()
    want = onnxruntime.InferenceSession(saved.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(session.run(None, feeds)[0], want[0], rtol=1e-5, atol=1e-5)


def test_a_gate_read_elsewhere_is_left_alone():
    model = _model(gate_also_output=True)
    session = ort.InferenceSession(model.SerializeToString())
    assert "SwiGLU" not in _op_types(session)
    feeds = _feeds()
    want = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for got, expected in zip(session.run(None, feeds), want):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits, symmetric", [(4, True), (4, False), (8, False)])
def test_gate_and_up_as_matmul_nbits_pack_into_one(tmp_path, bits, symmetric):
    """Weight-only quantized gate and up projections (MatMulNBits, with or without zero points) pack into one
    MatMulNBits of both weights side by side, as float ones do: the same values column by column."""
    from onyxrt.quantization import quantize_weight_only

    quantize_weight_only(_model(), tmp_path / "q.onnx", bits=bits, block_size=16, symmetric=symmetric)
    model = onnx.load(tmp_path / "q.onnx")
    session = ort.InferenceSession(model.SerializeToString())
    assert _op_types(session) == ["MatMulNBits", "SwiGLU", "MatMulNBits"]
    packed = session._plan.nodes[0]
    assert packed.attributes.get_int("N", 0) == 2 * F
    feeds = _feeds(seq=4)
    unfused = ort.InferenceSession(model.SerializeToString(), disabled_optimizers=["SwiGLUFusion"])
    assert _op_types(unfused).count("MatMulNBits") == 3
    np.testing.assert_allclose(session.run(None, feeds)[0], unfused.run(None, feeds)[0], rtol=1e-6, atol=1e-6)
    want = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(session.run(None, feeds)[0], want[0], rtol=1e-4, atol=1e-4)


def test_matmul_nbits_with_different_block_sizes_are_left_apart(tmp_path):
    from onyxrt.quantization import quantize_weight_only

    model = _model()
    model.graph.node[0].name = "gate"
    quantize_weight_only(model, tmp_path / "a.onnx", bits=4, block_size=16, nodes_to_include=["gate"])
    quantize_weight_only(onnx.load(tmp_path / "a.onnx"), tmp_path / "b.onnx", bits=4, block_size=32)
    blocks = sorted(helper.get_attribute_value(a) for n in onnx.load(tmp_path / "b.onnx").graph.node
                    for a in n.attribute if a.name == "block_size")
    assert blocks == [16, 32, 32]
    session = ort.InferenceSession(str(tmp_path / "b.onnx"))
    assert "SwiGLU" not in _op_types(session) and _op_types(session).count("MatMulNBits") == 3
