"""Transpose optimizer (BASIC) and MatMul transpose fusion (EXTENDED): fewer Transposes, the same outputs."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt

_RNG = np.random.default_rng(0)
_BASIC = onyxrt.GraphOptimizationLevel.ORT_ENABLE_BASIC
_EXTENDED = onyxrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


def _model(nodes, inputs: dict, initializers: dict = (), outputs=("y",), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        [numpy_helper.from_array(np.asarray(array), name) for name, array in dict(initializers).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _optimized(model: onnx.ModelProto, tmp_path, feeds: dict, level=_BASIC) -> tuple[collections.Counter, onnx.ModelProto]:
    """(op histogram of the saved model, the saved model); outputs of onyxrt and of onnxruntime on it match the original's."""
    options = onyxrt.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = onyxrt.InferenceSession(model.SerializeToString(), options)
    saved = onnx.load(options.optimized_model_filepath)
    assert [o.name for o in saved.graph.output] == [o.name for o in model.graph.output]
    plain = onnxruntime.SessionOptions()
    plain.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = onnxruntime.InferenceSession(model.SerializeToString(), plain).run(None, feeds)
    from_saved = onnxruntime.InferenceSession(saved.SerializeToString(), plain).run(None, feeds)
    for ours, theirs, expected in zip(session.run(None, feeds), from_saved, want):
        assert ours.shape == expected.shape and ours.dtype == expected.dtype
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(theirs, expected, rtol=1e-5, atol=1e-6)
    return collections.Counter(node.op_type for node in saved.graph.node), saved


def _x(*shape) -> dict:
    return {"x": _RNG.standard_normal(shape).astype(np.float32)}


def _transpose(inp: str, out: str, perm) -> onnx.NodeProto:
    return helper.make_node("Transpose", [inp], [out], perm=list(perm))


def _perm(saved: onnx.ModelProto) -> list[int]:
    return list(next(node for node in saved.graph.node if node.op_type == "Transpose").attribute[0].ints)


# ---------------------------------------------------------------- Transpose pairs


def test_a_transpose_pair_that_cancels_disappears(tmp_path):
    model = _model([_transpose("x", "t1", (1, 0, 2)), _transpose("t1", "t2", (1, 0, 2)), helper.make_node("Relu", ["t2"], ["y"])],
                   {"x": ["batch", 3, 4]})
    assert _optimized(model, tmp_path, _x(2, 3, 4))[0] == {"Relu": 1}


def test_a_transpose_pair_becomes_one_transpose_of_the_composed_perm(tmp_path):
    model = _model([_transpose("x", "t1", (1, 0, 2)), _transpose("t1", "y", (0, 2, 1))], {"x": [2, 3, 4]})
    ops, saved = _optimized(model, tmp_path, _x(2, 3, 4))
    assert ops == {"Transpose": 1} and _perm(saved) == [1, 2, 0]


def test_a_cancelling_pair_at_a_graph_output_hands_the_name_over(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["r"]), _transpose("r", "t1", (0, 2, 1)), _transpose("t1", "y", (0, 2, 1))],
                   {"x": [2, 3, 4]})
    assert _optimized(model, tmp_path, _x(2, 3, 4))[0] == {"Relu": 1}


def test_a_transpose_read_elsewhere_too_stays_for_its_other_reader(tmp_path):
    model = _model([_transpose("x", "t1", (1, 0, 2)), _transpose("t1", "t2", (1, 0, 2)), helper.make_node("Add", ["t2", "x"], ["y"]),
                    helper.make_node("Relu", ["t1"], ["z"])], {"x": [2, 3, 4]}, outputs=("y", "z"))
    assert _optimized(model, tmp_path, _x(2, 3, 4))[0] == {"Transpose": 1, "Add": 1, "Relu": 1}


# ---------------------------------------------------------------- across elementwise ops


def test_transposes_cancel_across_unary_ops(tmp_path):
    nodes = [_transpose("x", "t1", (0, 2, 1)), helper.make_node("Relu", ["t1"], ["a"]),
             helper.make_node("Cast", ["a"], ["b"], to=TensorProto.DOUBLE), helper.make_node("Neg", ["b"], ["c"]),
             helper.make_node("Cast", ["c"], ["d"], to=TensorProto.FLOAT), helper.make_node("Abs", ["d"], ["e"]),
             _transpose("e", "y", (0, 2, 1))]
    ops, saved = _optimized(_model(nodes, {"x": ["batch", 3, 4]}), tmp_path, _x(2, 3, 4))
    assert ops == {"Relu": 1, "Cast": 2, "Neg": 1, "Abs": 1}
    assert saved.graph.node[-1].output[0] == "y"


def test_transposes_merge_across_a_scalar_scale(tmp_path):
    nodes = [_transpose("x", "t1", (0, 2, 1)), helper.make_node("Mul", ["half", "t1"], ["a"]),
             helper.make_node("Add", ["a", "one"], ["b"]), _transpose("b", "y", (1, 0, 2))]
    initializers = {"half": np.array(0.5, np.float32), "one": np.ones((1, 1), np.float32)}
    ops, saved = _optimized(_model(nodes, {"x": [2, 3, 4]}, initializers), tmp_path, _x(2, 3, 4))
    assert ops == {"Mul": 1, "Add": 1, "Transpose": 1} and _perm(saved) == [2, 0, 1]
    assert saved.graph.node[-1].op_type == "Transpose"


def test_a_per_channel_operand_blocks_the_move(tmp_path):
    nodes = [_transpose("x", "t1", (0, 2, 1)), helper.make_node("Mul", ["t1", "scale"], ["a"]), _transpose("a", "y", (0, 2, 1))]
    model = _model(nodes, {"x": [2, 3, 4]}, {"scale": np.arange(3, dtype=np.float32)})
    assert _optimized(model, tmp_path, _x(2, 3, 4))[0] == {"Transpose": 2, "Mul": 1}


def test_a_chain_value_read_elsewhere_blocks_the_move(tmp_path):
    nodes = [_transpose("x", "t1", (0, 2, 1)), helper.make_node("Relu", ["t1"], ["a"]), _transpose("a", "y", (0, 2, 1))]
    model = _model(nodes, {"x": [2, 3, 4]}, outputs=("y", "a"))
    assert _optimized(model, tmp_path, _x(2, 3, 4))[0] == {"Transpose": 2, "Relu": 1}


# ---------------------------------------------------------------- Gemm


@pytest.mark.parametrize("trans_b", [0, 1])
def test_transposes_fold_into_gemm(trans_b, tmp_path):
    b = _RNG.standard_normal((4, 5) if trans_b else (5, 4)).astype(np.float32)  # transposed: Gemm's B
    nodes = [_transpose("x", "a_t", (1, 0)), _transpose("b", "b_t", (1, 0)),
             helper.make_node("Gemm", ["a_t", "b_t", "c"], ["y"], transB=trans_b, alpha=0.5)]
    model = _model(nodes, {"x": [4, 3], "b": list(b.shape)}, {"c": np.ones(5, np.float32)})
    feeds = {**_x(4, 3), "b": b}
    ops, saved = _optimized(model, tmp_path, feeds)
    assert ops == {"Gemm": 1}
    attributes = {a.name: a.i for a in saved.graph.node[0].attribute if a.name.startswith("trans")}
    assert attributes == {"transA": 1, "transB": 1 - trans_b}


# ---------------------------------------------------------------- MatMul → FusedMatMul (EXTENDED)


def _fused_attributes(saved: onnx.ModelProto) -> dict:
    node = next(node for node in saved.graph.node if node.op_type == "FusedMatMul")
    assert node.domain == "com.microsoft"
    return {a.name: (a.f if a.name == "alpha" else a.i) for a in node.attribute if a.name == "alpha" or a.i}


def test_k_transpose_before_a_scaled_qk_matmul_folds_into_fused_matmul(tmp_path):
    nodes = [_transpose("k", "k_t", (0, 1, 3, 2)), helper.make_node("MatMul", ["q", "k_t"], ["scores"]),
             helper.make_node("Div", ["scores", "eight"], ["y"])]
    model = _model(nodes, {"q": ["batch", 2, "seq", 8], "k": ["batch", 2, "seq", 8]}, {"eight": np.array(8.0, np.float32)})
    feeds = {name: _RNG.standard_normal((2, 2, 5, 8)).astype(np.float32) for name in ("q", "k")}
    ops, saved = _optimized(model, tmp_path, feeds, _EXTENDED)
    assert ops == {"FusedMatMul": 1}
    assert _fused_attributes(saved) == {"alpha": 0.125, "transB": 1}


@pytest.mark.parametrize("perm, attributes", [
    ((1, 0), {"transA": 1}),
    ((1, 2, 0, 3), {"transBatchA": 1}),
    ((1, 2, 3, 0), {"transA": 1, "transBatchA": 1}),
])
def test_matmul_input_transposes_become_fused_matmul_flags(perm, attributes, tmp_path):
    shape = (2, 3) if len(perm) == 2 else (3, 2, 4, 5)
    transposed = tuple(shape[axis] for axis in perm)
    other = (transposed[-1], 6) if len(perm) == 2 else (*transposed[:-2], transposed[-1], 6)
    nodes = [_transpose("x", "x_t", perm), helper.make_node("MatMul", ["x_t", "w"], ["y"])]
    model = _model(nodes, {"x": list(shape), "w": list(other)})
    feeds = {**_x(*shape), "w": _RNG.standard_normal(other).astype(np.float32)}
    ops, saved = _optimized(model, tmp_path, feeds, _EXTENDED)
    assert ops == {"FusedMatMul": 1}
    assert _fused_attributes(saved) == {"alpha": 1.0, **attributes}


def test_a_head_transpose_is_no_matmul_flag(tmp_path):
    nodes = [_transpose("x", "x_t", (0, 2, 1, 3)), helper.make_node("MatMul", ["x_t", "w"], ["y"])]
    model = _model(nodes, {"x": [1, 4, 2, 5], "w": [1, 2, 5, 3]})
    feeds = {**_x(1, 4, 2, 5), "w": _RNG.standard_normal((1, 2, 5, 3)).astype(np.float32)}
    assert _optimized(model, tmp_path, feeds, _EXTENDED)[0] == {"Transpose": 1, "MatMul": 1}


def test_a_transpose_with_another_reader_stays_before_a_plain_matmul(tmp_path):
    nodes = [_transpose("x", "x_t", (1, 0)), helper.make_node("MatMul", ["x_t", "w"], ["y"]), helper.make_node("Relu", ["x_t"], ["z"])]
    model = _model(nodes, {"x": [2, 3], "w": [2, 4]}, outputs=("y", "z"))
    feeds = {**_x(2, 3), "w": _RNG.standard_normal((2, 4)).astype(np.float32)}
    assert _optimized(model, tmp_path, feeds, _EXTENDED)[0] == {"Transpose": 1, "MatMul": 1, "Relu": 1}


def test_double_matmuls_keep_their_transpose(tmp_path):
    nodes = [_transpose("x", "x_t", (1, 0)), helper.make_node("MatMul", ["x_t", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [3, 2]),
                                           helper.make_tensor_value_info("w", TensorProto.DOUBLE, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": _RNG.standard_normal((3, 2)), "w": _RNG.standard_normal((3, 4))}
    assert _optimized(model, tmp_path, feeds, _EXTENDED)[0] == {"Transpose": 1, "MatMul": 1}


def test_basic_level_leaves_matmul_transposes_alone(tmp_path):
    nodes = [_transpose("x", "x_t", (1, 0)), helper.make_node("MatMul", ["x_t", "w"], ["y"])]
    model = _model(nodes, {"x": [3, 2], "w": [3, 4]})
    feeds = {**_x(3, 2), "w": _RNG.standard_normal((3, 4)).astype(np.float32)}
    assert _optimized(model, tmp_path, feeds, _BASIC)[0] == {"Transpose": 1, "MatMul": 1}


# ---------------------------------------------------------------- zoo


def _decoder_feeds(model: onnx.ModelProto, batch: int = 1, seq: int = 4, past: int = 3) -> dict:
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 32000, (batch, seq), dtype=np.int64),
             "position_ids": np.tile(np.arange(past, past + seq, dtype=np.int64), (batch, 1)),
             "attention_mask": np.ones((batch, past + seq), dtype=np.int64)}
    for value in model.graph.input:
        if value.name.startswith("past_key_values"):
            feeds[value.name] = rng.standard_normal((batch, 2, past, 64), dtype=np.float32)
    return feeds


@pytest.mark.heavy
@pytest.mark.zoo
@pytest.mark.parametrize("name", ["llama_tiny", "llama_tiny_dynamo"])
def test_llama_k_transposes_fold_into_fused_matmul_as_onnxruntime_does(name, zoo_model, tmp_path):
    path = zoo_model(name)
    options = onyxrt.SessionOptions()
    options.graph_optimization_level = _EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    # the attention fusion would take these MatMuls into GroupQueryAttention: this test is about the transposes
    session = onyxrt.InferenceSession(path, options, disabled_optimizers=["group_query_attention_fusion"])
    saved = onnx.load(options.optimized_model_filepath)
    ops = collections.Counter(node.op_type for node in saved.graph.node)
    assert ops["Transpose"] == 16  # onnxruntime 1.32 at EXTENDED: 16
    fused = [node for node in saved.graph.node if node.op_type == "FusedMatMul"]
    assert len(fused) == 4 and all(any(a.name == "transB" and a.i == 1 for a in node.attribute) for node in fused)
    feeds = _decoder_feeds(onnx.load(path, load_external_data=False))
    want = onnxruntime.InferenceSession(path).run(None, feeds)
    for got in (session.run(None, feeds), onnxruntime.InferenceSession(options.optimized_model_filepath).run(None, feeds)):
        for ours, expected in zip(got, want):
            np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))
