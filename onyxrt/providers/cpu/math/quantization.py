"""Linear quantization: QuantizeLinear, DequantizeLinear (per-tensor, per-axis and blocked,
integer, float8, float6, float4 and 2/4-bit integer types) and DynamicQuantizeLinear."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ....graph.types import np_dtype
from .._helpers import normalize_axis
from ..jit import LazyModuleKernel
from ..kernel_table import op
from ....errors import NodeInputError

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_F16 = np.dtype(np.float16)
_BF16 = np.dtype(ml_dtypes.bfloat16)
_E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)

# Integer quantized types and their saturation ranges; the sub-byte ones are stored through
# an 8-bit integer of the same signedness.
_INT_RANGES: dict[np.dtype, tuple[int, int, np.dtype]] = {
    np.dtype(np.uint8): (0, 255, np.dtype(np.uint8)),
    np.dtype(np.int8): (-128, 127, np.dtype(np.int8)),
    np.dtype(np.uint16): (0, 65535, np.dtype(np.uint16)),
    np.dtype(np.int16): (-32768, 32767, np.dtype(np.int16)),
    np.dtype(ml_dtypes.uint4): (0, 15, np.dtype(np.uint8)),
    np.dtype(ml_dtypes.int4): (-8, 7, np.dtype(np.int8)),
    np.dtype(ml_dtypes.uint2): (0, 3, np.dtype(np.uint8)),
    np.dtype(ml_dtypes.int2): (-2, 1, np.dtype(np.int8)),
}
_FLOAT8 = {np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(ml_dtypes.float8_e5m2),
           np.dtype(ml_dtypes.float8_e4m3fnuz), np.dtype(ml_dtypes.float8_e5m2fnuz)}
# Formats without Inf/NaN encodings: ml_dtypes' conversion already saturates.
_SMALL_FLOATS = {np.dtype(ml_dtypes.float4_e2m1fn), np.dtype(ml_dtypes.float6_e2m3fn),
                 np.dtype(ml_dtypes.float6_e3m2fn)}

_QUANT_TYPES_BY_VERSION = {
    10: ("uint8", "int8"),
    13: ("uint8", "int8"),
    19: ("uint8", "int8", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz"),
    21: ("uint8", "int8", "uint16", "int16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
         "float8_e5m2fnuz", "uint4", "int4"),
}
_QUANT_TYPES_BY_VERSION[23] = _QUANT_TYPES_BY_VERSION[21] + ("float4_e2m1fn",)
_QUANT_TYPES_BY_VERSION[24] = _QUANT_TYPES_BY_VERSION[23]
_QUANT_TYPES_BY_VERSION[25] = _QUANT_TYPES_BY_VERSION[24] + ("uint2", "int2")
_QUANT_TYPES_BY_VERSION[28] = _QUANT_TYPES_BY_VERSION[25] + ("float6_e2m3fn", "float6_e3m2fn")
# DequantizeLinear also takes int32 (with no or an all-zero zero point) at every version.
_DEQUANT_INPUTS_BY_VERSION = {v: types + ("int32",) for v, types in _QUANT_TYPES_BY_VERSION.items()}


def _is_float(dt: np.dtype) -> bool:
    return dt.kind == "f" or dt == _BF16


def _param_for(value: np.ndarray, x_shape: tuple[int, ...], axis: int, block_size: int, what: str) -> np.ndarray:
    """``value`` (a scale or zero point) broadcastable against ``x_shape``."""
    if value.ndim == 0 or (value.ndim == 1 and value.size == 1):
        return value.reshape(())
    rank = len(x_shape)
    if rank == 0:
        raise NodeInputError(f"{what} must be a scalar for a scalar input, got shape {value.shape}")
    ax = normalize_axis(axis, rank)
    if not block_size:
        if value.ndim != 1:
            raise NodeInputError(
                f"{what} must be a scalar or a 1-D tensor (per-axis quantization) unless block_size is set, "
                f"got shape {value.shape}"
            )
        if value.shape[0] != x_shape[ax]:
            raise NodeInputError(
                f"{what} has {value.shape[0]} elements but input dimension {ax} (axis) has {x_shape[ax]}"
            )
        shape = [1] * rank
        shape[ax] = value.shape[0]
        return value.reshape(shape)
    if block_size < 0:
        raise NodeInputError(f"block_size must be positive, got {block_size}")
    if value.ndim != rank:
        raise NodeInputError(f"blocked quantization: {what} must have rank {rank}, got shape {value.shape}")
    dim = x_shape[ax]
    expected = tuple(-(-dim // block_size) if i == ax else d for i, d in enumerate(x_shape))
    if value.shape != expected:
        raise NodeInputError(
            f"blocked quantization: {what} shape {value.shape} does not match input shape {x_shape} "
            f"with block_size {block_size} on axis {ax} (expected {expected})"
        )
    value = np.repeat(value, block_size, axis=ax)
    if value.shape[ax] != dim:
        value = value[(slice(None),) * ax + (slice(0, dim),)]
    return value


# --------------------------------------------------------------------------- QuantizeLinear


def _quantize(x, y_scale, y_zero_point, *, axis, saturate, block_size, output_dtype, precision, version):
    x = np.asarray(x)
    y_scale = np.asarray(y_scale)
    out_dt = None
    if output_dtype:
        out_dt = np_dtype(output_dtype)
    if y_zero_point is not None:
        zp_dt = np.asarray(y_zero_point).dtype
        if out_dt is not None and out_dt != zp_dt:
            raise NodeInputError(f"QuantizeLinear: output_dtype {out_dt} differs from y_zero_point's type {zp_dt}")
        out_dt = zp_dt
    if out_dt is None:
        out_dt = np.dtype(np.uint8)
    if out_dt.name not in _QUANT_TYPES_BY_VERSION[version]:
        raise NodeInputError(f"QuantizeLinear-{version}: unsupported output type {out_dt}")
    if y_scale.dtype == _E8M0:
        y_scale = y_scale.astype(_F32)

    scale = _param_for(y_scale, x.shape, axis, block_size, "y_scale")
    if precision:
        cdt = np_dtype(precision)
        if not _is_float(cdt):
            raise NodeInputError(f"QuantizeLinear: precision must be a float type, got {cdt}")
    elif version < 23 and y_scale.dtype in (_F16, _BF16):
        cdt = _F32  # as onnxruntime before opset 23: half-precision inputs are divided in float32
    elif _is_float(y_scale.dtype):
        cdt = y_scale.dtype  # the scale's type sets the division's precision
    else:
        cdt = _F32
    wide = _F64 if cdt == _F64 else _F32
    # np.asarray: a 0-d division gives a numpy scalar, which the in-place steps below cannot write
    q = np.asarray(np.divide(x.astype(cdt, copy=False), scale.astype(cdt, copy=False)))
    if q.dtype != wide:
        q = q.astype(wide)
    zp = None
    if y_zero_point is not None:
        zp_arr = np.asarray(y_zero_point)
        if zp_arr.size and np.any(zp_arr.astype(wide) != 0):
            zp = _param_for(zp_arr, x.shape, axis, block_size, "y_zero_point").astype(wide)

    if out_dt in _INT_RANGES:
        lo, hi, store = _INT_RANGES[out_dt]
        np.rint(q, out=q)
        if zp is not None:
            q += zp
        np.clip(q, lo, hi, out=q)
        y = q.astype(store)
        return y if store == out_dt else y.astype(out_dt)

    if zp is not None:
        q = q + zp
    if out_dt in _FLOAT8:
        if saturate:  # NaN stays NaN, finite overflow and +-inf -> +-max (as onnxruntime, fnuz too)
            fmax = float(ml_dtypes.finfo(out_dt).max)
            q = np.clip(q, -fmax, fmax)
        return q.astype(out_dt)
    if out_dt in _SMALL_FLOATS:
        return q.astype(out_dt)
    raise NodeInputError(f"QuantizeLinear: unsupported output type {out_dt}")


@op("QuantizeLinear", versions=10)
def quantize_linear_10(x, y_scale, y_zero_point=None):
    return _quantize(x, y_scale, y_zero_point, axis=1, saturate=1, block_size=0, output_dtype=0,
                     precision=0, version=10)


@op("QuantizeLinear", versions=13)
def quantize_linear_13(x, y_scale, y_zero_point=None, *, axis=1):
    return _quantize(x, y_scale, y_zero_point, axis=axis, saturate=1, block_size=0, output_dtype=0,
                     precision=0, version=13)


@op("QuantizeLinear", versions=19)
def quantize_linear_19(x, y_scale, y_zero_point=None, *, axis=1, saturate=1):
    return _quantize(x, y_scale, y_zero_point, axis=axis, saturate=saturate, block_size=0, output_dtype=0,
                     precision=0, version=19)


@op("QuantizeLinear", versions=21)
def quantize_linear_21(x, y_scale, y_zero_point=None, *, axis=1, saturate=1, block_size=0, output_dtype=0):
    return _quantize(x, y_scale, y_zero_point, axis=axis, saturate=saturate, block_size=block_size,
                     output_dtype=output_dtype, precision=0, version=21)


@op("QuantizeLinear", versions=(23, 24, 25, 28))
def quantize_linear_23(x, y_scale, y_zero_point=None, *, axis=1, saturate=1, block_size=0, output_dtype=0,
                       precision=0, _opset=28):
    version = 23 if _opset < 24 else 24 if _opset < 25 else 25 if _opset < 28 else 28
    return _quantize(x, y_scale, y_zero_point, axis=axis, saturate=saturate, block_size=block_size,
                     output_dtype=output_dtype, precision=precision, version=version)


# --------------------------------------------------------------------------- DequantizeLinear


def _dequantize(x, x_scale, x_zero_point, *, axis, block_size, output_dtype, version):
    x = np.asarray(x)
    x_scale = np.asarray(x_scale)
    if x.dtype.name not in _DEQUANT_INPUTS_BY_VERSION[version]:
        raise NodeInputError(f"DequantizeLinear-{version}: unsupported input type {x.dtype}")
    if output_dtype:
        out_dt = np_dtype(output_dtype)
    elif x_scale.dtype in (_F32, _F16, _BF16):
        out_dt = x_scale.dtype
    else:
        raise NodeInputError(f"DequantizeLinear: x_scale of type {x_scale.dtype} needs the output_dtype attribute")
    if out_dt not in (_F32, _F16, _BF16):
        raise NodeInputError(f"DequantizeLinear: unsupported output type {out_dt}")
    scale = _param_for(x_scale, x.shape, axis, block_size, "x_scale").astype(_F32, copy=False)
    y = x.astype(_F32)
    if x_zero_point is not None:
        zp_arr = np.asarray(x_zero_point)
        if zp_arr.dtype != x.dtype:
            raise NodeInputError(f"DequantizeLinear: x_zero_point type {zp_arr.dtype} differs from x's {x.dtype}")
        if x.dtype == np.int32 and np.any(zp_arr != 0):
            raise NodeInputError("DequantizeLinear: int32 input takes no (non-zero) zero point")
        zpf = zp_arr.astype(_F32)
        if zpf.size and np.any(zpf != 0):
            zp = _param_for(zpf, x.shape, axis, block_size, "x_zero_point")
            y -= zp
    y *= scale
    return y if out_dt == _F32 else y.astype(out_dt)


class ConstantDequantized:
    """A DequantizeLinear result computed once at session creation from constant inputs.

    It stands for the node's output only while the node reads the very arrays it was computed
    from (identity, not equality): a zero point fed at run time, say, falls back to computing.
    """

    __slots__ = ("inputs", "value")

    def __init__(self, inputs: tuple, value: np.ndarray) -> None:
        self.inputs, self.value = inputs, value
        value.flags.writeable = False

    def result_for(self, *inputs) -> np.ndarray | None:
        same = len(inputs) == len(self.inputs) and all(a is b for a, b in zip(inputs, self.inputs))
        return self.value if same else None


def dequantize_prepack(version: int):
    """Prepack for DequantizeLinear: dequantize a constant weight once (QDQ models keep their DQ nodes).

    A registration covering several versions prepacks with the rules of the lowest one; an input
    those rules refuse is left to run time, which applies the model's exact version.
    """

    def prepack(inputs, attributes):
        x, scale = inputs[0], inputs[1]
        zero_point = inputs[2] if len(inputs) > 2 else None
        if x is None or scale is None:
            return None
        try:
            value = _dequantize(x, scale, zero_point, axis=attributes.get("axis", 1),
                                block_size=attributes.get("block_size", 0),
                                output_dtype=attributes.get("output_dtype", 0), version=version)
        except (ValueError, TypeError):
            return None
        return ConstantDequantized((x, scale, zero_point), value)

    return prepack


def _prepacked(packed, x, x_scale, x_zero_point):
    return None if packed is None else packed.result_for(x, x_scale, x_zero_point)


@op("DequantizeLinear", versions=10, prepack=dequantize_prepack(10))
def dequantize_linear_10(x, x_scale, x_zero_point=None, *, _packed=None):
    y = _prepacked(_packed, x, x_scale, x_zero_point)
    if y is not None:
        return y
    return _dequantize(x, x_scale, x_zero_point, axis=1, block_size=0, output_dtype=0, version=10)


@op("DequantizeLinear", versions=(13, 19), prepack=dequantize_prepack(13))
def dequantize_linear_13(x, x_scale, x_zero_point=None, *, axis=1, _opset=19, _packed=None):
    y = _prepacked(_packed, x, x_scale, x_zero_point)
    if y is not None:
        return y
    return _dequantize(x, x_scale, x_zero_point, axis=axis, block_size=0, output_dtype=0,
                       version=13 if _opset < 19 else 19)


@op("DequantizeLinear", versions=21, prepack=dequantize_prepack(21))
def dequantize_linear_21(x, x_scale, x_zero_point=None, *, axis=1, block_size=0, _packed=None):
    y = _prepacked(_packed, x, x_scale, x_zero_point)
    if y is not None:
        return y
    return _dequantize(x, x_scale, x_zero_point, axis=axis, block_size=block_size, output_dtype=0, version=21)


@op("DequantizeLinear", versions=(23, 24, 25, 28), prepack=dequantize_prepack(23))
def dequantize_linear_23(x, x_scale, x_zero_point=None, *, axis=1, block_size=0, output_dtype=0, _opset=28,
                         _packed=None):
    y = _prepacked(_packed, x, x_scale, x_zero_point)
    if y is not None:
        return y
    version = 23 if _opset < 24 else 24 if _opset < 25 else 25 if _opset < 28 else 28
    return _dequantize(x, x_scale, x_zero_point, axis=axis, block_size=block_size, output_dtype=output_dtype,
                       version=version)


# --------------------------------------------------------------------------- DynamicQuantizeLinear


_QUANTIZE_UINT8 = LazyModuleKernel(__name__.rsplit(".", 1)[0] + ".quantize_jit", "quantize_uint8")
_QUANTIZE_CENTERED = LazyModuleKernel(__name__.rsplit(".", 1)[0] + ".quantize_jit", "quantize_centered_int16")
_EMPTY_F32 = np.zeros(0, _F32)
_EMPTY_U8 = np.zeros(0, np.uint8)
_EMPTY_F32_2D = np.zeros((0, 0), _F32)
_EMPTY_I16_2D = np.zeros((0, 0), np.int16)


def _dynamic_parameters(x: np.ndarray) -> tuple[np.float32, np.float32]:
    """(scale, zero point as a float32 integer) of onnxruntime's dynamic uint8 quantization of ``x``."""
    if x.size:
        lo = min(float(np.min(x)), 0.0)
        hi = max(float(np.max(x)), 0.0)
    else:
        lo = hi = 0.0
    lo32, hi32 = np.float32(lo), np.float32(hi)
    scale = np.float32(1.0) if hi32 == lo32 else np.float32((hi32 - lo32) / np.float32(255.0))
    initial_zp = np.float32(0.0) - lo32 / scale
    return scale, np.float32(np.rint(min(max(initial_zp, np.float32(0.0)), np.float32(255.0))))


def dynamic_quantize_to_uint8(x: np.ndarray) -> tuple[np.ndarray, np.float32, int]:
    """onnxruntime's dynamic uint8 quantization of a float32 tensor: (q, scale, zero point).

    The range is widened to include 0; scale = (max - min) / 255 (1 for an all-zero tensor),
    zero point = rint(clip(-min / scale, 0, 255)), q = saturate(rint(x / scale) + zero point),
    rounding half to even. Two passes over x where numba is installed (min/max, then quantize).
    """
    x = np.asarray(x)
    scale, zp = _dynamic_parameters(x)
    kernel = _QUANTIZE_UINT8.compiled_for("f32", _EMPTY_F32, _F32.type(1), _F32.type(0), _EMPTY_U8)
    if kernel is not None and x.flags.c_contiguous:
        q = np.empty(x.shape, np.uint8)
        kernel(x.reshape(-1), scale, zp, q.reshape(-1))
        return q, scale, int(zp)
    q = np.asarray(np.divide(x, scale))  # a 0-d division gives a scalar: keep an array to write in place
    np.rint(q, out=q)
    q += zp
    np.clip(q, 0.0, 255.0, out=q)
    return q.astype(np.uint8), scale, int(zp)


def dynamic_quantize_centered(x: np.ndarray, width: int) -> tuple[np.ndarray, np.float32, int] | None:
    """``dynamic_quantize_to_uint8`` of float32 ``x`` (..., K), returned as the rows (M, ``width``) int16 of
    q minus the zero point (zero columns after K: what the AVX2 int8 GEMM reads, see
    ``int8_gemm.CenteredA``), with the scale and zero point; None where the compiled kernel cannot run."""
    kernel = _QUANTIZE_CENTERED.compiled_for("f32", _EMPTY_F32_2D, _F32.type(1), _F32.type(0), _EMPTY_I16_2D)
    if kernel is None or x.ndim < 1 or width < x.shape[-1]:
        return None
    scale, zp = _dynamic_parameters(x)
    rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    out = np.empty((rows.shape[0], width), np.int16)
    kernel(rows, scale, zp, out)
    return out, scale, int(zp)


@op("DynamicQuantizeLinear", versions=11, multi_output=True)
def dynamic_quantize_linear(x):
    """uint8 quantization with the scale and zero point derived from the data range
    (widened to include 0), as onnxruntime computes them."""
    x = np.asarray(x)
    if x.dtype != _F32:
        raise NodeInputError(f"DynamicQuantizeLinear: input must be float32, got {x.dtype}")
    q, scale, zp = dynamic_quantize_to_uint8(x)
    return q, np.asarray(scale, dtype=_F32), np.asarray(zp, dtype=np.uint8)
