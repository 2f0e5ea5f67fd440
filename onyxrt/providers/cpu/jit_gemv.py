"""numba kernel for float32 products of one or two rows by a matrix (a decoding step's GEMVs).

Imported only by ``providers.cpu.gemm`` through ``jit.LazyModuleKernel``, on first use: this
module imports numba at its top, and numba is optional.

Why it exists: OpenBLAS runs a GEMV whose matrix holds fewer than about 2^19 elements on one
thread, and that thread reads a matrix fresh from memory at about 13 GB/s (a 512x512 float32
matrix in ~75 us on 2 cores of an AMD EPYC). This loop (each row of the matrix streamed once,
in order, into an output row that stays in L1) reads it at about 20 GB/s (~48 us), and a
512x128 one in ~11 us instead of ~23. Sums run in order over k (no reassociation).
"""

from __future__ import annotations

import numba


@numba.njit(cache=True, nogil=True, error_model="numpy")
def small_rows_matmul(a, b, out):
    """``out[:] = a @ b`` for C-contiguous float32 ``a`` (M, K), ``b`` (K, N) and ``out`` (M, N)."""
    rows, inner = a.shape
    columns = b.shape[1]
    out[:, :] = 0
    for k in range(inner):
        for m in range(rows):
            scale = a[m, k]
            for n in range(columns):
                out[m, n] += scale * b[k, n]
