"""onyxrt's float32 GEMM for AVX-512 CPUs (``math/sgemm_avx512``), through ``gemm.matmul`` on a pool that owns the
cores: equal to numpy's product to float rounding for every edge of its tiling."""

from __future__ import annotations

import numpy as np
import pytest

from onyxrt.framework.thread_pool import ThreadPool
from onyxrt.providers.cpu import gemm

pytestmark = pytest.mark.skipif(not gemm.own_sgemm_usable(), reason="needs AVX-512 and numba")


def _relative_error(got: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    want = a.astype(np.float64) @ b.astype(np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


# rows not a multiple of the 12-row tile, columns not of the 32-column panel, K across several K blocks
@pytest.mark.parametrize("m, k, n", [(128, 384, 1536), (37, 700, 45), (16, 257, 33), (200, 64, 512), (19, 1000, 70)])
@pytest.mark.parametrize("threads", [1, 2])
def test_products_equal_numpys(monkeypatch, m, k, n, threads):
    monkeypatch.setattr(gemm, "OWN_SGEMM_MIN_MACS", 0)
    calls = []
    own = gemm._own_sgemm
    monkeypatch.setattr(gemm, "_own_sgemm", lambda *args: calls.append(1) or own(*args))
    rng = np.random.default_rng(m + n)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    pool = ThreadPool(threads).splitting_gemms() if threads > 1 else ThreadPool(1)
    with pool.activate():
        y = gemm.matmul(a, b)
        out = np.full((m, n), np.nan, np.float32)  # a recycled buffer: every element written
        assert gemm.matmul(a, b, out=out) is out
    pool.shutdown()
    assert calls and y.shape == (m, n) and y.dtype == np.float32
    assert _relative_error(y, a, b) < 1e-5
    np.testing.assert_array_equal(out, y)


def test_special_values_propagate(monkeypatch):
    monkeypatch.setattr(gemm, "OWN_SGEMM_MIN_MACS", 0)
    a = np.ones((16, 40), np.float32)
    a[3, 5] = np.nan
    a[7, 0] = np.inf
    b = np.ones((40, 40), np.float32)
    with ThreadPool(1).activate():
        y = gemm.matmul(a, b)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(y, a @ b)


def test_other_pools_and_small_products_stay_on_blas(monkeypatch):
    calls = []
    monkeypatch.setattr(gemm, "_own_sgemm", lambda *args: calls.append(1))
    a = np.ones((128, 384), np.float32)
    b = np.ones((384, 1536), np.float32)
    pool = ThreadPool(2)  # BLAS's threads run this pool's products
    with pool.activate():
        np.testing.assert_array_equal(gemm.matmul(a, b), a @ b)
    pool.shutdown()
    with ThreadPool(1).activate():
        gemm.matmul(np.ones((8, 384), np.float32), b)  # (a few rows: BLAS's GEMV or small GEMM)
    assert not calls
