"""Unit tests for onyxrt.providers.cpu.nn.pool."""

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onyxrt.providers.cpu.nn import pool as p

ort = pytest.importorskip("onnxruntime")

rng = np.random.default_rng(0)

_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.uint8): TensorProto.UINT8,
          np.dtype(np.int8): TensorProto.INT8, np.dtype(np.int64): TensorProto.INT64}


def run_ort(op_type, inputs, n_out=1, opset=22, **attrs):
    names = [f"i{j}" for j in range(len(inputs))]
    outs = ["y", "ind"][:n_out]
    node = helper.make_node(op_type, names, outs, **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, _TYPES[v.dtype], v.shape) for n, v in zip(names, inputs)],
        [onnx.ValueInfoProto(name=o) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip(names, inputs)))


CONFIGS = [
    dict(kernel_shape=[3], strides=[2], pads=[1, 0]),
    dict(kernel_shape=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    dict(kernel_shape=[3, 2], strides=[2, 3], pads=[0, 1, 1, 0], ceil_mode=1),
    dict(kernel_shape=[2, 2], strides=[1, 1], dilations=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[3, 3], dilations=[2, 1], pads=[2, 1, 2, 1], ceil_mode=1),
    dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(kernel_shape=[2, 3], auto_pad="SAME_LOWER", strides=[2, 1]),
    dict(kernel_shape=[3, 3], auto_pad="VALID", strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[2, 2, 2], strides=[2, 1, 2], pads=[1, 0, 0, 0, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], dilations=[2, 2], auto_pad="SAME_UPPER", ceil_mode=1),
]


def _input_for(cfg, dtype=np.float32):
    nd = len(cfg["kernel_shape"])
    shape = (2, 3) + (9, 8, 7)[:nd]
    if dtype == np.float32:
        return rng.standard_normal(shape).astype(np.float32)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_max_pool_with_indices_matches_onnxruntime(cfg):
    x = _input_for(cfg)
    y, ind = p.max_pool(x, **cfg, _num_outputs=2)
    ry, rind = run_ort("MaxPool", [x], 2, **cfg)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(ind, rind)
    (y1,) = p.max_pool(x, **cfg)
    np.testing.assert_array_equal(y1, ry)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_max_pool_int8(dtype):
    cfg = CONFIGS[3]
    x = _input_for(cfg, dtype)
    (y,) = p.max_pool(x, **cfg)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, run_ort("MaxPool", [x], 1, **cfg)[0])


def test_max_pool_storage_order_and_hand_values():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    y, ind = p.max_pool(x, kernel_shape=[2, 2], strides=[2, 2], _num_outputs=2)
    np.testing.assert_array_equal(y, [[[[5, 7], [13, 15]]]])
    np.testing.assert_array_equal(ind, [[[[5, 7], [13, 15]]]])
    _, ind_cm = p.max_pool(x, kernel_shape=[2, 2], strides=[2, 2], storage_order=1, _num_outputs=2)
    np.testing.assert_array_equal(ind_cm, [[[[5, 13], [7, 15]]]])  # h + w * H
    # legacy versions
    np.testing.assert_array_equal(p.max_pool_1(x, kernel_shape=[2, 2], strides=[2, 2]), y)
    y8, ind8 = p.max_pool_8(x, kernel_shape=[2, 2], strides=[2, 2], _num_outputs=2)
    np.testing.assert_array_equal(ind8, ind)
    yb = p.max_pool(x.astype(ml_dtypes.bfloat16), kernel_shape=[2, 2])[0]
    assert yb.dtype == ml_dtypes.bfloat16


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("cip", [0, 1])
def test_average_pool_matches_onnxruntime(cfg, cip):
    x = _input_for(cfg)
    y = p.average_pool(x, **cfg, count_include_pad=cip)
    ref = run_ort("AveragePool", [x], 1, **cfg, count_include_pad=cip)[0]
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("pv", [1, 2, 3])
def test_lp_pool_matches_onnxruntime(cfg, pv):
    x = _input_for(cfg)
    y = p.lp_pool(x, **cfg, p=pv)
    ref = run_ort("LpPool", [x], 1, **cfg, p=pv)[0]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_average_pool_legacy_versions():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    y = p.average_pool_1(x, kernel_shape=[2, 2], pads=[1, 1, 1, 1], strides=[2, 2])
    np.testing.assert_allclose(y, [[[[0, 1.5, 3], [6, 7.5, 9], [12, 13.5, 15]]]])
    y7 = p.average_pool_7(x, kernel_shape=[2, 2], pads=[1, 1, 1, 1], strides=[2, 2], count_include_pad=1)
    np.testing.assert_allclose(y7, [[[[0, 0.75, 0.75], [3, 7.5, 4.5], [3, 6.75, 3.75]]]])
    y16 = p.average_pool(x.astype(np.float16), kernel_shape=[2, 2])
    assert y16.dtype == np.float16


def test_global_pools():
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(p.global_average_pool(x), x.mean(axis=(2, 3), keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(p.global_max_pool(x), x.max(axis=(2, 3), keepdims=True))
    np.testing.assert_allclose(p.global_lp_pool(x, p=2), np.sqrt((x * x).sum(axis=(2, 3), keepdims=True)), rtol=1e-5)
    np.testing.assert_allclose(p.global_lp_pool(x, p=3), run_ort("GlobalLpPool", [x], 1, opset=2, p=3)[0], rtol=1e-5)
    np.testing.assert_allclose(p.global_lp_pool_1(x, p=1.0), np.abs(x).sum(axis=(2, 3), keepdims=True), rtol=1e-5)
    assert p.global_average_pool(x.astype(np.float16)).dtype == np.float16
    assert p.global_average_pool(x[:, :, :, 0]).shape == (2, 3, 1)


def test_max_unpool_roundtrip_and_output_shape():
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    y, ind = p.max_pool(x, kernel_shape=[2, 2], strides=[2, 2], _num_outputs=2)
    up = p.max_unpool(y, ind, kernel_shape=[2, 2], strides=[2, 2])
    assert up.shape == x.shape
    np.testing.assert_array_equal(up.reshape(-1)[ind.reshape(-1)], y.reshape(-1))
    assert np.count_nonzero(up) == y.size
    # With a larger output_shape the indices (into the pooled-from 4x4 tensor) keep their
    # spatial coordinates, as the ONNX reference does (onnxruntime reuses the flat index).
    xs = np.array([[[[5.0, 6.0], [7.0, 8.0]]]], np.float32)
    xi = np.array([[[[5, 7], [13, 15]]]], np.int64)
    up5 = p.max_unpool(xs, xi, np.array([1, 1, 5, 5]), kernel_shape=[2, 2], strides=[2, 2])
    expected = np.zeros((1, 1, 5, 5), np.float32)
    expected[0, 0, 1, 1], expected[0, 0, 1, 3], expected[0, 0, 3, 1], expected[0, 0, 3, 3] = 5, 6, 7, 8
    np.testing.assert_array_equal(up5, expected)


def test_max_roi_pool():
    x = np.arange(2 * 1 * 6 * 6, dtype=np.float32).reshape(2, 1, 6, 6)
    rois = np.array([[0, 0, 0, 5, 5], [1, 2, 2, 3, 3]], np.float32)
    y = p.max_roi_pool(x, rois, pooled_shape=[2, 2])
    assert y.shape == (2, 1, 2, 2)
    np.testing.assert_array_equal(y[0, 0], [[14, 17], [32, 35]])
    np.testing.assert_array_equal(y[1, 0], x[1, 0, 2:4, 2:4])


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint8, np.float64])
@pytest.mark.parametrize("width", [9, 10])
@pytest.mark.parametrize("ceil_mode", [0, 1])
def test_stride2_last_axis_split_into_even_odd_matches_naive(dtype, width, ceil_mode):
    """Stride 2 along the last axis reads even/odd position arrays (4-byte items); same values."""
    x = (rng.standard_normal((2, 3, 7, width)) * 50).astype(dtype)
    for k, d, pads in (([3, 3], [1, 1], [1, 1, 1, 1]), ([2, 4], [1, 2], [0, 1, 1, 2]), ([1, 3], [1, 1], [0, 0, 0, 0])):
        attrs = dict(kernel_shape=k, strides=[1, 2], dilations=d, pads=pads, ceil_mode=ceil_mode)
        (y,) = p.max_pool(x, **attrs)
        low = np.iinfo(dtype).min if np.dtype(dtype).kind in "iu" else -np.inf
        xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2] + 4), (pads[1], pads[3] + 4)), constant_values=low)
        ref = np.full(y.shape, low, dtype=dtype)
        for i in range(k[0]):
            for j in range(k[1]):
                win = xp[:, :, i * d[0] : i * d[0] + y.shape[2], j * d[1] : j * d[1] + 2 * y.shape[3] : 2]
                ref = np.maximum(ref, win)
        np.testing.assert_array_equal(y, ref)
        if np.dtype(dtype).kind == "f":
            a = p.average_pool(x, **attrs)
            b = p.average_pool(np.ascontiguousarray(x[..., ::-1])[..., ::-1], **attrs)  # a strided input: no pair split
            np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int8])
@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 2, 1, 0], dilations=[2, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[3, 2], auto_pad="SAME_UPPER", strides=[3, 1]),
    dict(kernel_shape=[1, 1], strides=[2, 2]),
])
def test_compiled_max_pool_equals_the_numpy_path(monkeypatch, dtype, attrs):
    """The compiled 2-D MaxPool (small windows, no Indices) gives the numpy path's values, NaN included."""
    pytest.importorskip("numba")
    x = (rng.standard_normal((2, 3, 7, 8)) * 50).astype(dtype)
    if dtype in (np.float32, np.float64):
        x[0, 1, 2, 3] = np.nan
    taken = []
    compiled = p._compiled_max_pool
    monkeypatch.setattr(p, "_compiled_max_pool", lambda *a: taken.append(1) or compiled(*a))
    ours = p.max_pool(x, **attrs)[0]
    assert taken and ours.dtype == x.dtype
    monkeypatch.setattr(p, "_compiled_max_pool", lambda *a: None)
    np.testing.assert_array_equal(ours, p.max_pool(x, **attrs)[0])
    if dtype in (np.uint8, np.int8):  # (onnxruntime's float MaxPool does not propagate NaN)
        np.testing.assert_array_equal(ours, run_ort("MaxPool", [x], **attrs)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    dict(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 2, 1, 0], dilations=[2, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[3, 2], auto_pad="SAME_UPPER", strides=[3, 1]),
])
def test_compiled_average_pool_equals_the_numpy_path(monkeypatch, dtype, attrs):
    """The compiled 2-D AveragePool gives the numpy path's values (to rounding: it sums in another order),
    NaN included, and onnxruntime's for float32."""
    pytest.importorskip("numba")
    x = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    if dtype == np.float32:
        x[0, 1, 2, 3] = np.nan
    taken = []
    compiled = p._compiled_average_pool
    monkeypatch.setattr(p, "_compiled_average_pool", lambda *a: taken.append(1) or compiled(*a))
    ours = p.average_pool(x, **attrs)
    assert taken and ours.dtype == x.dtype
    monkeypatch.setattr(p, "_compiled_average_pool", lambda *a: None)
    np.testing.assert_allclose(ours, p.average_pool(x, **attrs), rtol=1e-6, atol=1e-7, equal_nan=True)
    if dtype == np.float32 and "dilations" not in attrs:
        np.testing.assert_allclose(ours, run_ort("AveragePool", [x], **attrs)[0], rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("kind", ["max", "average"])
def test_pools_split_over_a_pool_that_owns_the_cores(kind):
    """In the split-GEMM mode a large 2-D pool's planes are shared over the pool's threads (views of whole planes
    per part): the same results as on one thread, across images and odd plane counts."""
    from onyxrt.framework.thread_pool import ThreadPool
    from onyxrt.providers.cpu.nn import pool as pool_ops

    x = np.random.default_rng(7).standard_normal((3, 21, 48, 46)).astype(np.float32)  # 313K window taps

    def run():
        if kind == "max":
            return pool_ops._max_pool(x, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1], "NOTSET", 0, 0, False)[0]
        return pool_ops.average_pool(x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])

    serial = run()
    split_pool = ThreadPool(2).splitting_gemms()
    calls = []
    real, real_native = split_pool.run_chunks, split_pool.run_native
    split_pool.run_chunks = lambda *args: calls.append(1) or real(*args)
    # (float32 3x3 MaxPool runs in the depthwise vector blocks, shared out as a native task)
    split_pool.run_native = lambda *args: calls.append(1) or real_native(*args)
    try:
        with split_pool.activate():
            split = run()
    finally:
        split_pool.shutdown()
    assert calls or not pool_ops._MAX_POOL_2D.enabled()
    np.testing.assert_array_equal(split, serial)


def test_global_average_pool_split_over_the_pool():
    """In a pool that splits products, large float32 inputs' plane means run as a native task (each part its
    planes), equal to the serial GEMV's within rounding."""
    from onyxrt.framework.thread_pool import ThreadPool

    x = np.random.default_rng(3).standard_normal((2, 640, 7, 7)).astype(np.float32)
    pool = ThreadPool(2).splitting_gemms()
    with pool.activate():
        y = p.global_average_pool(x)
    pool.shutdown()
    assert y.shape == (2, 640, 1, 1) and y.dtype == np.float32
    np.testing.assert_allclose(y, x.mean(axis=(2, 3), keepdims=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, k, s, pads, ceil", [
    ((1, 17, 10, 10), 3, 1, [1, 0, 1, 2], 0), ((8, 24, 16, 16), 3, 2, [1] * 4, 0), ((2, 5, 9, 11), 2, 2, [0] * 4, 0),
    ((1, 20, 9, 9), 3, 2, [0] * 4, 1), ((1, 3, 7, 8), 2, 2, [0] * 4, 1), ((1, 40, 13, 13), 3, 2, [0, 1, 2, 0], 1),
    ((2, 33, 20, 21), 2, 1, [0] * 4, 0), ((1, 16, 12, 12), 3, 2, [1] * 4, 0),
])
@pytest.mark.parametrize("split", [False, True])
def test_max_pool_in_vector_blocks_matches_onnxruntime(shape, k, s, pads, ceil, split):
    """float32 2x2 and 3x3 MaxPool in the depthwise convolutions' vector blocks (partial blocks of channels, uneven
    pads, ceil_mode, serial and split over a pool; the stride-2 windows ``max_pool_rows`` takes run there) equals
    onnxruntime's."""
    from onyxrt.framework.thread_pool import ThreadPool

    x = np.random.default_rng(11).standard_normal(shape).astype(np.float32)
    want = run_ort("MaxPool", [x], 1, opset=13, kernel_shape=[k, k], strides=[s, s], pads=pads, ceil_mode=ceil)[0]
    pool = ThreadPool(2).splitting_gemms() if split else ThreadPool(1)
    with pool.activate():
        got = p._max_pool(x, [k, k], [s, s], [1, 1], pads, "NOTSET", ceil, 0, False)[0]
    pool.shutdown()
    np.testing.assert_array_equal(got, want)


def _windows_max(x: np.ndarray, k: int, pad: int, out_hw: tuple) -> np.ndarray:
    """A k x k / 2 MaxPool by np.maximum over -inf-padded taps (NaN where a window holds one)."""
    n, c, h, w = x.shape
    padded = np.full((n, c, h + 2 * k + 2, w + 2 * k + 2), -np.inf, np.float32)
    padded[:, :, pad:pad + h, pad:pad + w] = x
    oh, ow = out_hw
    y = np.full((n, c, oh, ow), -np.inf, np.float32)
    for i in range(k):
        for j in range(k):
            y = np.maximum(y, padded[:, :, i:i + 2 * (oh - 1) + 1:2, j:j + 2 * (ow - 1) + 1:2])
    return y


@pytest.mark.parametrize("shape", [(8, 24, 16, 16), (2, 3, 15, 17), (1, 2, 1, 1), (1, 2, 33, 70), (3, 5, 7, 1),
                                   (1, 64, 40, 40)])
@pytest.mark.parametrize("k, ceil", [(3, 0), (3, 1), (2, 0), (2, 1)])
@pytest.mark.parametrize("split", [False, True])
def test_stride2_max_pool_on_the_planes_rows(monkeypatch, shape, k, ceil, split):
    """float32 3x3 / 2 (begin padding 1) and 2x2 / 2 MaxPools run ``max_pool_rows``' row kernel: rows of one to
    several 32-column chunks, odd sizes, ceil_mode, NaN kept, serial and as a native task split over a pool."""
    from onyxrt.framework.thread_pool import ThreadPool
    from onyxrt.providers.cpu.jit import optional_module

    if optional_module("onyxrt.providers.cpu.nn.max_pool_rows") is None:
        pytest.skip("numba cannot compile the row kernel here")
    pad = k - 2
    if min(shape[2:]) + 2 * pad < k:
        pytest.skip("a window larger than the padded input")
    x = np.random.default_rng(12).standard_normal(shape).astype(np.float32)
    x.reshape(-1)[x.size // 2] = np.nan
    taken = []
    real = p._row_max_pool
    monkeypatch.setattr(p, "_row_max_pool", lambda *a: taken.append(1) or real(*a))
    monkeypatch.setattr(p, "_PARALLEL_POOL_WORK", 0)
    pool = ThreadPool(2).splitting_gemms() if split else ThreadPool(1)
    with pool.activate():
        got = p._max_pool(x, [k, k], [2, 2], [1, 1], [pad] * 4, "NOTSET", ceil, 0, False)[0]
    pool.shutdown()
    assert taken or min(shape[2:]) == 1  # (a plane one pixel wide or high: its windows' unreachable taps trimmed)
    np.testing.assert_array_equal(got, _windows_max(x, k, pad, got.shape[2:]))
    if ceil == 0:
        x[np.isnan(x)] = 0.0  # (onnxruntime's float MaxPool does not propagate NaN)
        want = run_ort("MaxPool", [x], 1, opset=13, kernel_shape=[k, k], strides=[2, 2], pads=[pad] * 4)[0]
        with ThreadPool(1).activate():
            np.testing.assert_array_equal(p._max_pool(x, [k, k], [2, 2], [1, 1], [pad] * 4, "NOTSET", 0, 0, False)[0],
                                          want)


@pytest.mark.parametrize("opset", [1, 8, 22])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_max_pool_routes_per_input_shape_in_a_session(cfg, opset):
    """A session's MaxPool node works its geometry out once per input shape and dtype (``_max_pool_fast_path``):
    onnxruntime's results for inputs whose shapes change between runs (one of them again), the opset-1 kernel's
    single output included."""
    import onyxrt

    attrs = dict(cfg)
    if opset < 10 and (attrs.get("ceil_mode") or "dilations" in attrs):
        pytest.skip("ceil_mode and dilations came in MaxPool-10")
    node = helper.make_node("MaxPool", ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    session = onyxrt.InferenceSession(model.SerializeToString())
    assert session._plan._steps[0][0].__qualname__ == "_max_pool_fast_path.<locals>.pooled"
    nd = len(cfg["kernel_shape"])
    for spatial in [(9, 8, 7), (12, 10, 9), (9, 8, 7), (7, 16, 5)]:
        x = rng.standard_normal((2, 3) + spatial[:nd]).astype(np.float32)
        expected = run_ort("MaxPool", [x], opset=max(opset, 7), **attrs)[0]
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], expected)


def test_max_pool_route_raises_the_kernels_errors():
    import onyxrt

    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[3, 0, 0, 0])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    session = onyxrt.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
                                      .SerializeToString())
    with pytest.raises(onyxrt.errors.OnyxRuntimeError, match="must be smaller than kernel_shape"):
        session.run(None, {"x": np.ones((1, 1, 8, 8), np.float32)})
