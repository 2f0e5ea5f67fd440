"""A one-row product by the transpose of a row-major matrix (a classifier: Gemm with transB, MatMul by W^T) runs as
math/gemv_rows' native task over a pool that splits products, eight of the matrix's rows at a time; one by a row-major
matrix wider than deep as its axpy task."""

import numpy as np
import pytest

from onyxrt.framework.thread_pool import ThreadPool
from onyxrt.providers.cpu import gemm
from onyxrt.providers.cpu.jit import optional_module
from onyxrt.providers.cpu.math.matmul import gemm as gemm_op


@pytest.fixture
def split_pool():
    pool = ThreadPool(2)
    if not pool.runs_native_tasks or optional_module("onyxrt.providers.cpu.math.gemv_rows") is None:
        pytest.skip("numba cannot compile the native tasks here")
    split = pool.splitting_gemms()
    yield split
    pool.shutdown()


@pytest.mark.parametrize("n, k", [(1000, 1280), (1001, 1050), (6, 200000), (1027, 1024)])
def test_rows_task_equals_numpy(monkeypatch, split_pool, n, k):
    """Rows past a multiple of eight and fewer groups than parts; the product as numpy's to float rounding."""
    rng = np.random.default_rng(n)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((1, k)).astype(np.float32)
    taken = []
    real = gemm._gemv_by_rows
    monkeypatch.setattr(gemm, "_gemv_by_rows", lambda *a: taken.append(1) or real(*a))
    with split_pool.activate():
        got = gemm.matmul(x, w.T)
    assert taken
    want = x.astype(np.float64) @ w.T.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.sqrt(k))


def test_a_classifier_gemm_with_trans_b(split_pool):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((1000, 1280)).astype(np.float32)
    x = rng.standard_normal((1, 1280)).astype(np.float32)
    b = rng.standard_normal(1000).astype(np.float32)
    with split_pool.activate():
        got = gemm_op(x, w, b, transB=1)
    np.testing.assert_allclose(got, x.astype(np.float64) @ w.T + b, rtol=1e-4, atol=2e-3)


def test_other_layouts_keep_the_other_paths(split_pool):
    """A row-major B (its rows, not columns, contiguous), two rows of A, float64: not the rows task."""
    rng = np.random.default_rng(2)
    b = rng.standard_normal((1280, 1000)).astype(np.float32)
    assert gemm._gemv_by_rows(split_pool, np.ones((1, 1280), np.float32), b, None) is None
    assert gemm._gemv_by_rows(split_pool, np.ones((1, 1280)), b.astype(np.float64).T.T, None) is None
    with split_pool.activate():
        got = gemm.matmul(np.ones((2, 1280), np.float32), np.ascontiguousarray(b.T).T)
    np.testing.assert_allclose(got, np.ones((2, 1280)) @ b, rtol=1e-4, atol=1e-2)


def test_wide_gemvs_split_by_the_rows_of_b_and_add_the_partial_sums(split_pool):
    """A one-row product by a row-major B wider than deep (a decoder's widening projection) runs as ``math/gemv_rows``'
    axpy task, each thread a block of B's rows (eight a pass and the rest), their partial sums added."""
    rng = np.random.default_rng(6)
    calls = []
    real = split_pool.run_native
    split_pool.run_native = lambda *args: (calls.append(args), real(*args))
    with split_pool.activate():
        for k, n in ((259, 1000), (512, 2816), (64, 32000)):  # (the last: a vocabulary head's width)
            a = rng.standard_normal((1, k)).astype(np.float32)
            b = rng.standard_normal((k, n)).astype(np.float32)
            calls.clear()
            np.testing.assert_allclose(gemm.matmul(a, b), a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)
            assert calls and calls[0][2] == 2  # (one part a thread)
