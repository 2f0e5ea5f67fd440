"""Unit tests for onyxrt.providers.cpu.nn.conv (Conv, ConvTranspose, ConvInteger, QLinearConv)."""

import itertools
import math

import ml_dtypes
import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper
from ort_int8 import non_saturating_int8, onnxruntime_u8s8_is_exact
from route_probes import routes_taken

from onyxrt.framework.thread_pool import ThreadPool
from onyxrt.providers.cpu.contrib.fused import mlas_activation_fn
from onyxrt.providers.cpu.nn import conv as c
from onyxrt.providers.cpu.nn import conv_core as core

ort = pytest.importorskip("onnxruntime")


def naive_conv(x, w, b=None, strides=None, dilations=None, pads=None, group=1):
    """Direct loop reference (float64)."""
    N, C = x.shape[:2]
    nd = x.ndim - 2
    M = w.shape[0]
    k = w.shape[2:]
    s = strides or [1] * nd
    d = dilations or [1] * nd
    p = pads or [0] * (2 * nd)
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(p[i], p[nd + i]) for i in range(nd)])
    out_sp = [(xp.shape[2 + i] - (k[i] - 1) * d[i] - 1) // s[i] + 1 for i in range(nd)]
    y = np.zeros((N, M, *out_sp))
    Cg, Mg = C // group, M // group
    for m in range(M):
        g = m // Mg
        for o in itertools.product(*(range(v) for v in out_sp)):
            win = xp[(slice(None), slice(g * Cg, (g + 1) * Cg)) + tuple(
                slice(o[i] * s[i], o[i] * s[i] + (k[i] - 1) * d[i] + 1, d[i]) for i in range(nd))]
            y[(slice(None), m) + o] = (win * w[m]).reshape(N, -1).sum(axis=1)
    if b is not None:
        y += b.reshape((1, -1) + (1,) * nd)
    return y


def run_ort(op_type, inputs, opset=17, **attrs):
    names = [f"i{j}" if v is not None else "" for j, v in enumerate(inputs)]
    node = helper.make_node(op_type, names, ["y"], **attrs)
    tmap = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
            np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8,
            np.dtype(np.int32): TensorProto.INT32, np.dtype(np.float16): TensorProto.FLOAT16}
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, tmap[v.dtype], v.shape) for n, v in zip(names, inputs) if v is not None],
        [onnx.ValueInfoProto(name="y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {n: v for n, v in zip(names, inputs) if v is not None})[0]


rng = np.random.default_rng(0)


def randn(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("C,M,group", [(4, 6, 1), (4, 6, 2), (4, 4, 4), (2, 6, 2)])
@pytest.mark.parametrize("k,s,d", [(1, 1, 1), (1, 2, 1), (3, 1, 1), (3, 2, 1), (2, 1, 2), (3, 2, 2)])
def test_conv_matches_naive(nd, C, M, group, k, s, d):
    sp = [9, 8, 6][:nd]
    x = randn(2, C, *sp)
    w = randn(M, C // group, *([k] * nd))
    b = randn(M)
    pads = [1] * nd + [k // 2] * nd
    y = c.conv(x, w, b, group=group, strides=[s] * nd, dilations=[d] * nd, pads=pads)
    ref = naive_conv(x, w, b, [s] * nd, [d] * nd, pads, group)
    assert y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_conv_wide_image_uses_flat_path_and_matches():
    # wide images take the flattened phase-image path (both strides)
    for s in (1, 2):
        x = randn(1, 5, 20, 33)
        w = randn(7, 5, 3, 3)
        y = c.conv(x, w, None, strides=[s, s], pads=[1, 1, 1, 1])
        np.testing.assert_allclose(y, naive_conv(x, w, None, [s, s], None, [1, 1, 1, 1]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("s", [1, 2])
@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_with_multiplier_and_bias(s, mult):
    x = randn(2, 6, 30, 29)
    w = randn(6 * mult, 1, 3, 3)
    b = randn(6 * mult)
    y = c.conv(x, w, b, group=6, strides=[s, s], pads=[1, 1, 1, 1])
    np.testing.assert_allclose(y, naive_conv(x, w, b, [s, s], None, [1, 1, 1, 1], 6), rtol=1e-4, atol=1e-4)


@pytest.fixture
def numpy_depthwise(monkeypatch):
    """The numpy depthwise path even where numba is installed (its compiled kernel: test_depthwise_conv.py)."""
    monkeypatch.setenv("ONYXRT_DISABLE_NUMBA", "1")


@pytest.mark.parametrize("parallel", [False, True])
def test_depthwise_large_parallel_path(parallel, monkeypatch, numpy_depthwise):
    monkeypatch.setattr(core, "_PARALLEL_CONV", parallel)
    x = randn(1, 64, 60, 60)
    w = randn(64, 1, 3, 3)
    b = randn(64)
    with ThreadPool(2).activate():
        y = c.conv(x, w, b, group=64, pads=[1, 1, 1, 1])
    np.testing.assert_allclose(y, run_ort("Conv", [x, w, b], group=64, pads=[1, 1, 1, 1]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("s", [1, 2, 3])
def test_conv_auto_pad_matches_onnxruntime(auto_pad, s):
    x = randn(1, 3, 10, 7)
    w = randn(4, 3, 4, 3)
    y = c.conv(x, w, None, auto_pad=auto_pad, strides=[s, s])
    ref = run_ort("Conv", [x, w], auto_pad=auto_pad, strides=[s, s])
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_conv_hand_computed_and_dtypes():
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    w = np.ones((1, 1, 2, 2), np.float32)
    y = c.conv(x, w, np.array([1.0], np.float32))
    np.testing.assert_array_equal(y, [[[[9.0, 13.0], [21.0, 25.0]]]])
    y16 = c.conv(x.astype(np.float16), w.astype(np.float16))
    assert y16.dtype == np.float16
    np.testing.assert_array_equal(y16, [[[[8.0, 12.0], [20.0, 24.0]]]])
    y64 = c.conv(x.astype(np.float64), w.astype(np.float64))
    assert y64.dtype == np.float64
    ybf = c.conv(x.astype(ml_dtypes.bfloat16), w.astype(ml_dtypes.bfloat16))
    assert ybf.dtype == ml_dtypes.bfloat16
    with pytest.raises(ValueError):
        c.conv(x, w, kernel_shape=[3, 3])
    with pytest.raises(ValueError):
        c.conv(x, np.ones((1, 2, 2, 2), np.float32))  # channel mismatch


def test_conv_does_not_mutate_readonly_inputs():
    x = randn(1, 2, 5, 5)
    w = randn(3, 2, 3, 3)
    b = randn(3)
    for a in (x, w, b):
        a.flags.writeable = False
    c.conv(x, w, b, pads=[1, 1, 1, 1])
    c.conv(x, np.ones((4, 1, 3, 3), np.float32), None, group=2)
    c.conv_transpose(x, np.ones((2, 3, 3, 3), np.float32), b)


# --------------------------------------------------------------------------- ConvTranspose


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("C,M,group", [(4, 6, 1), (4, 6, 2), (4, 4, 4)])
@pytest.mark.parametrize("k,s,d", [(1, 2, 1), (2, 2, 1), (3, 1, 1), (3, 2, 2), (3, 3, 1)])
@pytest.mark.parametrize("kind", ["pads", "output_shape", "SAME_UPPER", "SAME_LOWER", "output_padding"])
def test_conv_transpose_matches_onnxruntime(nd, C, M, group, k, s, d, kind):
    sp = [5, 4, 3][:nd]
    x = randn(2, C, *sp)
    w = randn(C, M // group, *([k] * nd))
    b = randn(M)
    attrs = dict(group=group, strides=[s] * nd, dilations=[d] * nd)
    if kind == "pads":
        attrs["pads"] = [1] * nd + [0] * nd
    elif kind == "output_shape":
        attrs["output_shape"] = [v * s + 1 for v in sp]
    elif kind == "output_padding":
        if s == 1:
            pytest.skip("output_padding must be smaller than the stride")
        attrs["output_padding"] = [1] * nd
    else:
        attrs["auto_pad"] = kind
    try:
        ref = run_ort("ConvTranspose", [x, w, b], **attrs)
    except Exception:  # onnxruntime rejects some output_shape combinations
        pytest.skip("onnxruntime rejects this configuration")
    y = c.conv_transpose(x, w, b, **attrs)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_conv_transpose_hand_computed():
    x = np.array([[[1.0, 2.0, 3.0]]], np.float32)
    w = np.array([[[1.0, 10.0]]], np.float32)
    np.testing.assert_array_equal(c.conv_transpose(x, w), [[[1, 12, 23, 30]]])
    np.testing.assert_array_equal(c.conv_transpose(x, w, strides=[2]), [[[1, 10, 2, 20, 3, 30]]])
    # explicit output_shape larger than the natural size: zeros at the end (like onnxruntime)
    np.testing.assert_array_equal(c.conv_transpose(x, w, strides=[2], output_shape=[7]), [[[1, 10, 2, 20, 3, 30, 0]]])
    np.testing.assert_array_equal(c.conv_transpose(x, w, pads=[1, 1]), [[[12, 23]]])


# --------------------------------------------------------------------------- quantized


def test_conv_integer_matches_onnxruntime():
    x = rng.integers(0, 255, (1, 3, 7, 7), dtype=np.uint8)
    w = rng.integers(0, 255, (4, 3, 3, 3), dtype=np.uint8)
    xz = np.array(12, np.uint8)
    wz = np.array(100, np.uint8)
    y = c.conv_integer(x, w, xz, wz, pads=[1, 1, 1, 1])
    ref = run_ort("ConvInteger", [x, w, xz, wz], pads=[1, 1, 1, 1])
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, ref)
    x8 = rng.integers(-128, 127, (1, 2, 5, 5), dtype=np.int8)
    w8 = rng.integers(-128, 127, (3, 2, 2, 2), dtype=np.int8)
    ref = naive_conv(x8, w8)
    np.testing.assert_array_equal(c.conv_integer(x8, w8), ref.astype(np.int32))


def test_qlinear_conv_matches_onnxruntime():
    x = rng.integers(0, 255, (1, 4, 8, 8), dtype=np.uint8)
    w = rng.integers(-127, 127, (6, 4, 3, 3), dtype=np.int8)
    b = rng.integers(-500, 500, (6,), dtype=np.int32)
    xs, xz = np.array(0.02, np.float32), np.array(128, np.uint8)
    ws, wz = np.linspace(0.001, 0.01, 6).astype(np.float32), np.zeros(6, np.int8)
    ys, yz = np.array(0.5, np.float32), np.array(100, np.uint8)
    inputs = [x, xs, xz, w, ws, wz, ys, yz, b]
    y = c.qlinear_conv(*inputs, pads=[1, 1, 1, 1], strides=[2, 2])
    assert y.dtype == np.uint8
    if not onnxruntime_u8s8_is_exact():
        # onnxruntime's u8s8 kernel saturates pair sums without VNNI: the full-range weights are
        # checked against the float64 definition, onnxruntime on weights whose pair sums cannot saturate
        acc = naive_conv(x.astype(np.float64) - 128, w, b, pads=[1, 1, 1, 1], strides=[2, 2])
        exact = np.clip(np.rint(acc * (xs * ws / ys).reshape(1, -1, 1, 1)) + 100, 0, 255)
        assert np.abs(y.astype(int) - exact.astype(int)).max() <= 1
        inputs[3] = non_saturating_int8(w)
        y = c.qlinear_conv(*inputs, pads=[1, 1, 1, 1], strides=[2, 2])
    ref = run_ort("QLinearConv", inputs, pads=[1, 1, 1, 1], strides=[2, 2])
    assert np.abs(y.astype(int) - ref.astype(int)).max() <= 1


def test_causal_conv_with_state():
    x = randn(2, 3, 5)
    w = randn(3, 1, 3)
    b = randn(3)
    past = randn(2, 3, 2)
    y, present = c.causal_conv_with_state(x, w, b, past)
    full = np.concatenate([past, x], axis=2)
    ref = naive_conv(full, w, b, group=3)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(present, full[:, :, -2:])


def test_deform_conv_zero_offsets_is_conv_and_matches_onnxruntime():
    x = randn(2, 4, 7, 6)
    w = randn(6, 2, 3, 3)
    b = randn(6)
    attrs = dict(group=2, pads=[1, 1, 1, 1], strides=[2, 1], offset_group=2)
    oh, ow = 4, 6
    zero = np.zeros((2, 2 * 2 * 9, oh, ow), np.float32)
    y = c.deform_conv(x, w, zero, b, **attrs)
    ref = c.conv(x, w, b, group=2, pads=[1, 1, 1, 1], strides=[2, 1])
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    offset = (randn(2, 2 * 2 * 9, oh, ow) * 2).astype(np.float32)
    mask = rng.uniform(0, 1, (2, 2 * 9, oh, ow)).astype(np.float32)
    y = c.deform_conv(x, w, offset, b, mask, **attrs)
    np.testing.assert_allclose(y, run_ort("DeformConv", [x, w, offset, b, mask], opset=22, **attrs), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- prepared weights and fast paths


def _conv_session(x, w, b, initializers=True, **attrs):
    """onyxrt session of a one-Conv model whose W (and B) are initializers (so prepacked)."""
    import onyxrt

    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT if x.dtype == np.float32 else TensorProto.DOUBLE, x.shape)]
    inits = [onnx.numpy_helper.from_array(w, "w")] + ([onnx.numpy_helper.from_array(b, "b")] if b is not None else [])
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if b is not None else []), ["y"], **attrs)
    graph = helper.make_graph([node], "g", inputs, [onnx.ValueInfoProto(name="y")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onyxrt.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _random_conv_case(r, depthwise):
    """A random 2-D conv configuration: (x, w, b, attrs) with valid geometry."""
    while True:
        N = int(r.integers(1, 3))
        kh, kw = (int(v) for v in r.integers(1, 6, 2))
        s = [int(v) for v in r.integers(1, 4, 2)]
        d = [int(v) for v in r.integers(1, 3, 2)]
        H, W = (int(v) for v in r.integers(1, 15, 2))
        pads = [int(v) for v in r.integers(0, 4, 4)]
        if H + pads[0] + pads[2] - (kh - 1) * d[0] - 1 < 0 or W + pads[1] + pads[3] - (kw - 1) * d[1] - 1 < 0:
            continue
        if depthwise:
            C = int(r.integers(1, 7))
            M, group, Cg = C * int(r.integers(1, 3)), C, 1
        else:
            group = int(r.choice([1, 1, 2]))
            Cg = int(r.integers(1, 4))
            C, M = group * Cg, group * int(r.choice([1, 2, 4]))
        x = r.standard_normal((N, C, H, W)).astype(np.float32)
        w = r.standard_normal((M, Cg, kh, kw)).astype(np.float32)
        b = r.standard_normal(M).astype(np.float32) if r.integers(0, 3) else None
        return x, w, b, dict(group=group, strides=s, dilations=d, pads=pads)


@pytest.mark.parametrize("depthwise", [True, False])
def test_random_2d_convs_match_naive_with_and_without_prepack(depthwise):
    r = np.random.default_rng(7 + depthwise)
    for _ in range(120):
        x, w, b, attrs = _random_conv_case(r, depthwise)
        ref = naive_conv(x, w, b, attrs["strides"], attrs["dilations"], attrs["pads"], attrs["group"])
        packed = c.conv_prepack([None, w, b], attrs)
        assert packed is not None
        for p in (packed, None):
            y = c.conv(x, w, b, _packed=p, **attrs)
            assert y.dtype == np.float32 and y.flags.c_contiguous and y.shape == ref.shape
            np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4, err_msg=str(attrs))
        x64, w64 = x.astype(np.float64), w.astype(np.float64)
        b64 = None if b is None else b.astype(np.float64)
        y64 = c.conv(x64, w64, b64, _packed=c.conv_prepack([None, w64, b64], attrs), **attrs)
        assert y64.dtype == np.float64
        np.testing.assert_allclose(y64, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("max_width", [0, 1000])
def test_depthwise_shifted_column_images(max_width, monkeypatch, numpy_depthwise):
    # kernel columns copied from a shifted neighbour (narrow images) or gathered: same results
    monkeypatch.setattr(core, "_DW_SHIFT_MAX_WIDTH", max_width)
    monkeypatch.setattr(core, "_dw_plan_cache", {})
    r = np.random.default_rng(11)
    for _ in range(60):
        x, w, b, attrs = _random_conv_case(r, True)
        ref = naive_conv(x, w, b, attrs["strides"], attrs["dilations"], attrs["pads"], attrs["group"])
        np.testing.assert_allclose(c.conv(x, w, b, **attrs), ref, rtol=1e-4, atol=1e-4, err_msg=str(attrs))


def test_depthwise_small_blocks_and_threads(monkeypatch, numpy_depthwise):
    # many channel blocks per thread, work split over the pool even when small (and the
    # column matrices of ordinary convolutions too)
    monkeypatch.setattr(core, "_DW_BLOCK_BYTES", 1500)
    monkeypatch.setattr(core, "_PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(core, "_PARALLEL_CONV", True)
    monkeypatch.setattr(core, "current_pool", lambda: ThreadPool(3))
    r = np.random.default_rng(3)
    for s in (1, 2):
        x = r.standard_normal((2, 9, 13, 12)).astype(np.float32)
        w = r.standard_normal((9, 1, 3, 3)).astype(np.float32)
        b = r.standard_normal(9).astype(np.float32)
        y = c.conv(x, w, b, group=9, strides=[s, s], pads=[1, 1, 1, 1])
        np.testing.assert_allclose(y, naive_conv(x, w, b, [s, s], None, [1, 1, 1, 1], 9), rtol=1e-4, atol=1e-4)
        w2 = r.standard_normal((4, 9, 3, 3)).astype(np.float32)
        for packed in (None, c.conv_prepack([None, w2, b[:4]], {})):
            y = c.conv(x, w2, b[:4], strides=[s, s], pads=[1, 1, 1, 1], _packed=packed)
            np.testing.assert_allclose(y, naive_conv(x, w2, b[:4], [s, s], None, [1, 1, 1, 1]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("numba_off", ["1", "0"])
@pytest.mark.parametrize("s,d", [(1, 1), (2, 1), (3, 2)])
def test_depthwise_keeps_non_finite_values_local(s, d, numba_off, monkeypatch):
    monkeypatch.setenv("ONYXRT_DISABLE_NUMBA", numba_off)  # both depthwise paths
    # no 0 * inf from padding rows/phases of other kernel rows may reach an output
    x = randn(1, 4, 11, 12)
    x[0, 1, 5, 6] = np.inf
    x[0, 2, 3, 3] = np.nan
    x[0, 3, 0, 0] = -np.inf
    w = randn(4, 1, 3, 3)
    b = randn(4)
    y = c.conv(x, w, b, group=4, strides=[s, s], dilations=[d, d], pads=[1, 1, 1, 1])
    ref = naive_conv(x, w, b, [s, s], [d, d], [1, 1, 1, 1], 4)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))
    np.testing.assert_allclose(y[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=1e-4, atol=1e-4)


def test_copy_stride2_is_bit_exact():
    r = np.random.default_rng(0)
    src = r.standard_normal((3, 4, 11)).astype(np.float32)
    src.view(np.uint32)[0, 0, 2] = 0x7FC01234  # a NaN with a payload
    for start in range(5):
        count = (11 - start + 1) // 2
        dst = np.full((3, 4, count), 7.0, np.float32)
        core.copy_stride2(dst, src, start, count)
        np.testing.assert_array_equal(dst.view(np.uint32), src[..., start::2].view(np.uint32))


@pytest.mark.parametrize("case", ["depthwise", "depthwise_s2", "expand_1x1", "project_1x1", "strided_1x1", "3x3", "7x7_s2", "grouped"])
def test_prepacked_conv_session_matches_onnxruntime(case):
    x = randn(1, 8, 15, 14)
    group, k, s, p, M = 1, 3, 1, 1, 8
    if case.startswith("depthwise"):
        group, M, s = 8, 8, (2 if case.endswith("s2") else 1)
    elif case == "expand_1x1":
        k, p, M = 1, 0, 32
    elif case == "project_1x1":
        k, p, M = 1, 0, 4
    elif case == "strided_1x1":
        k, p, M, s = 1, 0, 24, 2
    elif case == "7x7_s2":
        k, p, s = 7, 3, 2
    elif case == "grouped":
        group, M = 2, 6
    w = randn(M, 8 // group, k, k)
    b = randn(M)
    attrs = dict(group=group, strides=[s, s], pads=[p] * 4)
    session = _conv_session(x, w, b, **attrs)
    ref = run_ort("Conv", [x, w, b], **attrs)
    for _ in range(2):
        np.testing.assert_allclose(session.run(None, {"x": x})[0], ref, rtol=1e-4, atol=1e-4)


def test_prepack_declines_bad_weights_and_conv_reports_them():
    assert c.conv_prepack([None, None, None], {}) is None
    assert c.conv_prepack([None, np.ones((2, 3), np.float32), None], {}) is None  # rank < 3
    assert c.conv_prepack([None, np.ones((2, 1, 3, 3), np.float32), np.ones(5, np.float32)], {}) is None  # bias size
    assert c.conv_prepack([None, np.ones((2, 1, 3, 3), np.float32), None], {"strides": [0, 1]}) is None
    packed = c.conv_prepack([None, randn(4, 2, 3, 3), randn(4)], {})
    assert not packed.w.flags.writeable and not packed.w_aug.flags.writeable
    # a runtime bias with weights packed without one is still added
    x, w, b = randn(1, 2, 5, 5), randn(4, 2, 3, 3), randn(4)
    np.testing.assert_allclose(c.conv(x, w, b, _packed=c.conv_prepack([None, w, None], {})), naive_conv(x, w, b), rtol=1e-4, atol=1e-4)
    dw = randn(2, 1, 3, 3)
    np.testing.assert_allclose(c.conv(x, dw, b[:2], group=2, _packed=c.conv_prepack([None, dw, None], {"group": 2})),
                               naive_conv(x, dw, b[:2], group=2), rtol=1e-4, atol=1e-4)


def test_quantized_convs_prepacked_match_unpacked():
    x = rng.integers(0, 255, (1, 4, 9, 9), dtype=np.uint8)
    w = rng.integers(-127, 127, (4, 1, 3, 3), dtype=np.int8)  # depthwise
    wz = np.array(3, np.int8)
    attrs = dict(group=4, pads=[1, 1, 1, 1], strides=[2, 2])
    packed = c._conv_integer_prepack([None, w, None, wz], attrs)
    assert packed is not None and packed.dw is not None
    np.testing.assert_array_equal(c.conv_integer(x, w, None, wz, _packed=packed, **attrs), c.conv_integer(x, w, None, wz, **attrs))
    xs, xz = np.array(0.02, np.float32), np.array(128, np.uint8)
    ws = np.linspace(0.001, 0.01, 4).astype(np.float32)
    ys, yz = np.array(0.5, np.float32), np.array(100, np.uint8)
    bq = rng.integers(-500, 500, (4,), dtype=np.int32)
    inputs = [x, xs, xz, w, ws, np.zeros(4, np.int8), ys, yz, bq]
    packed = c._qlinear_conv_prepack([None, xs, xz, w, ws, inputs[5], ys, yz, bq], attrs)
    assert packed is not None
    np.testing.assert_array_equal(c.qlinear_conv(*inputs, _packed=packed, **attrs), c.qlinear_conv(*inputs, **attrs))
    assert c._conv_integer_prepack([None, w, None, None], attrs) is None  # zero point not constant (or absent)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_conv_transpose_prepacked_matches_unpacked(dtype):
    x = randn(2, 4, 5, 6).astype(dtype)
    for group, M in ((1, 3), (2, 6), (4, 4)):
        w = randn(4, M // group, 3, 3).astype(dtype)
        b = randn(M).astype(dtype)
        attrs = dict(group=group, strides=[2, 1], pads=[1, 0, 1, 1])
        packed = c._conv_transpose_prepack([None, w, b], attrs)
        assert packed is not None and packed.wt.flags.c_contiguous and not packed.wt.flags.writeable
        np.testing.assert_array_equal(c.conv_transpose(x, w, b, _packed=packed, **attrs), c.conv_transpose(x, w, b, **attrs))
    assert c._conv_transpose_prepack([None, w, None], {"group": 3}) is None


@pytest.mark.parametrize("n, c, m, spatial", [(1, 16, 24, (7, 9)), (4, 32, 8, (1, 1)), (2, 8, 32, (5,)), (3, 12, 30, (4, 4))])
@pytest.mark.parametrize("bias, fused", [(False, False), (True, False), (True, True)])
def test_pointwise_route_equals_the_general_one(n, c, m, spatial, bias, fused):
    """The prepacked pointwise route (1x1, stride 1, no padding) gives conv_core's results bit for bit: plain,
    with a bias (where conv_core may fold it into the product for wide outputs) and with FusedConv's residual
    and activation; a batch of 1-pixel images, one product of its rows, to float rounding."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, c, *spatial)).astype(np.float32)
    w = rng.standard_normal((m, c) + (1,) * len(spatial)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32) if bias else None
    residual = rng.standard_normal((n, m, *spatial)).astype(np.float32) if fused else None
    activation = mlas_activation_fn("Relu", []) if fused else None
    packed = core.pack_conv_weights(w, b, {"pads": [0] * (2 * len(spatial))})
    assert packed.pointwise is not None
    general = core.ConvWeights(w, b, 1, [1] * len(spatial), [1] * len(spatial))  # no pointwise route
    ours = core.float_conv(x, w, b, 1, None, None, None, "NOTSET", None, packed, activation, residual)
    expected = core.float_conv(x, w, b, 1, None, None, None, "NOTSET", None, general, activation, residual)
    assert ours.dtype == expected.dtype and ours.flags.c_contiguous
    if math.prod(spatial) == 1 and n > 1:
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(ours, expected)
    reference = naive_conv(x, w, b) + (0 if residual is None else residual)
    np.testing.assert_allclose(ours, np.maximum(reference, 0) if fused else reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("split", [False, True])
def test_one_pixel_batches_run_as_one_product_of_rows(split):
    """A squeeze-and-excitation layer (1x1 images, a batch of 8) on a pool that splits products (onyxrt's GEMM, the
    bias per column, residual and Relu in its registers) or not (BLAS, then the epilogue) equals numpy's."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((8, 32, 1, 1)).astype(np.float32)
    w = rng.standard_normal((40, 32, 1, 1)).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    z = rng.standard_normal((8, 40, 1, 1)).astype(np.float32)
    packed = core.pack_conv_weights(w, b, {"pads": [0] * 4})
    pool = ThreadPool(2).splitting_gemms() if split else ThreadPool(2)
    with pool.activate():
        y = core.float_conv(x, w, b, 1, None, None, None, "NOTSET", None, packed, mlas_activation_fn("Relu", []), z)
    pool.shutdown()
    want = np.einsum("mc,nc->nm", w[:, :, 0, 0].astype(np.float64), x[:, :, 0, 0])[:, :, None, None]
    np.testing.assert_allclose(y, np.maximum(want + b[None, :, None, None] + z, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel", [((2, 3, 17, 16), (4, 4)), ((3, 5, 8, 12), (2, 3)), ((1, 3, 32, 32), (8, 8))])
def test_patch_convolutions_equal_the_naive_ones(dtype, shape, kernel, monkeypatch):
    """A convolution whose windows tile the input (kernel = strides, no padding: a patch embedding) of weights too
    many for ``patch_conv``'s tiles, or not float32, runs as one product of the batch's patches (rows past the last
    whole window unread), with its bias, residual and Relu."""
    monkeypatch.setattr(core.patch_conv, "applies", lambda *a: False)  # (as for a ViT-B/16 embedding's weights)
    taken = routes_taken(monkeypatch, core, "_patch_route")
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((6, shape[1]) + kernel).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    attrs = dict(strides=list(kernel), pads=[0] * 4, kernel_shape=list(kernel))
    want = naive_conv(x, w, b, attrs["strides"], [1, 1], attrs["pads"], 1)
    z = rng.standard_normal(want.shape).astype(dtype)
    packed = core.pack_conv_weights(w, b, attrs)
    y = core.float_conv(x, w, b, 1, attrs["strides"], [1, 1], attrs["pads"], "NOTSET", list(kernel), packed,
                        mlas_activation_fn("Relu", []), z)
    assert taken and taken[0] is not None and y.dtype == dtype
    np.testing.assert_allclose(y, np.maximum(want + z, 0), rtol=1e-4, atol=1e-4)


def test_pointwise_route_is_not_taken_for_strides_padding_or_other_filters():
    w1 = np.ones((4, 3, 1, 1), np.float32)
    assert core.pack_conv_weights(w1, None, {"strides": [2, 2]}).pointwise is None
    assert core.pack_conv_weights(w1, None, {"pads": [0, 1, 0, 1]}).pointwise is None
    assert core.pack_conv_weights(w1, None, {"kernel_shape": [3, 3]}).pointwise is None
    assert core.pack_conv_weights(np.ones((4, 3, 3, 3), np.float32), None, {}).pointwise is None
    assert core.pack_conv_weights(np.ones((4, 1, 1, 1), np.float32), None, {"group": 3}).pointwise is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_column_matrix_equals_the_numpy_one(dtype):
    """The numba column matrix (one call for all taps) holds what the numpy copies per tap write, for strides,
    dilations, asymmetric and oversized padding, and windows that miss the input entirely."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 7, 9)).astype(dtype)
    if core._compiled_im2col(x) is None:
        pytest.skip("numba is not usable here")
    for k, s, d, p in [((3, 3), (1, 1), (1, 1), (1, 1, 1, 1)), ((3, 2), (2, 3), (1, 1), (0, 2, 1, 0)),
                       ((2, 3), (1, 2), (2, 3), (3, 0, 0, 4)), ((1, 5), (3, 1), (1, 2), (0, 0, 0, 0)),
                       ((3, 3), (2, 2), (1, 1), (5, 6, 5, 6))]:
        out_sp = [(x.shape[2 + i] + p[i] + p[2 + i] - (k[i] - 1) * d[i] - 1) // s[i] + 1 for i in range(2)]
        K, P = k[0] * k[1], out_sp[0] * out_sp[1]
        expected = np.full((2, 3 * K + 1, P), 7, dtype)
        plan = core._im2col_plan(7, 9, k, s, d, p, core.pairs_ok(x))
        core._im2col_fill(x, expected[:, : 3 * K].reshape(2, 3, K, *out_sp), plan, 0, 3)
        ours = np.full_like(expected, 7)
        for c0, c1 in ((0, 2), (2, 3)):  # in channel chunks, as the pool splits it
            core._compiled_im2col(x)(core.read_only(x), ours, *k, *s, *d, p[0], p[1], *out_sp, c0, c1)
        np.testing.assert_array_equal(ours, expected)  # the bias row (7s) untouched


def test_prepared_convolution_keeps_a_route_per_input_shape():
    """With prepacked weights, each input shape's route is built once and reused (the same results as a route
    built afresh; the unpacked path's within rounding), and the kept routes stay bounded."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    attrs = dict(pads=[1, 1, 1, 1], strides=[2, 1])
    packed = core.pack_conv_weights(w, b, attrs)
    relu = mlas_activation_fn("Relu", [])
    for shape in [(1, 3, 9, 8), (2, 3, 5, 7), (1, 3, 9, 8)]:
        x = rng.standard_normal(shape).astype(np.float32)
        for activation in (None, relu):
            ours = core.float_conv(x, w, b, 1, attrs["strides"], None, attrs["pads"], "NOTSET", None, packed, activation)
            fresh = core.pack_conv_weights(w, b, attrs)  # no route kept yet: built for this call
            np.testing.assert_array_equal(ours, core.float_conv(x, w, b, 1, attrs["strides"], None, attrs["pads"],
                                                                "NOTSET", None, fresh, activation))
            plain = core.float_conv(x, w, b, 1, attrs["strides"], None, attrs["pads"], "NOTSET", None, None, activation)
            np.testing.assert_allclose(ours, plain, rtol=1e-5, atol=1e-5)
    assert len(packed.routes) == 4  # two shapes, with and without the activation
    route = next(iter(packed.routes.values()))
    core.float_conv(np.ones((1, 3, 9, 8), np.float32), w, b, 1, attrs["strides"], None, attrs["pads"], "NOTSET", None,
                    packed)
    assert next(iter(packed.routes.values())) is route
    for width in range(4, 4 + 2 * core._MAX_ROUTES):
        core.float_conv(np.ones((1, 3, 6, width), np.float32), w, b, 1, attrs["strides"], None, attrs["pads"],
                        "NOTSET", None, packed)
    assert len(packed.routes) <= core._MAX_ROUTES
    with pytest.raises(Exception, match="inconsistent"):
        core.float_conv(np.ones((1, 4, 6, 6), np.float32), w, b, 1, None, None, [1, 1, 1, 1], "NOTSET", None, packed)


@pytest.mark.parametrize("n, c, m, hw, k, strides, dilations, pads", [
    (2, 32, 8, (9, 24), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
    (1, 64, 16, (8, 40), (3, 3), (2, 2), (1, 1), [1, 0, 1, 2]),
    (3, 40, 5, (12, 30), (5, 3), (1, 2), (2, 1), [2, 1, 2, 1]),
])  # (images wide enough for the flattened phase images: ``_flat_fits``)
def test_tap_products_equal_the_column_matrix(monkeypatch, n, c, m, hw, k, strides, dilations, pads):
    """Few output channels over many input ones: one product per tap of the flattened phase images
    (``_tap_products``) gives the column matrix's result to rounding, with bias and activation after it. (Where the
    direct route applies it runs these shapes, ``test_direct_conv``: kept off here.)"""
    from onyxrt.providers.cpu.nn import direct_conv

    monkeypatch.setattr(direct_conv, "applies", lambda *args: False)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((n, c, *hw)).astype(np.float32)
    w = rng.standard_normal((m, c, *k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    activation = mlas_activation_fn("Relu", [])
    args = (x, w, b, 1, list(strides), list(dilations), pads, "NOTSET", None, None, activation)
    calls = []
    real = core._tap_products
    monkeypatch.setattr(core, "_tap_products", lambda *a: calls.append(1) or real(*a))
    ours = core.float_conv(*args)
    assert calls
    monkeypatch.setattr(core, "_TAP_PRODUCTS_MAX_OUTPUTS", 0)
    columns = core.float_conv(*args)
    np.testing.assert_allclose(ours, columns, rtol=1e-5, atol=1e-4)
    reference = naive_conv(x, w, b, strides=strides, dilations=dilations, pads=pads)
    np.testing.assert_allclose(ours, np.maximum(reference, 0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("residual", [False, True])
def test_pointwise_conv_of_a_strided_view_in_the_split_mode(residual):
    """A pointwise convolution of a Slice's view (ShuffleNet's channel split) on a pool that splits products: its
    native task reads the contiguous copy of x by address, which must outlive the task (it once read freed memory)."""
    rng = np.random.default_rng(9)
    w = rng.standard_normal((12, 12, 1, 1)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    x = rng.standard_normal((8, 24, 8, 8)).astype(np.float32)
    z = rng.standard_normal((8, 12, 8, 8)).astype(np.float32) if residual else None
    view = x[:, 12:]
    want = np.einsum("mc,nchw->nmhw", w[:, :, 0, 0], view) + b[None, :, None, None] + (0 if z is None else z)
    packed = core.pack_conv_weights(w, b, {})
    with ThreadPool(2).splitting_gemms().activate():
        for _ in range(3):
            y = core.float_conv(view, w, b, 1, [1, 1], [1, 1], [0, 0, 0, 0], "NOTSET", [1, 1], packed,
                                mlas_activation_fn("Relu", None), z)
            np.testing.assert_allclose(y, np.maximum(want, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, k, s, d, pads", [
    ((2, 5, 7, 7), (3, 3), (1, 1), (1, 1), (1, 1)), ((1, 3, 9, 37), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((1, 4, 5, 6), (5, 3), (1, 1), (2, 1), (3, 0)), ((2, 3, 10, 35), (3, 3), (3, 2), (2, 2), (2, 2)),
    ((1, 2, 4, 4), (3, 3), (1, 1), (1, 1), (3, 3)), ((1, 6, 14, 14), (1, 1), (2, 2), (1, 1), (0, 0)),
])
def test_vector_column_matrix_equals_the_value_by_value_one(shape, k, s, d, pads):
    """``im2col_rows`` (runs of an input row copied a vector at a time, column stride 1 or 2) writes the column matrix
    ``conv_core._im2col_rows`` writes, leaving the rows past it as they are, serially and as a native task."""
    from onyxrt.framework.thread_pool import ThreadPool
    from onyxrt.providers.cpu.jit import optional_module, read_only

    rows = optional_module("onyxrt.providers.cpu.nn.im2col_rows")
    x = np.random.default_rng(21).standard_normal(shape).astype(np.float32)
    old = core._compiled_im2col(x)
    if rows is None or old is None:
        pytest.skip("needs numba")
    N, C, H, W = shape
    OH = (H + 2 * pads[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    OW = (W + 2 * pads[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    geometry = (k[0], k[1], s[0], s[1], d[0], d[1], pads[0], pads[1], OH, OW)
    want = np.full((N, C * k[0] * k[1] + 1, OH * OW), 7, np.float32)
    old(read_only(x), want, *geometry, 0, C)
    got = np.full_like(want, 7)
    rows.im2col_rows(x, got, *geometry, 0, C)
    np.testing.assert_array_equal(got, want)
    split = np.full_like(want, 7)
    pool = ThreadPool(2)
    try:
        keep = rows.task_args(x, split, *geometry)
        pool.run_native(rows.im2col_part.address, keep, 2)
    finally:
        pool.shutdown()
    np.testing.assert_array_equal(split, want)
