"""The compiled depthwise convolution (nn/depthwise_conv.py) against the numpy path and
onnxruntime, and the numpy fallback where numba is absent, disabled or fails."""

import importlib.util

import numpy as np
import pytest
from onnx import TensorProto, helper
from test_conv import naive_conv

import onyxrt
from onyxrt.providers.cpu import jit
from onyxrt.providers.cpu.contrib.fused import mlas_activation_fn
from onyxrt.providers.cpu.nn import conv_core as core
from onyxrt.providers.cpu.nn import depthwise_conv as dw

needs_numba = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")

RNG = np.random.default_rng(9)

# (x shape, channel multiplier, kernel, strides, dilations, pads or auto_pad)
CASES = [
    ((1, 4, 9, 11), 1, (1, 1), (1, 1), (1, 1), [0, 0, 0, 0]),
    ((1, 4, 9, 11), 1, (1, 1), (2, 2), (1, 1), [0, 0, 0, 0]),
    ((1, 5, 12, 10), 1, (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
    ((1, 5, 13, 11), 1, (3, 3), (2, 2), (1, 1), [1, 1, 1, 1]),
    ((1, 3, 14, 15), 1, (5, 5), (1, 1), (1, 1), [2, 2, 2, 2]),
    ((1, 3, 15, 14), 1, (5, 5), (2, 2), (1, 1), [2, 2, 2, 2]),
    ((1, 2, 17, 16), 1, (7, 7), (1, 1), (1, 1), [3, 3, 3, 3]),
    ((1, 2, 16, 17), 1, (7, 7), (2, 2), (1, 1), [3, 3, 3, 3]),
    ((1, 3, 12, 13), 1, (3, 3), (1, 1), (2, 2), [2, 2, 2, 2]),
    ((1, 3, 13, 12), 1, (3, 5), (2, 1), (2, 3), [1, 0, 2, 3]),
    ((1, 3, 11, 9), 1, (3, 3), (1, 2), (1, 1), [0, 1, 2, 0]),
    ((1, 3, 14, 13), 1, (3, 3), (3, 3), (1, 1), [1, 2, 0, 1]),
    ((1, 3, 14, 13), 1, (5, 3), (2, 3), (1, 2), [2, 1, 1, 0]),
    ((1, 3, 10, 9), 1, (3, 3), (1, 1), (1, 1), [2, 0, 0, 1]),
    ((1, 3, 11, 10), 1, (3, 3), (2, 2), (1, 1), "SAME_UPPER"),
    ((1, 3, 11, 10), 1, (3, 3), (2, 2), (1, 1), "SAME_LOWER"),
    ((1, 3, 11, 10), 1, (4, 4), (1, 1), (1, 1), "SAME_LOWER"),
    ((1, 3, 11, 10), 1, (3, 3), (2, 1), (1, 1), "VALID"),
    ((3, 6, 7, 5), 1, (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
    ((2, 3, 9, 8), 2, (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
    ((1, 2, 9, 9), 3, (5, 5), (2, 2), (1, 1), [2, 1, 1, 2]),
    ((1, 40, 7, 7), 1, (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
    ((1, 4, 1, 1), 1, (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
    ((2, 3, 5, 37), 1, (3, 3), (1, 1), (1, 1), [1, 1, 0, 2]),
    ((1, 3, 9, 35), 1, (3, 3), (2, 2), (1, 1), [1, 1, 0, 0]),
    ((1, 3, 6, 34), 1, (3, 3), (2, 2), (1, 1), [1, 1, 2, 1]),
    ((1, 2, 1, 33), 1, (3, 3), (2, 2), (1, 1), [1, 1, 1, 1]),
    ((1, 2, 33, 1), 1, (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
]


@pytest.fixture(params=["planar", "channels-last", "vector-blocks", "rows"])
def layout(request, monkeypatch):
    """Each test once per kernel layout (chosen by the output width and stride otherwise): the numba kernel
    planar or channels-last, ``depthwise_channels_last``'s vector blocks wherever they apply (float32,
    square filters it unrolls, activations it applies; the numba kernel elsewhere), or ``depthwise_rows`` wherever
    it applies (float32 3x3, stride 1 or 2, begin padding 1, an AVX-512 CPU) at every width."""
    monkeypatch.setattr(dw, "_ROWS_MIN_WIDTH", 0 if request.param == "rows" else 1 << 30)
    if request.param == "rows":
        return request.param
    monkeypatch.setattr(dw, "_CHANNELS_LAST_MAX_WIDTH", 1 << 30 if request.param == "channels-last" else 0)
    if request.param == "vector-blocks":
        monkeypatch.setattr(dw, "_PLANAR_MIN_WIDTH", 1 << 30)
    else:
        monkeypatch.setattr(dw, "_vector_blocks", lambda *args: None)
    return request.param


def _case(shape, multiplier, kernel, bias, dtype):
    N, C, H, W = shape
    x = RNG.standard_normal(shape).astype(dtype)
    w = RNG.standard_normal((C * multiplier, 1) + tuple(kernel)).astype(dtype)
    b = RNG.standard_normal(C * multiplier).astype(dtype) if bias else None
    return x, w, b


def _pads(auto_pad):
    return (None, auto_pad) if isinstance(auto_pad, str) else (auto_pad, "NOTSET")


def _numpy_conv(monkeypatch, *args, **kwargs):
    with monkeypatch.context() as m:
        m.setenv(jit.DISABLE_ENV, "1")
        return core.float_conv(*args, **kwargs)


def _assert_close(got, want):
    tol = 1e-5 if got.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max())))


def _model(op_type, x, w, b, domain="", **attrs):
    inputs = ["x", "w"] + (["b"] if b is not None else [])
    elem = TensorProto.FLOAT if x.dtype == np.float32 else TensorProto.DOUBLE
    inits = [helper.make_tensor("w", elem, w.shape, w.ravel())]
    if b is not None:
        inits.append(helper.make_tensor("b", elem, b.shape, b.ravel()))
    node = helper.make_node(op_type, inputs, ["y"], domain=domain, **attrs)
    graph = helper.make_graph([node], "dw", [helper.make_tensor_value_info("x", elem, x.shape)],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()


def _run_both(model, x):
    ort = pytest.importorskip("onnxruntime")
    ours = onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    theirs = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return ours, theirs


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape, multiplier, kernel, strides, dilations, pads", CASES)
def test_matches_numpy_path(monkeypatch, layout, shape, multiplier, kernel, strides, dilations, pads, bias, dtype):
    x, w, b = _case(shape, multiplier, kernel, bias, dtype)
    explicit, auto_pad = _pads(pads)
    args = (x, w, b, shape[1], list(strides), list(dilations), explicit, auto_pad, None)
    taken = []

    def recording(*a, **k):
        run = dw.depthwise_runner(*a, **k)
        taken.append(run is not None)
        return run

    monkeypatch.setattr(core, "depthwise_runner", recording)
    got = core.float_conv(*args)
    assert taken == [True] and got.flags.c_contiguous
    _assert_close(got, _numpy_conv(monkeypatch, *args))


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation, params", [
    ("Relu", None), ("LeakyRelu", [0.1]), ("Tanh", None), ("Sigmoid", None), ("Clip", [-0.5, 0.7]),
    ("HardSigmoid", [0.2, 0.5]),
])
def test_fused_activation_in_the_kernel(monkeypatch, layout, activation, params, dtype):
    x, w, b = _case((2, 6, 11, 9), 1, (3, 3), True, dtype)
    x[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    fn = mlas_activation_fn(activation, params)
    args = (x, w, b, 6, [2, 1], [1, 1], [1, 0, 1, 2], "NOTSET", None)
    got = core.float_conv(*args, activation=fn)
    want = _numpy_conv(monkeypatch, *args, activation=fn)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    _assert_close(np.nan_to_num(got), np.nan_to_num(want))


@needs_numba
def test_unknown_activation_applied_after_the_kernel():
    x, w, b = _case((1, 3, 8, 8), 1, (3, 3), True, np.float32)
    y = core.float_conv(x, w, b, 3, None, None, [1, 1, 1, 1], "NOTSET", None, activation=lambda t: np.square(t, out=t))
    plain = dw.depthwise_conv(x, w, b, [1, 1], [1, 1], [1, 1, 1, 1], [8, 8])
    _assert_close(y, plain**2)


@needs_numba
@pytest.mark.parametrize("strides", [[1, 1], [2, 2]])
@pytest.mark.parametrize("pads", [[-1, 0, 1, 1], [1, -2, 0, 2], [0, 1, 1, -1]])
def test_negative_pads(monkeypatch, layout, pads, strides):
    x, w, b = _case((1, 3, 10, 11), 1, (3, 3), True, np.float32)
    args = (x, w, b, 3, strides, [1, 1], pads, "NOTSET", None)
    _assert_close(core.float_conv(*args), _numpy_conv(monkeypatch, *args))


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_dimensional(monkeypatch, layout, dtype):
    x = RNG.standard_normal((2, 5, 23)).astype(dtype)
    w = RNG.standard_normal((10, 1, 5)).astype(dtype)
    b = RNG.standard_normal(10).astype(dtype)
    args = (x, w, b, 5, [2], [2], [3, 1], "NOTSET", None)
    got = core.float_conv(*args)
    assert dw.depthwise_conv(x, w, b, [2], [2], [3, 1], list(got.shape[2:])) is not None
    _assert_close(got, _numpy_conv(monkeypatch, *args))


@needs_numba
@pytest.mark.parametrize("shape, multiplier, kernel, strides, dilations, pads", [
    CASES[3], CASES[5], CASES[7], CASES[9], CASES[11], CASES[12], CASES[14], CASES[15], CASES[17], CASES[18],
    CASES[20],
])
def test_conv_matches_onnxruntime(shape, multiplier, kernel, strides, dilations, pads):
    """float32 (onnxruntime's CPU Conv has no float64 kernel)."""
    x, w, b = _case(shape, multiplier, kernel, True, np.float32)
    explicit, auto_pad = _pads(pads)
    attrs = dict(group=shape[1], strides=list(strides), dilations=list(dilations))
    attrs.update(pads=explicit) if explicit is not None else attrs.update(auto_pad=auto_pad)
    ours, theirs = _run_both(_model("Conv", x, w, b, **attrs), x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


@needs_numba
@pytest.mark.parametrize("activation, params", [
    ("Relu", None), ("LeakyRelu", [0.1]), ("Tanh", None), ("Sigmoid", None), ("Clip", [0.0, 6.0]),
    ("HardSigmoid", [0.2, 0.5]),
])
def test_fused_conv_matches_onnxruntime(activation, params):
    x, w, b = _case((2, 8, 13, 12), 1, (3, 3), True, np.float32)
    extra = {"activation_params": params} if params else {}
    model = _model("FusedConv", x, w, b, domain="com.microsoft", group=8, strides=[2, 2], pads=[1, 1, 1, 1],
                   activation=activation, **extra)
    ours, theirs = _run_both(model, x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


@needs_numba
@pytest.mark.parametrize("kernel, strides, width, vector", [
    ((3, 3), [1, 1], 14, True), ((5, 5), [2, 2], 112, True), ((7, 7), [1, 1], 7, True), ((1, 1), [2, 1], 20, True),
    ((3, 3), [1, 1], 56, None), ((4, 4), [1, 1], 14, False), ((3, 5), [1, 1], 14, False),
])
def test_vector_blocks_where_they_pay(kernel, strides, width, vector):
    """float32 square filters of 1, 3, 5 or 7 run in vector blocks, except wide stride-1 outputs with eight-channel
    vectors (the planar loops are as fast there; None: as the vectors' width decides), whatever the epilogue's
    activation (Sigmoid: per block after the vector kernel); float64 stays on the numba kernel."""
    if vector is None:
        from onyxrt.providers.cpu.nn import depthwise_channels_last

        vector = depthwise_channels_last.LANES == 16
    pads = [kernel[0] // 2] * 4
    assert (dw._vector_blocks(np.dtype(np.float32), kernel, 5, strides, pads, [width, width]) is not None) == vector
    assert dw._vector_blocks(np.dtype(np.float64), kernel, 5, strides, pads, [width, width]) is None
    assert (dw._vector_blocks(np.dtype(np.float32), kernel, 4, strides, pads, [width, width]) is not None) == vector
    assert dw._vector_blocks(np.dtype(np.float32), kernel, 5, strides, [0, -1, 0, 0], [width, width]) is None


@needs_numba
def test_rows_where_they_pay():
    """float32 3x3 filters, one per channel, stride 1 or 2 with a pixel of begin padding run on the planes' rows from
    rows of 24 columns on (AVX-512 CPUs); other filters, strides, dilations, pads, multipliers or dtypes do not."""
    from onyxrt.framework.cpu_features import has_flags

    f32 = np.dtype(np.float32)
    taken = dw._planar_rows(f32, (3, 3), True, [2, 2], [1, 1], [1, 1, 1, 1], 112) is not None
    assert taken == has_flags("avx512f")
    if taken:
        assert dw._planar_rows(f32, (3, 3), True, [1, 1], [1, 1], [1, 1, 0, 2], 24) is not None
    refused = [  # (dtype, kernel, one filter per channel, strides, dilations, pads, width)
        (f32, (3, 3), True, [1, 1], [1, 1], [1, 1, 1, 1], 23),
        (np.dtype(np.float64), (3, 3), True, [1, 1], [1, 1], [1, 1, 1, 1], 56),
        (f32, (5, 5), True, [1, 1], [1, 1], [2, 2, 2, 2], 56),
        (f32, (3, 3), False, [1, 1], [1, 1], [1, 1, 1, 1], 56),
        (f32, (3, 3), True, [2, 1], [1, 1], [1, 1, 1, 1], 56),
        (f32, (3, 3), True, [3, 3], [1, 1], [1, 1, 1, 1], 56),
        (f32, (3, 3), True, [1, 1], [2, 2], [1, 1, 1, 1], 56),
        (f32, (3, 3), True, [1, 1], [1, 1], [0, 1, 1, 1], 56),
        (f32, (3, 3), True, [1, 1], [1, 1], [1, 1, -1, 1], 56),
    ]
    for case in refused:
        assert dw._planar_rows(*case) is None, case


@needs_numba
@pytest.mark.parametrize("activation", [("Clip", [0.0, 6.0]), ("HardSwish", []), ("QuickGelu", [1.702]),
                                        ("Sigmoid", []), ("LeakyRelu", [0.2])])
@pytest.mark.parametrize("strides, shape", [([1, 1], (2, 19, 31, 45)), ([2, 2], (1, 37, 49, 50))])
def test_rows_activations_and_parallel_parts(monkeypatch, activation, strides, shape):
    """The row kernel with each kind of activation (in its registers: ``ir_vectors.activation``), against the numpy
    path, and its planes shared out over the pool as a native task giving the same bits as on one thread."""
    from onyxrt.framework.thread_pool import ThreadPool

    monkeypatch.setattr(dw, "_ROWS_MIN_WIDTH", 0)
    x, w, b = _case(shape, 1, (3, 3), True, np.float32)
    x[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    fn = mlas_activation_fn(*activation)
    args = (x, w, b, shape[1], list(strides), [1, 1], [1, 1, 1, 1], "NOTSET", None)
    serial = core.float_conv(*args, activation=fn)
    want = _numpy_conv(monkeypatch, *args, activation=fn)
    assert np.array_equal(np.isnan(serial), np.isnan(want))
    _assert_close(np.nan_to_num(serial), np.nan_to_num(want))
    monkeypatch.setattr(dw, "_PARALLEL", True)
    pool = ThreadPool(2)
    try:
        with pool.activate():
            parallel = core.float_conv(*args, activation=fn)
    finally:
        pool.shutdown()
    assert np.array_equal(serial, parallel, equal_nan=True)


@needs_numba
def test_vector_blocks_leave_negative_pads_to_the_planar_kernel(monkeypatch):
    """A negative pad (a crop) keeps the planar kernel: the vector blocks' padded rows start at the image."""
    x, w, b = _case((1, 5, 12, 11), 1, (3, 3), True, np.float32)
    args = (x, w, b, 5, [1, 1], [1, 1], [-1, 1, 1, -2], "NOTSET", None)
    _assert_close(core.float_conv(*args), _numpy_conv(monkeypatch, *args))


@needs_numba
@pytest.mark.parametrize("activation, params", [("Tanh", []), ("Sigmoid", []), ("HardSwish", []), ("QuickGelu", [1.702])])
@pytest.mark.parametrize("channels", [5, 8, 20])
def test_vector_blocks_apply_the_other_activations_per_block(activation, params, channels):
    """Activations the vector kernel does not apply in its registers run over each block's output planes
    (``jit_rows.channel_epilogue``): the same as the convolution followed by the activation."""
    x, w, b = _case((2, channels, 9, 9), 1, (3, 3), True, np.float32)
    assert dw._vector_blocks(np.dtype(np.float32), (3, 3), 8, [2, 2], [1, 1, 1, 1], [5, 5]) is not None
    fn = mlas_activation_fn(activation, params)
    fused = core.float_conv(x, w, b, channels, [2, 2], None, [1, 1, 1, 1], "NOTSET", None, activation=fn)
    plain = dw.depthwise_conv(x, w, b, [2, 2], [1, 1], [1, 1, 1, 1], [5, 5])
    fn(plain)
    np.testing.assert_allclose(fused, plain, rtol=1e-6, atol=5e-7)  # (numpy's tanh against the kernels' fit)


@needs_numba
@pytest.mark.parametrize("channels", [1, 7, 8, 9, 15, 16, 17, 20, 33])
@pytest.mark.parametrize("width", [1, 5, 7, 8, 9, 13, 16, 17])
def test_vector_blocks_partial_blocks_and_transpose_tails(monkeypatch, channels, width):
    """Channel counts around the 8- or 16-channel block and row widths around the 8-pixel transpose (narrower
    rows transposed as whole planes, wider ones row by row with an overlapping last transpose)."""
    x, w, b = _case((2, channels, width + 2, width), 1, (3, 3), True, np.float32)
    x[0, 0].flat[0] = np.nan
    fn = mlas_activation_fn("Clip", [-0.5, 0.7])
    args = (x, w, b, channels, [1, 1], [1, 1], [1, 1, 1, 1], "NOTSET", None)
    assert dw._vector_blocks(np.dtype(np.float32), (3, 3), 5, [1, 1], [1, 1, 1, 1], [width + 2, width]) is not None
    got = core.float_conv(*args, activation=fn)
    want = _numpy_conv(monkeypatch, *args, activation=fn)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    _assert_close(np.nan_to_num(got), np.nan_to_num(want))


@needs_numba
def test_parallel_planes_match_serial(monkeypatch, layout):
    from onyxrt.framework.thread_pool import ThreadPool

    x, w, b = _case((3, 21, 40, 40), 1, (3, 3), True, np.float32)  # chunks that cross images
    serial = dw.depthwise_conv(x, w, b, [1, 1], [1, 1], [1, 1, 1, 1], [40, 40])
    monkeypatch.setattr(dw, "_PARALLEL", True)
    pool = ThreadPool(2)
    try:
        with pool.activate():
            parallel = dw.depthwise_conv(x, w, b, [1, 1], [1, 1], [1, 1, 1, 1], [40, 40])
    finally:
        pool.shutdown()
    assert np.array_equal(serial, parallel)


@needs_numba
@pytest.mark.parametrize("activation", [("Clip", [0.0, 6.0]), ("HardSwish", [])])
@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("shape", [(2, 35, 64, 64), (1, 5, 96, 96)])
def test_parallel_blocks_with_activations(monkeypatch, activation, native, shape):
    """The vector blocks shared out over the pool (a native task: whole blocks of channels per part, or one block's
    rows cut in runs where there are fewer blocks than threads; Python tasks where the pool runs none) with an
    activation in the registers and one applied per band after them."""
    from onyxrt.framework.thread_pool import ThreadPool

    x, w, b = _case(shape, 1, (3, 3), True, np.float32)  # (enough work to be split; partial blocks)
    fn = mlas_activation_fn(*activation)
    out_sp = [shape[2] // 2, shape[3] // 2]
    serial = dw.depthwise_conv(x, w, b, [2, 2], [1, 1], [1, 1, 1, 1], out_sp, activation=fn)
    monkeypatch.setattr(dw, "_PARALLEL", True)
    if not native:
        monkeypatch.setattr(ThreadPool, "runs_native_tasks", property(lambda self: False))
    pool = ThreadPool(2)
    try:
        with pool.activate():
            parallel = dw.depthwise_conv(x, w, b, [2, 2], [1, 1], [1, 1, 1, 1], out_sp, activation=fn)
    finally:
        pool.shutdown()
    assert np.array_equal(serial, parallel)


# --------------------------------------------------------------------------- the numpy fallback


def test_disabled_by_environment(monkeypatch):
    x, w, b = _case((1, 3, 8, 8), 1, (3, 3), True, np.float32)
    monkeypatch.setenv(jit.DISABLE_ENV, "1")
    assert not dw.enabled()
    assert dw.depthwise_conv(x, w, b, [1, 1], [1, 1], [1, 1, 1, 1], [8, 8]) is None
    y = core.float_conv(x, w, b, 3, None, None, [1, 1, 1, 1], "NOTSET", None)
    np.testing.assert_allclose(y, naive_conv(x, w, b, pads=[1, 1, 1, 1], group=3), rtol=1e-5, atol=1e-5)


def test_numba_missing(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_numba(name, *args, **kwargs):
        if name == "numba" or name.startswith("numba."):
            raise ImportError("no numba here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(dw._KERNEL, "kernel", None)
    monkeypatch.setattr(dw._KERNEL, "failed", False)
    monkeypatch.setattr(jit, "_OPTIONAL_MODULES", {})  # (lookups failing here must not stay cached)
    monkeypatch.setattr(builtins, "__import__", no_numba)
    x, w, b = _case((1, 3, 8, 8), 1, (3, 3), True, np.float32)
    assert not dw.enabled() and dw._KERNEL.failed
    y = core.float_conv(x, w, b, 3, None, None, [1, 1, 1, 1], "NOTSET", None)
    np.testing.assert_allclose(y, naive_conv(x, w, b, pads=[1, 1, 1, 1], group=3), rtol=1e-5, atol=1e-5)


def test_compile_failure_falls_back(monkeypatch):
    def broken(*args):
        raise RuntimeError("cannot compile")  # (numba's compile errors have no common base)

    monkeypatch.setattr(dw._KERNEL, "kernel", broken)
    monkeypatch.setattr(dw._KERNEL, "failed", False)
    monkeypatch.setattr(dw._KERNEL, "compiled", set())
    x, w, b = _case((1, 3, 8, 8), 1, (3, 3), True, np.float64)
    assert dw.depthwise_conv(x, w, b, [1, 1], [1, 1], [1, 1, 1, 1], [8, 8]) is None
    assert dw._KERNEL.failed and not dw.enabled()
    y = core.float_conv(x, w, b, 3, None, None, [1, 1, 1, 1], "NOTSET", None)
    np.testing.assert_allclose(y, naive_conv(x, w, b, pads=[1, 1, 1, 1], group=3), rtol=1e-12)


@needs_numba
def test_no_writable_cache_directory(monkeypatch):
    """numba refuses ``cache=True`` when no cache directory is writable: the kernel then
    compiles without a disk cache."""
    import numba

    real_njit = numba.njit

    def njit(*args, **kwargs):
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function: no locator available")
        return real_njit(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", njit)
    monkeypatch.setattr(dw._KERNEL, "kernel", None)
    monkeypatch.setattr(dw._KERNEL, "compiled", set())
    x, w, b = _case((1, 3, 8, 8), 1, (3, 3), True, np.float32)
    y = dw.depthwise_conv(x, w, b, [1, 1], [1, 1], [1, 1, 1, 1], [8, 8])
    assert y is not None and not dw._KERNEL.failed
    np.testing.assert_allclose(y, naive_conv(x, w, b, pads=[1, 1, 1, 1], group=3), rtol=1e-5, atol=1e-5)


def test_not_taken_for_3d_or_float16():
    x = RNG.standard_normal((1, 2, 4, 5, 6)).astype(np.float32)
    w = RNG.standard_normal((2, 1, 3, 3, 3)).astype(np.float32)
    assert dw.depthwise_conv(x, w, None, [1] * 3, [1] * 3, [1] * 6, [4, 5, 6]) is None
    x2 = RNG.standard_normal((1, 2, 4, 5)).astype(np.float16)
    assert dw.depthwise_conv(x2, w[..., 0].astype(np.float16), None, [1, 1], [1, 1], [1] * 4, [4, 5]) is None
