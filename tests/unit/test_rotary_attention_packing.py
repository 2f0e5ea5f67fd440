"""Q/K/V MatMuls + RotaryEmbedding + GroupQueryAttention run as one packed MatMul and a GroupQueryAttention
that rotates itself, on onyxrt's CPU kernels (optimizer/rotary_attention_packing.py), never in a saved model."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onyxrt as ort

onnxruntime = pytest.importorskip("onnxruntime")

D, N, NKV, H, MAX_POSITIONS = 32, 4, 2, 8, 64


def _model(*, bias: bool = False, q_also_output: bool = False, interleaved: int = 0) -> onnx.ModelProto:
    """x -> q/k/v MatMuls -> RotaryEmbedding(q), RotaryEmbedding(k) -> GroupQueryAttention with a past, whose
    sequence lengths come from Shape nodes of the rotated query (as group_query_attention_fusion writes them)."""
    rng = np.random.default_rng(3)
    angles = np.arange(MAX_POSITIONS)[:, None] / (100.0 ** (np.arange(H // 2) / (H // 2)))
    weights = {"wq": rng.standard_normal((D, N * H)) / 4, "wk": rng.standard_normal((D, NKV * H)) / 4,
               "wv": rng.standard_normal((D, NKV * H)) / 4, "cos": np.cos(angles), "sin": np.sin(angles)}
    rotary = {"interleaved": interleaved, "domain": "com.microsoft"}
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("RotaryEmbedding", ["q", "position_ids", "cos", "sin"], ["qr"], num_heads=N, **rotary),
        helper.make_node("RotaryEmbedding", ["k", "position_ids", "cos", "sin"], ["kr"], num_heads=NKV, **rotary),
        helper.make_node("Shape", ["past_key"], ["past_length"], start=2, end=3),
        helper.make_node("Shape", ["qr"], ["new_length"], start=1, end=2),
        helper.make_node("Add", ["past_length", "new_length"], ["total64"]),
        helper.make_node("Cast", ["total64"], ["total1"], to=TensorProto.INT32),
        helper.make_node("Sub", ["total1", "one"], ["last"]),
        helper.make_node("Shape", ["qr"], ["batch"], start=0, end=1),
        helper.make_node("Expand", ["last", "batch"], ["seqlens_k"]),
        helper.make_node("Reshape", ["total1", "scalar"], ["total"]),
        helper.make_node("GroupQueryAttention", ["qr", "kr", "v", "past_key", "past_value", "seqlens_k", "total",
                                                 "", "", "", "bias" if bias else ""],
                         ["y", "present_key", "present_value"], domain="com.microsoft", num_heads=N,
                         kv_num_heads=NKV),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", D]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("past_key", TensorProto.FLOAT, ["batch", NKV, "past", H]),
              helper.make_tensor_value_info("past_value", TensorProto.FLOAT, ["batch", NKV, "past", H])]
    if bias:
        inputs.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["batch", 1, "seq", "total"]))
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
               for name in ("y", "present_key", "present_value") + (("q",) if q_also_output else ())]
    initializers = [helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.astype(np.float32).ravel())
                    for k, v in weights.items()]
    initializers += [helper.make_tensor("one", TensorProto.INT32, [1], [1]),
                     helper.make_tensor("scalar", TensorProto.INT64, [0], [])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def _feeds(batch: int, seq: int, past: int, positions=None, bias: bool = False) -> dict:
    rng = np.random.default_rng(4)
    feeds = {"x": rng.standard_normal((batch, seq, D)).astype(np.float32),
             "position_ids": (past + np.arange(seq)[None].repeat(batch, 0)) if positions is None else positions,
             "past_key": rng.standard_normal((batch, NKV, past, H)).astype(np.float32),
             "past_value": rng.standard_normal((batch, NKV, past, H)).astype(np.float32)}
    if bias:
        causal = np.arange(past + seq)[None] <= (past + np.arange(seq))[:, None]
        feeds["bias"] = np.where(causal, 0.0, np.finfo(np.float32).min).astype(np.float32)[None, None].repeat(batch, 0)
    return feeds


def _op_types(session) -> list[str]:
    return [n.op_type for n in session._plan.nodes]


def _expected(model, feeds):
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


# (onnxruntime takes a chunk of several tokens after a past in batches of one only)
@pytest.mark.parametrize("batch,seq,past,bias,interleaved", [(2, 1, 7, False, 0), (2, 1, 7, True, 0),
                                                             (2, 5, 0, True, 1), (1, 3, 4, False, 1)])
def test_packed_projection_and_rotating_attention_equal_onnxruntime(batch, seq, past, bias, interleaved):
    model = _model(bias=bias, interleaved=interleaved)
    session = ort.InferenceSession(model.SerializeToString())
    types = _op_types(session)
    assert types.count("MatMul") == 1 and "RotaryEmbedding" not in types
    feeds = _feeds(batch, seq, past, bias=bias)
    for got, want in zip(session.run(None, feeds), _expected(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_first_prompt_rotates_each_row_at_its_own_position_ids():
    """Left-padded prompts: RotaryEmbedding reads every row's position id (onnxruntime's GroupQueryAttention
    would read only the first one), and so does the rewritten node."""
    model = _model()
    positions = np.array([[0, 1, 2, 3], [0, 0, 1, 2]], np.int64)
    feeds = _feeds(2, 4, 0, positions=positions)
    session = ort.InferenceSession(model.SerializeToString())
    assert "RotaryEmbedding" not in _op_types(session)
    for got, want in zip(session.run(None, feeds), _expected(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_disabled_by_name_and_never_saved(tmp_path):
    model = _model()
    unfused = ort.InferenceSession(model.SerializeToString(), disabled_optimizers=["RotaryAttentionPacking"])
    assert _op_types(unfused).count("RotaryEmbedding") == 2
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    fused = ort.InferenceSession(model.SerializeToString(), options)
    assert "RotaryEmbedding" not in _op_types(fused)
    saved = onnx.load(options.optimized_model_filepath)
    assert [n.op_type for n in saved.graph.node].count("RotaryEmbedding") == 2
    feeds = _feeds(1, 1, 5)
    for a, b, c in zip(fused.run(None, feeds), unfused.run(None, feeds), _expected(saved, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)


def test_a_projection_read_elsewhere_is_left_alone():
    model = _model(q_also_output=True)
    session = ort.InferenceSession(model.SerializeToString())
    assert _op_types(session).count("RotaryEmbedding") == 2
    feeds = _feeds(1, 2, 3)
    for got, want in zip(session.run(None, feeds), _expected(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_weight_only_quantized_projections_pack_into_one_matmul_nbits(tmp_path):
    """q, k and v as MatMulNBits pack into one MatMulNBits of the three weights, as float ones do."""
    from onyxrt.quantization import quantize_weight_only

    quantize_weight_only(_model(), tmp_path / "q.onnx", bits=4, block_size=16, symmetric=False)
    model = onnx.load(tmp_path / "q.onnx")
    session = ort.InferenceSession(model.SerializeToString())
    types = _op_types(session)
    assert "RotaryEmbedding" not in types and types.count("MatMulNBits") == 1, types
    unfused = ort.InferenceSession(model.SerializeToString(), disabled_optimizers=["RotaryAttentionPacking"])
    assert _op_types(unfused).count("MatMulNBits") == 3
    for batch, seq, past in ((1, 1, 5), (2, 3, 0)):
        feeds = _feeds(batch, seq, past)
        for got, want in zip(session.run(None, feeds), unfused.run(None, feeds)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
