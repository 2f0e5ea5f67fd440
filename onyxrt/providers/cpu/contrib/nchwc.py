"""com.microsoft.nchwc ops: the blocked-channel layout onnxruntime's ORT_ENABLE_ALL
optimizer writes (ReorderInput, ReorderOutput, Conv, MaxPool, AveragePool,
GlobalAveragePool, GlobalMaxPool, Upsample).

An NCHWc tensor has the logical shape (N, Cp, H, W) -- Cp the channel count rounded up
to the block size -- and the bytes of (N, Cp / block, H, W, block), exactly as MLAS lays
it out, so ReorderInput/ReorderOutput give onnxruntime's results bit for bit and the
element-wise ops between NCHWc nodes work unchanged.

The block size is not recorded in the model: it is the one MLAS picks on the machine
that optimized the model (16 with AVX-512F, 8 with AVX2/SSE on x86-64, 16 on ARM64).
It is detected the same way here and can be forced with ``ONYXRT_NCHWC_BLOCK_SIZE``.

Conv weights arrive reordered by MLAS (OIHWBo for depthwise / NCHW-input convolutions,
OIHWBiBo otherwise); a constant filter is put back to OIHW once, at session creation
(prepack), and the convolution itself is the standard Conv kernel's.
"""

from __future__ import annotations

import functools
import os
import platform

import numpy as np

from ..nn.conv_core import float_conv, pack_conv_weights
from ..nn.pool import average_pool as _onnx_average_pool
from ..nn.pool import max_pool as _onnx_max_pool
from ..kernel_table import op
from .fused import mlas_activation, mlas_activation_fn
from ....errors import NodeInputError, NodeInputTypeError

_DOMAIN = "com.microsoft.nchwc"


@functools.lru_cache(maxsize=1)
def nchwc_block_size() -> int:
    """MLAS's NCHWc block size on this machine (``ONYXRT_NCHWC_BLOCK_SIZE`` overrides it)."""
    forced = os.environ.get("ONYXRT_NCHWC_BLOCK_SIZE")
    if forced:
        return int(forced)
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return 16
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    return 16 if " avx512f" in flags else 8


def _check_float(x: np.ndarray, op_name: str) -> None:
    if x.dtype != np.float32:
        raise NodeInputTypeError(f"nchwc {op_name}: only float32 is supported, got {x.dtype}")


def _blocks(x: np.ndarray, op_name: str) -> tuple[int, int]:
    bs = nchwc_block_size()
    if x.ndim != 4 or x.shape[1] % bs:
        raise NodeInputError(
            f"nchwc {op_name}: input of shape {x.shape} is not an NCHWc tensor for block size {bs} "
            "(the model was optimized for another CPU? set ONYXRT_NCHWC_BLOCK_SIZE)"
        )
    return bs, x.shape[1] // bs


def to_nchw(x: np.ndarray, channels: int | None = None) -> np.ndarray:
    """NCHWc (N, Cp, H, W) -> plain NCHW (N, channels, H, W), contiguous."""
    bs, cb = _blocks(x, "reorder")
    n, cp, h, w = x.shape
    y = np.ascontiguousarray(np.moveaxis(x.reshape(n, cb, h, w, bs), 4, 2)).reshape(n, cp, h, w)
    if channels is not None and channels != cp:
        y = np.ascontiguousarray(y[:, :channels])
    return y


def to_nchwc(x: np.ndarray, channels_last: bool = False) -> np.ndarray:
    """Plain NCHW (or NHWC) -> NCHWc (N, Cp, H, W); the padding channels are zero."""
    bs = nchwc_block_size()
    if x.ndim != 4:
        raise NodeInputError(f"nchwc: ReorderInput needs a 4-D tensor, got shape {x.shape}")
    if channels_last:
        n, h, w, c = x.shape
    else:
        n, c, h, w = x.shape
    cb = -(-c // bs)
    full = c // bs
    out = (np.empty if c % bs == 0 else np.zeros)((n, cb, h, w, bs), dtype=x.dtype)
    if channels_last:
        if full:
            out[:, :full] = np.moveaxis(x[..., : full * bs].reshape(n, h, w, full, bs), 3, 1)
        if c % bs:
            out[:, full, :, :, : c - full * bs] = x[..., full * bs :]
    else:
        dst = np.moveaxis(out, 4, 2)  # (n, cb, bs, h, w) view
        if full:
            dst[:, :full] = x[:, : full * bs].reshape(n, full, bs, h, w)
        if c % bs:
            dst[:, full, : c - full * bs] = x[:, full * bs :]
    return out.reshape(n, cb * bs, h, w)


def _blocked(y: np.ndarray) -> np.ndarray:
    """A plain NCHW result whose channels are a multiple of the block size -> NCHWc."""
    bs = nchwc_block_size()
    n, c, h, w = y.shape
    return np.ascontiguousarray(np.moveaxis(y.reshape(n, c // bs, bs, h, w), 2, 4)).reshape(n, c, h, w)


# --------------------------------------------------------------------------- reorders


@op("ReorderInput", versions=1, domain=_DOMAIN)
def reorder_input(x, *, channels_last=0):
    _check_float(x, "ReorderInput")
    return to_nchwc(x, bool(channels_last))


@op("ReorderOutput", versions=1, domain=_DOMAIN)
def reorder_output(x, *, channels=0, channels_last=0):
    _check_float(x, "ReorderOutput")
    c = int(channels) or x.shape[1]
    if c > x.shape[1]:
        raise NodeInputError(f"nchwc ReorderOutput: channels {c} exceeds the tensor's {x.shape[1]}")
    y = to_nchw(x, c)
    if channels_last:
        y = np.ascontiguousarray(y.transpose(0, 2, 3, 1))
    return y


# --------------------------------------------------------------------------- filters


def _unblock_filter(w: np.ndarray, inner_blocked: bool) -> np.ndarray:
    """An MLAS-reordered filter (dims (Op, I, kh, kw)) back to OIHW."""
    bs = nchwc_block_size()
    op_, i, kh, kw = w.shape
    if op_ % bs or (inner_blocked and i % bs):
        raise NodeInputError(f"nchwc Conv: filter of shape {w.shape} is not blocked for block size {bs}")
    if inner_blocked:  # OIHWBiBo: [o/bs][i/bs][kh][kw][bi][bo]
        d = w.reshape(op_ // bs, i // bs, kh, kw, bs, bs)
        return np.ascontiguousarray(d.transpose(0, 5, 1, 4, 2, 3)).reshape(op_, i, kh, kw)
    d = w.reshape(op_ // bs, i, kh, kw, bs)  # OIHWBo: [o/bs][i][kh][kw][bo]
    return np.ascontiguousarray(d.transpose(0, 4, 1, 2, 3)).reshape(op_, i, kh, kw)


class _NchwcFilter:
    """A constant filter put back to OIHW once (prepack), with its prepared Conv weights.

    The layout MLAS gave it depends on the input: a group-1 convolution whose filter has
    fewer input channels than a block reads the plain NCHW input (filter OIHWBo), a
    depthwise one has an OIHWBo filter too, every other one OIHWBiBo. A run whose input
    does not match the layout guessed from the filter's shape unblocks the filter itself.
    """

    __slots__ = ("block_size", "nchw_input", "inner_blocked", "conv")

    def __init__(self, block_size, nchw_input, inner_blocked, conv):
        self.block_size = block_size
        self.nchw_input = nchw_input
        self.inner_blocked = inner_blocked
        self.conv = conv


def _nchwc_conv_prepack(inputs, attributes):
    w = inputs[1] if len(inputs) > 1 else None
    b = inputs[2] if len(inputs) > 2 else None
    if not isinstance(w, np.ndarray) or w.ndim != 4 or w.dtype != np.float32:
        return None
    bs = nchwc_block_size()
    group = int(attributes.get("group", 1))
    nchw_input = group == 1 and w.shape[1] < bs
    inner = not nchw_input and not (group > 1 and w.shape[1] == 1)
    try:
        filt = _unblock_filter(w, inner)
    except ValueError:
        return None
    packed = pack_conv_weights(filt, b, attributes)
    return None if packed is None else _NchwcFilter(bs, nchw_input, inner, packed)


# --------------------------------------------------------------------------- Conv


@op("Conv", versions=1, domain=_DOMAIN, prepack=_nchwc_conv_prepack)
def nchwc_conv(
    x,
    w,
    b=None,
    sum_=None,
    *,
    activation="",
    activation_params=None,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
    _packed=None,
):
    _check_float(x, "Conv")
    bs = nchwc_block_size()
    group = int(group)
    if x.ndim != 4 or w.ndim != 4:
        raise NodeInputError(f"nchwc Conv: 2-D convolutions only, got input {x.shape} and filter {w.shape}")
    if group == 1 and x.shape[1] < bs:
        # NCHW input used directly: the filter is OIHWBo
        xin = x
        nchw_input, inner = True, False
    else:
        _blocks(x, "Conv")
        xin = to_nchw(x)
        depthwise = group > 1 and w.shape[1] == 1 and group == x.shape[1]
        nchw_input, inner = False, not depthwise
    packed = None
    if _packed is not None and (_packed.block_size, _packed.nchw_input, _packed.inner_blocked) == (bs, nchw_input, inner):
        packed = _packed.conv
        filt = packed.w
    else:
        filt = _unblock_filter(w, inner)
    # without a Sum input, the activation runs inside the convolution (element-wise, so
    # before the reorder to blocks as well as after)
    fn = mlas_activation_fn(activation, activation_params) if sum_ is None else None
    y = float_conv(xin, filt, b, group, strides, dilations, pads, auto_pad, kernel_shape, packed, fn)
    y = _blocked(y)
    if sum_ is not None:
        if sum_.shape != y.shape:
            raise NodeInputError(f"nchwc Conv: Sum input of shape {sum_.shape} does not match the output {y.shape}")
        y += sum_
        return mlas_activation(y, activation, activation_params)
    return y


# --------------------------------------------------------------------------- pooling


@op("MaxPool", versions=1, domain=_DOMAIN)
def nchwc_max_pool(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None, storage_order=0, strides=None):
    _check_float(x, "MaxPool")
    _blocks(x, "MaxPool")
    (y,) = _onnx_max_pool(
        to_nchw(x),
        auto_pad=auto_pad,
        ceil_mode=ceil_mode,
        dilations=dilations,
        kernel_shape=kernel_shape,
        pads=pads,
        storage_order=storage_order,
        strides=strides,
        _num_outputs=1,
    )
    return _blocked(y)


@op("AveragePool", versions=1, domain=_DOMAIN)
def nchwc_average_pool(
    x, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape=None, pads=None, strides=None
):
    _check_float(x, "AveragePool")
    _blocks(x, "AveragePool")
    y = _onnx_average_pool(
        to_nchw(x),
        auto_pad=auto_pad,
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
        dilations=dilations,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
    )
    return _blocked(y)


def _global_pool(x, reduce, op_name):
    _check_float(x, op_name)
    bs, cb = _blocks(x, op_name)
    n, cp, h, w = x.shape
    y = reduce(x.reshape(n, cb, h * w, bs), axis=2)  # (n, cb, bs): already the blocked order
    return np.ascontiguousarray(y, dtype=np.float32).reshape(n, cp, 1, 1)


@op("GlobalAveragePool", versions=1, domain=_DOMAIN)
def nchwc_global_average_pool(x):
    return _global_pool(x, np.mean, "GlobalAveragePool")


@op("GlobalMaxPool", versions=1, domain=_DOMAIN)
def nchwc_global_max_pool(x):
    return _global_pool(x, np.max, "GlobalMaxPool")


# --------------------------------------------------------------------------- Upsample


def _source_coordinates(out_len: int, in_len: int, scale: float, mode: str) -> np.ndarray:
    o = np.arange(out_len, dtype=np.float64)
    if mode == "asymmetric":
        return o / scale
    if mode == "align_corners":
        return o * ((in_len - 1) / (out_len - 1)) if out_len > 1 else np.zeros(out_len)
    if mode == "half_pixel":
        return (o + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (o + 0.5) / scale - 0.5 if out_len > 1 else np.zeros(out_len)
    raise NotImplementedError(f"nchwc Upsample: coordinate_transformation_mode {mode!r} is not supported")


def _linear_axis(x: np.ndarray, axis: int, scale: int, mode: str) -> np.ndarray:
    in_len = x.shape[axis]
    out_len = in_len * scale
    src = np.clip(_source_coordinates(out_len, in_len, float(scale), mode), 0, in_len - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_len - 1)
    frac = (src - i0).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = out_len
    frac = frac.reshape(shape)
    a = np.take(x, i0, axis=axis)
    b = np.take(x, i1, axis=axis)
    b -= a
    b *= frac
    a += b
    return a


@op("Upsample", versions=1, domain=_DOMAIN)
def nchwc_upsample(x, *, coordinate_transformation_mode="asymmetric", mode="nearest", scales=None):
    _check_float(x, "Upsample")
    bs, cb = _blocks(x, "Upsample")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ctm = coordinate_transformation_mode
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    s = [int(v) for v in (scales or [])]
    if len(s) != 4 or s[0] != 1 or s[1] != 1 or s[2] < 1 or s[3] < 1:
        raise NodeInputError(f"nchwc Upsample: scales must be [1, 1, sh, sw] with positive integers, got {scales}")
    n, cp, h, w = x.shape
    blocked = x.reshape(n, cb, h, w, bs)
    if mode == "nearest":
        y = np.repeat(np.repeat(blocked, s[2], axis=2), s[3], axis=3)
    elif mode == "linear":
        y = _linear_axis(_linear_axis(blocked, 2, s[2], ctm), 3, s[3], ctm)
    else:
        raise NotImplementedError(f"nchwc Upsample: mode {mode!r} is not supported")
    return np.ascontiguousarray(y).reshape(n, cp, h * s[2], w * s[3])
