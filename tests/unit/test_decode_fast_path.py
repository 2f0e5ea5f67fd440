"""The decoding-step fast paths: the compiled GEMV for products of one or two rows
(``providers.cpu.gemm.small_rows_matmul``) and the rewrites that shrink a decoder step's graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt
from onyxrt.providers.cpu import gemm, jit
from onyxrt.providers.cpu.math import matmul as mm

rng = np.random.default_rng(0)
numba_available = pytest.mark.skipif(not jit.LazyModuleKernel("onyxrt.providers.cpu.jit_gemv", "small_rows_matmul")
                                     .enabled(), reason="numba is not usable here")


@numba_available
@pytest.mark.parametrize("rows,inner,columns", [(1, 512, 512), (2, 7, 3), (1, 1, 1), (1, 1408, 512), (2, 33, 130)])
def test_small_rows_matmul_equals_numpy(rows, inner, columns):
    a = rng.standard_normal((rows, inner), dtype=np.float32)
    b = rng.standard_normal((inner, columns), dtype=np.float32)
    b.flags.writeable = False  # a weight
    y = gemm.small_rows_matmul(a, b)
    assert y is not None and y.dtype == np.float32 and y.shape == (rows, columns)
    np.testing.assert_allclose(y, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-4, atol=1e-4 * np.sqrt(inner))


@numba_available
def test_small_rows_matmul_writes_into_out_and_propagates_nan_inf():
    a = np.array([[1.0, np.inf, 0.0], [np.nan, 1.0, 2.0]], np.float32)
    b = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 1.0]], np.float32)
    out = np.full((2, 2), 7.0, np.float32)  # a recycled buffer: its old values must not leak in
    with np.errstate(invalid="ignore"):
        assert gemm.small_rows_matmul(a, b, out) is out
        np.testing.assert_array_equal(out, np.matmul(a, b))


@numba_available
def test_small_rows_matmul_declines_an_out_overlapping_its_operands():
    buffer = rng.standard_normal((1, 16), dtype=np.float32)
    a = buffer[:, :8]
    b = rng.standard_normal((8, 8), dtype=np.float32)
    expected = a @ b
    assert gemm.small_rows_matmul(np.ascontiguousarray(a), b, out=buffer[:, 8:]) is not None  # disjoint: fine
    np.testing.assert_allclose(buffer[:, 8:], expected, rtol=1e-5)
    whole = rng.standard_normal((1, 8), dtype=np.float32)
    expected = whole @ b
    assert gemm.small_rows_matmul(whole, b, out=whole) is None
    np.testing.assert_allclose(gemm.matmul(whole, b, out=whole), expected, rtol=1e-5)  # numpy's path handles it


@pytest.mark.parametrize("a,b", [
    (np.ones((3, 4), np.float32), np.ones((4, 5), np.float32)),  # too many rows
    (np.ones((1, 4), np.float64), np.ones((4, 5), np.float64)),  # not float32
    (np.ones((1, 4), np.float32), np.ones((5, 4), np.float32).T),  # b not C-contiguous
    (np.ones((1, 2048), np.float32), np.ones((2048, 1024), np.float32)),  # matrix too large: BLAS's threads
    (np.ones((1, 0), np.float32), np.ones((0, 4), np.float32)),  # empty
])
def test_small_rows_matmul_declines_what_blas_does_better(a, b):
    assert gemm.small_rows_matmul(a, b) is None
    np.testing.assert_array_equal(gemm.matmul(a, b), np.matmul(a, b))


def test_small_rows_matmul_without_numba(monkeypatch):
    monkeypatch.setenv(jit.DISABLE_ENV, "1")
    a = rng.standard_normal((1, 64), dtype=np.float32)
    b = rng.standard_normal((64, 32), dtype=np.float32)
    assert gemm.small_rows_matmul(a, b) is None
    np.testing.assert_allclose(gemm.matmul(a, b), a @ b, rtol=1e-5)


@numba_available
def test_matmul_kernel_decode_step_shape():
    """A (1, 1, K) activation by a (K, N) weight, as a decoding step's projections are: the MatMul kernel
    takes the GEMV path and equals numpy, with and without a planner buffer."""
    a = rng.standard_normal((1, 1, 300), dtype=np.float32)
    b = rng.standard_normal((300, 200), dtype=np.float32)
    packed = mm._matmul_prepack([a, b], {})
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(mm.matmul(a, b, _packed=packed), expected, rtol=1e-4, atol=1e-4)
    calls = []

    def alloc(shape, dtype):
        calls.append(shape)
        return np.full(shape, np.nan, dtype)

    big = rng.standard_normal((1, 1, 16384), dtype=np.float32)  # large enough to ask the planner for a buffer
    weight = rng.standard_normal((16384, 8), dtype=np.float32)
    np.testing.assert_allclose(mm.matmul(big, weight, _alloc=alloc),
                               np.matmul(big.astype(np.float64), weight.astype(np.float64)), rtol=1e-3, atol=1e-3)
    assert calls == [(1, 1, 8)]  # the kernel wrote into the planner's (NaN-filled) buffer


def test_decode_step_session_matches_onnxruntime():
    """A two-projection decoder-like graph at batch 1, sequence 1 (the GEMV path) equals onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    w1 = rng.standard_normal((96, 160), dtype=np.float32) * 0.1
    w2 = rng.standard_normal((160, 96), dtype=np.float32) * 0.1
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    ours = onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"])
    theirs = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for shape in ((1, 1, 96), (2, 1, 96), (1, 5, 96)):
        x = rng.standard_normal(shape, dtype=np.float32)
        np.testing.assert_allclose(ours.run(None, {"x": x})[0], theirs.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("preferred", [True, False])
def test_matmul_routes_gemvs_to_the_kernel_only_where_it_is_preferred(monkeypatch, preferred):
    """The compiled GEMV runs where the CPU has AVX-512 (measured faster there), OpenBLAS elsewhere."""
    calls = []
    monkeypatch.setattr(gemm, "_gemv_kernel_preferred", lambda: preferred)
    monkeypatch.setattr(gemm, "small_rows_matmul", lambda a, b, out=None: calls.append(a.shape) or a @ b)
    a = rng.standard_normal((1, 64), dtype=np.float32)
    b = rng.standard_normal((64, 32), dtype=np.float32)
    np.testing.assert_allclose(gemm.matmul(a, b), a @ b, rtol=1e-6)
    assert calls == ([(1, 64)] if preferred else [])


def test_the_gemv_kernel_is_preferred_exactly_with_avx512():
    from onyxrt.framework.cpu_features import has_flags

    assert gemm._gemv_kernel_preferred() == has_flags("avx512f")
