"""Convolution kernels: Conv, ConvTranspose, ConvInteger, QLinearConv, DeformConv,
CausalConvWithState.

The shared convolution core (im2col, depthwise GEMMs, prepared weights, window geometry)
lives in :mod:`.conv_core`. 8-bit integer convolutions (ConvInteger, QLinearConv) of rank 1-2
run as integer GEMMs (:mod:`.integer_conv`); other ranks and thin groups are computed in float64
(exact), then converted; ConvTranspose is one GEMM per group followed by a scatter-add of the
kernel taps.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..kernel_table import op
from . import integer_conv
from .conv_core import (
    ConvWeights,
    add_bias,
    auto_pad_name,
    check_kernel_shape,
    compute_dtype,
    conv_core,
    conv_pads,
    conv_prepack,
    float_conv,
    frozen,
    pad_spatial,
    prepared_route_path,
    spatial_defaults,
    window_slice,
)
from ....errors import NodeInputError, NodeInputTypeError

@op("Conv", versions=(1, 11, 22), prepack=conv_prepack)
def conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None, _packed=None):
    return float_conv(x, w, b, group, strides, dilations, pads, auto_pad, kernel_shape, _packed)


# (a Conv has no activation: its routes are keyed by a spec of None)
conv.fast_path = lambda bound, keywords: prepared_route_path(bound, keywords.get("_packed"), None)


# --------------------------------------------------------------------------- ConvTranspose


def conv_transpose_pads(in_sp, kernel, strides, dilations, pads, auto_pad, output_padding, output_shape):
    """(begin, end, output_padding) for ConvTranspose per the ONNX spec."""
    nd = len(in_sp)
    auto_pad = auto_pad_name(auto_pad)
    op_ = [int(v) for v in output_padding] if output_padding else [0] * nd
    if len(op_) != nd:
        raise NodeInputError(f"output_padding {op_} must have {nd} values")
    full = [strides[i] * (in_sp[i] - 1) + op_[i] + (kernel[i] - 1) * dilations[i] + 1 for i in range(nd)]
    target = None
    if output_shape:
        target = [int(v) for v in output_shape]
        if len(target) == nd + 2:
            target = target[2:]
        if len(target) != nd:
            raise NodeInputError(f"output_shape {list(output_shape)} must have {nd} values")
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = [in_sp[i] * strides[i] for i in range(nd)]
    if target is not None:
        # Like onnxruntime, a negative total padding is clamped to 0: SAME then yields
        # the uncropped size, an explicit output_shape is reached by zeros at the end.
        begin, end = [], []
        for i in range(nd):
            total = max(0, full[i] - target[i])
            b = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begin.append(b)
            end.append(full[i] - b - (target[i] if output_shape else full[i] - total))
        return begin, end, op_
    if auto_pad == "VALID" or not pads:
        return [0] * nd, [0] * nd, op_
    pads = [int(p) for p in pads]
    if len(pads) != 2 * nd:
        raise NodeInputError(f"pads {pads} must have {2 * nd} values")
    return pads[:nd], pads[nd:], op_


def _transposed_filter(w: np.ndarray, group: int) -> np.ndarray:
    """A (C, M/group, *k) ConvTranspose filter as the (G, M/group*K, C/group) GEMM operand."""
    Cw, Mg = w.shape[:2]
    return w.reshape(group, Cw // group, Mg * math.prod(w.shape[2:])).transpose(0, 2, 1)


class _ConvTransposeWeights:
    """A constant ConvTranspose filter in the compute dtype, laid out for the GEMM, once."""

    __slots__ = ("ct", "shape", "wt")

    def __init__(self, w: np.ndarray, group: int):
        self.ct = np.dtype(compute_dtype(w.dtype))
        self.shape = w.shape
        self.wt = frozen(np.ascontiguousarray(_transposed_filter(w.astype(self.ct, copy=False), group)))


def _conv_transpose_prepack(inputs, attributes):
    w = inputs[1] if len(inputs) > 1 else None
    if not isinstance(w, np.ndarray) or w.ndim < 3 or not (np.issubdtype(w.dtype, np.floating) or w.dtype.kind == "V"):
        return None
    group = int(attributes.get("group", 1))
    if group <= 0 or w.shape[0] % group:
        return None
    return _ConvTransposeWeights(w, group)


def conv_transpose_core(x, w, group, strides, dilations, begin, end, output_padding, wt=None):
    """``wt``: ``_transposed_filter(w, group)`` prepared beforehand (optional)."""
    N, C = x.shape[:2]
    nd = x.ndim - 2
    in_sp = x.shape[2:]
    k = tuple(w.shape[2:])
    Cw, Mg = w.shape[:2]
    group = int(group)
    if Cw != C or group <= 0 or C % group:
        raise NodeInputError(f"input channels {C}, weight shape {w.shape} and group {group} are inconsistent")
    Cg = C // group
    M = Mg * group
    P = math.prod(in_sp)
    if wt is None:
        wt = _transposed_filter(w, group)  # (G, Mg*K, Cg)
    xg = x.reshape(N, group, Cg, P)
    cols = np.matmul(wt, xg).reshape((N, M) + k + tuple(in_sp))
    full = [strides[i] * (in_sp[i] - 1) + (k[i] - 1) * dilations[i] + 1 + output_padding[i] for i in range(nd)]
    out = np.zeros((N, M) + tuple(full), dtype=x.dtype)
    for tap in itertools.product(*(range(kk) for kk in k)):
        dst = out[(slice(None), slice(None)) + tuple(window_slice(tap[i], dilations[i], strides[i], in_sp[i]) for i in range(nd))]
        dst += cols[(slice(None), slice(None)) + tap]
    return pad_spatial(out, [-b for b in begin], [-e for e in end])


@op("ConvTranspose", versions=(1, 11, 22), prepack=_conv_transpose_prepack)
def conv_transpose(
    x,
    w,
    b=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    output_padding=None,
    output_shape=None,
    pads=None,
    strides=None,
    _packed=None,
):
    if x.ndim < 3:
        raise NodeInputError(f"ConvTranspose input must have rank >= 3, got shape {x.shape}")
    check_kernel_shape(kernel_shape, w)
    nd = x.ndim - 2
    s, d = spatial_defaults(nd, strides, dilations)
    begin, end, op_ = conv_transpose_pads(x.shape[2:], w.shape[2:], s, d, pads, auto_pad, output_padding, output_shape)
    ct = compute_dtype(x.dtype)
    xc = x if x.dtype == ct else x.astype(ct)
    wt = None
    if _packed is not None and _packed.ct == ct and _packed.shape == w.shape:
        wc, wt = w, _packed.wt  # (w's values are only read through wt)
    else:
        wc = w if w.dtype == ct else w.astype(ct)
    y = conv_transpose_core(xc, wc, group, s, d, begin, end, op_, wt)
    y = add_bias(y, b, nd)
    return y if y.dtype == x.dtype else y.astype(x.dtype)


# --------------------------------------------------------------------------- quantized


def _exact_dtype(w_shape) -> type:
    """float32 where a filter's sums of 8-bit products are exact in it (``integer_conv.float32_exact``), else
    float64. float32 lets a depthwise filter run the compiled float32 depthwise kernel, ~10x the float64
    fallback."""
    return np.float32 if integer_conv.float32_exact(math.prod(w_shape[1:])) else np.float64


def _zero_point_shift(v: np.ndarray, zp, per_channel_axis_len: int | None = None, dtype=np.float64) -> np.ndarray:
    """``v - zp`` in ``dtype`` (exact for 8-bit data), C-contiguous; ``zp`` may be per output channel (axis 0)."""
    out = np.array(v, dtype=dtype, order="C")
    if zp is None:
        return out
    zp = np.asarray(zp)
    if zp.size == 1:
        z = float(zp.reshape(-1)[0])
        if z:
            out -= z
        return out
    if per_channel_axis_len is None or zp.size != per_channel_axis_len:
        raise NodeInputError(f"zero point of shape {zp.shape} is not per-tensor or per-output-channel")
    out -= zp.astype(dtype).reshape((-1,) + (1,) * (v.ndim - 1))
    return out


def _int_conv_pack(w, w_zero_point, attributes) -> ConvWeights | None:
    """A constant 8-bit filter minus its (constant) zero point, in float32 or float64 (``_exact_dtype``), prepared once."""
    if not isinstance(w, np.ndarray) or w.dtype not in (np.int8, np.uint8) or w.ndim < 3:
        return None
    try:
        s, d = spatial_defaults(w.ndim - 2, attributes.get("strides"), attributes.get("dilations"))
        shifted = _zero_point_shift(w, w_zero_point, w.shape[0], _exact_dtype(w.shape))
        return ConvWeights(shifted, None, int(attributes.get("group", 1)), s, d)
    except (ValueError, TypeError):
        return None


def _integer_gemm_pack(w, w_zero_point, attributes) -> integer_conv.IntegerConvWeights | None:
    """A constant 1-D/2-D 8-bit filter packed for the integer GEMM (``integer_conv``); None when unsuitable."""
    if not isinstance(w, np.ndarray) or w.dtype not in (np.int8, np.uint8) or w.ndim not in (3, 4):
        return None
    group = attributes.get("group", 1)
    if not integer_conv.supported(np.empty((0,) * w.ndim, w.dtype), w, group):
        return None
    try:
        return integer_conv.pack_weights(w, w_zero_point, int(group))
    except (ValueError, TypeError):
        return None


def _conv_integer_prepack(inputs, attributes):
    w = inputs[1] if len(inputs) > 1 else None
    if len(inputs) > 3 and inputs[3] is None:
        return None  # a zero point that is not constant (or absent: not told apart here)
    w_zero_point = inputs[3] if len(inputs) > 3 else None
    return _integer_gemm_pack(w, w_zero_point, attributes) or _int_conv_pack(w, w_zero_point, attributes)


def _qlinear_conv_prepack(inputs, attributes):
    if len(inputs) < 6 or inputs[5] is None:
        return None
    return _integer_gemm_pack(inputs[3], inputs[5], attributes) or _int_conv_pack(inputs[3], inputs[5], attributes)


def _integer_gemm_conv(x, w, x_zero_point, w_zero_point, group, strides, dilations, pads, auto_pad, kernel_shape,
                       packed, requantizer=None, channels_last=False):
    """The convolution through ``integer_conv`` (int32, or requantized by ``requantizer``), or None where it does not serve
    these inputs (the float64 path then computes the same integers or reports what is wrong)."""
    if not integer_conv.supported(x, w, group) or (x_zero_point is not None and np.asarray(x_zero_point).size != 1):
        return None
    check_kernel_shape(kernel_shape, w)
    try:
        if not isinstance(packed, integer_conv.IntegerConvWeights) or packed.dtype != w.dtype or packed.group != int(group) \
                or packed.shape != (w.shape if w.ndim == 4 else (w.shape[0], w.shape[1], 1, w.shape[2])):
            packed = integer_conv.pack_weights(w, w_zero_point, group)
        return integer_conv.convolve(x, packed, x_zero_point, strides, dilations, pads, auto_pad, requantizer,
                                     channels_last)
    except (ValueError, TypeError):
        return None


def _int_conv(x, w, x_zero_point, w_zero_point, group, strides, dilations, pads, auto_pad, kernel_shape, packed=None):
    if x.ndim < 3:
        raise NodeInputError(f"input must have rank >= 3, got shape {x.shape}")
    for name, t in (("x", x), ("w", w)):
        if t.dtype not in (np.int8, np.uint8):
            raise NodeInputTypeError(f"{name} must be int8 or uint8, got {t.dtype}")
    check_kernel_shape(kernel_shape, w)
    nd = x.ndim - 2
    s, d = spatial_defaults(nd, strides, dilations)
    p = conv_pads(x.shape[2:], w.shape[2:], s, d, pads, auto_pad)
    if x_zero_point is not None and np.asarray(x_zero_point).size != 1:
        raise NodeInputError("x_zero_point must be a scalar (per-tensor)")
    dtype = _exact_dtype(w.shape)  # exact integers either way
    xc = _zero_point_shift(x, x_zero_point, dtype=dtype)
    if packed is not None and packed.w.shape == w.shape and packed.w.dtype == dtype:
        return conv_core(xc, packed.w, group, s, d, p, None, packed.dw)
    wc = _zero_point_shift(w, w_zero_point, w.shape[0], dtype)
    return conv_core(xc, wc, group, s, d, p)


@op("ConvInteger", versions=10, prepack=_conv_integer_prepack)
def conv_integer(
    x, w, x_zero_point=None, w_zero_point=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None,
    strides=None, _packed=None,
):
    fast = _integer_gemm_conv(x, w, x_zero_point, w_zero_point, group, strides, dilations, pads, auto_pad, kernel_shape,
                              _packed)
    if fast is not None:
        return fast
    if isinstance(_packed, integer_conv.IntegerConvWeights):
        _packed = None
    y = _int_conv(x, w, x_zero_point, w_zero_point, group, strides, dilations, pads, auto_pad, kernel_shape, _packed)
    return np.ascontiguousarray(y).astype(np.int32)


def requantize(acc: np.ndarray, multiplier: np.ndarray, y_zero_point, out_dtype) -> np.ndarray:
    """round_half_even(acc * multiplier) + zero point, saturated to ``out_dtype`` (int8/uint8)."""
    info = np.iinfo(out_dtype)
    y = acc.astype(np.float32) * multiplier
    np.rint(y, out=y)
    if y_zero_point is not None:
        y += np.float32(np.asarray(y_zero_point).reshape(-1)[0])
    np.clip(y, info.min, info.max, out=y)
    return y.astype(out_dtype)


@op("QLinearConv", versions=10, prepack=_qlinear_conv_prepack)
def qlinear_conv(
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
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
    _packed=None,
):
    return qlinear_conv_in_layout(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, b,
                                  auto_pad, dilations, group, kernel_shape, pads, strides, _packed)


def qlinear_conv_in_layout(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, b, auto_pad,
                           dilations, group, kernel_shape, pads, strides, packed, channels_last: bool = False):
    """QLinearConv with x and y (N, C, *spatial), or (N, *spatial, C) where ``channels_last`` (com.microsoft's
    QLinearConv); the filter is (M, C/g, *k) either way."""
    nd = x.ndim - 2
    M = w.shape[0]
    ws = np.asarray(w_scale, dtype=np.float32).reshape(-1)
    if ws.size not in (1, M):
        raise NodeInputError(f"w_scale must be per-tensor or per-output-channel, got shape {np.shape(w_scale)}")
    mult = (np.float32(np.asarray(x_scale).reshape(-1)[0]) * ws) / np.float32(np.asarray(y_scale).reshape(-1)[0])
    out_dtype = np.asarray(y_zero_point).dtype if y_zero_point is not None else np.uint8
    bias = None if b is None else np.asarray(b)
    if out_dtype in (np.uint8, np.int8) and (bias is None or (bias.dtype == np.int32 and bias.size == M)):
        requantizer = integer_conv.Requantize(
            np.broadcast_to(mult.astype(np.float32), (M,)), None if bias is None else bias.reshape(M),
            0.0 if y_zero_point is None else float(np.asarray(y_zero_point).reshape(-1)[0]), out_dtype,
        )
        fast = _integer_gemm_conv(x, w, x_zero_point, w_zero_point, group, strides, dilations, pads, auto_pad,
                                  kernel_shape, packed, requantizer, channels_last)
        if fast is None and int(group) == M and M > 1:
            check_kernel_shape(kernel_shape, w)
            fast = integer_conv.depthwise_requantized(x, w, w_zero_point, x_zero_point, strides, dilations, pads,
                                                      auto_pad, requantizer, channels_last)
        if fast is not None:
            return fast
    if isinstance(packed, integer_conv.IntegerConvWeights):
        packed = None
    if channels_last:
        x = np.moveaxis(x, -1, 1)
    acc = _int_conv(x, w, x_zero_point, w_zero_point, group, strides, dilations, pads, auto_pad, kernel_shape, packed)
    if b is not None:
        acc = acc + np.asarray(b, dtype=np.float64).reshape((1, -1) + (1,) * nd)
    mult = mult.astype(np.float32).reshape((1, -1) + (1,) * nd) if ws.size > 1 else mult.astype(np.float32)[0]
    y = requantize(acc, mult, y_zero_point, out_dtype)
    return np.ascontiguousarray(np.moveaxis(y, 1, -1)) if channels_last else y


# --------------------------------------------------------------------------- CausalConvWithState


@op("CausalConvWithState", versions=27, multi_output=True)
def causal_conv_with_state(x, w, b=None, past_state=None, *, activation="none"):
    """Stateful causal depthwise 1-D conv: (output, present_state = last k-1 padded positions)."""
    if isinstance(activation, bytes):
        activation = activation.decode()
    activation = (activation or "none").lower()
    if activation not in ("none", "silu", "swish"):
        raise NodeInputError(f"unsupported activation {activation!r}")
    if x.ndim != 3 or w.ndim != 3 or w.shape[1] != 1 or w.shape[0] != x.shape[1]:
        raise NodeInputError(f"CausalConvWithState expects input (B, C, L) and weight (C, 1, k); got {x.shape}, {w.shape}")
    B, C, L = x.shape
    k = w.shape[2]
    ct = compute_dtype(x.dtype)
    xc = x.astype(ct, copy=False)
    if past_state is None:
        past = np.zeros((B, C, k - 1), dtype=ct)
    else:
        past = np.asarray(past_state).astype(ct, copy=False)
        if past.shape != (B, C, k - 1):
            raise NodeInputError(f"past_state shape {past.shape} must be {(B, C, k - 1)}")
    padded = np.concatenate([past, xc], axis=2)
    wc = w.astype(ct, copy=False).reshape(1, C, k)
    y = padded[:, :, 0:L] * wc[:, :, 0:1]
    for j in range(1, k):
        y += padded[:, :, j : j + L] * wc[:, :, j : j + 1]
    if b is not None:
        y += np.asarray(b).astype(ct, copy=False).reshape(1, C, 1)
    if activation in ("silu", "swish"):
        y = y / (1 + np.exp(-y))
    present = np.ascontiguousarray(padded[:, :, L:]) if k > 1 else np.zeros((B, C, 0), dtype=ct)
    return y.astype(x.dtype, copy=False), present.astype(x.dtype, copy=False)


# --------------------------------------------------------------------------- DeformConv


def _bilinear_gather(img: np.ndarray, ph: np.ndarray, pw: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``img`` (C, H, W) at float positions (P,), zero outside the image."""
    C, H, W = img.shape
    flat = img.reshape(C, H * W)
    inside = (ph > -1) & (ph < H) & (pw > -1) & (pw < W)
    h0 = np.floor(ph)
    w0 = np.floor(pw)
    lh = ph - h0
    lw = pw - w0
    h0 = h0.astype(np.int64)
    w0 = w0.astype(np.int64)
    out = np.zeros((C, ph.size), dtype=img.dtype)
    for dh, dw, weight in ((0, 0, (1 - lh) * (1 - lw)), (0, 1, (1 - lh) * lw), (1, 0, lh * (1 - lw)), (1, 1, lh * lw)):
        hh = h0 + dh
        ww = w0 + dw
        ok = inside & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        idx = np.where(ok, hh * W + ww, 0)
        out += flat[:, idx] * np.where(ok, weight, 0).astype(img.dtype)
    return out


@op("DeformConv", versions=(19, 22))
def deform_conv(
    x, w, offset, b=None, mask=None, *, dilations=None, group=1, kernel_shape=None, offset_group=1, pads=None, strides=None
):
    if x.ndim != 4:
        raise NotImplementedError(f"DeformConv supports 2-D inputs only, got shape {x.shape}")
    check_kernel_shape(kernel_shape, w)
    s, d = spatial_defaults(2, strides, dilations)
    p = [int(v) for v in pads] if pads else [0, 0, 0, 0]
    ct = compute_dtype(x.dtype)
    xc = x.astype(ct, copy=False)
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    K = kh * kw
    group, G = int(group), int(offset_group)
    if Cg * group != C or M % group or C % G:
        raise NodeInputError(f"DeformConv: channels {C}, weight {w.shape}, group {group}, offset_group {G} are inconsistent")
    oH = (H + p[0] + p[2] - ((kh - 1) * d[0] + 1)) // s[0] + 1
    oW = (W + p[1] + p[3] - ((kw - 1) * d[1] + 1)) // s[1] + 1
    P = oH * oW
    off = np.asarray(offset).astype(ct, copy=False).reshape(N, G, K, 2, P)
    msk = None if mask is None else np.asarray(mask).astype(ct, copy=False).reshape(N, G, K, P)
    base_h = np.repeat(np.arange(oH, dtype=ct) * s[0] - p[0], oW)
    base_w = np.tile(np.arange(oW, dtype=ct) * s[1] - p[1], oH)
    Cog = C // G
    cols = np.empty((N, C, K, P), dtype=ct)
    for n in range(N):
        for g in range(G):
            img = xc[n, g * Cog : (g + 1) * Cog]
            for k in range(K):
                i, j = divmod(k, kw)
                v = _bilinear_gather(img, base_h + i * d[0] + off[n, g, k, 0], base_w + j * d[1] + off[n, g, k, 1])
                if msk is not None:
                    v *= msk[n, g, k]
                cols[n, g * Cog : (g + 1) * Cog, k] = v
    wg = w.astype(ct, copy=False).reshape(group, M // group, Cg * K)
    y = np.matmul(wg, cols.reshape(N, group, Cg * K, P)).reshape(N, M, oH, oW)
    if b is not None:
        y += np.asarray(b).astype(ct, copy=False).reshape(1, M, 1, 1)
    return y.astype(x.dtype, copy=False)
