"""Unit tests for onyxrt.providers.cpu.math.quantization (QuantizeLinear, DequantizeLinear,
DynamicQuantizeLinear)."""

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onyxrt.providers.cpu.kernel_modules  # noqa: F401  (registers every kernel)
from onyxrt.graph.types import onnx_elem_type
from onyxrt.providers.cpu.math.quantization import (
    dequantize_linear_10,
    dequantize_linear_13,
    dequantize_linear_21,
    dequantize_linear_23,
    dynamic_quantize_linear,
    quantize_linear_10,
    quantize_linear_13,
    quantize_linear_19,
    quantize_linear_21,
    quantize_linear_23,
)
from onyxrt.providers.cpu.kernel_table import CPU_KERNELS


def _ro(*arrays):
    out = []
    for a in arrays:
        a = np.asarray(a)
        a.flags.writeable = False
        out.append(a)
    return out


def test_registered_versions():
    for name in ("QuantizeLinear", "DequantizeLinear"):
        for v in (10, 13, 19, 21, 23, 24, 25, 28):
            assert CPU_KERNELS.lookup("", name, v) is not None, (name, v)
    assert CPU_KERNELS.lookup("", "DynamicQuantizeLinear", 11).multi_output


# --------------------------------------------------------------------------- QuantizeLinear


def test_quantize_uint8_round_half_even_and_saturation():
    x, s, zp = _ro(np.array([0.0, 0.5, 1.5, 2.5, -0.5, -1.5, 300.0, -300.0, 2.4], np.float32), np.float32(1.0),
                   np.uint8(0))
    y = quantize_linear_10(x, s, zp)
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(y, [0, 0, 2, 2, 0, 0, 255, 0, 2])
    # default zero point: uint8 0
    np.testing.assert_array_equal(quantize_linear_13(x, s), y)



def test_quantize_a_0d_input_gives_a_0d_result():
    """onnxruntime quantizes a scalar tensor; the in-place rounding must not meet a numpy scalar."""
    y = quantize_linear_19(*_ro(np.array(1.23, np.float32), np.float32(0.1), np.uint8(128)))
    assert y.shape == () and y.dtype == np.uint8 and int(y) == 140
    q, scale, zero_point = dynamic_quantize_linear(np.array(2.0, np.float32))
    assert q.shape == () and int(q) == int(np.rint(2.0 / scale)) + int(zero_point)

def test_quantize_int8_with_zero_point():
    x = np.array([[-1.0, 0.0, 1.0], [2.6, 100.0, -100.0]], np.float32)
    y = quantize_linear_13(x, np.float32(0.5), np.int8(-3))
    assert y.dtype == np.int8
    np.testing.assert_array_equal(y, [[-5, -3, -1], [2, 127, -128]])


def test_quantize_per_axis():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 10
    s = np.array([0.5, 1.0, 2.0], np.float32)
    zp = np.array([1, 2, 3], np.uint8)
    y = quantize_linear_19(x, s, zp, axis=1)
    expected = np.clip(np.rint(x / s[None, :, None]) + zp[None, :, None], 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(y, expected)
    # negative axis
    s4 = np.array([0.5, 1.0, 2.0, 4.0], np.float32)
    y = quantize_linear_13(x, s4, np.zeros(4, np.int8), axis=-1)
    np.testing.assert_array_equal(y, np.clip(np.rint(x / s4), -128, 127).astype(np.int8))


def test_quantize_blocked_with_remainder():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32) * 10
    s = (rng.random((2, 2, 3)) + 0.5).astype(np.float32)  # ceil(5 / 3) = 2 blocks on axis 1
    zp = rng.integers(-4, 4, (2, 2, 3)).astype(np.int8)
    y = quantize_linear_21(x, s, zp, axis=1, block_size=3)
    full_s = np.repeat(s, 3, axis=1)[:, :5]
    full_zp = np.repeat(zp, 3, axis=1)[:, :5]
    expected = np.clip(np.rint(x / full_s) + full_zp, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(y, expected)
    with pytest.raises(ValueError):
        quantize_linear_21(x, s, zp, axis=1, block_size=2)  # ceil(5/2) = 3 != 2


@pytest.mark.parametrize(
    "dtype, lo, hi",
    [(np.int16, -32768, 32767), (np.uint16, 0, 65535), (ml_dtypes.int4, -8, 7), (ml_dtypes.uint4, 0, 15),
     (ml_dtypes.int2, -2, 1), (ml_dtypes.uint2, 0, 3)],
)
def test_quantize_integer_types(dtype, lo, hi):
    x = np.array([-1e6, -3.0, -1.5, -0.5, 0.0, 0.5, 1.5, 2.0, 1e6], np.float32)
    y = quantize_linear_23(x, np.float32(1.0), np.array(0, dtype), _opset=25)
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y.astype(np.int64), np.clip(np.rint(x), lo, hi).astype(np.int64))


def test_quantize_output_dtype_attribute():
    x = np.array([1.0, -2.0, 3.0], np.float32)
    y = quantize_linear_21(x, np.float32(1.0), output_dtype=TensorProto.INT4)
    assert y.dtype == np.dtype(ml_dtypes.int4)
    np.testing.assert_array_equal(y.astype(np.int8), [1, -2, 3])
    with pytest.raises(ValueError):
        quantize_linear_21(x, np.float32(1.0), np.uint8(0), output_dtype=TensorProto.INT8)


def test_quantize_rejects_types_of_later_versions():
    x = np.array([1.0], np.float32)
    with pytest.raises(ValueError):
        quantize_linear_13(x, np.float32(1.0), np.int16(0))
    with pytest.raises(ValueError):
        quantize_linear_21(x, np.float32(1.0), np.array(0, ml_dtypes.int2))


def test_quantize_float8_saturate():
    x = np.array([0.0, 1.0, 500.0, -500.0, np.inf, -np.inf, np.nan], np.float32)
    e4 = np.dtype(ml_dtypes.float8_e4m3fn)
    y = quantize_linear_19(x, np.float32(1.0), np.array(0, e4), saturate=1)
    assert y.dtype == e4
    np.testing.assert_array_equal(y.astype(np.float32)[:6], [0, 1, 448, -448, 448, -448])
    assert np.isnan(y.astype(np.float32)[6])
    y = quantize_linear_19(x, np.float32(1.0), np.array(0, e4), saturate=0)
    assert np.isnan(y.astype(np.float32)[2:]).all()
    e5 = np.dtype(ml_dtypes.float8_e5m2)
    y = quantize_linear_19(x * 1000, np.float32(1.0), np.array(0, e5), saturate=0)
    np.testing.assert_array_equal(y.astype(np.float32)[2:6], [np.inf, -np.inf, np.inf, -np.inf])
    y = quantize_linear_19(x * 1000, np.float32(1.0), np.array(0, e5), saturate=1)
    np.testing.assert_array_equal(y.astype(np.float32)[2:6], [57344, -57344, 57344, -57344])
    # fnuz: as onnxruntime, infinities saturate too
    fnuz = np.dtype(ml_dtypes.float8_e4m3fnuz)
    y = quantize_linear_19(x, np.float32(1.0), np.array(0, fnuz), saturate=1)
    np.testing.assert_array_equal(y.astype(np.float32)[2:6], [240, -240, 240, -240])


def test_quantize_float4():
    x = np.array([0.0, 0.7, 1.2, 2.6, 100.0, -100.0], np.float32)
    y = quantize_linear_23(x, np.float32(1.0), output_dtype=TensorProto.FLOAT4E2M1, _opset=23)
    assert y.dtype == np.dtype(ml_dtypes.float4_e2m1fn)
    np.testing.assert_array_equal(y.astype(np.float32), [0.0, 0.5, 1.0, 3.0, 6.0, -6.0])


def test_quantize_precision_and_half_inputs():
    x = np.array([37.1, -12.35, 0.15], np.float32)
    s = np.float32(0.3)
    y = quantize_linear_23(x, s, np.uint8(100), precision=TensorProto.FLOAT16)
    expected = np.clip(np.rint((x.astype(np.float16) / np.float16(s)).astype(np.float32)) + 100, 0, 255)
    np.testing.assert_array_equal(y, expected.astype(np.uint8))
    xb = x.astype(ml_dtypes.bfloat16)
    y = quantize_linear_21(xb, np.array(0.3, ml_dtypes.bfloat16), np.uint8(100))
    assert y.dtype == np.uint8


def test_quantize_does_not_modify_inputs():
    x, s, zp = _ro(np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4), np.array([1.0, 2.0, 3.0], np.float32),
                   np.array([1, 2, 3], np.uint8))
    quantize_linear_13(x, s, zp, axis=0)
    dequantize_linear_13(np.ones((3, 4), np.uint8), s, zp, axis=0)


# --------------------------------------------------------------------------- DequantizeLinear


def test_dequantize_basic():
    x = np.array([0, 3, 128, 255], np.uint8)
    y = dequantize_linear_10(x, np.float32(2.0), np.uint8(128))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [-256, -250, 0, 254])
    y = dequantize_linear_10(np.array([-5, 7], np.int32), np.float32(0.5))
    np.testing.assert_array_equal(y, [-2.5, 3.5])
    with pytest.raises(ValueError):
        dequantize_linear_10(np.array([1], np.int32), np.float32(1.0), np.int32(3))


def test_dequantize_per_axis_and_blocked():
    x = np.arange(24, dtype=np.int8).reshape(2, 3, 4)
    s = np.array([1.0, 0.5, 0.25], np.float32)
    zp = np.array([0, 1, 2], np.int8)
    y = dequantize_linear_13(x, s, zp, axis=1)
    np.testing.assert_allclose(y, (x.astype(np.float32) - zp[:, None]) * s[:, None])
    sb = np.array([[[1.0, 2.0]], [[3.0, 4.0]]], np.float32)  # block of 3 on axis 2 of length 4
    sb = np.broadcast_to(sb, (2, 3, 2)).copy()
    y = dequantize_linear_21(x, sb, axis=-1, block_size=3)
    np.testing.assert_allclose(y, x * np.repeat(sb, 3, axis=2)[:, :, :4])


def test_dequantize_output_types():
    x = np.array([1, 2, 3], np.uint8)
    y = dequantize_linear_13(x, np.float16(0.5), np.uint8(1), _opset=19)
    assert y.dtype == np.float16
    y = dequantize_linear_23(x, np.float32(0.5), np.uint8(1), output_dtype=TensorProto.BFLOAT16)
    assert y.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(y.astype(np.float32), [0, 0.5, 1.0])
    # float8e8m0 scale (opset 24) needs output_dtype
    e8 = np.array(4.0, ml_dtypes.float8_e8m0fnu)
    y = dequantize_linear_23(x, e8, output_dtype=TensorProto.FLOAT, _opset=24)
    np.testing.assert_array_equal(y, [4, 8, 12])


@pytest.mark.parametrize(
    "dtype", [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz,
              ml_dtypes.float4_e2m1fn, ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2]
)
def test_dequantize_small_types(dtype):
    x = np.array([0, 1, -1 if dtype is ml_dtypes.int2 else 2, 1], dtype=dtype)
    y = dequantize_linear_23(x, np.float32(0.5), _opset=25)
    np.testing.assert_array_equal(y, [0.0, 0.5, -0.5 if dtype is ml_dtypes.int2 else 1.0, 0.5])


# --------------------------------------------------------------------------- DynamicQuantizeLinear


def test_dynamic_quantize_linear_spec_example():
    x = np.array([0, 2, -3, -2.5, 1.34, 0.5], np.float32)
    y, scale, zp = dynamic_quantize_linear(x)
    expected_scale = np.float32((2 - (-3)) / 255)
    assert scale.shape == () and scale.dtype == np.float32 and zp.shape == () and zp.dtype == np.uint8
    np.testing.assert_allclose(scale, expected_scale)
    assert int(zp) == 153
    np.testing.assert_array_equal(y, [153, 255, 0, 26, 221, 179])


def test_dynamic_quantize_linear_range_includes_zero():
    y, scale, zp = dynamic_quantize_linear(np.array([1.0, 2.0, 4.0], np.float32))
    assert int(zp) == 0 and np.isclose(scale, 4.0 / 255)
    y, scale, zp = dynamic_quantize_linear(np.array([-1.0, -2.0, -4.0], np.float32))
    assert int(zp) == 255 and np.isclose(scale, 4.0 / 255)
    y, scale, zp = dynamic_quantize_linear(np.zeros(3, np.float32))  # onnxruntime: scale 1, zero point 0
    assert float(scale) == 1.0 and int(zp) == 0 and not y.any()


# --------------------------------------------------------------------------- against onnxruntime


def _session_pair(op, inputs, attrs, opset, n_out=1):
    ort = pytest.importorskip("onnxruntime")
    import onyxrt

    names = [f"i{k}" for k in range(len(inputs))]
    node = helper.make_node(op, names, [f"o{k}" for k in range(n_out)], **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, onnx_elem_type(v.dtype), v.shape) for n, v in zip(names, inputs)],
        [onnx.ValueInfoProto(name=f"o{k}") for k in range(n_out)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    data = model.SerializeToString()
    feeds = dict(zip(names, inputs))
    expected = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    got = onyxrt.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    return expected, got


@pytest.mark.parametrize(
    "op, attrs, opset, make",
    [
        ("QuantizeLinear", {}, 13, lambda r: [r.standard_normal((4, 5)).astype(np.float32) * 50,
                                             np.array(0.37, np.float32), np.array(128, np.uint8)]),
        ("QuantizeLinear", {"axis": 0}, 21, lambda r: [r.standard_normal((4, 5)).astype(np.float32) * 50,
                                                      np.array([0.1, 0.2, 0.3, 0.4], np.float32),
                                                      np.array([-3, 0, 3, 9], np.int8)]),
        ("QuantizeLinear", {"axis": 1, "block_size": 2}, 21,
         lambda r: [r.standard_normal((4, 5)).astype(np.float32) * 50, (r.random((4, 3)) + 0.1).astype(np.float32),
                    r.integers(0, 20, (4, 3)).astype(np.uint16)]),
        ("QuantizeLinear", {}, 23, lambda r: [r.standard_normal((4, 5)).astype(np.float32) * 50,
                                             np.array(0.3, np.float16), np.array(4, np.uint8)]),
        ("DequantizeLinear", {}, 13, lambda r: [r.integers(-128, 128, (4, 5)).astype(np.int8),
                                               np.array(0.37, np.float32), np.array(-2, np.int8)]),
        ("DequantizeLinear", {"axis": -1, "block_size": 2}, 21,
         lambda r: [r.integers(0, 256, (4, 5)).astype(np.uint8), (r.random((4, 3)) + 0.1).astype(np.float32),
                    r.integers(0, 256, (4, 3)).astype(np.uint8)]),
        ("DynamicQuantizeLinear", {}, 11, lambda r: [r.standard_normal((6, 7)).astype(np.float32)]),
    ],
)
def test_matches_onnxruntime(op, attrs, opset, make):
    inputs = make(np.random.default_rng(7))
    expected, got = _session_pair(op, inputs, attrs, opset, n_out=3 if op == "DynamicQuantizeLinear" else 1)
    for e, g in zip(expected, got):
        assert e.dtype == g.dtype and e.shape == g.shape
        np.testing.assert_array_equal(g, e)
