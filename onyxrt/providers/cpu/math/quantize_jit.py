"""numba kernels of dynamic quantization: DynamicQuantizeLinear's quantizing pass
(``quantization.dynamic_quantize_to_uint8``) and the per-row int8 quantizer of ``row_quantize_matmul``.

Imported only through ``jit.LazyModuleKernel`` on first use (this module imports numba at its top).
Its own module so the kernel compiles with ``error_model="numpy"``: Python's error model checks the
divisor for zero on every element, a branch that stops LLVM from vectorizing the loop (2x slower).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, error_model="numpy")
def quantize_uint8(x, scale, zero_point, out):
    """``out = saturate(rint(x / scale) + zero_point)`` as uint8 over flat float32 ``x``, one pass."""
    for i in range(x.shape[0]):
        v = np.rint(x[i] / scale) + zero_point
        out[i] = np.uint8(min(max(v, np.float32(0.0)), np.float32(255.0)))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def quantize_centered_int16(x, scale, zero_point, out):
    """``quantize_uint8`` of the (M, K) float32 rows ``x`` minus the zero point, as int16 into the first K
    columns of ``out`` (M, width), the rest zeroed: A as the AVX2 int8 GEMM reads it, in one pass."""
    m, k = x.shape
    width = out.shape[1]
    for r in range(m):
        for j in range(k):
            v = np.rint(x[r, j] / scale) + zero_point
            out[r, j] = np.int16(min(max(v, np.float32(0.0)), np.float32(255.0)) - zero_point)
        for j in range(k, width):
            out[r, j] = 0


@numba.njit(cache=True, nogil=True, error_model="numpy")
def quantize_rows_int8_shifted(x, scales, limit, out):
    """``out[r] = clip(rint(x[r] / scales[r]), -limit, limit) + 128`` as uint8 over the rows of float32 ``x``
    (M, K): int8 shifted to the VNNI kernel's unsigned operand."""
    m, k = x.shape
    for r in range(m):
        scale = scales[r]
        for j in range(k):
            v = np.rint(x[r, j] / scale)
            out[r, j] = np.uint8(min(max(v, -limit), limit) + np.float32(128.0))
