"""com.microsoft quantized element-wise / pooling / data-movement ops (QOperator format).

These are the ops onnxruntime's static quantizer writes (QLinearAdd, QLinearMul,
QLinearGlobalAveragePool, ...) and the ones its graph optimizer produces from QDQ
models. All are per-tensor 8-bit (uint8/int8) with float32 scales.

Numerics follow onnxruntime's CPU kernels, which compute in float32 and requantize
with round-half-to-even and saturation:

* unary ops (Sigmoid, LeakyRelu) and the per-input requantization of Concat / Where
  go through a 256-entry lookup table indexed by the input byte, like onnxruntime;
* Add / Mul requantize ``a * (sa/sc) + b * (sb/sc) + const`` in float32;
* GlobalAveragePool sums exactly in integers, then scales by
  ``x_scale / (y_scale * image_size)``;
* AveragePool / ReduceMean dequantize, reduce in float32 and quantize;
* Softmax reproduces onnxruntime's quirk of quantizing with ``floor(1 / y_scale)``.

onnxruntime evaluates some of these with SIMD approximations (logistic, exp) or a
different float operation order, so an element can differ by one quantization
step where the exact value lies on a rounding boundary.
"""

from __future__ import annotations

import numpy as np

from .._helpers import normalize_axis
from ..jit import LazyModuleKernel
from ..kernel_table import CPU_KERNELS, op
from ..nn.conv import _qlinear_conv_prepack, qlinear_conv_in_layout
from .quantized import _INT8, _MS, _check8
from ....errors import NodeInputError, NodeInputTypeError

# --------------------------------------------------------------------------- helpers


def _scale(v, name: str = "scale") -> np.float32:
    a = np.asarray(v)
    if a.size != 1:
        raise NodeInputError(f"{name} must be a scalar (per-tensor), got shape {a.shape}")
    return np.float32(a.reshape(-1)[0])


def _zp(v, dtype, name: str = "zero_point") -> int:
    """A per-tensor zero point as a Python int (0 when absent)."""
    if v is None:
        return 0
    a = np.asarray(v)
    if a.size != 1:
        raise NodeInputError(f"{name} must be a scalar (per-tensor), got shape {a.shape}")
    if dtype is not None and a.dtype != dtype:
        raise NodeInputTypeError(f"{name} has dtype {a.dtype}, expected {dtype}")
    return int(a.reshape(-1)[0])


def _saturate(y: np.ndarray, dtype) -> np.ndarray:
    """Round half to even, clip to ``dtype``'s range and convert (``y`` is float32, modified in place)."""
    info = np.iinfo(dtype)
    np.rint(y, out=y)
    np.clip(y, info.min, info.max, out=y)
    return y.astype(dtype)


def _quantize(y: np.ndarray, scale: np.float32, zp: int, dtype) -> np.ndarray:
    y = np.asarray(np.asarray(y, dtype=np.float32) / scale, dtype=np.float32)
    if zp:
        # rint(v) + zp == rint(v + zp) for an integer zp; add after rounding like the spec
        np.rint(y, out=y)
        y += np.float32(zp)
    return _saturate(y, dtype)


def _dequantize(x: np.ndarray, scale: np.float32, zp: int) -> np.ndarray:
    y = x.astype(np.float32)
    if zp:
        y -= np.float32(zp)
    y *= scale
    return y


def _byte_values(dtype) -> np.ndarray:
    """The 256 values of an 8-bit type, ordered by their byte (so ``x.view(uint8)`` indexes them)."""
    return np.arange(256, dtype=np.uint8).view(dtype)


def _apply_table(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    return np.asarray(table[x.view(np.uint8) if x.dtype == np.int8 else x], dtype=table.dtype)


def _requantize_table(dtype, x_scale, x_zp, y_scale, y_zp, fn=None) -> np.ndarray:
    """256-entry table: quantize(fn(dequantize(v))) for every byte value v."""
    v = _dequantize(_byte_values(dtype), x_scale, x_zp)
    if fn is not None:
        v = fn(v).astype(np.float32, copy=False)
    return _quantize(v, y_scale, y_zp, dtype)


def _onnx_kernel(op_type: str, opset: int):
    kernel = CPU_KERNELS.lookup("", op_type, opset)
    if kernel is None:
        raise NotImplementedError(f"onyxrt has no {op_type} kernel to build on")
    return kernel.fn


# --------------------------------------------------------------------------- binary


def _binary_params(a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point):
    _check8("A", a)
    _check8("B", b)
    if a.dtype != b.dtype:
        raise NodeInputTypeError(f"A and B must have the same type, got {a.dtype} and {b.dtype}")
    dt = a.dtype
    return (
        dt,
        _scale(a_scale, "A_scale"),
        _zp(a_zero_point, dt, "A_zero_point"),
        _scale(b_scale, "B_scale"),
        _zp(b_zero_point, dt, "B_zero_point"),
        _scale(c_scale, "C_scale"),
        _zp(c_zero_point, dt, "C_zero_point"),
    )


_QLINEAR_ADD_KERNEL = LazyModuleKernel("onyxrt.providers.cpu.contrib.qlinear_kernels", "qlinear_add")


@op("QLinearAdd", versions=1, domain=_MS)
def qlinear_add(a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point=None):
    dt, sa, za, sb, zb, sc, zc = _binary_params(a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point)
    ra = np.float32(sa / sc)
    rb = np.float32(sb / sc)
    const = np.float32(zc) - ra * np.float32(za) - rb * np.float32(zb)
    if a.shape == b.shape and a.flags.c_contiguous and b.flags.c_contiguous:
        info = np.iinfo(dt)
        low, high = np.float32(info.min), np.float32(info.max)
        out = np.empty(a.shape, dt)
        flat = (a.reshape(-1), b.reshape(-1))
        kernel = _QLINEAR_ADD_KERNEL.compiled_for(dt, flat[0][:0], flat[1][:0], ra, rb, const, low, high, out.reshape(-1)[:0])
        if kernel is not None:
            kernel(*flat, ra, rb, const, low, high, out.reshape(-1))
            return out
    y = np.asarray(a.astype(np.float32) * ra, dtype=np.float32)
    bb = np.asarray(b.astype(np.float32) * rb, dtype=np.float32)
    bb += const
    y = np.add(y, bb, out=y) if y.shape == np.broadcast_shapes(y.shape, bb.shape) else np.asarray(y + bb)
    return _saturate(np.asarray(y, dtype=np.float32), dt)


@op("QLinearMul", versions=1, domain=_MS)
def qlinear_mul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point=None):
    dt, sa, za, sb, zb, sc, zc = _binary_params(a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point)
    ratio = np.float32(sa * sb / sc)
    av = a.astype(np.float32)
    if za:
        av -= np.float32(za)
    bv = b.astype(np.float32)
    if zb:
        bv -= np.float32(zb)
    y = np.asarray(av * bv, dtype=np.float32)
    y *= ratio
    np.rint(y, out=y)
    if zc:
        y += np.float32(zc)
    return _saturate(y, dt)


# --------------------------------------------------------------------------- lookup-table unary


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-v.astype(np.float64)))).astype(np.float32)


@op("QLinearSigmoid", versions=1, domain=_MS)
def qlinear_sigmoid(x, x_scale, x_zero_point=None, y_scale=None, y_zero_point=None):
    _check8("X", x)
    table = _requantize_table(
        x.dtype, _scale(x_scale, "X_scale"), _zp(x_zero_point, x.dtype), _scale(y_scale, "Y_scale"),
        _zp(y_zero_point, x.dtype), _sigmoid,
    )
    return _apply_table(x, table)


@op("QLinearLeakyRelu", versions=1, domain=_MS)
def qlinear_leaky_relu(x, x_scale, x_zero_point=None, y_scale=None, y_zero_point=None, *, alpha=0.01):
    _check8("X", x)
    a = np.float32(alpha)
    table = _requantize_table(
        x.dtype, _scale(x_scale, "X_scale"), _zp(x_zero_point, x.dtype), _scale(y_scale, "Y_scale"),
        _zp(y_zero_point, x.dtype), lambda v: np.where(v >= 0, v, v * a),
    )
    return _apply_table(x, table)


# --------------------------------------------------------------------------- Concat / Where


@op("QLinearConcat", versions=1, domain=_MS)
def qlinear_concat(y_scale, y_zero_point, *inputs, axis):
    if len(inputs) == 0 or len(inputs) % 3:
        raise NodeInputError(f"QLinearConcat takes (tensor, scale, zero_point) triples after Y_scale/Y_zero_point, got {len(inputs)} inputs")
    dt = np.asarray(y_zero_point).dtype
    if dt not in _INT8:
        raise NodeInputTypeError(f"Y_zero_point must be uint8 or int8, got {dt}")
    sy, zy = _scale(y_scale, "Y_scale"), _zp(y_zero_point, dt, "Y_zero_point")
    parts = []
    for i in range(0, len(inputs), 3):
        x, sx, zx = inputs[i], inputs[i + 1], inputs[i + 2]
        if x.dtype != dt:
            raise NodeInputTypeError(f"input {i // 3} has dtype {x.dtype}, expected {dt}")
        sx, zx = _scale(sx, "input scale"), _zp(zx, dt, "input zero point")
        if sx == sy and zx == zy:
            parts.append(x)
        else:
            parts.append(_apply_table(x, _requantize_table(dt, sx, zx, sy, zy)))
    rank = parts[0].ndim
    return np.concatenate(parts, axis=normalize_axis(int(axis), rank))


@op("QLinearWhere", versions=1, domain=_MS)
def qlinear_where(condition, x, x_scale, x_zero_point, y, y_scale, y_zero_point, z_scale, z_zero_point):
    _check8("X", x)
    if y.dtype != x.dtype:
        raise NodeInputTypeError(f"X and Y must have the same type, got {x.dtype} and {y.dtype}")
    dt = x.dtype
    sz, zz = _scale(z_scale, "z_scale"), _zp(z_zero_point, dt, "z_zero_point")
    sx, zx = _scale(x_scale, "x_scale"), _zp(x_zero_point, dt, "x_zero_point")
    sy, zy = _scale(y_scale, "y_scale"), _zp(y_zero_point, dt, "y_zero_point")
    xq = x if (sx == sz and zx == zz) else _apply_table(x, _requantize_table(dt, sx, zx, sz, zz))
    yq = y if (sy == sz and zy == zz) else _apply_table(y, _requantize_table(dt, sy, zy, sz, zz))
    return np.asarray(np.where(condition.astype(bool, copy=False), xq, yq), dtype=dt)


# --------------------------------------------------------------------------- pooling / reduction


def _to_channels_first(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, -1, 1)


def _to_channels_last(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


@op("QLinearGlobalAveragePool", versions=1, domain=_MS)
def qlinear_global_average_pool(x, x_scale, x_zero_point, y_scale, y_zero_point, *, channels_last=0):
    _check8("X", x)
    if x.ndim < 3:
        raise NodeInputError(f"input must have rank >= 3, got shape {x.shape}")
    dt = x.dtype
    sx, zx = _scale(x_scale, "x_scale"), _zp(x_zero_point, dt, "x_zero_point")
    sy, zy = _scale(y_scale, "y_scale"), _zp(y_zero_point, dt, "y_zero_point")
    axes = tuple(range(1, x.ndim - 1)) if channels_last else tuple(range(2, x.ndim))
    size = int(np.prod([x.shape[a] for a in axes]))
    acc = x.sum(axis=axes, keepdims=True, dtype=np.int64)  # exact
    if zx:
        acc -= zx * size
    mult = np.float32(sx / (sy * np.float32(size)))
    y = acc.astype(np.float32)
    y *= mult
    np.rint(y, out=y)
    if zy:
        y += np.float32(zy)
    return _saturate(y, dt)


def _pool_geometry(in_sp, kernel, strides, pads, auto_pad, ceil_mode):
    """(pads_begin, output sizes) of a pooling window, as onnxruntime computes them."""
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    auto_pad = auto_pad or "NOTSET"
    nd = len(in_sp)
    begin, out = [], []
    p = [int(v) for v in pads] if pads else [0] * (2 * nd)
    if len(p) != 2 * nd:
        raise NodeInputError(f"pads {p} must have {2 * nd} values")
    for i in range(nd):
        n, k, s = in_sp[i], kernel[i], strides[i]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o = -(-n // s)
            total = max(0, (o - 1) * s + k - n)
            b = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        elif auto_pad == "VALID":
            o = -(-(n - k + 1) // s)
            b = 0
        elif auto_pad == "NOTSET":
            b = p[i]
            span = n + p[i] + p[nd + i] - k
            o = (-(-span // s) if ceil_mode else span // s) + 1
            if ceil_mode and (o - 1) * s >= n + b:
                o -= 1  # the last window would start in the end padding
        else:
            raise NodeInputError(f"unsupported auto_pad value {auto_pad!r}")
        if o <= 0:
            raise NodeInputError(f"pooling output would be empty for input spatial shape {tuple(in_sp)}")
        begin.append(b)
        out.append(o)
    return begin, out


def _average_pool_f32(x, kernel, strides, begin, out, count_include_pad):
    """Window means of the float32 (N, C, *spatial) ``x``.

    The taps are accumulated in row-major kernel order (pad positions add 0), and
    each window is divided by its count: the same float32 operations as onnxruntime.
    """
    nd = len(kernel)
    in_sp = x.shape[2:]
    pad_width = [(0, 0), (0, 0)]
    for i in range(nd):
        need = (out[i] - 1) * strides[i] + kernel[i] - begin[i] - in_sp[i]
        pad_width.append((begin[i], max(0, need)))
    xp = np.pad(x, pad_width) if any(b or e for b, e in pad_width) else x
    acc = np.zeros(x.shape[:2] + tuple(out), dtype=np.float32)
    for tap in np.ndindex(*kernel):
        window = tuple(slice(t, t + (o - 1) * s + 1, s) for t, o, s in zip(tap, out, strides))
        acc += xp[(slice(None), slice(None)) + window]
    if count_include_pad:
        acc /= np.float32(np.prod(kernel))
        return acc
    counts = None
    for i in range(nd):
        start = np.arange(out[i]) * strides[i] - begin[i]
        c = np.minimum(start + kernel[i], in_sp[i]) - np.maximum(start, 0)
        counts = c if counts is None else np.multiply.outer(counts, c)
    acc /= counts.astype(np.float32)
    return acc


@op("QLinearAveragePool", versions=1, domain=_MS)
def qlinear_average_pool(
    x,
    x_scale,
    x_zero_point=None,
    y_scale=None,
    y_zero_point=None,
    *,
    auto_pad="NOTSET",
    ceil_mode=0,
    channels_last=0,
    count_include_pad=0,
    kernel_shape=None,
    pads=None,
    strides=None,
):
    """AveragePool of the dequantized input, requantized (NCHW, or N x spatial x C with channels_last)."""
    _check8("X", x)
    if x.ndim < 3:
        raise NodeInputError(f"input must have rank >= 3, got shape {x.shape}")
    dt = x.dtype
    sx, zx = _scale(x_scale, "x_scale"), _zp(x_zero_point, dt, "x_zero_point")
    sy, zy = _scale(y_scale, "y_scale"), _zp(y_zero_point, dt, "y_zero_point")
    nd = x.ndim - 2
    if not kernel_shape or len(kernel_shape) != nd:
        raise NodeInputError(f"kernel_shape {kernel_shape} does not match {nd} spatial dimensions")
    kernel = [int(k) for k in kernel_shape]
    stride = [int(s) for s in strides] if strides else [1] * nd
    xf = _dequantize(x, sx, zx)
    if channels_last:
        xf = _to_channels_first(xf)
    begin, out = _pool_geometry(xf.shape[2:], kernel, stride, pads, auto_pad, ceil_mode)
    y = _average_pool_f32(xf, kernel, stride, begin, out, count_include_pad)
    # onnxruntime adds the zero point before rounding here (it matters at .5 ties with an odd zero point)
    y /= sy
    if zy:
        y += np.float32(zy)
    y = _saturate(y, dt)
    return _to_channels_last(y) if channels_last else y


@op("QLinearReduceMean", versions=1, domain=_MS)
def qlinear_reduce_mean(data, data_scale, data_zero_point=None, reduced_scale=None, reduced_zero_point=None, *, axes=None, keepdims=1):
    _check8("data", data)
    dt = data.dtype
    sx, zx = _scale(data_scale, "data_scale"), _zp(data_zero_point, dt, "data_zero_point")
    sy, zy = _scale(reduced_scale, "reduced_scale"), _zp(reduced_zero_point, dt, "reduced_zero_point")
    if axes is None or len(axes) == 0:
        ax = tuple(range(data.ndim))
    else:
        ax = tuple(sorted({normalize_axis(int(a), data.ndim) for a in axes}))
    xf = _dequantize(data, sx, zx)
    y = np.mean(xf, axis=ax, keepdims=bool(keepdims), dtype=np.float32)
    return _quantize(np.asarray(y, dtype=np.float32), sy, zy, dt)


@op("QLinearSoftmax", versions=1, domain=_MS)
def qlinear_softmax(x, x_scale, x_zero_point=None, y_scale=None, y_zero_point=None, *, axis=None, opset=None):
    """Softmax over ``axis`` (opset >= 13) or over the dims from ``axis`` on, coerced to 2-D (opset < 13)."""
    _check8("X", x)
    if opset is None:
        raise NodeInputError("QLinearSoftmax requires the 'opset' attribute")
    dt = x.dtype
    sx = _scale(x_scale, "X_scale")
    sy = _scale(y_scale, "y_scale")
    zy = _zp(y_zero_point, dt, "y_zero_point")
    if x.size == 0:
        return np.empty(x.shape, dtype=dt)
    if axis is None:
        axis = 1 if opset < 13 else -1
    axis = normalize_axis(int(axis), x.ndim)
    if opset < 13:
        xr = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
        red = 1
    else:
        xr = x
        red = axis
    # exp((x - max) * x_scale); the zero point cancels out
    xi = xr.astype(np.int32)
    e = np.exp((xi - xi.max(axis=red, keepdims=True)).astype(np.float32) * sx)
    total = e.sum(axis=red, keepdims=True, dtype=np.float32)
    # onnxruntime multiplies by floor(1 / y_scale) instead of dividing by y_scale
    inv = np.float32(np.floor(np.float32(1.0) / sy))
    y = (e * inv) / total
    np.rint(y, out=y)
    if zy:
        y += np.float32(zy)
    return _saturate(y, dt).reshape(x.shape)


# --------------------------------------------------------------------------- QLinearConv (NHWC option)


@op("QLinearConv", versions=1, domain=_MS, prepack=_qlinear_conv_prepack)
def qlinear_conv_ms(
    x,
    x_scale,
    x_zero_point,
    w,
    w_scale,
    w_zero_point,
    y_scale,
    y_zero_point,
    b=None,
    *,
    auto_pad="NOTSET",
    channels_last=0,
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
    _packed=None,
):
    """ONNX QLinearConv; with ``channels_last`` the input and output are N x spatial x C (weights stay M x C/g x k),
    computed in that layout (no transposes where the integer GEMM route serves the filter)."""
    return qlinear_conv_in_layout(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, b,
                                  auto_pad, dilations, group, kernel_shape, pads, strides, _packed, bool(channels_last))


# --------------------------------------------------------------------------- Quantize / Dequantize


def _sub_byte_dtypes():
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover
        return {}
    return {np.dtype(ml_dtypes.int4): (-8, 7), np.dtype(ml_dtypes.uint4): (0, 15)}


_SUB_BYTE = _sub_byte_dtypes()
_QUANT_TYPES = {np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16)} | set(_SUB_BYTE)


def _range(dtype) -> tuple[int, int]:
    if dtype in _SUB_BYTE:
        return _SUB_BYTE[dtype]
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _axis_param(p, x: np.ndarray, axis, name: str) -> np.ndarray:
    """A scalar, or a 1-D per-``axis`` parameter reshaped to broadcast against ``x``."""
    p = np.asarray(p)
    if p.size == 1 and p.ndim <= 1:
        return p.reshape(())
    if p.ndim != 1:
        raise NodeInputError(f"{name} must be a scalar or a 1-D tensor, got shape {p.shape}")
    ax = normalize_axis(1 if axis is None else int(axis), x.ndim)
    if p.shape[0] != x.shape[ax]:
        raise NodeInputError(f"{name} has {p.shape[0]} values but axis {ax} of the input has {x.shape[ax]}")
    shape = [1] * x.ndim
    shape[ax] = -1
    return p.reshape(shape)


@op("QuantizeLinear", versions=1, domain=_MS)
def quantize_linear_ms(x, y_scale, y_zero_point=None, *, axis=None):
    if x.dtype not in (np.float32, np.float16):
        raise NodeInputTypeError(f"QuantizeLinear input must be float or float16, got {x.dtype}")
    out = np.dtype(np.uint8) if y_zero_point is None else np.asarray(y_zero_point).dtype
    if out not in _QUANT_TYPES:
        raise NodeInputTypeError(f"QuantizeLinear does not support output type {out}")
    scale = _axis_param(np.asarray(y_scale).astype(np.float32), x, axis, "y_scale")
    y = x.astype(np.float32) / scale
    y = np.asarray(y, dtype=np.float32)
    np.rint(y, out=y)
    if y_zero_point is not None:
        y += _axis_param(np.asarray(y_zero_point).astype(np.float32), x, axis, "y_zero_point")
    lo, hi = _range(out)
    np.clip(y, lo, hi, out=y)
    return np.asarray(y.astype(out))


@op("DequantizeLinear", versions=1, domain=_MS)
def dequantize_linear_ms(x, x_scale, x_zero_point=None, *, axis=None):
    if x.dtype not in _QUANT_TYPES and x.dtype != np.int32:
        raise NodeInputTypeError(f"DequantizeLinear does not support input type {x.dtype}")
    sdt = np.asarray(x_scale).dtype
    if sdt not in (np.float32, np.float16):
        raise NodeInputTypeError(f"x_scale must be float or float16, got {sdt}")
    scale = _axis_param(np.asarray(x_scale).astype(np.float32), x, axis, "x_scale")
    if x.dtype == np.int32 and x_zero_point is not None and np.any(np.asarray(x_zero_point) != 0):
        raise NodeInputError("int32 DequantizeLinear requires a zero point of 0")
    v = x.astype(np.float32)
    if x_zero_point is not None:
        v -= _axis_param(np.asarray(x_zero_point).astype(np.float32), x, axis, "x_zero_point")
    y = np.asarray(v * scale, dtype=np.float32)
    return y if sdt == np.float32 else y.astype(sdt)
