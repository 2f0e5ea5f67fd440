"""A float32 GEMV by a matrix's rows, eight rows at a time, as a native task (``framework.native_spin``): y = W @ x
for W (N, K) row-major (a classifier's weights, which a Gemm with transB or a MatMul by W^T reads), x (K,); and
y = x @ W for W (K, N) row-major wider than deep (a decoder's widening projections) as an axpy task, each thread a
block of W's rows (``gemv_axpy_part``).

Why: a classifier's 5 MB matrix is read from memory (or the last-level cache) once a run; BLAS's sgemv walks it a
row or a column block at a time, while eight rows' dot products at once keep eight streams of loads in flight. Split
over a pool whose workers spin (the split mode, where BLAS runs on one thread), measured on 2 Zen 5 cores:
mobilenet_v2's 1000 x 1280 classifier with the matrix evicted from the caches 131 us (cblas_sgemv per part) -> 111,
in the model's split-mode runs 107-114 -> 71-76 (the model 0.988 paired); on one thread, evicted, 166 (OpenBLAS) ->
120.

Imported by ``gemm`` on first use (it imports numba at its top).
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types

from ..native_tasks import float32_array, int64_array

_jit = dict(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
_ARGS = 5  # W's, x's and y's addresses, N, K


@numba.njit(**_jit)
def gemv_rows(w, x, y, r0, r1):
    """y[r0:r1] = w[r0:r1] @ x: eight rows' dot products a pass over K, each summed in vector lanes (so not in BLAS's
    order: equal to float rounding). (Eight rows rather than four: llama_tiny's decode step 0.970x, its 512x512 and
    1408x512 projections from memory, on 2 Zen 4 cores.)"""
    k = w.shape[1]
    i = r0
    while i + 8 <= r1:
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
        for j in range(k):
            v = x[np.uintp(j)]
            a0 += w[np.uintp(i), np.uintp(j)] * v
            a1 += w[np.uintp(i + 1), np.uintp(j)] * v
            a2 += w[np.uintp(i + 2), np.uintp(j)] * v
            a3 += w[np.uintp(i + 3), np.uintp(j)] * v
            a4 += w[np.uintp(i + 4), np.uintp(j)] * v
            a5 += w[np.uintp(i + 5), np.uintp(j)] * v
            a6 += w[np.uintp(i + 6), np.uintp(j)] * v
            a7 += w[np.uintp(i + 7), np.uintp(j)] * v
        y[np.uintp(i)], y[np.uintp(i + 1)], y[np.uintp(i + 2)], y[np.uintp(i + 3)] = a0, a1, a2, a3
        y[np.uintp(i + 4)], y[np.uintp(i + 5)], y[np.uintp(i + 6)], y[np.uintp(i + 7)] = a4, a5, a6, a7
        i += 8
    while i < r1:
        acc = np.float32(0.0)
        for j in range(k):
            acc += w[np.uintp(i), np.uintp(j)] * x[np.uintp(j)]
        y[np.uintp(i)] = acc
        i += 1


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def gemv_part(args, part, parts):
    """Native task: rows [N * part / parts, N * (part + 1) / parts) of the GEMV at ``args`` (:func:`task_args`), the
    bounds rounded to eights (whole groups of rows per part)."""
    d = int64_array(args, _ARGS)
    n, k = d[3], d[4]
    w = float32_array(d[0], n * k).reshape((n, k))
    x = float32_array(d[1], k)
    y = float32_array(d[2], n)
    groups = (n + 7) // 8
    gemv_rows(w, x, y, min(n, 8 * (groups * part // parts)), min(n, 8 * (groups * (part + 1) // parts)))


@numba.njit(cache=True)
def task_args(w, x, y):
    """:func:`gemv_part`'s arguments for y = w @ x (float32 C-contiguous; the caller keeps them alive until the task
    returns)."""
    args = np.empty(_ARGS, np.int64)
    args[0], args[1], args[2], args[3], args[4] = w.ctypes.data, x.ctypes.data, y.ctypes.data, w.shape[0], w.shape[1]
    return args


_AXPY_ARGS = 6  # W's, x's, y's and the partial sums' addresses, K, N


@numba.njit(**_jit)
def gemv_axpy_rows(w, x, y, r0, r1):
    """y = x[r0:r1] @ w[r0:r1] for w (K, N) row-major: eight of w's rows a pass, each scaled by its element of x and
    added into y (which stays in the near caches while the rows stream), so w is read in its own order."""
    n = w.shape[1]
    for j in range(n):
        y[np.uintp(j)] = np.float32(0.0)
    r = r0
    while r + 8 <= r1:
        x0, x1, x2, x3 = x[np.uintp(r)], x[np.uintp(r + 1)], x[np.uintp(r + 2)], x[np.uintp(r + 3)]
        x4, x5, x6, x7 = x[np.uintp(r + 4)], x[np.uintp(r + 5)], x[np.uintp(r + 6)], x[np.uintp(r + 7)]
        for j in range(n):
            y[np.uintp(j)] += (x0 * w[np.uintp(r), np.uintp(j)] + x1 * w[np.uintp(r + 1), np.uintp(j)]
                               + x2 * w[np.uintp(r + 2), np.uintp(j)] + x3 * w[np.uintp(r + 3), np.uintp(j)]) + (
                x4 * w[np.uintp(r + 4), np.uintp(j)] + x5 * w[np.uintp(r + 5), np.uintp(j)]
                + x6 * w[np.uintp(r + 6), np.uintp(j)] + x7 * w[np.uintp(r + 7), np.uintp(j)])
        r += 8
    while r < r1:
        v = x[np.uintp(r)]
        for j in range(n):
            y[np.uintp(j)] += v * w[np.uintp(r), np.uintp(j)]
        r += 1


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def gemv_axpy_part(args, part, parts):
    """Native task: part ``part`` of ``parts`` of y = x @ W at ``args`` (:func:`axpy_task_args`), W (K, N) row-major,
    split by W's rows: part 0 sums its rows into y, part p > 0 into row p - 1 of the partial sums (the caller adds
    them to y)."""
    d = int64_array(args, _AXPY_ARGS)
    k, n = d[4], d[5]
    w = float32_array(d[0], k * n).reshape((k, n))
    x = float32_array(d[1], k)
    y = float32_array(d[2] if part == 0 else d[3] + (part - 1) * n * 4, n)
    gemv_axpy_rows(w, x, y, k * part // parts, k * (part + 1) // parts)


@numba.njit(cache=True)
def axpy_task_args(w, x, y, partials):
    """:func:`gemv_axpy_part`'s arguments for y = x @ w (float32 C-contiguous; ``partials`` (parts - 1, N); the caller
    keeps them alive until the task returns)."""
    args = np.empty(_AXPY_ARGS, np.int64)
    args[0], args[1], args[2], args[3] = w.ctypes.data, x.ctypes.data, y.ctypes.data, partials.ctypes.data
    args[4], args[5] = w.shape[0], w.shape[1]
    return args
