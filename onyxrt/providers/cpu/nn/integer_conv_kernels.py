"""numba kernel for QLinearConv's requantization of int32 channels-last rows, in one vectorized pass.

Imported only through ``jit.LazyModuleKernel`` (this module imports numba at its top). numpy
requantizes in five passes (to float, scale, round, clip, narrow). The transposes around the
GEMM stay numpy's: numba byte-transpose loops measured 2-3x slower than numpy's copies.

Rounding is half to even and the product float32, as in the numpy path, so both give identical
bytes.
"""

from __future__ import annotations

import numba
import numpy as np

_f = np.float32
_MAGIC = _f(12582912.0)  # 1.5 * 2**23: adding and subtracting it rounds a float32 to an integer, half to even
_LIMIT = _f(2097152.0)
_jit = dict(cache=True, nogil=True, error_model="numpy")


@numba.njit(**_jit)
def requantize_rows(acc, bias, multiplier, zero, low, high, out):
    """out[r, m] = clip(rint((acc[r, m] + bias[m]) * multiplier[m]) + zero, low, high).

    acc: (R, M) int32; bias: (M,) int32; multiplier: (M,) float32; out: (R, M) uint8 or int8.
    Rounding half to even by the float32 magic-number addition (exact for |v| < 2**22; larger
    values are clamped first, which the saturation makes invisible): libm's rint stops LLVM
    from vectorizing.
    """
    rows, channels = acc.shape
    for r in range(rows):
        for m in range(channels):
            # the sum wraps in int32 as numpy's does: numba would widen it to int64, whose conversion to
            # float has no AVX2 instruction and keeps the loop scalar (3.5x slower)
            value = _f(np.int32(acc[r, m] + bias[m])) * multiplier[m]
            value = min(max(value, -_LIMIT), _LIMIT)
            value = (value + _MAGIC) - _MAGIC + zero
            out[r, m] = min(max(value, low), high)


@numba.njit(**_jit)
def depthwise_requantized(xp, w, bias, multiplier, x_zero, y_zero, low, high, sh, sw, dh, dw, out):
    """A depthwise convolution of the padded channels-last 8-bit ``xp`` (N, Hp, Wp, C; padding holds x's zero
    point) by ``w`` (kh, kw, C) float32 (the filter minus its zero points), requantized into ``out``
    (N, OH, OW, C): per pixel the taps are summed in float32, exact (at most 258 taps of 255 x 255 stay
    below 2**24), then as :func:`requantize_rows`: the int32 sum plus ``bias`` times ``multiplier``,
    rounded half to even, plus ``y_zero``, clipped to [low, high]. Channels are the vectorized axis."""
    n, oh, ow, c = out.shape
    kh, kw = w.shape[0], w.shape[1]
    acc = np.empty(c, np.float32)
    for b in range(n):
        for y in range(oh):
            for x in range(ow):
                for ch in range(c):
                    acc[ch] = 0
                for i in range(kh):
                    row = y * sh + i * dh
                    for j in range(kw):
                        column = x * sw + j * dw
                        for ch in range(c):
                            acc[ch] += (_f(xp[b, row, column, ch]) - x_zero) * w[i, j, ch]
                for ch in range(c):
                    value = _f(np.int32(np.int32(acc[ch]) + bias[ch])) * multiplier[ch]
                    value = min(max(value, -_LIMIT), _LIMIT)
                    value = (value + _MAGIC) - _MAGIC + y_zero
                    out[b, y, x, ch] = min(max(value, low), high)
