"""Sparse execution in a session: weights with many zeros run on sparse kernels (onyxrt.sparse.* options)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort
from onyxrt.errors import InvalidArgument
from onyxrt.providers.cpu.jit import DISABLE_ENV
from onyxrt.providers.cpu.math.sparse_gemm import SparseWeight
from test_sparse_gemm import assert_product_close, pruned, two_four

_MS = "com.microsoft"


def model(nodes, inputs, outputs, weights, ms=False):
    graph = helper.make_graph(nodes, "sparse", inputs, outputs,
                              [numpy_helper.from_array(w, name) for name, w in weights.items()])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(_MS, 1)] if ms else [])
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def session(data, **config):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run the graph as written
    for key, value in config.items():
        options.add_session_config_entry(f"onyxrt.sparse.{key}", value)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def sparse_weights(sess) -> list[SparseWeight]:
    """The sparse products the session's plan prepared."""
    found = []
    for step in sess._plan._steps:
        packed = getattr(step[0], "keywords", {}).get("_packed")
        if isinstance(packed, SparseWeight):
            found.append(packed)
    return found


def run_both(data, feeds, **config):
    """Outputs with sparse execution (``config``) and with it off; the sparse session."""
    sparse = session(data, select="always", **config)
    dense = session(data, enable="0")
    return sparse.run(None, feeds), dense.run(None, feeds), sparse


def matmul_model(w, dtype=TensorProto.FLOAT):
    k, n = w.shape
    x = helper.make_tensor_value_info("x", dtype, ["b", "s", k])
    y = helper.make_tensor_value_info("y", dtype, None)
    return model([helper.make_node("MatMul", ["x", "w"], ["y"])], [x], [y], {"w": w})


@pytest.mark.parametrize("rows", [1, 128])
def test_matmul_with_batched_input(rows):
    w = pruned((96, 80), 0.9)
    x = np.random.default_rng(0).standard_normal((2, rows, 96)).astype(np.float32)
    (y,), (expected,), sess = run_both(matmul_model(w), {"x": x})
    assert_product_close(y, expected)
    assert len(sparse_weights(sess)) == 1


def test_decode_step_single_row():
    w = pruned((64, 200), 0.95)
    x = np.random.default_rng(1).standard_normal((1, 1, 64)).astype(np.float32)
    (y,), (expected,), sess = run_both(matmul_model(w), {"x": x})
    assert_product_close(y, expected)
    assert sparse_weights(sess)[0].single_row is not None


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 1)])
def test_gemm_transposes_alpha_beta_bias(trans_a, trans_b):
    w = pruned((48, 40), 0.85, seed=2)
    b = np.ascontiguousarray(w.T) if trans_b else w
    a = np.random.default_rng(3).standard_normal((48, 7) if trans_a else (7, 48)).astype(np.float32)
    c = np.random.default_rng(4).standard_normal(40).astype(np.float32)
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=0.5, beta=2.0, transA=trans_a, transB=trans_b)
    data = model([node], [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a.shape))],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"b": b, "c": c})
    (y,), (expected,), sess = run_both(data, {"a": a})
    assert_product_close(y, expected)
    assert sparse_weights(sess)[0].source_shape == b.shape


def test_fused_gemm_activation():
    w = pruned((32, 24), 0.9, seed=5)
    node = helper.make_node("FusedGemm", ["a", "w", "c"], ["y"], domain=_MS, transB=1, activation="LeakyRelu",
                            activation_alpha=0.1)
    data = model([node], [helper.make_tensor_value_info("a", TensorProto.FLOAT, [9, 24])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                 {"w": w, "c": np.ones(32, np.float32)}, ms=True)
    a = np.random.default_rng(6).standard_normal((9, 24)).astype(np.float32)
    (y,), (expected,), sess = run_both(data, {"a": a})
    assert_product_close(y, expected)
    assert (y < 0).any() and len(sparse_weights(sess)) == 1


@pytest.mark.parametrize("op_type", ["FusedMatMul", "FusedMatMulActivation"])
def test_fused_matmul_transposed_weight(op_type):
    w = pruned((40, 56), 0.9, seed=7)  # used transposed: (56, 40) -> K=56, N=40
    extra = {"activation": "Relu"} if op_type == "FusedMatMulActivation" else {}
    node = helper.make_node(op_type, ["a", "w"], ["y"], domain=_MS, alpha=0.25, transB=1, **extra)
    data = model([node], [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, 56])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"w": w}, ms=True)
    a = np.random.default_rng(8).standard_normal((2, 3, 56)).astype(np.float32)
    (y,), (expected,), sess = run_both(data, {"a": a})
    assert_product_close(y, expected)
    assert sparse_weights(sess)[0].shape == (56, 40)


def test_attention_packed_qkv_weight():
    hidden, heads = 32, 4
    w = pruned((hidden, 3 * hidden), 0.9, seed=9)
    bias = np.random.default_rng(10).standard_normal(3 * hidden).astype(np.float32)
    node = helper.make_node("Attention", ["x", "w", "bias"], ["y"], domain=_MS, num_heads=heads)
    data = model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, hidden])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"w": w, "bias": bias}, ms=True)
    x = np.random.default_rng(11).standard_normal((2, 5, hidden)).astype(np.float32)
    (y,), (expected,), sess = run_both(data, {"x": x})
    assert_product_close(y, expected)
    assert len(sparse_weights(sess)) == 1


def test_two_four_weight_runs_its_kernel():
    w = two_four((64, 48))
    x = np.random.default_rng(12).standard_normal((1, 10, 64)).astype(np.float32)
    (y,), (expected,), sess = run_both(matmul_model(w), {"x": x}, min_sparsity="0.5")
    assert_product_close(y, expected)
    packed = sparse_weights(sess)[0]
    assert packed.many_rows.kind == "2:4" and packed.many_rows.weight.nbytes < 0.55 * w.nbytes


def test_options_turn_it_off_and_set_the_threshold():
    w = pruned((64, 64), 0.9)
    data = matmul_model(w)
    assert sparse_weights(session(data, select="always"))
    assert not sparse_weights(session(data, select="always", enable="0"))
    assert not sparse_weights(session(data, select="always", min_sparsity="0.95"))
    assert sparse_weights(session(data, select="always", min_sparsity="0.85"))


def test_sparse_kernels_on_two_threads_make_the_pool_split_gemms():
    """Sparse kernels split over the pool: the session's pool splits dense GEMMs too (no BLAS thread
    spinning beside them), unless the session sets allow_spinning itself."""
    data = matmul_model(pruned((64, 64), 0.9))

    def pool_of(threads, sparse=True, spinning=None):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("onyxrt.sparse.select", "always" if sparse else "measure")
        if not sparse:
            options.add_session_config_entry("onyxrt.sparse.enable", "0")
        if spinning is not None:
            options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        sess = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        assert bool(sparse_weights(sess)) == sparse
        return sess._thread_pool

    assert pool_of(2).splits_gemms
    assert not pool_of(2, sparse=False).splits_gemms
    assert not pool_of(2, spinning="1").splits_gemms
    assert pool_of(2, spinning="0").splits_gemms
    assert not pool_of(1).splits_gemms


def test_dense_weight_stays_dense():
    data = matmul_model(pruned((128, 128), 0.0))
    assert not sparse_weights(session(data))  # measured selection: nothing to measure
    assert not sparse_weights(session(data, select="always"))


def test_bad_option_fails_session_creation():
    with pytest.raises(InvalidArgument, match="min_sparsity"):
        session(matmul_model(pruned((8, 8), 0.9)), min_sparsity="2")


@pytest.mark.parametrize("dtype,onnx_type", [(np.float64, TensorProto.DOUBLE), (np.float16, TensorProto.FLOAT16)])
def test_other_float_types_run_dense(dtype, onnx_type):
    w = pruned((32, 16), 0.9).astype(dtype)
    x = np.random.default_rng(13).standard_normal((1, 4, 32)).astype(dtype)
    (y,), (expected,), sess = run_both(matmul_model(w, onnx_type), {"x": x})
    assert not sparse_weights(sess)
    np.testing.assert_array_equal(y, expected)


def test_without_numba_the_numpy_kernels_are_exact(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "1")
    w = pruned((80, 72), 0.9)
    for rows in (1, 33):
        x = np.random.default_rng(rows).standard_normal((1, rows, 80)).astype(np.float32)
        (y,), (expected,), sess = run_both(matmul_model(w), {"x": x})
        assert_product_close(y, expected)
        assert sparse_weights(sess)


def test_measured_selection_gives_dense_results():
    """With the default (measured) selection the session's outputs equal the dense run, whatever it chose."""
    w = pruned((512, 512), 0.97)
    data = matmul_model(w)
    for rows in (1, 64):
        x = np.random.default_rng(rows).standard_normal((1, rows, 512)).astype(np.float32)
        assert_product_close(session(data).run(None, {"x": x})[0], session(data, enable="0").run(None, {"x": x})[0])


def test_a_weight_a_feed_may_override_is_not_prepared():
    w = pruned((16, 16), 0.9)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 16])
    w_info = helper.make_tensor_value_info("w", TensorProto.FLOAT, [16, 16])
    data = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [x_info, w_info],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"w": w})
    sess = session(data, select="always")
    assert not sparse_weights(sess)
    x = np.random.default_rng(14).standard_normal((1, 2, 16)).astype(np.float32)
    other = np.ones((16, 16), np.float32)
    assert_product_close(sess.run(None, {"x": x})[0], x @ w)
    assert_product_close(sess.run(None, {"x": x, "w": other})[0], x @ other)


@pytest.mark.parametrize("strides,batch", [([1, 1], 1), ([2, 2], 2)])
def test_one_by_one_conv_with_bias_relu_and_residual(strides, batch):
    w = pruned((24, 16), 0.9, seed=15).reshape(24, 16, 1, 1)
    bias = np.random.default_rng(16).standard_normal(24).astype(np.float32)
    x = np.random.default_rng(17).standard_normal((batch, 16, 9, 9)).astype(np.float32)
    out = (9 - 1) // strides[0] + 1
    z = np.random.default_rng(18).standard_normal((batch, 24, out, out)).astype(np.float32)
    node = helper.make_node("FusedConv", ["x", "w", "b", "z"], ["y"], domain=_MS, strides=strides,
                            kernel_shape=[1, 1], activation="Relu")
    data = model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape)),
                          helper.make_tensor_value_info("z", TensorProto.FLOAT, list(z.shape))],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"w": w, "b": bias}, ms=True)
    (y,), (expected,), _ = run_both(data, {"x": x, "z": z})
    assert_product_close(y, expected)
    conv = helper.make_node("Conv", ["x", "w"], ["y"])
    data = model([conv], [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"w": w})
    (y,), (expected,), sess = run_both(data, {"x": x})
    assert_product_close(y, expected)
    packed = [getattr(step[0], "keywords", {}).get("_packed") for step in sess._plan._steps]
    assert packed[0].sparse is not None and packed[0].sparse.shape == (16, 24)


def test_conv_with_a_larger_kernel_stays_dense():
    w = pruned((8, 4 * 9), 0.9).reshape(8, 4, 3, 3)
    conv = helper.make_node("Conv", ["x", "w"], ["y"])
    data = model([conv], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"w": w})
    sess = session(data, select="always")
    packed = [getattr(step[0], "keywords", {}).get("_packed") for step in sess._plan._steps]
    assert packed[0].sparse is None
