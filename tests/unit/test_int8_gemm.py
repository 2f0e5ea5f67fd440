"""The int8 GEMM primitive (``providers/cpu/math/int8_gemm.py``): every route against an exact int64
reference, over the four dtype pairs, odd shapes, zero points per tensor / row / column, the int32
range at large K, packed and unpacked B, the route override and the numpy fallback forced."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from onyxrt.framework import cpu_features
from onyxrt.providers.cpu.math import int8_gemm
from onyxrt.providers.cpu.math.int8_gemm import gemm_int8, matmul_int8, pack_b

RNG = np.random.default_rng(2024)
ROUTES = int8_gemm.available_routes()
DTYPES = (np.uint8, np.int8)
SHAPES = [(1, 1, 1), (1, 7, 3), (3, 5, 7), (13, 20, 70), (8, 64, 32), (9, 1001, 33), (130, 64, 40), (17, 3, 97)]


def _random(dtype, shape) -> np.ndarray:
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max + 1, shape).astype(dtype)


def _reference(a, b, a_zero=None, b_zero=None) -> np.ndarray:
    """Exact int64 product, wrapped to int32 as the primitive documents."""
    az = 0 if a_zero is None else np.asarray(a_zero).astype(np.int64).reshape(-1, 1) if np.size(a_zero) > 1 \
        else int(np.asarray(a_zero).reshape(-1)[0])
    bz = 0 if b_zero is None else np.asarray(b_zero).astype(np.int64).reshape(1, -1) if np.size(b_zero) > 1 \
        else int(np.asarray(b_zero).reshape(-1)[0])
    return ((a.astype(np.int64) - az) @ (b.astype(np.int64) - bz)).astype(np.int32)


def _zero_point_cases(a_dtype, b_dtype, m, n):
    return [
        (None, None),
        (_random(a_dtype, ()), None),
        (None, _random(b_dtype, ())),
        (_random(a_dtype, ()), _random(b_dtype, (n,))),  # per column of B
        (_random(a_dtype, (m,)), _random(b_dtype, ())),  # per row of A
        (_random(a_dtype, (m,)), _random(b_dtype, (n,))),
    ]


def test_the_routes_available_here_include_the_numpy_fallback():
    assert "numpy" in ROUTES
    if cpu_features.has_flags("avx512f", "avx512_vnni") and os.environ.get("ONYXRT_DISABLE_NUMBA", "") in ("", "0"):
        pytest.importorskip("numba")
        assert "vnni" in ROUTES
    elif cpu_features.has_flags("avx2") and os.environ.get("ONYXRT_DISABLE_NUMBA", "") in ("", "0"):
        pytest.importorskip("numba")
        assert "avx2" in ROUTES  # exact int16-pair products where VNNI is missing


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("a_dtype", DTYPES, ids=["a_u8", "a_s8"])
@pytest.mark.parametrize("b_dtype", DTYPES, ids=["b_u8", "b_s8"])
def test_every_route_is_exact_for_every_dtype_pair_shape_and_zero_point(route, a_dtype, b_dtype):
    for m, k, n in SHAPES:
        a, b = _random(a_dtype, (m, k)), _random(b_dtype, (k, n))
        for a_zero, b_zero in _zero_point_cases(a_dtype, b_dtype, m, n):
            packed = pack_b(b, b_zero, route=route)
            result = gemm_int8(a, packed, a_zero)
            assert result.dtype == np.int32 and result.shape == (m, n)
            np.testing.assert_array_equal(result, _reference(a, b, a_zero, b_zero), err_msg=f"{route} {m}x{k}x{n}")


@pytest.mark.parametrize("route", ROUTES)
def test_extreme_values_at_the_largest_k_that_always_fits_int32(route):
    """K = 33025: (0 - 255) * (255 - 0) summed over K is -2,147,450,625, inside int32."""
    k = int8_gemm.max_exact_k()
    assert k == 33025
    a = np.zeros((2, k), np.uint8)
    a[1] = 255
    b = np.full((k, 3), 255, np.uint8)
    b[:, 1] = 0
    a_zero, b_zero = np.uint8(255), np.array([0, 255, 0], np.uint8)
    result = gemm_int8(a, pack_b(b, b_zero, route=route), a_zero)
    expected = _reference(a, b, a_zero, b_zero)
    assert expected.min() == -255 * 255 * k
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("route", ROUTES)
def test_results_past_int32_wrap_like_int32_arithmetic_on_every_route(route):
    """Beyond the documented bound the result is the exact value modulo 2**32, the same on every route."""
    k = 40000
    a = np.full((1, k), 255, np.uint8)
    b = np.full((k, 2), -128, np.int8)
    result = gemm_int8(a, pack_b(b, route=route), np.uint8(0))
    exact = np.int64(255) * -128 * k
    assert result[0, 0] == np.array(exact, np.int64).astype(np.int32)


@pytest.mark.parametrize("route", ROUTES)
def test_zero_sized_and_zero_k_products(route):
    assert gemm_int8(np.zeros((0, 4), np.uint8), pack_b(np.ones((4, 3), np.int8), route=route)).shape == (0, 3)
    empty_k = gemm_int8(np.zeros((2, 0), np.uint8), pack_b(np.zeros((0, 3), np.int8), route=route), np.uint8(3))
    np.testing.assert_array_equal(empty_k, np.zeros((2, 3), np.int32))


def test_unpacked_b_and_out_and_batched_matmul():
    a, b = _random(np.uint8, (2, 3, 11, 24)), _random(np.int8, (24, 10))
    result = matmul_int8(a, b, np.uint8(128), np.int8(-2))
    expected = np.stack([_reference(x, b, np.uint8(128), np.int8(-2)) for x in a.reshape(-1, 11, 24)])
    np.testing.assert_array_equal(result, expected.reshape(2, 3, 11, 10))
    out = np.empty((11, 10), np.int32)
    assert gemm_int8(a[0, 0], b, out=out) is out
    np.testing.assert_array_equal(out, _reference(a[0, 0], b))
    # per-row zero points of a batched A apply along its M axis
    a_zero = _random(np.uint8, (11,))
    batched = matmul_int8(a, pack_b(b), a_zero)
    np.testing.assert_array_equal(batched[1, 2], _reference(a[1, 2], b, a_zero))
    # both operands batched, broadcasting
    b3 = _random(np.int8, (3, 24, 10))
    np.testing.assert_array_equal(matmul_int8(a, b3)[1, 2], _reference(a[1, 2], b3[2]))


def test_non_contiguous_a_and_k_not_a_multiple_of_four():
    big = _random(np.uint8, (20, 45))
    a = big[::2, 3:42]  # strided rows, K = 39
    b = _random(np.int8, (39, 33))
    for route in ROUTES:
        np.testing.assert_array_equal(gemm_int8(a, pack_b(b, route=route), np.uint8(9)), _reference(a, b, 9))


def test_bad_operands_raise_typed_errors():
    with pytest.raises(TypeError):
        gemm_int8(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.int8))
    with pytest.raises(ValueError, match="inner dimensions"):
        gemm_int8(np.zeros((2, 3), np.uint8), np.zeros((4, 2), np.int8))
    with pytest.raises(ValueError, match="per-column"):
        pack_b(np.zeros((3, 4), np.int8), np.zeros(3, np.int8))
    with pytest.raises(ValueError, match="per-row"):
        gemm_int8(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.int8), np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="packed"):
        gemm_int8(np.zeros((2, 3), np.uint8), pack_b(np.zeros((3, 2), np.int8)), None, np.int8(1))


def test_route_override_and_unknown_route(monkeypatch):
    monkeypatch.setenv(int8_gemm.ROUTE_ENV, "numpy")
    assert int8_gemm.selected_route() == "numpy"
    assert pack_b(np.ones((4, 4), np.int8)).route == "numpy"
    monkeypatch.setenv(int8_gemm.ROUTE_ENV, "avx9000")
    with pytest.raises(ValueError, match="avx9000"):
        int8_gemm.selected_route()


def test_forced_numpy_fallback_runs_a_quantized_model_identically(tmp_path):
    """A process with numba disabled (the vnni route unavailable) gives the same MatMulInteger bytes."""
    script = f"""
import numpy as np, onnx
from onnx import helper, numpy_helper, TensorProto
import onyxrt
from onyxrt.providers.cpu.math import int8_gemm
rng = np.random.default_rng(0)
w = rng.integers(-128, 128, (37, 29)).astype(np.int8)
g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "w", "az", "wz"], ["y"])], "g",
    [helper.make_tensor_value_info("a", TensorProto.UINT8, [5, 37])], [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
    [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(3, np.uint8), "az"), numpy_helper.from_array(np.array(-4, np.int8), "wz")])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
a = rng.integers(0, 256, (5, 37)).astype(np.uint8)
y = onyxrt.InferenceSession(m.SerializeToString()).run(None, {{"a": a}})[0]
np.save({str(tmp_path / "y.npy")!r}, y)
print(int8_gemm.available_routes())
"""
    outputs = {}
    for label, env in (("fallback", {"ONYXRT_DISABLE_NUMBA": "1"}), ("default", {})):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                              env={**os.environ, **env})
        assert done.returncode == 0, done.stderr
        outputs[label] = (done.stdout.strip(), np.load(tmp_path / "y.npy"))
    assert "vnni" not in outputs["fallback"][0]
    np.testing.assert_array_equal(outputs["fallback"][1], outputs["default"][1])


def test_cpu_features_reads_flags_once():
    flags = cpu_features.cpu_flags()
    assert flags is cpu_features.cpu_flags()  # cached
    assert isinstance(flags, frozenset)
    assert cpu_features.has_flags() is True
    assert cpu_features.has_flags("no_such_cpu_flag") is False


@pytest.mark.parametrize("contiguous", [True, False], ids=["numba_pass", "numpy_path"])
def test_dynamic_quantize_linear_is_bit_exact_with_onnxruntime(contiguous):
    """The activations every dynamically quantized matmul multiplies: same bytes, scale and zero point."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from onyxrt.providers.cpu.math.quantization import dynamic_quantize_linear

    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(name, kind, None)
         for name, kind in (("y", TensorProto.UINT8), ("s", TensorProto.FLOAT), ("z", TensorProto.UINT8))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    for i in range(60):
        x = (rng.standard_normal((9, 70)) * rng.uniform(0.01, 10) + rng.uniform(-3, 3)).astype(np.float32)
        x = np.abs(x) if i % 5 == 0 else -np.abs(x) if i % 7 == 0 else np.zeros_like(x) if i == 1 else x
        if not contiguous:
            x = x[:, ::2]
        for theirs, ours in zip(session.run(None, {"x": x}), dynamic_quantize_linear(x)):
            assert theirs.dtype == ours.dtype
            np.testing.assert_array_equal(theirs, ours)


def test_matmul_integer_kernel_with_prepacked_b_takes_a_vector_and_reports_bad_shapes():
    from onyxrt.errors import NodeInputError
    from onyxrt.providers.cpu.math.matmul import _matmul_integer_prepack, matmul_integer

    b = _random(np.int8, (5, 3))
    zero = np.array(2, np.int8)
    packed = _matmul_integer_prepack([None, b, None, zero], {})
    assert packed is not None
    a = _random(np.uint8, (5,))
    np.testing.assert_array_equal(matmul_integer(a, b, None, zero, _packed=packed),
                                  (a.astype(np.int64) @ (b.astype(np.int64) - 2)).astype(np.int32))
    with pytest.raises(NodeInputError, match="inner dimensions"):
        matmul_integer(_random(np.uint8, (2, 4)), b, None, zero, _packed=packed)
    with pytest.raises(NodeInputError, match="per-row"):
        matmul_integer(_random(np.uint8, (2, 5)), b, np.zeros(3, np.uint8), zero, _packed=packed)
    # a zero point fed at run time (not the prepacked array) is honoured
    other = np.array(-3, np.int8)
    a2 = _random(np.uint8, (4, 5))
    np.testing.assert_array_equal(matmul_integer(a2, b, None, other, _packed=packed), _reference(a2, b, None, other))


@pytest.mark.parametrize("route", ROUTES)
def test_scaled_product_has_numpys_roundings_on_every_route(route):
    """matmul_int8_scaled == float32(C) * scale + bias computed by numpy, bit for bit (VNNI: in registers)."""
    for m, k, n in [(1, 4, 1), (13, 20, 70), (2 * 64, 384, 96), (9, 1001, 33)]:
        a, b = _random(np.uint8, (2, m, k)), _random(np.int8, (k, n))
        packed = pack_b(b, _random(np.int8, (n,)), route=route)
        for scale, bias in ((RNG.uniform(1e-5, 1e-3, n).astype(np.float32), RNG.standard_normal(n).astype(np.float32)),
                            (np.float32(3e-4), None)):
            result = int8_gemm.matmul_int8_scaled(a, packed, np.uint8(77), scale, bias)
            expected = matmul_int8(a, packed, np.uint8(77)).astype(np.float32)
            expected *= scale
            if bias is not None:
                expected += bias
            assert result.dtype == np.float32
            np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("route", ROUTES)
def test_scaled_product_with_a_zero_point_per_row(route):
    a, b = _random(np.int8, (2, 7, 19)), _random(np.int8, (19, 21))
    zero = _random(np.int8, (2, 7, 1))
    packed = pack_b(b, route=route)
    scale = RNG.uniform(1e-5, 1e-3, 21).astype(np.float32)
    expected = _reference(a.reshape(14, 19), b, zero.reshape(14)).astype(np.float32).reshape(2, 7, 21) * scale
    np.testing.assert_array_equal(int8_gemm.matmul_int8_scaled(a, packed, zero, scale), expected)


@pytest.mark.parametrize("m", [256, 3], ids=["rows_split", "panels_split"])
def test_products_split_over_the_session_pool_are_exact(m):
    """A session with two intra-op threads splits large products by rows, or by panels when M is small."""
    import onyxrt
    from onnx import TensorProto, helper, numpy_helper

    k, n = 1024, 12288 if m < 8 else 256  # both above the split threshold (2^25 multiply-adds)
    w = _random(np.int8, (k, n))
    w_zero = _random(np.int8, (n,))
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w", "az", "wz"], ["y"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(9, np.uint8), "az"),
         numpy_helper.from_array(w_zero, "wz")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = onyxrt.SessionOptions()
    options.intra_op_num_threads = 2
    session = onyxrt.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = _random(np.uint8, (m, k))
    np.testing.assert_array_equal(session.run(None, {"a": a})[0], _reference(a, w, np.uint8(9), w_zero))
    # a kernel route of onyxrt's own (not numpy's BLAS) splits over the pool: the pool splits GEMMs too
    assert session._thread_pool.splits_gemms or int8_gemm.selected_route() not in ("vnni", "avx2")


@pytest.mark.parametrize("per_row_zero", [True, False])
@pytest.mark.parametrize("m", [256, 3], ids=["rows_split", "panels_split"])
def test_scaled_products_split_over_a_pool_are_exact(m, per_row_zero):
    """The dequantizing epilogue's products split over a pool (as native tasks where it runs them)."""
    from onyxrt.framework.thread_pool import ThreadPool

    k, n = 1024, 12288 if m < 8 else 256
    a_type = np.int8 if per_row_zero else np.uint8  # (a uint8 A with one zero point: the VNNI route's direct call)
    a, b = _random(a_type, (m, k)), _random(np.int8, (k, n))
    zero = _random(a_type, (m,)) if per_row_zero else np.uint8(131)
    scale = RNG.uniform(1e-5, 1e-3, n).astype(np.float32)
    expected = _reference(a, b, zero).astype(np.float32) * scale
    pool = ThreadPool(2).splitting_gemms()
    with pool.activate():
        got = int8_gemm.matmul_int8_scaled(a, pack_b(b), zero, scale)
    pool.shutdown()
    np.testing.assert_array_equal(got, expected)
