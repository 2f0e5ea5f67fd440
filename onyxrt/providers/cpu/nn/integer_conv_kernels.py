"""numba kernels for the integer convolutions: the layout changes around the channels-last GEMM.

Imported only through ``jit.LazyModuleKernel`` (this module imports numba at its top). numpy
requantizes in five passes and transposes 8-bit NCHW to NHWC slowly; these kernels do each in
one pass:

* :func:`requantize_rows`: int32 channels-last rows -> requantized uint8/int8 rows, vectorized
  (the transpose to NCHW is then numpy's: a numba byte transpose measured 2x slower);
* :func:`to_channels_last_padded`: uint8/int8 NCHW input -> padded NHWC, border = zero point.

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
            value = _f(acc[r, m] + bias[m]) * multiplier[m]
            value = min(max(value, -_LIMIT), _LIMIT)
            value = (value + _MAGIC) - _MAGIC + zero
            out[r, m] = min(max(value, low), high)


@numba.njit(**_jit)
def to_channels_last_padded(x, fill, top, left, out):
    """out[n, top + h, left + w, c] = x[n, c, h, w]; every other element of ``out`` = ``fill``.

    x: (N, C, H, W); out: (N, H + pads, W + pads, C), same 8-bit dtype. Channels go 64 at a
    time, so the 64 input rows a stretch of output reads stay in L1.
    """
    n_, c_, h_, w_ = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    for n in range(n_):
        for oh in range(out_h):
            h = oh - top
            if h < 0 or h >= h_:
                out[n, oh, :, :] = fill
                continue
            for ow in range(left):
                out[n, oh, ow, :] = fill
            for ow in range(left + w_, out_w):
                out[n, oh, ow, :] = fill
            for c0 in range(0, c_, 64):
                c1 = min(c_, c0 + 64)
                for w in range(w_):
                    for c in range(c0, c1):
                        out[n, oh, left + w, c] = x[n, c, h, w]
