"""Matrix products split over the session's intra-op pool, each part a single-threaded BLAS call.

Only for sessions with ``session.intra_op.allow_spinning = 0`` (``ThreadPool.splits_gemms``):
their runs keep BLAS single-threaded, because OpenBLAS's own threads spin for a while after
every GEMM (``framework.openblas_spin``). The pool splits a large product into one part per
thread instead: by rows of the output (the left operand's rows, or the batch of a batched
product), or by columns of the right operand when there are too few rows (a decoding step's GEMV). Its workers block when idle.
Measured on 2 cores: as fast as OpenBLAS's threads for large row splits (convolutions, encoder
layers), slower for GEMVs (a 512x1408 GEMV from memory: 230 us against 130 us) and small GEMMs.
Other sessions call ``np.matmul`` as it is, on BLAS's threads.
"""

from __future__ import annotations

import math

import numpy as np

from ...framework.thread_pool import current_pool

# Multiply-adds below which one thread does the product (a split costs ~15 us of hand-offs).
MIN_PARALLEL_MACS = 1 << 19


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.matmul(a, b, out=out)`` for float arrays of rank >= 2, split over the current pool.

    Batched operands (rank > 2) must have the same batch dimensions (broadcasting ones run
    unsplit); ``out``, when given, must be C-contiguous.
    """
    # numpy runs a batched product on BLAS only when each matrix's rows are contiguous; otherwise
    # (a transposed view, as FusedMatMul's transB of attention's keys) its generic loop is ~100x slower
    if a.ndim > 2 and a.strides[-1] != a.itemsize:
        a = np.ascontiguousarray(a)
    if b.ndim > 2 and b.strides[-1] != b.itemsize:
        b = np.ascontiguousarray(b)
    pool = current_pool()
    threads = pool.num_threads
    if not pool.splits_gemms or a.ndim < 2 or b.ndim < 2 or (out is not None and not out.flags.c_contiguous):
        return np.matmul(a, b, out=out)
    m, k = a.shape[-2:]
    n = b.shape[-1]
    batch = a.shape[:-2]
    count = math.prod(batch)  # 1 without a batch
    macs = m * k * n * count
    if macs < MIN_PARALLEL_MACS or b.shape[-2] != k or (a.ndim > 2 or b.ndim > 2) and a.shape[:-2] != b.shape[:-2]:
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty(batch + (m, n), np.result_type(a, b))
    if batch:
        if count < threads:
            return np.matmul(a, b, out=out)
        a3, b3, o3 = a.reshape((count, m, k)), b.reshape((count, k, n)), out.reshape(count, m, n)
        pool.run_chunks(lambda i0, i1: np.matmul(a3[i0:i1], b3[i0:i1], out=o3[i0:i1]), count, macs, MIN_PARALLEL_MACS)
    elif m >= 2 * threads:  # split the rows: each part writes a contiguous block of out
        pool.run_chunks(lambda r0, r1: np.matmul(a[r0:r1], b, out=out[r0:r1]), m, macs, MIN_PARALLEL_MACS)
    else:  # few rows: split the columns (numpy gathers each part's strided output)
        pool.run_chunks(lambda c0, c1: np.matmul(a, b[:, c0:c1], out=out[:, c0:c1]), n, macs, MIN_PARALLEL_MACS)
    return out
