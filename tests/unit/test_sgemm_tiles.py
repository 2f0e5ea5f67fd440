"""onyxrt's float32 GEMM (``math/sgemm_tiles``: AVX-512's tiles, or AVX2's), through ``gemm.matmul`` on a pool that
owns the cores: equal to numpy's product to float rounding for every edge of its tiling. The products that AVX2's
tiles leave to BLAS (``gemm.own_sgemm_fits``) run on them here all the same."""

from __future__ import annotations

import numpy as np
import pytest

from onyxrt.framework.thread_pool import ThreadPool
from onyxrt.providers.cpu import gemm

pytestmark = pytest.mark.skipif(not gemm.own_sgemm_usable(), reason="needs AVX-512 or AVX2, and numba")


@pytest.fixture(autouse=True)
def every_shape_fits(monkeypatch):
    """The tiles take every product (the edges tested are the tiling's, not the choice of route)."""
    from onyxrt.providers.cpu.nn import channel_scaled_conv, conv_core

    for module in (gemm, conv_core, channel_scaled_conv):
        monkeypatch.setattr(module, "own_sgemm_fits", lambda depth, cols: True)



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


def _epilogue(want: np.ndarray, act: int, params: tuple[float, float]) -> np.ndarray:
    a, b = params
    if act == 1:
        return np.maximum(want, 0)
    if act == 2:
        return np.where(want < 0, want * a, want)
    if act == 5:
        return np.clip(want, a, b)
    if act == 6:
        return np.clip(want * a + b, 0, 1)
    if act == 4:
        return 1 / (1 + np.exp(-want))
    if act == 7:
        return want * np.clip(want / 6 + 0.5, 0, 1)
    if act == 8:
        return want / (1 + np.exp(-a * want))
    return want


# the tiles' activations: none, Relu, LeakyRelu, Clip, HardSigmoid, Sigmoid, HardSwish, QuickGelu
@pytest.mark.parametrize("act, params", [(0, (0, 0)), (1, (0, 0)), (2, (0.1, 0)), (5, (-0.5, 1.5)), (6, (0.2, 0.5)),
                                         (4, (0, 0)), (7, (0, 0)), (8, (1.702, 0))])
@pytest.mark.parametrize("biased, summed", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n, k", [(3 * 32 + 11, 600), (49, 600), (6 * 32 + 4, 600), (4, 600), (6 * 32 + 4, 200)])
def test_fused_epilogue_equals_the_separate_passes(act, params, biased, summed, threads, n, k):
    """``gemm.fused_product``: the bias, residual and activation applied in the tiles' registers after the last K
    block, on full panels and on the zero-padded last one, and to the last columns left to dot products (49 = 48 + 1:
    a 7x7 image's, 196 = 192 + 4, 4 = 0 + 4, where K is deep enough), equal the product followed by numpy's passes."""
    rng = np.random.default_rng(act + 7 * threads + n)
    m = 29
    w = rng.standard_normal((m, k), dtype=np.float32) / 20
    x = rng.standard_normal((k, n), dtype=np.float32)
    bias = rng.standard_normal(m, dtype=np.float32) if biased else None
    residual = rng.standard_normal((m, n), dtype=np.float32) if summed else None
    out = np.full((m, n), np.nan, np.float32)
    pool = ThreadPool(threads).splitting_gemms() if threads > 1 else ThreadPool(1)
    with pool.activate():
        assert gemm.fused_product(w, x, out, bias, residual, act, np.array(params, np.float32))
    pool.shutdown()
    want = w.astype(np.float64) @ x.astype(np.float64)
    want += 0 if bias is None else bias[:, None]
    want += 0 if residual is None else residual
    want = _epilogue(want, act, params)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


# (K, N, dot-product columns with 16-lane vectors, with 8-lane ones)
@pytest.mark.parametrize("k, n, dots16, dots8", [(600, 49, 1, 1), (1600, 196, 4, 0), (200, 196, 0, 0), (32, 49, 0, 0),
                                                 (600, 64, 0, 0), (600, 45, 0, 0), (800, 18, 2, 2), (600, 42, 0, 2)])
def test_which_last_columns_are_dot_products(k, n, dots16, dots8):
    """``rest_of``: the columns past a multiple of the vector's lanes, up to DOT_MAX_COLUMNS of them, where K is deep
    enough for each (DOT_MIN_DEPTH), B's columns transposed; none where N is a multiple of the panel."""
    from onyxrt.providers.cpu.jit import optional_module

    module = optional_module("onyxrt.providers.cpu.math.sgemm_tiles")
    dots = dots16 if module.LANES == 16 else dots8
    b = np.arange(k * n, dtype=np.float32).reshape(k, n)
    rest = module.rest_of(b)
    assert rest.shape == (dots, k)
    np.testing.assert_array_equal(rest, b[:, n - dots:].T)


@pytest.mark.parametrize("n", [18, 49, 64])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_bias_per_column_reaches_every_column(n, threads):
    """With ``column_bias`` (a squeeze-and-excitation layer's rows, x @ W^T) the bias is added per column on the
    panels and on the columns left to dot products alike (18 = 16 + 2, 49 = 48 + 1)."""
    rng = np.random.default_rng(n + threads)
    m, k = 24, 800
    x = rng.standard_normal((m, k), dtype=np.float32)
    w_t = rng.standard_normal((k, n), dtype=np.float32) / 20
    bias = rng.standard_normal(n, dtype=np.float32)
    residual = rng.standard_normal((m, n), dtype=np.float32)
    out = np.full((m, n), np.nan, np.float32)
    pool = ThreadPool(threads).splitting_gemms() if threads > 1 else ThreadPool(1)
    with pool.activate():
        assert gemm.fused_product(x, w_t, out, bias, residual, 1, np.zeros(2, np.float32), column_bias=True)
    pool.shutdown()
    want = np.maximum(x.astype(np.float64) @ w_t.astype(np.float64) + bias[None, :] + residual, 0)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("per_image", [False, True])
def test_batched_products_equal_each_images(monkeypatch, batch, threads, per_image):
    """A batch of products by one A (a pointwise convolution's images), or each by its own A (a filter scaled per
    image), in one task: whole images per part, or each image's product split where there are fewer images than
    parts; every image's A, last narrow panel and residual read at its own offset."""
    monkeypatch.setattr(gemm, "MIN_MACS_SPINNING", 0)
    rng = np.random.default_rng(batch * 10 + threads)
    m, k, n = 30, 70, 2 * 32 + 5
    w = rng.standard_normal((batch, m, k) if per_image else (m, k), dtype=np.float32) / 10
    x = rng.standard_normal((batch, k, n), dtype=np.float32)
    bias = rng.standard_normal(m, dtype=np.float32)
    residual = rng.standard_normal((batch, m, n), dtype=np.float32)
    out = np.full((batch, m, n), np.nan, np.float32)
    pool = ThreadPool(threads).splitting_gemms() if threads > 1 else ThreadPool(1)
    with pool.activate():
        assert gemm.fused_product(w, x, out, bias, residual, 1, np.zeros(2, np.float32))
    pool.shutdown()
    want = np.maximum(np.matmul(w.astype(np.float64), x) + bias[:, None] + residual, 0)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_pointwise_convolutions_of_large_images_run_fused(monkeypatch):
    """A pool that splits products runs a 1x1 convolution of OWN_GEMM_MIN_PIXELS or more pixels, with its bias,
    Clip and residual, on onyxrt's GEMM (the batch's images in one call); fewer pixels stay on BLAS's blocks (the
    threshold raised here: every size takes the GEMM by default)."""
    from onyxrt.providers.cpu.contrib.fused import mlas_activation_fn
    from onyxrt.providers.cpu.nn import conv_core

    calls = []
    runner = conv_core._own_gemm_runner

    def recording_runner(*args):
        run = runner(*args)
        return None if run is None else (lambda x, z, pool: calls.append(x.shape) or run(x, z, pool))

    monkeypatch.setattr(conv_core, "_own_gemm_runner", recording_runner)
    monkeypatch.setattr(conv_core, "OWN_GEMM_MIN_PIXELS", 512)
    rng = np.random.default_rng(5)
    clip = mlas_activation_fn("Clip", [0.0, 6.0])
    for size, taken in ((24, True), (12, False), (7, False)):
        x = rng.standard_normal((2, 24, size, size), dtype=np.float32)
        w = rng.standard_normal((40, 24, 1, 1), dtype=np.float32) / 5
        b = rng.standard_normal(40, dtype=np.float32)
        z = rng.standard_normal((2, 40, size, size), dtype=np.float32)
        packed = conv_core.pack_conv_weights(w, b, dict(group=1, strides=[1, 1], pads=[0] * 4, kernel_shape=[1, 1]))
        calls.clear()
        pool = ThreadPool(2).splitting_gemms()
        with pool.activate():
            y = conv_core.float_conv(x, w, b, 1, [1, 1], [1, 1], [0] * 4, "NOTSET", [1, 1], packed, activation=clip,
                                     residual=z)
        pool.shutdown()
        assert (calls == [(2, 24, size, size)]) is (taken and pool.runs_native_tasks)
        want = np.einsum("mc,nchw->nmhw", w[:, :, 0, 0].astype(np.float64), x) + b[None, :, None, None] + z
        np.testing.assert_allclose(y, np.clip(want, 0, 6), rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("threads", [1, 2])
def test_pointwise_convolution_reads_a_channel_slice_where_it_lies(monkeypatch, threads):
    """The images of a channel slice (ShuffleNet's split: each image's channels contiguous, the images apart; in
    reverse; one image broadcast) are the GEMM's products as they lie, not copied (the task steps from one image to
    the next by the input's own stride), with the same result as the contiguous copy's; another strided input (a
    column slice) is copied first."""
    from onyxrt.providers.cpu.contrib.fused import mlas_activation_fn
    from onyxrt.providers.cpu.math import sgemm_tiles
    from onyxrt.providers.cpu.nn import conv_core

    monkeypatch.setattr(gemm, "MIN_MACS_SPINNING", 0)
    seen = []
    operand_args = sgemm_tiles.operand_args

    def recording(template, b, c, residual):
        seen.append(b.flags.c_contiguous)
        return operand_args(template, b, c, residual)

    monkeypatch.setattr(sgemm_tiles, "operand_args", recording)
    rng = np.random.default_rng(8)
    full = rng.standard_normal((8, 24, 8, 9), dtype=np.float32)
    w = rng.standard_normal((12, 12, 1, 1), dtype=np.float32) / 4
    b = rng.standard_normal(12, dtype=np.float32)
    packed = conv_core.pack_conv_weights(w, b, dict(group=1, strides=[1, 1], pads=[0] * 4, kernel_shape=[1, 1]))
    relu = mlas_activation_fn("Relu", [])
    pool = ThreadPool(threads).splitting_gemms() if threads > 1 else ThreadPool(1)
    for x, contiguous in ((full[:, 12:], False), (full[:, :12], False), (full[::-1, 12:], False),
                          (np.broadcast_to(full[:1, 12:], (8, 12, 8, 9)), False), (full[:, 12:, :, 1:], True)):
        seen.clear()
        with pool.activate():
            y = conv_core.float_conv(x, w, b, 1, [1, 1], [1, 1], [0] * 4, "NOTSET", [1, 1], packed, activation=relu)
            want = conv_core.float_conv(np.ascontiguousarray(x), w, b, 1, [1, 1], [1, 1], [0] * 4, "NOTSET", [1, 1],
                                        packed, activation=relu)
        np.testing.assert_array_equal(y, want)
        ref = np.einsum("mc,nchw->nmhw", w[:, :, 0, 0].astype(np.float64), x) + b[None, :, None, None]
        np.testing.assert_allclose(y, np.maximum(ref, 0), rtol=1e-5, atol=1e-5)
        if pool.splits_gemms and pool.runs_native_tasks and gemm.own_sgemm_usable():  # (the route on the GEMM)
            assert seen[0] is contiguous  # (the first call: the input as given)
    pool.shutdown()
