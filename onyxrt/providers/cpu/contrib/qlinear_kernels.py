"""numba kernels for the com.microsoft QLinear elementwise ops, one vectorized pass each.

Imported only through ``jit.LazyModuleKernel`` (this module imports numba at its top). numpy
computes QLinearAdd in about eight passes over the tensor (two widenings, two scalings, the
sum, rounding, clipping, narrowing); these loops read each byte once and give the same bytes:
the same float32 operations in the same order, rounding half to even.
"""

from __future__ import annotations

import numba
import numpy as np

_f = np.float32
_MAGIC = _f(12582912.0)  # 1.5 * 2**23: adding and subtracting it rounds a float32 to an integer, half to even
_LIMIT = _f(2097152.0)
_jit = dict(cache=True, nogil=True, error_model="numpy")


@numba.njit(**_jit)
def qlinear_add(a, b, a_ratio, b_ratio, offset, low, high, out):
    """out[i] = clip(rint(a[i] * a_ratio + (b[i] * b_ratio + offset)), low, high) over flat same-size arrays.

    ``offset`` carries the output zero point minus both inputs' scaled zero points. Values are
    clamped to +-2**21 before the magic-number rounding (exact below 2**22), which saturation hides.
    """
    for i in range(a.shape[0]):
        value = _f(a[i]) * a_ratio + (_f(b[i]) * b_ratio + offset)
        value = min(max(value, -_LIMIT), _LIMIT)
        value = (value + _MAGIC) - _MAGIC
        out[i] = min(max(value, low), high)
