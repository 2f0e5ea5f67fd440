"""8-bit convolutions (ConvInteger, QLinearConv) as integer GEMMs: channels-last im2col + ``int8_gemm``.

A 2-D (or 1-D) convolution of uint8/int8 x (N, C, H, W) by uint8/int8 w (M, C/g, kh, kw) is,
per group, one integer GEMM

    acc[(n, oh, ow), m] = sum_{kh, kw, c} (x[n, c, ...] - x_zp) * (w[m, c, kh, kw] - w_zp[m])

with A = the input's windows laid out channels-last, one row per output position and the
(kh, kw, c) taps along K (uint8 or int8: the activation side of a u8 x s8 VNNI product), and
B = the filter reordered to (kh*kw*C/g, M/g) and packed once by ``int8_gemm.pack_b`` with its
per-output-channel zero points. A 1x1 stride-1 convolution needs no im2col: the channels-last
input is A itself. Padding is filled with x's zero point, so padded taps contribute 0, as the
ONNX definition wants. The int32 result is exact (``int8_gemm``'s routes agree bit for bit).
The rows are computed a chunk at a time (``_chunk_rows``); QLinearConv requantizes each chunk while
it is in cache (a numba kernel, ``integer_conv_kernels``, where numba runs; numpy otherwise, with
the same bytes) into 8-bit channels-last rows, transposed to NCHW once at the end. A channels-last
input (com.microsoft QLinearConv with ``channels_last``, which the NHWC layout pass makes) needs
neither transpose: its rows are the result.

Why channels-last rows rather than W (M, K) times NCHW columns (K, P), which would give NCHW
directly: ``int8_gemm`` packs its B operand, and packing the column matrix on every call cost
more than the GEMM itself (measured on resnet50's layers: 3-10x slower in all).

Where the weights are not constant (no prepack), the same code packs them per call. Other
ranks (3-D), depthwise and other thin-grouped filters (see ``MIN_GROUP_CHANNELS``) and anything
:func:`convolve` declines run the float64 kernels of ``conv.py``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ....framework.thread_pool import current_pool
from ..jit import LazyModuleKernel
from ..math import int8_gemm
from .conv_core import conv_pads, spatial_defaults

_INT8 = (np.dtype(np.uint8), np.dtype(np.int8))
# Output rows (positions) per GEMM: the chunk's int16 A rows and int32 results stay about cache-sized
# (``_CHUNK_BYTES``), and its requantization reads int32 that was just written; at least
# ``_ROWS_PER_CHUNK`` rows, and more for narrow layers, where each chunk's fixed cost (~13 us) would
# dominate: mobilenet_v2's 112x112 1x1 layers (K = 16-32) ran 1.2-1.9x faster in 4096-16384-row chunks.
_ROWS_PER_CHUNK = 1024
_MAX_ROWS_PER_CHUNK = 16384
_CHUNK_BYTES = 1 << 20


def _chunk_rows(k: int, n: int) -> int:
    return max(_ROWS_PER_CHUNK, min(_MAX_ROWS_PER_CHUNK, _CHUNK_BYTES // (2 * k + 4 * n)))


class IntegerConvWeights(NamedTuple):
    """A constant 8-bit filter (with its zero points) packed for ``int8_gemm``, one pack per group."""

    shape: tuple  # the filter's (M, C/g, kh, kw) (1-D filters as kh = 1)
    dtype: np.dtype
    group: int
    packs: tuple  # int8_gemm.PackedInt8B (kh*kw*C/g, M/g) per group


def _filter_as_gemm_b(w4: np.ndarray, group: int) -> list[np.ndarray]:
    """(M, Cg, kh, kw) -> per group the (kh*kw*Cg, M/g) B matrix whose K runs (kh, kw, c) like the im2col."""
    m, cg, kh, kw = w4.shape
    mg = m // group
    return [np.ascontiguousarray(w4[g * mg:(g + 1) * mg].transpose(2, 3, 1, 0).reshape(kh * kw * cg, mg))
            for g in range(group)]


def _zero_point_vector(w_zero_point, m: int) -> np.ndarray | None:
    if w_zero_point is None:
        return None
    zp = np.asarray(w_zero_point)
    if zp.size == 1:
        return np.full(m, zp.reshape(-1)[0], dtype=zp.dtype)
    if zp.ndim != 1 or zp.size != m:
        raise ValueError(f"w_zero_point of shape {zp.shape} is neither per-tensor nor per output channel ({m})")
    return zp


def pack_weights(w: np.ndarray, w_zero_point, group: int) -> IntegerConvWeights:
    """The filter (M, C/g, *k) with 1 or 2 spatial dims packed per group; ValueError/TypeError when unsuitable."""
    w = np.asarray(w)
    if w.dtype not in _INT8 or w.ndim not in (3, 4):
        raise TypeError(f"an 8-bit filter of rank 3 or 4 is needed, got {w.dtype} of rank {w.ndim}")
    group = int(group)
    m = w.shape[0]
    if group <= 0 or m % group:
        raise ValueError(f"{m} output channels do not split into {group} groups")
    if w_zero_point is not None and np.asarray(w_zero_point).dtype != w.dtype:
        raise TypeError("w_zero_point's type differs from w's")
    w4 = w[:, :, None, :] if w.ndim == 3 else w
    zp = _zero_point_vector(w_zero_point, m)
    mg = m // group
    packs = tuple(int8_gemm.pack_b(b, None if zp is None else zp[g * mg:(g + 1) * mg])
                  for g, b in enumerate(_filter_as_gemm_b(w4, group)))
    return IntegerConvWeights(tuple(w4.shape), w.dtype, group, packs)


def _geometry(spatial, w_shape4, strides, dilations, pads, auto_pad, nd: int):
    s, d = spatial_defaults(nd, strides, dilations)
    kernel = list(w_shape4[2:]) if nd == 2 else [w_shape4[3]]
    p = conv_pads(spatial, kernel, s, d, pads, auto_pad)
    if nd == 1:  # as 2-D with a height of 1
        s, d, p = [1] + s, [1] + d, [0, p[0], 0, p[1]]
    return s, d, p


def _output_size(h: int, w: int, kh: int, kw: int, s, d, p) -> tuple[int, int]:
    """(OH, OW) of a 2-D window of kh x kw over h x w with ``_geometry``'s strides, dilations and pads (0: empty)."""
    return (max(0, (h + p[0] + p[2] - (d[0] * (kh - 1) + 1)) // s[0] + 1),
            max(0, (w + p[1] + p[3] - (d[1] * (kw - 1) + 1)) // s[1] + 1))


def float32_exact(taps: int) -> bool:
    """Whether sums of ``taps`` products of two 8-bit differences (each within 255) stay below 2**24, so that
    float32 computes them exactly in any order (up to 258 taps)."""
    return taps * 255 * 255 < 2**24


_REQUANTIZE_KERNEL = LazyModuleKernel("onyxrt.providers.cpu.nn.integer_conv_kernels", "requantize_rows")


def _channels_last_padded(x4: np.ndarray, pads, fill, channels_last: bool) -> np.ndarray:
    """(N, C, H, W), or (N, H, W, C) where ``channels_last``, -> (N, H+pads, W+pads, C), the border filled
    with ``fill`` (x's zero point); a channels-last input without padding is returned as it is.

    numpy's transposing copy: 2-3x faster than a numba loop measured on resnet50's activations.
    """
    if channels_last:
        n, h, w, c = x4.shape
        if not any(pads):
            return x4
    else:
        n, c, h, w = x4.shape
    top, left, bottom, right = pads
    out = np.empty((n, h + top + bottom, w + left + right, c), dtype=x4.dtype)
    if top:
        out[:, :top] = fill
    if bottom:
        out[:, h + top:] = fill
    if left:
        out[:, top:top + h, :left] = fill
    if right:
        out[:, top:top + h, w + left:] = fill
    out[:, top:top + h, left:left + w] = x4 if channels_last else x4.transpose(0, 2, 3, 1)
    return out


def _windows(xp: np.ndarray, c0: int, c1: int, kh: int, kw: int, s, d, oh: int, ow: int) -> np.ndarray:
    """The im2col matrix (N*OH*OW, kh*kw*(c1-c0)) of channels [c0, c1) of the padded channels-last input."""
    n = xp.shape[0]
    cg = c1 - c0
    cols = np.empty((n, oh, ow, kh, kw, cg), dtype=xp.dtype)
    if d[1] == 1 and cg == xp.shape[-1] and xp.strides[2] == cg * xp.strides[3]:
        # all channels, undilated columns: a window row's kw x C bytes lie contiguous in the input, so each
        # filter row is one copy of runs of kw*C bytes (a 3-channel stem: 21-byte runs instead of 3: 6x faster)
        sn, sh, sw, sc = xp.strides
        rows = cols.reshape(n, oh, ow, kh, kw * cg)
        for i in range(kh):
            rows[:, :, :, i, :] = as_strided(xp[:, i * d[0]:], shape=(n, oh, ow, kw * cg),
                                             strides=(sn, s[0] * sh, s[1] * sw, sc), writeable=False)
        return cols.reshape(n * oh * ow, kh * kw * cg)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = xp[:, i * d[0]: i * d[0] + s[0] * (oh - 1) + 1: s[0],
                                        j * d[1]: j * d[1] + s[1] * (ow - 1) + 1: s[1], c0:c1]
    return cols.reshape(n * oh * ow, kh * kw * cg)


def convolve(x, packed: IntegerConvWeights, x_zero_point, strides, dilations, pads, auto_pad,
              requantize: "Requantize | None" = None, channels_last: bool = False) -> np.ndarray:
    """The convolution of 8-bit ``x`` (N, C, [H,] W) as int32, or requantized to 8 bits by ``requantize``
    (QLinearConv), in x's layout (N, M, [OH,] OW); with ``channels_last``, x is (N, [H,] W, C) and the
    result (N, [OH,] OW, M): no transposes at all."""
    nd = x.ndim - 2
    m, cg, kh, kw = packed.shape
    n, c = (x.shape[0], x.shape[-1]) if channels_last else x.shape[:2]
    if c != cg * packed.group:
        raise ValueError(f"input has {c} channels, the filter expects {cg} x {packed.group} groups")
    spatial = x.shape[1:-1] if channels_last else x.shape[2:]
    s, d, p = _geometry(spatial, packed.shape, strides, dilations, pads, auto_pad, nd)
    if nd == 1:
        x4 = x[:, None] if channels_last else x[:, :, None, :]
    else:
        x4 = x
    h, w = x4.shape[1:3] if channels_last else x4.shape[2:]
    oh, ow = _output_size(h, w, kh, kw, s, d, p)
    out_spatial = (ow,) if nd == 1 else (oh, ow)
    plane = oh * ow
    rows = n * plane
    # channels-last rows, transposed to NCHW once at the end (one large numpy transposing copy is
    # about twice as fast as one per chunk)
    y_rows = np.empty((rows, m), dtype=np.int32 if requantize is None else requantize.dtype)
    if rows and m:
        zp = 0 if x_zero_point is None else int(np.asarray(x_zero_point).reshape(-1)[0])
        xp = _channels_last_padded(x4, p, zp, channels_last)
        mg = m // packed.group
        pointwise = kh == kw == 1 and s == [1, 1]
        for g, pack in enumerate(packed.packs):
            c0, c1, m0, m1 = g * cg, (g + 1) * cg, g * mg, (g + 1) * mg
            if pointwise:
                a = np.ascontiguousarray(xp[..., c0:c1].reshape(rows, cg))
            else:
                a = _windows(xp, c0, c1, kh, kw, s, d, oh, ow)

            step = _chunk_rows(a.shape[1], m1 - m0)

            def chunk(r0: int, a=a, pack=pack, m0=m0, m1=m1, step=step) -> None:
                r1 = min(rows, r0 + step)
                acc = int8_gemm.gemm_int8(a[r0:r1], pack, x_zero_point)
                if requantize is None:
                    y_rows[r0:r1, m0:m1] = acc
                else:
                    requantize.store(acc, y_rows[r0:r1, m0:m1], m0, m1)

            starts = range(0, rows, step)
            if len(starts) > 1:
                # chunks over the pool: each thread runs its chunks' GEMM and requantization (a chunk's
                # GEMM then runs on one thread); a single chunk's GEMM splits over the pool by itself
                current_pool().map(chunk, starts)
            else:
                chunk(0)
    if channels_last:
        return y_rows.reshape((n,) + out_spatial + (m,))
    return np.ascontiguousarray(y_rows.reshape(n, plane, m).transpose(0, 2, 1)).reshape((n, m) + out_spatial)


class Requantize:
    """QLinearConv's epilogue: round_half_even((acc + bias) * x_scale * w_scale / y_scale) + y_zp, saturated.

    The multiplier is computed in float32 as onnxruntime does ((x_scale * w_scale) / y_scale),
    and the product acc * multiplier too, so outputs match it exactly except where a value lies
    on a rounding boundary after float32 rounding (one unit, which tests allow).
    """

    def __init__(self, multiplier: np.ndarray, bias: np.ndarray | None, y_zero_point: float, dtype) -> None:
        m = multiplier.shape[0]
        self.multiplier = np.ascontiguousarray(multiplier, dtype=np.float32)  # (M,)
        self.bias = np.zeros(m, np.int32) if bias is None else np.ascontiguousarray(bias, dtype=np.int32)
        self.zero = np.float32(y_zero_point)
        self.dtype = np.dtype(dtype)
        info = np.iinfo(self.dtype)
        self.low, self.high = np.float32(info.min), np.float32(info.max)

    def rows(self, acc: np.ndarray, m0: int, m1: int) -> np.ndarray:
        """The requantized (R, m1-m0) rows of an int32 chunk (numpy)."""
        acc += self.bias[m0:m1]
        y = acc.astype(np.float32)
        y *= self.multiplier[m0:m1]
        np.rint(y, out=y)
        if self.zero:
            y += self.zero
        np.clip(y, self.low, self.high, out=y)
        return y.astype(self.dtype)

    def store(self, acc: np.ndarray, out: np.ndarray, m0: int, m1: int) -> None:
        """Requantize chunk ``acc`` (R, m1-m0) of channels [m0, m1) into ``out`` (R, m1-m0) 8-bit rows."""
        kernel = _REQUANTIZE_KERNEL.compiled_for(self.dtype, acc[:0], self.bias[m0:m1], self.multiplier[m0:m1],
                                                 self.zero, self.low, self.high, out[:0])
        if kernel is not None:
            kernel(acc, self.bias[m0:m1], self.multiplier[m0:m1], self.zero, self.low, self.high, out)
        else:
            out[...] = self.rows(acc, m0, m1)


_DEPTHWISE_KERNEL = LazyModuleKernel("onyxrt.providers.cpu.nn.integer_conv_kernels", "depthwise_requantized")
# multiply-adds from which a depthwise convolution is split over the pool (a hand-off costs ~20-80 us)
_MIN_PARALLEL_DEPTHWISE_MACS = 1 << 19


def depthwise_requantized(x, w, w_zero_point, x_zero_point, strides, dilations, pads, auto_pad,
                          requantize: Requantize, channels_last: bool = False) -> np.ndarray | None:
    """QLinearConv of a 2-D depthwise filter (M = C groups of one channel, w (C, 1, kh, kw)) by a numba kernel
    over channels-last pixels, requantized in the same pass; x (N, C, H, W), or (N, H, W, C) where
    ``channels_last``, and the result in x's layout. None where it does not apply (another shape, more
    than 258 taps, numba unavailable): the caller's general route then runs."""
    if x.ndim != 4 or w.ndim != 4 or w.shape[1] != 1 or x.dtype not in _INT8 or w.dtype not in _INT8:
        return None
    c = x.shape[-1] if channels_last else x.shape[1]
    m, _, kh, kw = w.shape
    if m != c or not float32_exact(kh * kw) or (x_zero_point is not None and np.size(x_zero_point) != 1):
        return None
    zp = _zero_point_vector(w_zero_point, m)
    taps = np.ascontiguousarray(w.reshape(m, kh * kw).T.reshape(kh, kw, m), dtype=np.float32)
    if zp is not None:
        taps -= zp.astype(np.float32)
    x_zero = 0 if x_zero_point is None else int(np.asarray(x_zero_point).reshape(-1)[0])
    spatial = x.shape[1:3] if channels_last else x.shape[2:]
    s, d, p = _geometry(spatial, (m, 1, kh, kw), strides, dilations, pads, auto_pad, 2)
    if any(v < 0 for v in p):
        return None
    oh, ow = _output_size(*spatial, kh, kw, s, d, p)
    if oh == 0 or ow == 0:
        return None
    xp = _channels_last_padded(x, p, x_zero, channels_last)
    out = np.empty((x.shape[0], oh, ow, m), requantize.dtype)
    args = (xp, taps, requantize.bias, requantize.multiplier, np.float32(x_zero), requantize.zero, requantize.low,
            requantize.high, s[0], s[1], d[0], d[1])
    kernel = _DEPTHWISE_KERNEL.compiled_for((x.dtype, requantize.dtype), xp[:0], *args[1:], out[:0])
    if kernel is None:
        return None
    pool = current_pool()
    bands = min(pool.num_threads, oh) if out.size * kh * kw >= _MIN_PARALLEL_DEPTHWISE_MACS else 1
    if bands > 1:  # bands of output rows over the pool (the kernel releases the GIL)
        edges = [oh * b // bands for b in range(bands + 1)]
        pool.map(lambda b: kernel(xp[:, edges[b] * s[0]:], *args[1:], out[:, edges[b]:edges[b + 1]]), range(bands))
    else:
        kernel(*args, out)
    return out if channels_last else np.ascontiguousarray(out.transpose(0, 3, 1, 2))


# Output channels per group below which a grouped convolution stays on conv.py's float64 kernels:
# a depthwise convolution would be one GEMM with a single column per channel here, where conv.py
# has a depthwise route.
MIN_GROUP_CHANNELS = 8


def supported(x: np.ndarray, w: np.ndarray, group: int = 1) -> bool:
    """Whether :func:`convolve` serves these operands: 8-bit, 1-D or 2-D, and not thin groups."""
    if x.dtype not in _INT8 or w.dtype not in _INT8 or x.ndim not in (3, 4) or w.ndim != x.ndim or not math.prod(w.shape):
        return False
    return int(group) == 1 or w.shape[0] // max(int(group), 1) >= MIN_GROUP_CHANNELS
