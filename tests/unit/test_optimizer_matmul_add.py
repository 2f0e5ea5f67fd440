"""MatMul + Add -> Gemm: graphs before/after, numerics against onnxruntime, the preconditions that block it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer_checks import op_histogram, optimized_ir
import onyxrt

ort = pytest.importorskip("onnxruntime")

M, K, N = 3, 4, 5
RNG = np.random.default_rng(0)
ELEMENT_TYPES = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE, np.float16: TensorProto.FLOAT16,
                 np.int32: TensorProto.INT32}


def _vi(name, shape, dtype=np.float32):
    return helper.make_tensor_value_info(name, ELEMENT_TYPES[dtype], None if shape is None else list(shape))


def _init(name, shape, dtype=np.float32):
    return numpy_helper.from_array((RNG.standard_normal(shape) * 4).astype(dtype), name)


def _model(nodes, inputs, initializers, outputs=("z",), opset=17, dtype=np.float32) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, [_vi(name, None, dtype) for name in outputs], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _matmul_add(a_shape=(M, K), c_shape=(N,), dtype=np.float32, bias_first=False, c_constant=True, opset=17):
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"]),
             helper.make_node("Add", ["c", "y"] if bias_first else ["y", "c"], ["z"])]
    inputs = [_vi("a", a_shape, dtype)]
    initializers = [_init("b", (K, N), dtype)]
    if c_constant:
        initializers.append(_init("c", c_shape, dtype))
    else:
        inputs.append(_vi("c", c_shape, dtype))
    return _model(nodes, inputs, initializers, dtype=dtype, opset=opset)


def _feeds(model: onnx.ModelProto, symbolic: int = 2) -> dict[str, np.ndarray]:
    feeds = {}
    for value in model.graph.input:
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = [d.dim_value if d.HasField("dim_value") else symbolic for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = (RNG.standard_normal(shape) * 4).astype(dtype)
    return feeds


def assert_matches_onnxruntime(model: onnx.ModelProto, fused: bool) -> None:
    """onyxrt at the default level, fusing or not as said, gives onnxruntime's unoptimized outputs."""
    feeds = _feeds(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)
    session = onyxrt.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert ("matmul_add_fusion" in session.applied_optimizations) == fused
    got = session.run(None, feeds)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        tolerance = 1e-3 if w.dtype == np.float16 else 1e-5
        np.testing.assert_allclose(g, w, rtol=tolerance, atol=tolerance * float(np.max(np.abs(w))))


@pytest.mark.parametrize("c_shape", [(N,), (1, N), (M, N), (M, 1), (), (1,), (1, 1)], ids=str)
@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_add_becomes_gemm(c_shape, bias_first):
    model = _matmul_add(c_shape=c_shape, bias_first=bias_first)
    optimized, report = optimized_ir(model)
    assert op_histogram(optimized.graph) == {"Gemm": 1}
    assert report.counts["matmul_add_fusion"] == 1
    (gemm,) = optimized.graph
    assert [v.name for v in gemm.inputs] == ["a", "b", "c"]
    assert gemm.outputs[0].name == "z" and optimized.graph.outputs[0] is gemm.outputs[0]
    assert_matches_onnxruntime(model, fused=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_float_types_fuse(dtype):
    model = _matmul_add(dtype=dtype)
    casts = 2 if dtype == np.float16 else 0  # float16 is computed in float32 between two Casts (Float16ToFloat32)
    assert op_histogram(optimized_ir(model)[0].graph) == {"Gemm": 1} | ({"Cast": casts} if casts else {})
    assert_matches_onnxruntime(model, fused=True)


def test_run_time_right_operand_and_bias_fuse():
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"]), helper.make_node("Add", ["y", "c"], ["z"])]
    model = _model(nodes, [_vi("a", (M, K)), _vi("b", (K, N)), _vi("c", (N,))], [])
    assert op_histogram(optimized_ir(model)[0].graph) == {"Gemm": 1}
    assert_matches_onnxruntime(model, fused=True)


def test_symbolic_dims_fuse_when_the_bias_names_the_same_dim():
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"]), helper.make_node("Add", ["y", "c"], ["z"])]
    model = _model(nodes, [_vi("a", ("batch", K)), _vi("b", (K, N)), _vi("c", ("batch", 1))], [])
    assert op_histogram(optimized_ir(model)[0].graph) == {"Gemm": 1}
    assert_matches_onnxruntime(model, fused=True)


def test_bias_computed_after_the_matmul_is_ready_for_the_gemm():
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"]), helper.make_node("Neg", ["d"], ["c"]),
             helper.make_node("Add", ["y", "c"], ["z"])]
    model = _model(nodes, [_vi("a", (M, K)), _vi("d", (N,))], [_init("b", (K, N))])
    model.graph.value_info.append(_vi("c", (N,)))  # the bias's shape must be known
    optimized, _ = optimized_ir(model)
    assert [node.op_type for node in optimized.graph] == ["Neg", "Gemm"]
    assert_matches_onnxruntime(model, fused=True)


def test_fusion_inside_a_subgraph():
    body = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"]), helper.make_node("Add", ["y", "c"], ["t"])],
        "then", [], [_vi("t", None)],
    )
    other = helper.make_graph([helper.make_node("Identity", ["a"], ["e"])], "else", [], [_vi("e", None)])
    nodes = [helper.make_node("If", ["cond"], ["z"], then_branch=body, else_branch=other)]
    model = _model(nodes, [_vi("a", (M, K)), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                   [_init("b", (K, N)), _init("c", (N,))])
    optimized, report = optimized_ir(model)
    assert report.counts["matmul_add_fusion"] == 1
    (if_node,) = optimized.graph
    assert op_histogram(if_node.attributes["then_branch"].as_graph()) == {"Gemm": 1}
    feeds = {"a": RNG.standard_normal((M, K)).astype(np.float32), "cond": np.array(True)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = onyxrt.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- preconditions that block the fusion


def _unfused(model: onnx.ModelProto, run_reference: bool = True) -> None:
    optimized, report = optimized_ir(model)
    assert "matmul_add_fusion" not in report.counts
    assert "Gemm" not in op_histogram(optimized.graph)
    if run_reference:
        assert_matches_onnxruntime(model, fused=False)


@pytest.mark.parametrize("a_shape", [(2, M, K), (1, M, K), None, (K,)], ids=str)
def test_left_operand_not_of_static_rank_2_blocks(a_shape):
    _unfused(_matmul_add(a_shape=a_shape), run_reference=a_shape is not None and len(a_shape) == 3)


@pytest.mark.parametrize("c_shape", [(2, N), (M + 1, N), (1, 1, N), (M, N + 1)], ids=str)
def test_bias_that_grows_or_mismatches_the_product_blocks(c_shape):
    _unfused(_matmul_add(c_shape=c_shape), run_reference=c_shape in ((1, 1, N),))


@pytest.mark.parametrize("c_shape", [None, ("other", 1), (None, N)], ids=str)
def test_bias_of_unknown_or_unrelated_shape_blocks(c_shape):
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"]), helper.make_node("Add", ["y", "c"], ["z"])]
    model = _model(nodes, [_vi("a", ("batch", K)), _vi("c", c_shape)], [_init("b", (K, N))])
    _unfused(model, run_reference=False)


def test_product_read_twice_blocks():
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"]), helper.make_node("Add", ["y", "c"], ["z"]),
             helper.make_node("Relu", ["y"], ["r"])]
    _unfused(_model(nodes, [_vi("a", (M, K))], [_init("b", (K, N)), _init("c", (N,))], outputs=("z", "r")))


def test_product_that_is_a_graph_output_blocks():
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"]), helper.make_node("Add", ["y", "c"], ["z"])]
    _unfused(_model(nodes, [_vi("a", (M, K))], [_init("b", (K, N)), _init("c", (N,))], outputs=("z", "y")))


def test_product_read_by_a_subgraph_blocks():
    body = helper.make_graph([helper.make_node("Neg", ["y"], ["t"])], "body", [], [_vi("t", None)])
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"]), helper.make_node("Add", ["y", "c"], ["z"]),
             helper.make_node("If", ["cond"], ["r"], then_branch=body, else_branch=body)]
    inputs = [_vi("a", (M, K)), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])]
    _unfused(_model(nodes, inputs, [_init("b", (K, N)), _init("c", (N,))], outputs=("z", "r")), run_reference=False)


def test_integer_matmul_blocks():
    _unfused(_matmul_add(dtype=np.int32))


def test_disabled_by_onnxruntime_name():
    session = onyxrt.InferenceSession(
        _matmul_add().SerializeToString(), providers=["CPUExecutionProvider"], disabled_optimizers=["MatMulAddFusion"]
    )
    assert "matmul_add_fusion" not in session.applied_optimizations


def test_bias_of_a_gelu_goes_to_the_gemm_as_in_onnxruntime(tmp_path):
    """A 2-D MatMul + bias + erf GELU at EXTENDED: Gemm + Gelu (BASIC fuses the bias first), as onnxruntime."""
    scalars = {"sqrt2": np.float32(np.sqrt(2.0)), "one": np.float32(1.0), "half": np.float32(0.5)}
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"]), helper.make_node("Add", ["y", "c"], ["x"]),
             helper.make_node("Div", ["x", "sqrt2"], ["scaled"]), helper.make_node("Erf", ["scaled"], ["erf"]),
             helper.make_node("Add", ["erf", "one"], ["plus_one"]), helper.make_node("Mul", ["x", "plus_one"], ["p"]),
             helper.make_node("Mul", ["p", "half"], ["z"])]
    initializers = [_init("b", (K, N)), _init("c", (N,))]
    initializers += [numpy_helper.from_array(value, name) for name, value in scalars.items()]
    model = _model(nodes, [_vi("a", (M, K))], initializers)
    histograms = []
    for runtime in (onyxrt, ort):
        options = runtime.SessionOptions()
        options.graph_optimization_level = runtime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp_path / f"{runtime.__name__}.onnx")
        runtime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        histograms.append(Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node))
    assert histograms[0] == histograms[1] == {"Gemm": 1, "Gelu": 1}
    assert_matches_onnxruntime(model, fused=True)
