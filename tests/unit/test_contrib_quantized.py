"""com.microsoft quantized ops (contrib/qlinear.py, contrib/quantized.py).

Two kinds of checks:

* hand-computed expectations on tiny inputs (formulas from the op schemas);
* parity with onnxruntime on one-node models (skipped without onnxruntime). The
  8-bit outputs are compared exactly where onyxrt reproduces onnxruntime's float32
  requantization arithmetic (which it does for every op here on this machine); the
  assertions still allow one quantization step (``atol=1``) because onnxruntime picks
  SIMD kernels per CPU (e.g. its logistic/exp approximations), and a value that lies
  on a rounding boundary may round the other way. Float outputs are compared at
  float32 rounding level relative to the output's magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest

from numpy.lib.stride_tricks import sliding_window_view
from ort_int8 import non_saturating_int8, onnxruntime_u8s8_is_exact

import onyxrt  # noqa: F401 - registers the kernels
from onyxrt.providers.cpu.contrib import qlinear, quantized
from onyxrt.providers.cpu.contrib.quantized import unpack_bits

F = np.float32
RNG = np.random.default_rng(1234)


def rand_int(dtype, shape):
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max + 1, shape).astype(dtype)


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack ``bits``-wide values low-bits-first along the last axis (bits in 2, 4, 8)."""
    per = 8 // bits
    v = values.astype(np.uint16).reshape(values.shape[:-1] + (-1, per))
    out = np.zeros(v.shape[:-1], np.uint16)
    for i in range(per):
        out |= v[..., i] << (i * bits)
    return out.astype(np.uint8)


# --------------------------------------------------------------------------- onnxruntime parity helper


def node_model(op_type, inputs, attrs=None, out_types=None, n_out=1, const=(), domain="com.microsoft"):
    """A one-node model (a com.microsoft op unless ``domain`` says otherwise) and its feeds; ``inputs``
    is [(name, array or None)], ``const`` names the inputs stored as initializers (the others are graph inputs)."""
    from onnx import helper, numpy_helper

    ins, inits, feeds, names = [], [], {}, []
    for name, arr in inputs:
        if arr is None:
            names.append("")
            continue
        arr = np.asarray(arr)
        names.append(name)
        if name in const:
            inits.append(numpy_helper.from_array(arr, name))
        else:
            ins.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape))
            feeds[name] = arr
    while names and names[-1] == "":
        names.pop()
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op_type, names, outs, domain=domain, **(attrs or {}))
    out_types = out_types or [np.asarray(inputs[0][1]).dtype] * n_out
    ovi = [helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(np.dtype(t)), None) for o, t in zip(outs, out_types)]
    graph = helper.make_graph([node], "g", ins, ovi, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model.SerializeToString(), feeds


def ort_node(op_type, inputs, attrs=None, out_types=None, n_out=1, const=(), domain="com.microsoft"):
    """Outputs of onnxruntime on a one-node model (com.microsoft unless ``domain`` says otherwise);
    ``inputs`` is [(name, array or None)]."""
    ort = pytest.importorskip("onnxruntime")
    model, feeds = node_model(op_type, inputs, attrs, out_types, n_out, const, domain)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # pragma: no cover - depends on the onnxruntime build
        if "NOT_IMPLEMENTED" in str(e) or "Could not find an implementation" in str(e):
            pytest.skip(f"onnxruntime has no CPU kernel for this {op_type} variant")
        raise
    return sess.run(None, feeds)


def assert_q_close(got, want):
    """8-bit outputs: same shape/dtype, at most one quantization step apart (see module docstring)."""
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
    np.testing.assert_allclose(got.astype(np.int32), want.astype(np.int32), rtol=0, atol=1)


def assert_f_close(got, want, rel=1e-5):
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
    scale = max(float(np.abs(want).max()), 1e-6)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=0, atol=rel * scale)


def onnxruntime_saturates_u8s8() -> bool:
    """True where onnxruntime's u8s8 kernel saturates pair sums (no VNNI): the u8s8 parity tests then
    check onyxrt on the full-range int8 weights against an exact or float reference, and compare with
    onnxruntime on those weights halved into [-64, 63], whose pair sums cannot saturate."""
    return not onnxruntime_u8s8_is_exact()


def exact_matmul(a, a_zero, b, b_zero):
    """(a - a_zero) @ (b - b_zero) in int64: the exact integer product."""
    return (a.astype(np.int64) - np.asarray(a_zero, np.int64)) @ (b.astype(np.int64) - np.asarray(b_zero, np.int64))


# --------------------------------------------------------------------------- element-wise (hand-computed)


def test_qlinear_add_formula():
    a = np.array([[10, 20, 30]], np.uint8)
    b = np.array([[5], [7]], np.uint8)  # broadcasts to (2, 3)
    y = qlinear.qlinear_add(a, F(0.5), np.uint8(10), b, F(0.25), np.uint8(1), F(1.0), np.uint8(3))
    # like onnxruntime: a * (sa/sc) + b * (sb/sc) + (zc - za*sa/sc - zb*sb/sc), then round half to even
    real = 0.5 * a.astype(float) + 0.25 * b.astype(float) + (3 - 0.5 * 10 - 0.25 * 1)
    np.testing.assert_array_equal(y, np.clip(np.rint(real), 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(y, [[4, 9, 14], [4, 10, 14]])  # onnxruntime's values
    assert y.shape == (2, 3) and y.dtype == np.uint8


def test_qlinear_add_saturates_and_rounds_half_to_even():
    a = np.array([0, 1, 100, 127, -128], np.int8)
    # 0.25 * 2 * a + 71: 71, 71.5 -> 72 (even), 121, 134.5 -> saturates at 127, 7
    y = qlinear.qlinear_add(a, F(0.25), None, a, F(0.25), None, F(1.0), np.int8(71))
    np.testing.assert_array_equal(y, np.array([71, 72, 121, 127, 7], np.int8))


def test_scalar_inputs_give_arrays():
    u = np.array(7, np.uint8)
    outs = [
        qlinear.qlinear_add(u, F(0.1), u, u, F(0.1), u, F(0.2), u),
        qlinear.qlinear_mul(u, F(0.1), u, u, F(0.1), u, F(0.2), u),
        qlinear.qlinear_sigmoid(u, F(0.1), u, F(0.2), u),
        qlinear.qlinear_where(np.array(True), u, F(0.1), u, u, F(0.2), u, F(0.3), u),
        qlinear.qlinear_reduce_mean(np.ones((2, 3), np.uint8), F(0.1), u, F(0.2), u, axes=[0, 1], keepdims=0),
        qlinear.quantize_linear_ms(np.array(1.5, F), F(0.5), u),
    ]
    for y in outs:
        assert isinstance(y, np.ndarray) and y.shape == () and y.dtype == np.uint8
    np.testing.assert_array_equal(outs[0], 7)  # 0.1*0 + 0.1*0 -> zero point


def test_qlinear_mul_formula():
    a = np.array([1, 2, 3, 250], np.uint8)
    b = np.array([4], np.uint8)
    y = qlinear.qlinear_mul(a, F(0.1), np.uint8(1), b, F(0.5), np.uint8(2), F(0.05), np.uint8(7))
    expect = np.clip(np.rint((a.astype(float) - 1) * 2 * (0.1 * 0.5 / 0.05)) + 7, 0, 255)
    np.testing.assert_array_equal(y, expect.astype(np.uint8))


def test_lookup_table_ops_cover_every_byte():
    x = np.arange(-128, 128, dtype=np.int8)
    y = qlinear.qlinear_leaky_relu(x, F(0.1), np.int8(0), F(0.05), np.int8(0), alpha=0.5)
    real = np.where(x >= 0, x * 0.1, x * 0.1 * 0.5)
    np.testing.assert_array_equal(y, np.clip(np.rint(real.astype(F) / F(0.05)), -128, 127).astype(np.int8))
    s = qlinear.qlinear_sigmoid(np.arange(256, dtype=np.uint8), F(0.1), np.uint8(128), F(1 / 256), None)
    expect = np.clip(np.rint(256 / (1 + np.exp(-(np.arange(256) - 128) * 0.1))), 0, 255)
    assert np.abs(s.astype(int) - expect).max() <= 1
    assert s.dtype == np.uint8


def test_qlinear_concat_requantizes_each_input():
    x1 = np.array([[0, 10]], np.uint8)
    x2 = np.array([[20]], np.uint8)
    y = qlinear.qlinear_concat(F(0.5), np.uint8(0), x1, F(0.5), np.uint8(0), x2, F(1.0), np.uint8(10), axis=-1)
    np.testing.assert_array_equal(y, np.array([[0, 10, 20]], np.uint8))  # x2: (20-10)*1.0/0.5 = 20


def test_qlinear_where():
    cond = np.array([True, False, True])
    x = np.array([10, 20, 30], np.uint8)
    y = np.array([1, 2, 3], np.uint8)
    z = qlinear.qlinear_where(cond, x, F(1.0), np.uint8(0), y, F(2.0), np.uint8(1), F(1.0), np.uint8(0))
    np.testing.assert_array_equal(z, np.array([10, 2, 30], np.uint8))


def test_qlinear_global_average_pool_nchw_and_nhwc():
    x = rand_int(np.uint8, (2, 3, 4, 5))
    y = qlinear.qlinear_global_average_pool(x, F(0.1), np.uint8(7), F(0.05), np.uint8(3))
    mean = (x.astype(float) - 7).mean(axis=(2, 3), keepdims=True) * 0.1
    expect = np.clip(np.rint(mean / 0.05) + 3, 0, 255)
    np.testing.assert_allclose(y.astype(int), expect, atol=1)
    assert y.shape == (2, 3, 1, 1)
    y_last = qlinear.qlinear_global_average_pool(np.moveaxis(x, 1, -1).copy(), F(0.1), np.uint8(7), F(0.05), np.uint8(3), channels_last=1)
    np.testing.assert_array_equal(y_last, np.moveaxis(y, 1, -1))


def test_qlinear_average_pool_matches_float_average_pool():
    x = rand_int(np.int8, (1, 2, 6, 6))
    y = qlinear.qlinear_average_pool(x, F(0.1), np.int8(0), F(0.1), np.int8(0), kernel_shape=[2, 2], strides=[2, 2])
    ref = x.astype(float).reshape(1, 2, 3, 2, 3, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(y.astype(float), np.rint(ref), atol=1)
    assert y.shape == (1, 2, 3, 3) and y.dtype == np.int8


def test_qlinear_reduce_mean():
    x = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    y = qlinear.qlinear_reduce_mean(x, F(1.0), np.uint8(0), F(0.5), np.uint8(1), axes=[2], keepdims=0)
    np.testing.assert_array_equal(y, (np.rint(x.mean(axis=2) / 0.5) + 1).astype(np.uint8))
    y = qlinear.qlinear_reduce_mean(x, F(1.0), np.uint8(0), F(1.0), np.uint8(0), axes=[0, -1], keepdims=1)
    assert y.shape == (1, 3, 1)


def test_qlinear_softmax_sums_to_one():
    x = rand_int(np.uint8, (3, 10))
    y = qlinear.qlinear_softmax(x, F(0.05), np.uint8(0), F(1 / 256), np.uint8(0), opset=13, axis=-1)
    xi = x.astype(np.int64)
    e = np.exp((xi - xi.max(axis=1, keepdims=True)) * 0.05)
    np.testing.assert_allclose(y.astype(float), np.clip(np.rint(256 * e / e.sum(axis=1, keepdims=True)), 0, 255), atol=1)


def test_quantize_dequantize_linear_ms():
    x = np.array([[-1.0, 0.26, 0.25, 300.0]], F)
    q = qlinear.quantize_linear_ms(x, F(0.5), np.int8(1))
    np.testing.assert_array_equal(q, np.array([[-1, 2, 1, 127]], np.int8))  # 0.5 -> 0 (even) + 1
    np.testing.assert_array_equal(qlinear.dequantize_linear_ms(q, F(0.5), np.int8(1)), (q.astype(F) - 1) * F(0.5))
    # per-axis, default uint8 output
    s = np.array([1.0, 2.0], F)
    q = qlinear.quantize_linear_ms(np.array([[3.0, 3.0]], F), s, None, axis=1)
    np.testing.assert_array_equal(q, np.array([[3, 2]], np.uint8))


def test_quantize_linear_ms_int4():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    q = qlinear.quantize_linear_ms(np.array([-20.0, -1.5, 0.5, 20.0], F), F(1.0), np.zeros((), ml_dtypes.int4))
    assert q.dtype == ml_dtypes.int4
    np.testing.assert_array_equal(q.astype(np.int8), np.array([-8, -2, 0, 7], np.int8))
    d = qlinear.dequantize_linear_ms(q, F(0.5), None)
    np.testing.assert_array_equal(d, np.array([-4.0, -1.0, 0.0, 3.5], F))


# --------------------------------------------------------------------------- matmul family (hand-computed)


def test_unpack_bits():
    packed = np.array([[0x21, 0x43]], np.uint8)
    np.testing.assert_array_equal(unpack_bits(packed, 4, 4), [[1, 2, 3, 4]])
    np.testing.assert_array_equal(unpack_bits(np.array([0b11100100], np.uint8), 2, 4), [0, 1, 2, 3])
    # a 3-bit little-endian stream of 5, 6, 7: bits 1,0,1 | 0,1,1 | 1,1,1 -> bytes 0xF5, 0x01
    np.testing.assert_array_equal(unpack_bits(np.array([0xF5, 0x01], np.uint8), 3, 3), [5, 6, 7])


def test_matmul_nbits_dequantizes_blockwise():
    K, N, bs = 40, 3, 16  # K not a multiple of the block size
    kb = 3
    q = RNG.integers(0, 16, (N, kb, bs)).astype(np.uint8)
    b = pack_bits(q, 4)
    scales = RNG.uniform(0.1, 1.0, (N, kb)).astype(F)
    zp = RNG.integers(0, 16, (N, kb)).astype(np.uint8)
    zp_packed = pack_bits(np.pad(zp, ((0, 0), (0, 1))), 4)
    a = RNG.standard_normal((2, K)).astype(F)
    bias = RNG.standard_normal(N).astype(F)
    w = ((q.astype(F) - zp[..., None]) * scales[..., None]).reshape(N, -1)[:, :K]
    y = quantized.matmul_nbits(a, b, scales, zp_packed, None, bias, K=K, N=N, block_size=bs)
    np.testing.assert_allclose(y, a @ w.T + bias, rtol=1e-5, atol=1e-5)
    # default zero point 8; float zero points
    w8 = ((q.astype(F) - 8) * scales[..., None]).reshape(N, -1)[:, :K]
    np.testing.assert_allclose(quantized.matmul_nbits(a, b, scales, K=K, N=N, block_size=bs), a @ w8.T, rtol=1e-5, atol=1e-5)
    zf = zp.astype(F) + 0.5
    wf = ((q.astype(F) - zf[..., None]) * scales[..., None]).reshape(N, -1)[:, :K]
    np.testing.assert_allclose(quantized.matmul_nbits(a, b, scales, zf, K=K, N=N, block_size=bs), a @ wf.T, rtol=1e-5, atol=1e-5)


def test_matmul_nbits_g_idx_and_empty_weights():
    K, N, bs = 32, 2, 16
    q = RNG.integers(0, 16, (N, 2, bs)).astype(np.uint8)
    b = pack_bits(q, 4)
    scales = np.array([[1.0, 2.0], [3.0, 4.0]], F)
    g_idx = np.arange(K, dtype=np.int32) % 2  # alternate blocks per row of K
    a = RNG.standard_normal((1, K)).astype(F)
    qf = q.reshape(N, K).astype(F) - 8
    w = qf * scales[:, g_idx]
    y = quantized.matmul_nbits(a, b, scales, None, g_idx, K=K, N=N, block_size=bs)
    np.testing.assert_allclose(y, a @ w.T, rtol=1e-5, atol=1e-5)
    empty = quantized.matmul_nbits(a, np.zeros((0, 2, 8), np.uint8), np.zeros((0,), F), None, None, np.ones(N, F), K=K, N=N, block_size=bs)
    np.testing.assert_array_equal(empty, np.ones((1, N), F))


def test_matmul_nbits_float16_and_8bit():
    K, N, bs = 32, 4, 32
    q = RNG.integers(0, 256, (N, 1, bs)).astype(np.uint8)
    scales = RNG.uniform(0.01, 0.02, (N, 1)).astype(np.float16)
    a = RNG.standard_normal((3, K)).astype(np.float16)
    y = quantized.matmul_nbits(a, q, scales, K=K, N=N, block_size=bs, bits=8)
    w = (q.reshape(N, K).astype(F) - 128) * scales.astype(F)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(F), a.astype(F) @ w.T, rtol=1e-2, atol=1e-2)


def test_matmul_integer_to_float():
    a = np.array([[1, 2], [3, 4]], np.uint8)
    b = np.array([[1, 0, 2], [0, 1, 3]], np.int8)
    y = quantized.matmul_integer_to_float(a, b, F(0.5), np.array([1, 2, 3], F), np.uint8(1), np.int8(0), np.ones(3, F))
    expect = ((a.astype(F) - 1) @ b.astype(F)) * (0.5 * np.array([1, 2, 3], F)) + 1
    np.testing.assert_allclose(y, expect)
    assert y.dtype == np.float32


def test_dynamic_quantize_matmul_is_close_to_float_matmul():
    a = RNG.standard_normal((4, 16)).astype(F)
    b = rand_int(np.int8, (16, 5))
    y = quantized.dynamic_quantize_matmul(a, b, F(0.01), np.int8(0), None)
    exact = a @ (b.astype(F) * 0.01)
    assert np.abs(y - exact).max() < 0.02 * np.abs(exact).max()


@pytest.mark.parametrize("shape, n", [((1, 24, 40), 35), ((9, 33), 17), ((2, 3, 64), 48)])
def test_dynamic_quantize_matmul_prepacked_equals_the_unpacked_product(shape, n):
    """Prepacked B: A quantized straight to the AVX2 route's int16 rows (where that route runs) gives the same
    floats as quantizing to uint8 first, with per-column scales and a bias; such an A given to the general
    path (no packed B) gives them too."""
    from onyxrt.providers.cpu.math.int8_gemm import centered_width
    from onyxrt.providers.cpu.math.quantization import dynamic_quantize_centered, dynamic_quantize_to_uint8

    a = RNG.standard_normal(shape).astype(F)
    a.reshape(-1)[::5] = np.round(a.reshape(-1)[::5] * 4) / 4  # values on rounding ties
    b = rand_int(np.int8, (shape[-1], n))
    scale = (RNG.random(n) * 0.01 + 1e-3).astype(F)
    bias = RNG.standard_normal(n).astype(F)
    packed = quantized._dynamic_quantize_matmul_prepack([None, b, scale, None, bias], {})
    y = quantized.dynamic_quantize_matmul(a, b, scale, None, bias, _packed=packed)
    q, a_scale, a_zero = dynamic_quantize_to_uint8(a)
    expected = quantized._dequantized_product(q, a_zero, a_scale, b, None, scale, bias, None, "b")
    np.testing.assert_array_equal(y, expected)
    width = centered_width(packed.gemm)
    if width is not None and dynamic_quantize_centered(a, width) is not None:
        rows, centered_scale, centered_zero = dynamic_quantize_centered(a, width)
        assert (centered_scale, centered_zero) == (a_scale, a_zero)
        np.testing.assert_array_equal(rows[:, : shape[-1]], q.reshape(rows.shape[0], -1).astype(np.int16) - a_zero)
        assert not rows[:, shape[-1]:].any()
        centered = quantized.CenteredA(rows, a.shape)  # without the packed B: the general path, A made uint8 again
        np.testing.assert_array_equal(
            quantized._dequantized_product(centered, a_zero, a_scale, b, None, scale, bias, None, "b"), expected)


def test_dynamic_quantize_uint8_parameters():
    q, scale, zp = quantized.dynamic_quantize_uint8(np.array([-1.0, 0.0, 3.0], F))
    assert scale == F(4.0 / 255) and zp == 64  # round(1 / (4/255)) = round(63.75)
    np.testing.assert_array_equal(q + zp, np.array([0, 64, 255], F))
    q, scale, zp = quantized.dynamic_quantize_uint8(np.zeros(3, F))
    assert scale == 1.0 and zp == 0


def test_qgemm_float_and_quantized_output():
    a = np.array([[130, 120]], np.uint8)
    b = np.array([[1, -1], [2, 3]], np.int8)
    c = np.array([10, -10], np.int32)
    y = quantized.qgemm(a, F(0.5), np.uint8(128), b, F(0.25), np.int8(0), c, alpha=2.0)
    acc = np.array([[2 * 1 - 8 * 2, 2 * -1 - 8 * 3]], F) + c
    np.testing.assert_allclose(y, acc * 2.0 * 0.5 * 0.25)
    yq = quantized.qgemm(a, F(0.5), np.uint8(128), b, F(0.25), np.int8(0), c, F(0.5), np.uint8(100), alpha=2.0)
    np.testing.assert_array_equal(yq, np.clip(np.rint(acc * 2.0 * 0.5 * 0.25 / 0.5) + 100, 0, 255).astype(np.uint8))
    yt = quantized.qgemm(a.T.copy(), F(0.5), np.uint8(128), b.T.copy(), F(0.25), np.int8(0), c, alpha=2.0, transA=1, transB=1)
    np.testing.assert_allclose(yt, y)


def test_qattention_matches_float_attention():
    b, s, hin, heads, hd = 1, 3, 4, 2, 2
    h = heads * hd
    x = rand_int(np.uint8, (b, s, hin))
    w = rand_int(np.int8, (hin, 3 * h))
    bias = RNG.standard_normal(3 * h).astype(F)
    (out,) = quantized.qattention(x, w, bias, F(0.02), F(0.01), None, np.uint8(128), np.int8(0), num_heads=heads)
    qkv = ((x.astype(F) - 128) @ w.astype(F)) * F(0.02 * 0.01) + bias
    q, k, v = (qkv[..., i * h:(i + 1) * h].reshape(b, s, heads, hd).transpose(0, 2, 1, 3) for i in range(3))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, (p @ v).transpose(0, 2, 1, 3).reshape(b, s, h), rtol=1e-5, atol=1e-6)


def test_gather_block_quantized_int4():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    data = RNG.integers(-8, 8, (4, 32)).astype(ml_dtypes.int4)
    scales = RNG.uniform(0.1, 1, (4, 2)).astype(F)
    y = quantized.gather_block_quantized(data, np.array([[2, 0]], np.int64), scales, block_size=16)
    expect = data.astype(F)[[2, 0]] * np.repeat(scales[[2, 0]], 16, axis=1)
    np.testing.assert_allclose(y, expect[None])
    assert y.shape == (1, 2, 32)


def test_matmul_bnb4_nf4():
    K, N, bs = 16, 2, 16
    codes = RNG.integers(0, 16, N * K).astype(np.uint8)
    packed = (codes[0::2] << 4) | codes[1::2]
    absmax = np.array([2.0, 0.5], F)
    a = RNG.standard_normal((1, K)).astype(F)
    w = (quantized._NF4_TABLE[codes] * np.repeat(absmax, bs)).reshape(N, K)
    y = quantized.matmul_bnb4(a, packed, absmax, K=K, N=N, block_size=bs, quant_type=1)
    np.testing.assert_allclose(y, a @ w.T, rtol=1e-5, atol=1e-6)


def test_dynamic_quantize_lstm_runs_on_dequantized_weights():
    x = RNG.standard_normal((3, 2, 4)).astype(F)
    w = rand_int(np.int8, (1, 4, 12))
    r = rand_int(np.int8, (1, 3, 12))
    y, yh, yc = quantized.dynamic_quantize_lstm(
        x, w, r, None, None, None, None, None, F([0.01]), np.zeros(1, np.int8), F([0.02]), np.zeros(1, np.int8), hidden_size=3
    )
    assert y.shape == (3, 1, 2, 3) and yh.shape == (1, 2, 3) and yc.shape == (1, 2, 3)
    np.testing.assert_array_equal(y[-1], yh)


# --------------------------------------------------------------------------- parity with onnxruntime


@pytest.mark.parametrize("dt", [np.uint8, np.int8])
@pytest.mark.parametrize("op_name", ["QLinearAdd", "QLinearMul"])
def test_binary_ops_match_onnxruntime(dt, op_name):
    a, b = rand_int(dt, (4, 5, 6)), rand_int(dt, (5, 6))
    zps = [dt(3), dt(7), dt(10)]
    args = [a, F(0.05), zps[0], b, F(0.02), zps[1], F(0.07 if op_name == "QLinearAdd" else 0.3), zps[2]]
    names = ["a", "as", "az", "b", "bs", "bz", "cs", "cz"]
    (want,) = ort_node(op_name, list(zip(names, args)))
    fn = qlinear.qlinear_add if op_name == "QLinearAdd" else qlinear.qlinear_mul
    assert_q_close(fn(*args), want)


@pytest.mark.parametrize("dt", [np.uint8, np.int8])
def test_unary_and_pooling_ops_match_onnxruntime(dt):
    info = np.iinfo(dt)
    z = lambda v: np.array(v, dt)  # noqa: E731
    every = np.arange(info.min, info.max + 1).astype(dt)
    quant = [("xs", F(0.07)), ("xz", z(7)), ("ys", F(1 / 256)), ("yz", z(info.min))]
    (want,) = ort_node("QLinearSigmoid", [("x", every)] + quant)
    assert_q_close(qlinear.qlinear_sigmoid(every, *[v for _, v in quant]), want)
    quant = [("xs", F(0.07)), ("xz", z(7)), ("ys", F(0.05)), ("yz", z(5))]
    (want,) = ort_node("QLinearLeakyRelu", [("x", every)] + quant, {"alpha": 0.1})
    assert_q_close(qlinear.qlinear_leaky_relu(every, *[v for _, v in quant], alpha=0.1), want)

    x = rand_int(dt, (2, 8, 7, 7))
    quant = [("xs", F(0.05)), ("xz", z(4)), ("ys", F(0.03)), ("yz", z(9))]
    qv = [v for _, v in quant]
    for cl in (0, 1):
        (want,) = ort_node("QLinearGlobalAveragePool", [("x", x)] + quant, {"channels_last": cl})
        assert_q_close(qlinear.qlinear_global_average_pool(x, *qv, channels_last=cl), want)
    for attrs in [
        dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
        dict(kernel_shape=[3, 2], ceil_mode=1, strides=[2, 3], pads=[0, 1, 1, 1]),
        dict(kernel_shape=[3, 3], auto_pad="SAME_LOWER", strides=[2, 2], count_include_pad=1),
        dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2], channels_last=1),
    ]:
        (want,) = ort_node("QLinearAveragePool", [("x", x)] + quant, attrs)
        assert_q_close(qlinear.qlinear_average_pool(x, *qv, **attrs), want)
    soft = [("xs", F(0.05)), ("xz", z(4)), ("ys", F(1 / 256)), ("yz", z(info.min))]
    for attrs in [{"opset": 13, "axis": -1}, {"opset": 13, "axis": 1}, {"opset": 12, "axis": 1}]:
        (want,) = ort_node("QLinearSoftmax", [("x", x)] + soft, attrs)
        assert_q_close(qlinear.qlinear_softmax(x, *[v for _, v in soft], **attrs), want)


@pytest.mark.parametrize("dt", [np.uint8, np.int8])
def test_concat_where_conv_match_onnxruntime(dt):
    z = lambda v: np.array(v, dt)  # noqa: E731
    a = rand_int(dt, (3, 4, 5))
    inputs = [("ys", F(0.1)), ("yz", z(3)), ("x1", a), ("s1", F(0.05)), ("z1", z(2)), ("x2", a[:, :2]), ("s2", F(0.1)),
              ("z2", z(3)), ("x3", a[:, 1:]), ("s3", F(0.3)), ("z3", z(1))]
    (want,) = ort_node("QLinearConcat", inputs, {"axis": 1}, out_types=[dt], const=("ys", "yz", "s1", "z1", "s2", "z2", "s3", "z3"))
    assert_q_close(qlinear.qlinear_concat(*[v for _, v in inputs], axis=1), want)

    cond = RNG.integers(0, 2, (4, 5)).astype(bool)
    b = rand_int(dt, (4, 5))
    inputs = [("c", cond), ("x", a), ("xs", F(0.05)), ("xz", z(2)), ("y", b), ("ys", F(0.1)), ("yz", z(3)), ("zs", F(0.2)), ("zz", z(1))]
    (want,) = ort_node("QLinearWhere", inputs, out_types=[dt])
    assert_q_close(qlinear.qlinear_where(*[v for _, v in inputs]), want)

    if dt == np.uint8:  # onnxruntime's com.microsoft QLinearConv: uint8 activations
        x = rand_int(np.uint8, (1, 6, 6, 4))
        w = rand_int(np.int8, (8, 4, 3, 3))
        bias = RNG.integers(-100, 100, 8).astype(np.int32)
        if onnxruntime_saturates_u8s8():
            windows = sliding_window_view(np.pad(x.astype(np.int64) - 100, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), axis=(1, 2))
            acc = np.einsum("nhwcij,mcij->nmhw", windows, w.astype(np.int64)) + bias.reshape(1, -1, 1, 1)
            exact = np.clip(np.rint(acc * (F(0.02) * F(0.01) / F(0.3))) + 5, 0, 255).astype(np.uint8)
            for cl in (0, 1):
                xx = x if cl else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
                got = qlinear.qlinear_conv_ms(xx, F(0.02), np.uint8(100), w, F(0.01), np.int8(0), F(0.3), np.uint8(5), bias,
                                              pads=[1, 1, 1, 1], channels_last=cl)
                assert_q_close(got, exact.transpose(0, 2, 3, 1) if cl else exact)
            w = non_saturating_int8(w)
        for cl in (0, 1):
            xx = x if cl else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
            inputs = [("x", xx), ("xs", F(0.02)), ("xz", np.uint8(100)), ("w", w), ("ws", F(0.01)), ("wz", np.int8(0)),
                      ("ys", F(0.3)), ("yz", np.uint8(5)), ("b", bias)]
            (want,) = ort_node("QLinearConv", inputs, {"pads": [1, 1, 1, 1], "channels_last": cl}, out_types=[np.uint8], const=("w", "ws", "wz", "b"))
            assert_q_close(qlinear.qlinear_conv_ms(*[v for _, v in inputs], pads=[1, 1, 1, 1], channels_last=cl), want)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("accuracy_level", [0, 4])
def test_matmul_nbits_matches_onnxruntime(bits, accuracy_level):
    K, N, bs = 100, 12, 32  # K not a multiple of block_size
    kb = (K + bs - 1) // bs
    b = pack_bits(RNG.integers(0, 2**bits, (N, kb, bs)).astype(np.uint8), bits)
    scales = RNG.uniform(0.01, 0.1, (N, kb)).astype(F)
    zq = RNG.integers(0, 2**bits, (N, kb)).astype(np.uint8)
    zp = pack_bits(np.pad(zq, ((0, 0), (0, (-kb) % (8 // bits)))), bits)
    a = RNG.standard_normal((2, 3, K)).astype(F)
    bias = RNG.standard_normal(N).astype(F)
    attrs = dict(K=K, N=N, bits=bits, block_size=bs, accuracy_level=accuracy_level)
    inputs = [("a", a), ("b", b), ("s", scales), ("z", zp), ("g", None), ("bias", bias)]
    (want,) = ort_node("MatMulNBits", inputs, attrs, out_types=[F], const=("b", "s", "z", "bias"))
    got = quantized.matmul_nbits(a, b, scales, zp, None, bias, **attrs)
    # accuracy_level 4: onnxruntime rounds A to block-wise int8 first, which onyxrt reproduces
    assert_f_close(got, want, rel=1e-5)


def test_matmul_nbits_float_zero_points_and_fp16_match_onnxruntime():
    K, N, bs = 64, 8, 16
    b = pack_bits(RNG.integers(0, 16, (N, 4, bs)).astype(np.uint8), 4)
    scales = RNG.uniform(0.01, 0.1, (N, 4)).astype(F)
    zf = RNG.uniform(0, 15, (N, 4)).astype(F)
    a = RNG.standard_normal((5, K)).astype(F)
    attrs = dict(K=K, N=N, block_size=bs)
    (want,) = ort_node("MatMulNBits", [("a", a), ("b", b), ("s", scales), ("z", zf)], attrs, out_types=[F], const=("b", "s", "z"))
    assert_f_close(quantized.matmul_nbits(a, b, scales, zf, **attrs), want)
    a16, s16 = a.astype(np.float16), scales.astype(np.float16)
    (want,) = ort_node("MatMulNBits", [("a", a16), ("b", b), ("s", s16)], attrs, out_types=[np.float16], const=("b", "s"))
    assert_f_close(quantized.matmul_nbits(a16, b, s16, **attrs), want, rel=2e-3)


@pytest.mark.parametrize("bdt", [np.uint8, np.int8])
def test_integer_matmuls_match_onnxruntime(bdt):
    a = rand_int(np.uint8, (2, 7, 32))
    b = rand_int(bdt, (32, 12))
    bs = RNG.uniform(0.01, 0.05, 12).astype(F)
    bz = rand_int(bdt, (12,))
    bias = RNG.standard_normal(12).astype(F)
    saturates = bdt == np.int8 and onnxruntime_saturates_u8s8()
    b_for_onnxruntime = non_saturating_int8(b) if saturates else b
    if saturates:
        exact = exact_matmul(a, 3, b, bz) * (F(0.02) * bs).astype(np.float64) + bias
        assert_f_close(quantized.matmul_integer_to_float(a, b, F(0.02), bs, np.uint8(3), bz, bias), exact.astype(F))
    inputs = [("a", a), ("b", b_for_onnxruntime), ("as", F(0.02)), ("bs", bs), ("az", np.uint8(3)), ("bz", bz), ("bias", bias)]
    (want,) = ort_node("MatMulIntegerToFloat", inputs, out_types=[F], const=("b", "bs", "bz", "bias"))
    assert_f_close(quantized.matmul_integer_to_float(*[v for _, v in inputs]), want)

    af = RNG.standard_normal((2, 7, 32)).astype(F) + 0.5
    if saturates:  # DynamicQuantizeLinear's integers (no product in it) feed the exact product
        aq, a_scale, a_zero = ort_node("DynamicQuantizeLinear", [("a", af)], out_types=[np.uint8, F, np.uint8], n_out=3, domain="")
        exact = exact_matmul(aq, a_zero, b, bz) * (a_scale * bs).astype(np.float64) + bias
        assert_f_close(quantized.dynamic_quantize_matmul(af, b, bs, bz, bias), exact.astype(F))
    inputs = [("a", af), ("b", b_for_onnxruntime), ("bs", bs), ("bz", bz), ("bias", bias)]
    (want,) = ort_node("DynamicQuantizeMatMul", inputs, out_types=[F], const=("b", "bs", "bz", "bias"))
    assert_f_close(quantized.dynamic_quantize_matmul(*[v for _, v in inputs]), want)

    for ta, tb in [(0, 0), (1, 1)]:
        A = rand_int(np.uint8, (16, 10) if ta else (10, 16))
        B = rand_int(bdt, (12, 16) if tb else (16, 12))
        c = RNG.integers(-1000, 1000, 12).astype(np.int32)
        if saturates:
            acc = exact_matmul(A.T if ta else A, 100, B.T if tb else B, 0) + c
            exact = (acc * (F(0.7) * F(0.02) * bs).astype(np.float64)).astype(F)
            assert_f_close(quantized.qgemm(A, F(0.02), np.uint8(100), B, bs, np.zeros(12, bdt), c, alpha=0.7, transA=ta, transB=tb),
                           exact)
            exact = np.clip(np.rint(acc * (F(0.02) * F(0.01) / F(0.5))) + 7, 0, 255).astype(np.uint8)
            assert_q_close(quantized.qgemm(A, F(0.02), np.uint8(100), B, F(0.01), np.int8(0), c, F(0.5), np.uint8(7),
                                           transA=ta, transB=tb), exact)
            B = non_saturating_int8(B)
        base = [("a", A), ("as", F(0.02)), ("az", np.uint8(100)), ("b", B), ("bs", bs), ("bz", np.zeros(12, bdt)), ("c", c)]
        (want,) = ort_node("QGemm", base, dict(transA=ta, transB=tb, alpha=0.7), out_types=[F], const=("b", "bs", "bz", "c"))
        assert_f_close(quantized.qgemm(*[v for _, v in base], alpha=0.7, transA=ta, transB=tb), want)
        q = base[:4] + [("bs", F(0.01)), ("bz", np.array(0, bdt)), ("c", c), ("ys", F(0.5)), ("yz", np.uint8(7))]
        (want,) = ort_node("QGemm", q, dict(transA=ta, transB=tb), out_types=[np.uint8], const=("b", "bs", "bz", "c"))
        assert_q_close(quantized.qgemm(*[v for _, v in q], transA=ta, transB=tb), want)


def assert_qattention_is_float_attention(x, x_scale, x_zero, w, w_scale, w_zero, bias, mask, past, attrs):
    """onyxrt's QAttention equals onnxruntime's float Attention of the dequantized input and weights
    (its exact integer products scaled, against float32 products: float32 rounding apart)."""
    xf = ((x.astype(np.int64) - int(x_zero)) * np.float64(x_scale)).astype(F)
    wf = ((w.astype(np.int64) - w_zero.astype(np.int64)) * w_scale.astype(np.float64)).astype(F)
    n_out = 1 if past is None else 2
    want = ort_node("Attention", [("x", xf), ("w", wf), ("bias", bias), ("mask", mask), ("past", past)], attrs,
                    out_types=[F] * n_out, n_out=n_out)
    got = quantized.qattention(x, w, bias, x_scale, w_scale, mask, x_zero, w_zero, past, **attrs, _num_outputs=n_out)
    for g, w_ in zip(got, want):
        assert_f_close(g, w_)


@pytest.mark.parametrize(
    "mask,attrs",
    [
        (None, {}),
        (np.array([5, 3], np.int32), {}),
        (np.array([5, 4, 0, 1], np.int32), {}),
        (np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32), {"scale": 0.3}),
        (None, {"unidirectional": 1}),
    ],
)
def test_qattention_matches_onnxruntime(mask, attrs):
    b, s, hin, heads, hd = 2, 5, 16, 2, 4
    h = heads * hd
    x = rand_int(np.uint8, (b, s, hin))
    w = rand_int(np.int8, (hin, 3 * h))
    bias = RNG.standard_normal(3 * h).astype(F)
    ws = RNG.uniform(0.005, 0.02, 3 * h).astype(F)
    wz = rand_int(np.int8, (3 * h,))
    if onnxruntime_saturates_u8s8():
        assert_qattention_is_float_attention(x, F(0.01), np.uint8(120), w, ws, wz, bias, mask, None, dict(num_heads=heads, **attrs))
        w = non_saturating_int8(w)
    inputs = [("x", x), ("w", w), ("bias", bias), ("xs", F(0.01)), ("ws", ws), ("mask", mask), ("xz", np.uint8(120)), ("wz", wz)]
    (want,) = ort_node("QAttention", inputs, dict(num_heads=heads, **attrs), out_types=[F])
    (got,) = quantized.qattention(*[v for _, v in inputs], num_heads=heads, **attrs)
    assert_f_close(got, want)


def test_qattention_past_present_match_onnxruntime():
    b, s, hin, heads, hd = 2, 3, 8, 2, 4
    h = heads * hd
    x = rand_int(np.uint8, (b, s, hin))
    w = rand_int(np.int8, (hin, 3 * h))
    bias = RNG.standard_normal(3 * h).astype(F)
    past = RNG.standard_normal((2, b, heads, 4, hd)).astype(F)
    if onnxruntime_saturates_u8s8():
        assert_qattention_is_float_attention(x, F(0.01), np.uint8(120), w, F(0.01), np.int8(0), bias, None, past,
                                             dict(num_heads=heads, unidirectional=1))
        w = non_saturating_int8(w)
    inputs = [("x", x), ("w", w), ("bias", bias), ("xs", F(0.01)), ("ws", F(0.01)), ("mask", None), ("xz", np.uint8(120)),
              ("wz", np.int8(0)), ("past", past)]
    want = ort_node("QAttention", inputs, dict(num_heads=heads, unidirectional=1), out_types=[F, F], n_out=2)
    got = quantized.qattention(*[v for _, v in inputs], num_heads=heads, unidirectional=1, _num_outputs=2)
    for g, w_ in zip(got, want):
        assert_f_close(g, w_)


def test_gather_block_quantized_matches_onnxruntime():
    V, D, bs = 10, 64, 32
    idx = np.array([[0, 3, 9], [-1, 2, 2]], np.int64)
    for bits in (2, 4, 8):
        q = RNG.integers(0, 2**bits, (V, D)).astype(np.uint8)
        data = pack_bits(q, bits) if bits < 8 else q
        sc = RNG.uniform(0.01, 0.1, (V, D // bs)).astype(F)
        zq = RNG.integers(0, 2**bits, (V, D // bs)).astype(np.uint8)
        zp = pack_bits(np.pad(zq, ((0, 0), (0, (-zq.shape[1]) % (8 // bits)))), bits) if bits < 8 else zq
        attrs = dict(bits=bits, block_size=bs)
        (want,) = ort_node("GatherBlockQuantized", [("d", data), ("i", idx), ("s", sc), ("z", zp)], attrs, out_types=[F], const=("d", "s", "z"))
        assert_f_close(quantized.gather_block_quantized(data, idx, sc, zp, **attrs), want, rel=0)


def test_matmul_bnb4_matches_onnxruntime():
    K, N, bs = 64, 12, 32
    packed = RNG.integers(0, 256, (N * K + 1) // 2).astype(np.uint8)
    absmax = RNG.uniform(0.5, 2, (N * K + bs - 1) // bs).astype(F)
    a = RNG.standard_normal((3, K)).astype(F)
    for qt in (0, 1):
        attrs = dict(K=K, N=N, block_size=bs, quant_type=qt)
        (want,) = ort_node("MatMulBnb4", [("a", a), ("b", packed), ("absmax", absmax)], attrs, out_types=[F], const=("b", "absmax"))
        assert_f_close(quantized.matmul_bnb4(a, packed, absmax, **attrs), want)


@pytest.mark.parametrize("zt", [np.uint8, np.int8, np.uint16, np.int16])
def test_quantize_dequantize_ms_match_onnxruntime(zt):
    x = RNG.standard_normal((3, 4, 5)).astype(F) * 3
    for axis in (None, 1):
        scale = F(0.05) if axis is None else RNG.uniform(0.02, 0.1, 4).astype(F)
        zp = np.array(1, zt) if axis is None else np.ones(4, zt)
        attrs = {} if axis is None else {"axis": axis}
        (want,) = ort_node("QuantizeLinear", [("x", x), ("s", scale), ("z", zp)], attrs, out_types=[zt])
        got = qlinear.quantize_linear_ms(x, scale, zp, **attrs)
        np.testing.assert_array_equal(got, want)
        (want,) = ort_node("DequantizeLinear", [("x", got), ("s", scale), ("z", zp)], attrs, out_types=[F])
        np.testing.assert_array_equal(qlinear.dequantize_linear_ms(got, scale, zp, **attrs), want)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_quantize_lstm_matches_onnxruntime(direction, batch):
    """onyxrt quantizes X per tensor and H per batch row before each GEMM, as onnxruntime
    does while the batch is no larger than its thread count (it quantizes H in chunks of
    ceil(batch / threads) rows): batch 1 agrees to float rounding on any machine; batch 3
    to H's uint8 quantization noise (outputs lie in (-1, 1))."""
    T, I, H = 4, 6, 20
    nd = 2 if direction == "bidirectional" else 1
    x = RNG.standard_normal((T, batch, I)).astype(F)
    w = rand_int(np.int8, (nd, I, 4 * H))
    r = rand_int(np.int8, (nd, H, 4 * H))
    bias = RNG.standard_normal((nd, 8 * H)).astype(F) * 0.1
    ws = RNG.uniform(0.002, 0.01, (nd, 4 * H)).astype(F)
    rs = RNG.uniform(0.002, 0.01, (nd,)).astype(F)
    h0 = RNG.standard_normal((nd, batch, H)).astype(F)
    peep = RNG.standard_normal((nd, 3 * H)).astype(F) * 0.1
    lens = np.array([4, 2, 3][:batch], np.int32)
    if onnxruntime_saturates_u8s8():
        # onyxrt on the full-range weights: onnxruntime's float LSTM of the dequantized weights, apart
        # from the uint8 quantization of X and H (outputs lie in (-1, 1))
        wf = (w * ws[:, None, :]).transpose(0, 2, 1).astype(F)
        rf = (r * rs[:, None, None]).transpose(0, 2, 1).astype(F)
        float_inputs = [("x", x), ("w", wf), ("r", rf), ("b", bias), ("sl", lens), ("h0", h0), ("c0", None), ("p", peep)]
        want = ort_node("LSTM", float_inputs, dict(hidden_size=H, direction=direction), out_types=[F] * 3, n_out=3, domain="")
        got = quantized.dynamic_quantize_lstm(x, w, r, bias, lens, h0, None, peep, ws, np.zeros(ws.shape, np.int8), rs,
                                              np.zeros(rs.shape, np.int8), hidden_size=H, direction=direction)
        for g, w_ in zip(got, want):
            assert g.shape == w_.shape and g.dtype == w_.dtype
            assert np.abs(g - w_).max() < 0.05
        w, r = non_saturating_int8(w), non_saturating_int8(r)
    inputs = [("x", x), ("w", w), ("r", r), ("b", bias), ("sl", lens), ("h0", h0), ("c0", None), ("p", peep),
              ("ws", ws), ("wz", np.zeros(ws.shape, np.int8)), ("rs", rs), ("rz", np.zeros(rs.shape, np.int8))]
    want = ort_node("DynamicQuantizeLSTM", inputs, dict(hidden_size=H, direction=direction), out_types=[F] * 3, n_out=3,
                    const=("w", "r", "ws", "wz", "rs", "rz"))
    got = quantized.dynamic_quantize_lstm(*[v for _, v in inputs], hidden_size=H, direction=direction)
    for g, w_ in zip(got, want):
        assert g.shape == w_.shape and g.dtype == w_.dtype
        assert np.abs(g - w_).max() < (1e-5 if batch == 1 else 0.05)


# --------------------------------------------------------------------------- prepacked constant weights
#
# With constant weights (initializers) the kernels prepare them once at session creation
# (``prepack``); fed as graph inputs they are prepared on every run. Both must give
# identical results, bit for bit.


def assert_prepack_is_exact(op_type, inputs, attrs=None, out_types=None, n_out=1, const=()):
    """onyxrt's outputs with ``const`` as initializers equal those with every input fed."""
    packed_model, packed_feeds = node_model(op_type, inputs, attrs, out_types, n_out, const)
    plain_model, plain_feeds = node_model(op_type, inputs, attrs, out_types, n_out)
    packed = onyxrt.InferenceSession(packed_model).run(None, packed_feeds)
    plain = onyxrt.InferenceSession(plain_model).run(None, plain_feeds)
    for got, want in zip(packed, plain):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    return packed


def _nbits_inputs(bits, K, N, bs, zero_points="packed", dtype=F, batch=(2, 3)):
    kb = (K + bs - 1) // bs
    q = RNG.integers(0, 2**bits, (N, kb, bs)).astype(np.uint8)
    if bits in (2, 4, 8):
        b = pack_bits(q, bits)
    else:  # a little-endian bit stream per block
        bitstream = ((q[..., None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(N, kb, -1)
        b = np.packbits(bitstream, axis=-1, bitorder="little")
    scales = RNG.uniform(0.01, 0.1, (N, kb)).astype(dtype)
    if zero_points == "packed":
        per = 8 // bits if bits in (2, 4, 8) else 1
        zq = RNG.integers(0, 2**bits, (N, kb)).astype(np.uint8)
        zp = pack_bits(np.pad(zq, ((0, 0), (0, (-kb) % per))), bits) if bits in (2, 4) else zq
    elif zero_points == "float":
        zp = RNG.uniform(0, 2**bits - 1, (N, kb)).astype(dtype)
    else:
        zp = None
    a = RNG.standard_normal(batch + (K,)).astype(dtype)
    bias = RNG.standard_normal(N).astype(dtype)
    return a, b, scales, zp, bias


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("accuracy_level", [0, 4])
def test_matmul_nbits_prepacked_is_exact(bits, accuracy_level):
    K, N, bs = 100, 12, 32  # K not a multiple of block_size
    a, b, scales, zp, bias = _nbits_inputs(bits, K, N, bs)
    attrs = dict(K=K, N=N, bits=bits, block_size=bs, accuracy_level=accuracy_level)
    inputs = [("a", a), ("b", b), ("s", scales), ("z", zp), ("g", None), ("bias", bias)]
    assert quantized._matmul_nbits_prepack([None, b, scales, zp, None, bias], attrs) is not None
    (got,) = assert_prepack_is_exact("MatMulNBits", inputs, attrs, out_types=[F], const=("b", "s", "z", "bias"))
    np.testing.assert_array_equal(got, quantized.matmul_nbits(a, b, scales, zp, None, bias, **attrs))
    # a single row (decode) and a 1-D A
    for a1 in (a[:1, :1], a[0, 0]):
        assert_prepack_is_exact("MatMulNBits", [("a", a1)] + inputs[1:], attrs, out_types=[F], const=("b", "s", "z", "bias"))


@pytest.mark.parametrize("variant", ["no_zero_points", "float_zero_points", "g_idx", "float16", "float64", "empty"])
def test_matmul_nbits_prepacked_variants_are_exact(variant):
    K, N, bs = 64, 8, 16
    dtype = {"float16": np.float16, "float64": np.float64}.get(variant, F)
    zero_points = {"no_zero_points": None, "float_zero_points": "float"}.get(variant, "packed")
    a, b, scales, zp, bias = _nbits_inputs(4, K, N, bs, zero_points, dtype)
    g = None
    if variant == "g_idx":
        g = (np.arange(K, dtype=np.int32) * 7) % (K // bs)
    if variant == "empty":
        b, scales, zp = np.zeros((0, 4, 8), np.uint8), np.zeros((0,), F), None
    attrs = dict(K=K, N=N, block_size=bs, accuracy_level=4 if variant == "float16" else 0)
    inputs = [("a", a), ("b", b), ("s", scales), ("z", zp), ("g", g), ("bias", bias)]
    (got,) = assert_prepack_is_exact("MatMulNBits", inputs, attrs, out_types=[dtype], const=("b", "s", "z", "g", "bias"))
    np.testing.assert_array_equal(got, quantized.matmul_nbits(a, b, scales, zp, g, bias, **attrs))


def test_matmul_nbits_prepack_with_computed_inputs():
    """Zero points / g_idx / bias that are not constant are applied at run time, not dropped."""
    K, N, bs = 64, 6, 32
    a, b, scales, zp, bias = _nbits_inputs(4, K, N, bs, "float")
    g = np.arange(K, dtype=np.int32) % 2
    attrs = dict(K=K, N=N, block_size=bs)
    packed = quantized._matmul_nbits_prepack([None, b, scales, None, None, None], attrs)  # only B and scales constant
    assert packed is not None
    for args in [(zp, None, None), (None, g, None), (zp, g, bias), (None, None, bias)]:
        want = quantized.matmul_nbits(a, b, scales, *args, **attrs)
        np.testing.assert_array_equal(quantized.matmul_nbits(a, b, scales, *args, **attrs, _packed=packed), want)
    # A of another float type than the weights were prepared for
    a64 = a.astype(np.float64)
    np.testing.assert_array_equal(
        quantized.matmul_nbits(a64, b, scales, **attrs, _packed=packed), quantized.matmul_nbits(a64, b, scales, **attrs)
    )


def test_matmul_nbits_prepack_declines_invalid_weights():
    """An invalid constant weight is reported when the node runs, as without prepacking."""
    K, N, bs = 64, 6, 32
    _, b, scales, _, _ = _nbits_inputs(4, K, N, bs, None)
    assert quantized._matmul_nbits_prepack([None, b[:, :1], scales, None, None, None], dict(K=K, N=N, block_size=bs)) is None
    assert quantized._matmul_nbits_prepack([None, b, scales, None, None, None], dict(K=K, N=N, block_size=24)) is None
    model, feeds = node_model("MatMulNBits", [("a", RNG.standard_normal((1, K)).astype(F)), ("b", b[:, :1]), ("s", scales)],
                              dict(K=K, N=N, block_size=bs), out_types=[F], const=("b", "s"))
    session = onyxrt.InferenceSession(model)
    with pytest.raises(Exception, match="B has"):
        session.run(None, feeds)


@pytest.mark.parametrize("bdt", [np.uint8, np.int8])
def test_integer_matmuls_prepacked_are_exact(bdt):
    a = rand_int(np.uint8, (2, 7, 300))  # K > 258: float32 sums of products are rounded, so order matters
    b = rand_int(bdt, (300, 12))
    bs = RNG.uniform(0.01, 0.05, 12).astype(F)
    bz = rand_int(bdt, (12,))
    bias = RNG.standard_normal(12).astype(F)
    inputs = [("a", a), ("b", b), ("as", F(0.02)), ("bs", bs), ("az", np.uint8(3)), ("bz", bz), ("bias", bias)]
    assert_prepack_is_exact("MatMulIntegerToFloat", inputs, out_types=[F], const=("b", "bs", "bz", "bias"))
    assert_prepack_is_exact("MatMulIntegerToFloat", inputs, out_types=[F], const=("b",))
    af = RNG.standard_normal((2, 7, 300)).astype(F) + 0.5
    inputs = [("a", af), ("b", b), ("bs", bs), ("bz", bz), ("bias", bias)]
    assert_prepack_is_exact("DynamicQuantizeMatMul", inputs, out_types=[F], const=("b", "bs", "bz", "bias"))
    assert_prepack_is_exact("DynamicQuantizeMatMul", inputs[:3], out_types=[F], const=("b", "bs"))
    # a zero point computed at run time is not folded into the prepacked B
    packed = quantized._dynamic_quantize_matmul_prepack([None, b, bs, None, None], {})
    np.testing.assert_array_equal(
        quantized.dynamic_quantize_matmul(af, b, bs, bz, _packed=packed), quantized.dynamic_quantize_matmul(af, b, bs, bz)
    )
    for ta, tb in [(0, 0), (1, 1)]:
        A = rand_int(np.uint8, (16, 10) if ta else (10, 16))
        B = rand_int(bdt, (12, 16) if tb else (16, 12))
        c = RNG.integers(-1000, 1000, 12).astype(np.int32)
        base = [("a", A), ("as", F(0.02)), ("az", np.uint8(100)), ("b", B), ("bs", bs), ("bz", rand_int(bdt, (12,))), ("c", c)]
        assert quantized._qgemm_prepack([None, None, None, B, bs, base[5][1], c], {"transB": tb}) is not None
        assert_prepack_is_exact("QGemm", base, dict(transA=ta, transB=tb, alpha=0.7), out_types=[F], const=("b", "bs", "bz", "c"))
        q = base[:4] + [("bs", F(0.01)), ("bz", np.array(0, bdt)), ("c", c), ("ys", F(0.5)), ("yz", np.uint8(7))]
        assert_prepack_is_exact("QGemm", q, dict(transA=ta, transB=tb), out_types=[np.uint8], const=("b", "bs", "bz", "c"))


def test_qattention_prepacked_is_exact():
    b, s, hin, heads, hd = 2, 5, 16, 2, 4
    h = heads * hd
    x = rand_int(np.uint8, (b, s, hin))
    w = rand_int(np.int8, (hin, 3 * h))
    bias = RNG.standard_normal(3 * h).astype(F)
    ws = RNG.uniform(0.005, 0.02, 3 * h).astype(F)
    past = RNG.standard_normal((2, b, heads, 4, hd)).astype(F)
    inputs = [("x", x), ("w", w), ("bias", bias), ("xs", F(0.01)), ("ws", ws), ("mask", None), ("xz", np.uint8(120)),
              ("wz", rand_int(np.int8, (3 * h,))), ("past", past)]
    assert_prepack_is_exact("QAttention", inputs, dict(num_heads=heads, unidirectional=1), out_types=[F, F], n_out=2,
                            const=("w", "bias", "ws", "wz"))


def test_gather_block_quantized_prepacked_is_exact(monkeypatch):
    V, D, bs = 10, 64, 32
    idx = np.array([[0, 3, 9], [-1, 2, 2], [-11, 10, 4]], np.int64)  # the last row's first two are out of range: zeros
    for table_bytes in (quantized._GBQ_TABLE_BYTES, 0):  # whole table prepacked, or only scales / zero points
        monkeypatch.setattr(quantized, "_GBQ_TABLE_BYTES", table_bytes)
        for bits in (2, 4, 8):
            q = RNG.integers(0, 2**bits, (V, D)).astype(np.uint8)
            data = pack_bits(q, bits) if bits < 8 else q
            for sdt in (F, np.float16):
                sc = RNG.uniform(0.01, 0.1, (V, D // bs)).astype(sdt)
                zq = RNG.integers(0, 2**bits, (V, D // bs)).astype(np.uint8)
                zp = pack_bits(np.pad(zq, ((0, 0), (0, (-zq.shape[1]) % (8 // bits)))), bits) if bits < 8 else zq
                attrs = dict(bits=bits, block_size=bs)
                packed = quantized._gather_block_quantized_prepack([data, None, sc, zp], attrs)
                assert (packed.table is not None) == (table_bytes > 0)
                for z in (zp, None):
                    inputs = [("d", data), ("i", idx), ("s", sc), ("z", z)]
                    (got,) = assert_prepack_is_exact("GatherBlockQuantized", inputs, attrs, out_types=[sdt], const=("d", "s", "z"))
                    np.testing.assert_array_equal(got[2, :2], 0)
                    # a 0-d index
                    assert_prepack_is_exact("GatherBlockQuantized", [("d", data), ("i", np.int64(7))] + inputs[2:], attrs,
                                            out_types=[sdt], const=("d", "s", "z"))
                # zero points computed at run time
                packed = quantized._gather_block_quantized_prepack([data, None, sc, None], attrs)
                np.testing.assert_array_equal(
                    quantized.gather_block_quantized(data, idx, sc, zp, **attrs, _packed=packed),
                    quantized.gather_block_quantized(data, idx, sc, zp, **attrs),
                )


def test_gather_block_quantized_int4_prepacked_is_exact():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    data = RNG.integers(-8, 8, (6, 32)).astype(ml_dtypes.int4)
    scales = RNG.uniform(0.1, 1, (6, 2)).astype(F)
    idx = np.array([[2, 0], [5, 9]], np.int64)
    for ga, qa, sc in [(0, 1, scales), (1, 1, RNG.uniform(0.1, 1, (6, 2)).astype(F))]:
        attrs = dict(block_size=16, gather_axis=ga, quantize_axis=qa)
        packed = quantized._gather_block_quantized_prepack([data, None, sc, None], attrs)
        assert packed is not None and packed.table is not None
        i = idx if ga == 0 else idx * 3
        np.testing.assert_array_equal(
            quantized.gather_block_quantized(data, i, sc, **attrs, _packed=packed),
            quantized.gather_block_quantized(data, i, sc, **attrs),
        )


def test_matmul_bnb4_prepacked_is_exact():
    K, N, bs = 64, 12, 32
    packed = RNG.integers(0, 256, (N * K + 1) // 2).astype(np.uint8)
    absmax = RNG.uniform(0.5, 2, (N * K + bs - 1) // bs).astype(F)
    a = RNG.standard_normal((2, 3, K)).astype(F)
    for qt in (0, 1):
        attrs = dict(K=K, N=N, block_size=bs, quant_type=qt)
        assert_prepack_is_exact("MatMulBnb4", [("a", a), ("b", packed), ("absmax", absmax)], attrs, out_types=[F],
                                const=("b", "absmax"))


def test_dynamic_quantize_lstm_prepacked_is_exact():
    T, I, H, nd, batch = 4, 6, 20, 2, 3
    x = RNG.standard_normal((T, batch, I)).astype(F)
    w = rand_int(np.int8, (nd, I, 4 * H))
    r = rand_int(np.int8, (nd, H, 4 * H))
    bias = RNG.standard_normal((nd, 8 * H)).astype(F) * 0.1
    ws = RNG.uniform(0.002, 0.01, (nd, 4 * H)).astype(F)
    rs = RNG.uniform(0.002, 0.01, (nd,)).astype(F)
    inputs = [("x", x), ("w", w), ("r", r), ("b", bias), ("sl", np.array([4, 2, 3], np.int32)), ("h0", None), ("c0", None),
              ("p", None), ("ws", ws), ("wz", np.zeros(ws.shape, np.int8)), ("rs", rs), ("rz", np.ones(rs.shape, np.int8))]
    attrs = dict(hidden_size=H, direction="bidirectional")
    for const in [("w", "r", "ws", "wz", "rs", "rz"), ("w", "ws", "wz", "r")]:  # both weights, or only W prepacked
        assert_prepack_is_exact("DynamicQuantizeLSTM", inputs, attrs, out_types=[F] * 3, n_out=3, const=const)
