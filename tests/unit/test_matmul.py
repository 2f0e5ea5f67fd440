"""Unit tests for onyxrt.providers.cpu.math.matmul."""

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from ort_int8 import non_saturating_int8

from onyxrt.providers.cpu.gemm import GEMV_MAX_ROWS
from onyxrt.providers.cpu.math import matmul as mm

rng = np.random.default_rng(0)

_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.uint8): TensorProto.UINT8,
          np.dtype(np.int8): TensorProto.INT8, np.dtype(np.int32): TensorProto.INT32}


def run_ort(op_type, inputs, opset=21, **attrs):
    ort = pytest.importorskip("onnxruntime")
    names = [f"i{j}" if v is not None else "" for j, v in enumerate(inputs)]
    node = helper.make_node(op_type, names, ["y"], **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, _TYPES[v.dtype], v.shape) for n, v in zip(names, inputs) if v is not None],
        [onnx.ValueInfoProto(name="y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {n: v for n, v in zip(names, inputs) if v is not None})[0]


@pytest.mark.parametrize("sa,sb", [((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 4)), ((2, 3), (3, 4)),
                                   ((5, 2, 3), (3, 4)), ((1, 2, 3), (5, 3, 4)), ((2, 1, 2, 3), (3, 3, 2))])
def test_matmul_shapes(sa, sb):
    a = rng.standard_normal(sa).astype(np.float32)
    b = rng.standard_normal(sb).astype(np.float32)
    y = mm.matmul(a, b)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    np.testing.assert_allclose(y, np.matmul(a, b), rtol=1e-5)


def test_matmul_dtypes():
    a = rng.standard_normal((4, 5))
    b = rng.standard_normal((5, 3))
    for dt in (np.float16, ml_dtypes.bfloat16):
        y = mm.matmul(a.astype(dt), b.astype(dt))
        assert y.dtype == dt
        np.testing.assert_allclose(y.astype(np.float64), a.astype(dt).astype(np.float64) @ b.astype(dt).astype(np.float64),
                                   rtol=2e-2, atol=2e-2)
    ai = np.arange(6, dtype=np.int64).reshape(2, 3)
    y = mm.matmul(ai, ai.T)
    assert y.dtype == np.int64 and y.tolist() == [[5, 14], [14, 50]]
    assert mm.matmul(np.ones(3, np.int32), np.ones(3, np.int32)).dtype == np.int32
    with pytest.raises(TypeError):
        mm.matmul(np.ones(3, np.float32), np.ones(3, np.float64))


def test_gemm():
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    c = rng.standard_normal((5,)).astype(np.float32)
    y = mm.gemm(a, b, c, alpha=2.0, beta=0.5, transB=1)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, 2 * a @ b.T + 0.5 * c, rtol=1e-5, atol=1e-6)
    y = mm.gemm(a.T.copy(), b.T.copy(), None, transA=1)
    np.testing.assert_allclose(y, a @ b.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mm.gemm(a, b.T, np.float32(3.0).reshape(1, 1)), a @ b.T + 3, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mm.gemm_legacy(a, b, c.reshape(1, 5), broadcast=1, transB=1), a @ b.T + c, rtol=1e-5, atol=1e-6)
    yi = mm.gemm(np.ones((2, 2), np.int32), np.ones((2, 2), np.int32), np.ones((2, 2), np.int32), alpha=2.0)
    assert yi.dtype == np.int32 and yi.tolist() == [[5, 5], [5, 5]]
    y16 = mm.gemm(a.astype(np.float16), b.astype(np.float16), None, transB=1)
    assert y16.dtype == np.float16
    with pytest.raises(ValueError):
        mm.gemm(a, b, None)
    # inputs are not mutated
    a.flags.writeable = False
    c.flags.writeable = False
    mm.gemm(a, b, c, transB=1, alpha=3.0, beta=2.0)


def test_matmul_integer():
    a = np.array([[11, 7, 3], [10, 6, 2], [9, 5, 1], [8, 4, 0]], np.uint8)
    b = np.array([[1, 4], [2, 5], [3, 6]], np.uint8)
    y = mm.matmul_integer(a, b, np.array(12, np.uint8), np.array(0, np.uint8))
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, (a.astype(int) - 12) @ b.astype(int))
    # per-row a zero point, per-column b zero point, batched A
    a = rng.integers(0, 255, (2, 4, 5), dtype=np.uint8)
    # weights halved: onnxruntime's u8s8 pair sums saturate for full-range int8 on CPUs without VNNI
    b = non_saturating_int8(rng.integers(-128, 127, (5, 3), dtype=np.int8))
    az = np.array(7, np.uint8)
    bz = np.array([1, -2, 3], np.int8)
    ref = run_ort("MatMulInteger", [a, b, az, bz])
    np.testing.assert_array_equal(ref, (a.astype(np.int64) - 7) @ (b.astype(np.int64) - bz))
    np.testing.assert_array_equal(mm.matmul_integer(a, b, az, bz), ref)
    a2 = a[0]
    az_rows = np.array([1, 2, 3, 4], np.uint8)
    np.testing.assert_array_equal(mm.matmul_integer(a2, b, az_rows, None),
                                  (a2.astype(int) - az_rows[:, None]) @ b.astype(int))


@pytest.mark.parametrize("ta,tb,ty", [(np.uint8, np.uint8, np.uint8), (np.int8, np.int8, np.int8),
                                      (np.uint8, np.int8, np.uint8)])
def test_qlinear_matmul_matches_onnxruntime(ta, tb, ty):
    def q(dt, shape):
        i = np.iinfo(dt)
        return rng.integers(i.min, i.max, shape, dtype=dt)

    a, b = q(ta, (2, 3, 8)), q(tb, (8, 5))
    inputs = [a, np.array(0.05, np.float32), np.array(3, ta), b, np.array(0.02, np.float32), np.array(1, tb),
              np.array(0.3, np.float32), np.array(10, ty)]
    y = mm.qlinear_matmul_10(*inputs)
    ref = run_ort("QLinearMatMul", inputs, opset=10)
    assert y.dtype == ty and y.shape == ref.shape
    assert np.abs(y.astype(int) - ref.astype(int)).max() <= 1
    np.testing.assert_array_equal(mm.qlinear_matmul_21(*inputs), y)


def test_qlinear_matmul_hand_computed():
    a = np.array([[208, 236, 0, 238], [3, 214, 255, 29]], np.uint8)
    b = np.array([[152, 51, 244], [60, 26, 255], [0, 127, 246], [127, 254, 247]], np.uint8)
    y = mm.qlinear_matmul_10(a, np.array(0.0066, np.float32), np.array(113, np.uint8), b,
                             np.array(0.00705, np.float32), np.array(114, np.uint8),
                             np.array(0.0107, np.float32), np.array(118, np.uint8))
    np.testing.assert_array_equal(y, [[168, 115, 255], [1, 66, 151]])


def test_qlinear_matmul_float8():
    f8 = ml_dtypes.float8_e4m3fn
    a = np.array([[1.0, 2.0], [3.0, 4.0]]).astype(f8)
    b = np.array([[1.0, 0.0], [0.0, 1.0]]).astype(f8)
    zero = np.array(0, f8)
    one = np.array(1.0, np.float32)
    y = mm.qlinear_matmul_21(a, one, zero, b, one, zero, np.array(2.0, np.float32), zero)
    assert y.dtype == f8
    np.testing.assert_array_equal(y.astype(np.float32), [[0.5, 1.0], [1.5, 2.0]])
    with pytest.raises(TypeError):
        mm.qlinear_matmul_10(a, one, zero, b, one, zero, one, zero)


# --------------------------------------------------------------------------- prepared constant B


def _session(op_type, a, b, c=None, **attrs):
    import onyxrt

    tmap = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
            np.dtype(np.float64): TensorProto.DOUBLE}
    inits = [onnx.numpy_helper.from_array(b, "b")] + ([onnx.numpy_helper.from_array(c, "c")] if c is not None else [])
    node = helper.make_node(op_type, ["a", "b"] + (["c"] if c is not None else []), ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", tmap[a.dtype], a.shape)],
                              [onnx.ValueInfoProto(name="y")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onyxrt.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("transB", [0, 1])
def test_gemm_with_constant_b_is_prepacked(dtype, transB):
    a = rng.standard_normal((3, 4)).astype(dtype)
    b = rng.standard_normal((5, 4) if transB else (4, 5)).astype(dtype)
    c = rng.standard_normal(5).astype(dtype)
    packed = mm.gemm_prepack([None, b, c], {"transB": transB})
    if dtype != np.float16 and not transB:
        assert packed is None  # already contiguous in the compute dtype: nothing to prepare
    else:
        assert packed.value.flags.c_contiguous and not packed.value.flags.writeable
    want = mm.gemm(a, b, c, alpha=0.5, beta=2.0, transB=transB)
    np.testing.assert_array_equal(mm.gemm(a, b, c, alpha=0.5, beta=2.0, transB=transB, _packed=packed), want)
    got = _session("Gemm", a, b, c, alpha=0.5, beta=2.0, transB=transB).run(None, {"a": a})[0]
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)


def test_matmul_with_constant_half_b_is_prepacked():
    a = rng.standard_normal((2, 3, 4)).astype(np.float16)
    b = rng.standard_normal((4, 5)).astype(np.float16)
    packed = mm._matmul_prepack([None, b], {})
    assert packed.value.dtype == np.float32
    np.testing.assert_array_equal(mm.matmul(a, b, _packed=packed), mm.matmul(a, b))
    np.testing.assert_array_equal(_session("MatMul", a, b).run(None, {"a": a})[0], mm.matmul(a, b))
    single = b.astype(np.float32)
    assert np.shares_memory(mm._matmul_prepack([None, single], {}).value, single)  # float32: kept as it is
    assert mm._matmul_prepack([None, np.ones((2, 2), np.int32)], {}) is None


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_gemv_runs_on_a_transposed_copy_of_a_constant_b(rows):
    """A product of at most GEMV_MAX_ROWS rows by a constant float32 B multiplies B's transposed copy (made once, at
    the first such product): equal to numpy's product to BLAS's summation order; more rows, and a B wider than
    GEMV_TRANSPOSE_MAX_COLUMNS, make none."""
    a = rng.standard_normal((1, rows, 96)).astype(np.float32)
    b = rng.standard_normal((96, 40)).astype(np.float32)
    packed = mm._matmul_prepack([None, b], {})
    np.testing.assert_allclose(mm.matmul(a, b, _packed=packed), a @ b, rtol=1e-5, atol=1e-5)
    made = packed._transposed is not None
    assert made == (rows <= GEMV_MAX_ROWS)
    if made:
        np.testing.assert_array_equal(packed._transposed, b.T)
        assert not packed._transposed.flags.writeable
    wide = rng.standard_normal((8, mm.GEMV_TRANSPOSE_MAX_COLUMNS + 1)).astype(np.float32)
    packed = mm._matmul_prepack([None, wide], {})
    np.testing.assert_allclose(mm.matmul(a[..., :8], wide, _packed=packed), a[..., :8] @ wide, rtol=1e-5, atol=1e-5)
    assert packed._transposed is None


@pytest.mark.parametrize("rows", [1, 2, 8, 300])
@pytest.mark.parametrize("transB", [0, 1])
@pytest.mark.parametrize("bias", ["none", "row", "1xN", "MxN", "scalar"])
@pytest.mark.parametrize("scaled", [False, True])
def test_gemm_node_small_products_equal_the_kernel(rows, transB, bias, scaled):
    """A Gemm node's fast path (small float32 products as one ``np.matmul`` and an add) gives the kernel's results bit
    for bit, and the kernel's for everything else (few rows, large products, other biases, alpha and beta)."""
    import onyxrt

    depth, n = 64, 10
    b = rng.standard_normal((n, depth) if transB else (depth, n)).astype(np.float32)
    c = {"none": None, "row": rng.standard_normal(n), "1xN": rng.standard_normal((1, n)),
         "MxN": rng.standard_normal((rows, n)), "scalar": rng.standard_normal(1)}[bias]
    c = None if c is None else c.astype(np.float32)
    attrs = dict(transB=transB, **(dict(alpha=0.5, beta=2.0) if scaled else {}))
    inits = [onnx.numpy_helper.from_array(b, "b")] + ([onnx.numpy_helper.from_array(c, "c")] if c is not None else [])
    node = helper.make_node("Gemm", ["a", "b"] + (["c"] if c is not None else []), ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", depth])],
                              [onnx.ValueInfoProto(name="y")], inits)
    session = onyxrt.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                      .SerializeToString())
    fast = getattr(session._plan._steps[0][0], "__qualname__", "") == "_gemm_fast_path.<locals>.small_gemm"
    assert fast != scaled
    packed = mm.gemm_prepack([None, b, c], attrs)  # (as the session's: op(B) contiguous where B is transposed)
    for m in ([rows] if bias == "MxN" else [rows, 3, rows, 1]):
        a = rng.standard_normal((m, depth)).astype(np.float32)
        np.testing.assert_array_equal(session.run(None, {"a": a})[0], mm.gemm(a, b, c, _packed=packed, **attrs))
