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
