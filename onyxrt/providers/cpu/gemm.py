"""Matrix products split over the session's intra-op pool, each part a single-threaded BLAS call.

For pools that split products themselves (``ThreadPool.splits_gemms``: without
``session.intra_op.allow_spinning``, or sessions whose plans hold onyxrt's own pool kernels): their
runs keep BLAS single-threaded and the pool splits a large product into one part per thread: by
rows of the output (the left operand's rows, or the batch of a batched product), or by columns of
the right operand when there are too few rows (a decoding step's GEMV; only for matrices of at least
``GEMV_SPLIT_MIN_ELEMENTS``) or B is the larger operand with at least as many rows as the output
(a convolution's column matrix: split by rows, each thread would stream all of it; 64x2304x3136:
7.5 -> 6.5 ms). Float32 parts run as native
tasks where numba is usable (``native_sgemm``: cblas_sgemm / cblas_sgemv on the workers, no GIL);
others as Python tasks. Measured on 2 cores (``benchmarks/native_pool.md``): native splits within
about 15% of OpenBLAS's own threads either way. On a CPU with AVX-512 (or AVX2, for the operands
``own_sgemm_fits`` takes), such a pool's float32 products of many rows run on onyxrt's own kernel instead
(``math/sgemm_tiles``: B read where it lies, no packing; minilm_l6 and bert_base without ``allow_spinning`` 4-9 %
faster on a Zen 5 EPYC).
A decoding step's GEMVs (one row by a matrix of at least ``GEMV_ROWS_SPLIT_MIN_ELEMENTS``) run as ``math/gemv_rows``'
tasks over such a pool, which ``note_product`` sends decoding steps to: by eight rows of a B whose columns lie
contiguous (a transposed copy), or, for a row-major B wider than deep, by blocks of its rows (``_gemv_by_axpy``).
Other pools call ``np.matmul`` as it is, on BLAS's threads. (A compiled
single-threaded GEMV loop for them, kept on AVX-512 CPUs after a measurement on a Zen 4 EPYC, was removed
in stop 31: on a Zen 5 EPYC OpenBLAS's sgemv made llama_tiny's decoding step faster at two threads,
2.80-2.96 -> 2.72 ms, and at one, 3.59-3.67 -> 3.35 ms, with its AVX-512 kernels and with its AVX2 ones;
on the AVX2-only EPYC OpenBLAS had been the faster too.)
"""

from __future__ import annotations

import math

import numpy as np

from ...framework.cpu_features import has_flags
from ...framework.thread_mode import note_blas_product, note_pool_product
from ...framework.thread_pool import current_pool
from .jit import numba_disabled, optional_module

# Multiply-adds below which one thread does the product (a split costs ~15 us of hand-offs).
MIN_PARALLEL_MACS = 1 << 19
# ... and below which one thread does a single product that would split as cblas_sgemm parts by rows or columns (each
# part packs its operands again): on 2 Zen 4 cores 136 x 64 x 64 10.8 us on one thread against 15.3 in two parts,
# 128 x 64 x 96 14.9 / 17.4, 96 x 96 x 96 16.5 / 18.3 (from 1M multiply-adds onyxrt's own GEMM takes most of them).
CBLAS_PARTS_MIN_MACS = 1 << 20
# Products of at most this many rows are GEMVs (a decoding step's projections).
GEMV_MAX_ROWS = 2
# A product of at most GEMV_MAX_ROWS rows is split over the pool only for a matrix this large: measured from
# memory on 2 cores, a split 512x32000 GEMV runs as fast as OpenBLAS's threaded sgemv (2.33 vs 2.29 ms), while
# a 512x1376 one is no faster split than on one thread (0.153 split, 0.121 one thread, 0.122 OpenBLAS's threads);
# a conv net's classifier in the split mode, its weights in the last-level cache, gains from 1M elements
# (mobilenet_v2's 1280x1000: ~150 -> ~105 us, the model 0.98 on 2 Zen 5 cores).
GEMV_SPLIT_MIN_ELEMENTS = 1 << 20
# A one-row product by a matrix whose columns lie contiguous (a MatMul's constant B, transposed once for its GEMVs;
# a Gemm's transB) runs as ``math/gemv_rows``' task over the pool from this many elements. Measured on 2 Zen 4 cores
# (EPYC family 25), the weights evicted from the caches, interleaved in one process: 512x512 91 us on one thread,
# 53-63 split; 512x768 133-138 -> 82-95; 1408x512 180 -> 105-120; 512x2816 460 -> 250-284.
GEMV_ROWS_SPLIT_MIN_ELEMENTS = 1 << 17
# Columns up to which a one-row product by a row-major B with more columns than rows splits by B's rows
# (``_gemv_by_axpy``; a thread's partial sums, 256 KB at most, stay in L2); wider, by its columns. llama_tiny's
# 512 x 32000 vocabulary head this way rather than as cblas_sgemv parts by columns: its decode step 0.930x (8 rounds,
# alternating processes, 2 Zen 4 cores).
GEMV_AXPY_MAX_COLUMNS = 1 << 16
# A GEMV of a matrix this large tells a session learning its signature's thread mode which mode runs it faster: the
# split mode where ``math/gemv_rows`` compiles (``note_pool_product``), else BLAS's threads (``note_blas_product``).
# llama_tiny's decode step (past 127), alternating processes on 2 Zen 4 cores: 4.95 ms on BLAS's threads, 4.66 in the
# split mode with every GEMV of 128K elements and more split over the pool. (On 2 Zen 5 cores, with only the GEMVs
# of 1M elements split, it had been 2.47 ms on BLAS's threads and 2.55 split.)
GEMV_BLAS_MIN_ELEMENTS = 1 << 18
# Columns below which a product is split by rows even where B is the larger operand.
COLUMN_SPLIT_MIN = 64
_F32 = np.dtype(np.float32)
_NO_BIAS, _NO_RESIDUAL, _NO_PARAMS = np.zeros(0, _F32), np.zeros((0, 0), _F32), np.zeros(2, _F32)  # a plain product


def _native_sgemm():
    """The ``native_sgemm`` module where numba compiles it and numpy's BLAS exports cblas_sgemm, else None."""
    module = optional_module("onyxrt.providers.cpu.native_sgemm")
    return module if module is not None and module.SGEMM is not None else None


# Float32 products run on ``math/sgemm_tiles`` where the CPU has AVX-512 (AVX2: ``own_sgemm_fits``) and the pool owns
# the cores (sessions without ``allow_spinning``, plans holding onyxrt's own pool kernels; BLAS's threads keep the
# others) or the session has one thread, from this many rows (fewer: a decoding step's GEMVs, BLAS's sgemv) and
# multiply-adds, up to this many columns. Measured on 2 Zen 5 cores against OpenBLAS's two threads:
# 128 x 768 x 3072 433 / 386 GFLOP/s, 128 x 3072 x 768 473 / 387, 128 x 1408 x 512 481 / 390; and for a vocabulary
# head (128 x 512 x 32000: 351 / 372) whose B rows lie far apart. From 1M multiply-adds it beats what those modes would
# run instead, on 2 Zen 4 cores: split 136 x 64 x 256 27 us against 40 as two cblas_sgemm parts, 128 x 128 x 128
# 25 / 35, 136 x 64 x 128 16.5 / 20; on one thread 43.6 / 47.7, 40 / 44, 23 / 24 (a ViT-like net 0.93x, a small encoder
# 0.94x split, in one process); below (136 x 64 x 64, 0.56M) BLAS was the faster on one thread (11 / 13 us).
OWN_SGEMM_MIN_ROWS = 16
OWN_SGEMM_MIN_MACS = 1 << 20
OWN_SGEMM_MAX_COLUMNS = 8192
# Multiply-adds from which a product splits over workers that block between tasks (waking one: 50-80 us on a VM),
# and over workers that spin between them.
MIN_MACS_WAKING = 1 << 25
MIN_MACS_SPINNING = 1 << 17


# Where the CPU has no AVX-512, the GEMM's tiles are AVX2's (6 rows x 16 columns, ``sgemm_tiles.LANES``). On one Zen 3
# core (EPYC family 25 model 1), no epilogue, interleaved with OpenBLAS's sgemm (own / BLAS): as fast or faster for a B
# of under 128 KB (72 x 24 x 64 0.83, 32 x 16 x 256 0.88, 16 x 32 x 256 0.84, 96 x 32 x 196 0.93, 68 x 64 x 192 0.91,
# 256 x 64 x 256 1.00) but for rows 4 KB apart, which fall in one of L1's sets and evict each other between row tiles
# (32 x 16 x 1024 1.31, 32 x 32 x 1024 1.46, 64 x 64 x 1024 1.19; copying such K blocks to a contiguous buffer first
# made the others slower: 16 x 32 x 256 1.36); slower for larger B (64 x 64 x 1024, 128 x 384 x 384 1.12): those keep
# BLAS.
NARROW_MAX_B_BYTES = 1 << 17
_ALIASING_STRIDE = 4096
_WIDE_VECTORS = has_flags("avx512f")


def own_sgemm_fits(depth: int, cols: int) -> bool:
    """Whether onyxrt's GEMM (where :func:`own_sgemm_usable`) suits products by a row-major B of ``depth`` x ``cols``
    float32: any on an AVX-512 CPU; with AVX2's vectors a B of under 128 KB whose rows are not a multiple of 4 KB."""
    return _WIDE_VECTORS or (depth * cols * 4 < NARROW_MAX_B_BYTES and cols * 4 % _ALIASING_STRIDE != 0)


def own_sgemm_usable() -> bool:
    """Whether ``math/sgemm_tiles`` runs here: a CPU with AVX-512, or AVX2 and FMA, and numba compiling for it
    (settled at the first call made while numba is not disabled)."""
    if _OWN_SGEMM_USABLE:
        return _OWN_SGEMM_USABLE[0]
    usable = ((_WIDE_VECTORS or has_flags("avx2", "fma"))
              and optional_module("onyxrt.providers.cpu.math.sgemm_tiles") is not None)
    if usable or not numba_disabled():
        _OWN_SGEMM_USABLE.append(usable)
    return usable


_OWN_SGEMM_USABLE: list[bool] = []  # the settled answer, once there is one


def _own_sgemm_shape(rows: int, depth: int, cols: int) -> bool:
    """Whether a product of ``rows`` x ``depth`` by ``depth`` x ``cols`` is one ``matmul`` gives onyxrt's own GEMM."""
    return (rows >= OWN_SGEMM_MIN_ROWS and cols <= OWN_SGEMM_MAX_COLUMNS and rows * depth * cols >= OWN_SGEMM_MIN_MACS
            and own_sgemm_fits(depth, cols))


def note_product(rows: int, depth: int, cols: int) -> None:
    """Tell a session learning an input signature's thread mode (``framework.thread_mode``) of a MatMul or Gemm node's
    float32 product (``rows`` x ``depth`` by ``depth`` x ``cols``) that the pool's split mode runs on onyxrt's own
    GEMM (the rows and columns ``matmul`` takes it for, on a CPU with it) and large enough for the mode to pay:
    models of smaller products are faster on BLAS's threads (a 4-sequence 64-token encoder of 256 x 64 x 256
    products, 4M multiply-adds: 0.61 -> 0.66 ms split, on 2 Zen 5 cores)."""
    if _own_sgemm_shape(rows, depth, cols) and rows * depth * cols >= MIN_MACS_WAKING and own_sgemm_usable():
        note_pool_product()
    elif rows <= GEMV_MAX_ROWS and depth * cols >= GEMV_BLAS_MIN_ELEMENTS:
        if gemv_task_usable():
            note_pool_product()  # (a decode step's GEMVs: see GEMV_BLAS_MIN_ELEMENTS)
        else:
            note_blas_product()


def _own_sgemm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None, pool, bias: np.ndarray = _NO_BIAS,
               residual: np.ndarray = _NO_RESIDUAL, act: int = 0, params: np.ndarray = _NO_PARAMS,
               column_bias: bool = False) -> np.ndarray | None:
    """``act(a @ b + bias[:, None] + residual)`` (``bias[None, :]`` with ``column_bias``) on ``math/sgemm_tiles``
    (float32, C-contiguous operands; ``b`` (K, N) or a batch (I, K, N) of products by one ``a`` (M, K) or by each of a
    batch ``a`` (I, M, K), ``residual`` shaped as the result; the epilogue as ``sgemm_tiles.gemm`` takes it, none by
    default), split over the pool by products, column panels or rows as one native task; None where it does not
    apply."""
    depth = a.shape[-1]
    if not (a.dtype == b.dtype == _F32 and a.flags.c_contiguous and b.flags.c_contiguous and depth == b.shape[-2]
            and b.shape[-1] > 0 and depth > 0 and (a.ndim == 2 or a.ndim == 3 == b.ndim and a.shape[0] == b.shape[0])
            and own_sgemm_usable()):
        return None
    module = optional_module("onyxrt.providers.cpu.math.sgemm_tiles")
    m, n = a.shape[-2], b.shape[-1]
    batch = b.shape[0] if b.ndim == 3 else 1
    y = out if out is not None else np.empty(b.shape[:-2] + (m, n), _F32)
    args = module.task_args(a, b, y, bias, residual, act, params, column_bias)
    if pool.runs_native_tasks:
        pool.run_native(module.gemm_part.address, args,
                        own_sgemm_parts(pool, batch * m * depth * n, module.units(m, n, batch)))
    else:
        module.products_part(args, 0, 1)
    return y


def own_sgemm_parts(pool, macs: int, units: int) -> int:
    """The parts a task of onyxrt's GEMM (``macs`` multiply-adds, ``units`` as ``sgemm_tiles.units`` counts them) is
    shared out in over ``pool``: one below the split threshold of its kind of workers."""
    # (a hand-off to a spinning worker costs a few microseconds, waking a blocked one 50-80 us on a VM)
    threshold = MIN_MACS_SPINNING if pool.workers_spin else MIN_MACS_WAKING
    return min(pool.num_threads, units) if macs >= threshold else 1


def fused_product(w: np.ndarray, x: np.ndarray, out: np.ndarray, bias: np.ndarray | None, residual: np.ndarray | None,
                  act: int, params: np.ndarray, column_bias: bool = False) -> bool:
    """``out = act(w @ x + bias[:, None] + residual)`` (float32 C-contiguous (M, C) @ (C, P) into (M, P), or a batch:
    ``x`` (I, C, P) into (I, M, P) by one ``w`` or by each of ``w`` (I, M, C); ``residual`` shaped as ``out`` or None;
    ``act`` one of ``row_kernels.IN_REGISTERS``; with ``column_bias`` the bias is per column, ``bias[None, :]``) on
    onyxrt's GEMM with the epilogue in its registers, over the current pool; False (``out`` untouched) where that GEMM
    does not run here (nor for a B ``own_sgemm_fits`` leaves to BLAS)."""
    if not own_sgemm_fits(x.shape[-2], x.shape[-1]):
        return False
    y = _own_sgemm(w, x, out, current_pool(), _NO_BIAS if bias is None else bias,
                   _NO_RESIDUAL if residual is None else residual, act, params, column_bias)
    return y is not None


def native_sgemm_function():
    """numpy's BLAS ``cblas_sgemm`` as ``native_sgemm`` found it (``address``, ``wide``), for native tasks that
    call it themselves; None where numba or the entry point is missing."""
    module = _native_sgemm()
    return module.SGEMM if module is not None else None


def _split_natively(pool, a: np.ndarray, b: np.ndarray, out: np.ndarray, split: int) -> bool:
    """Run the split product as a native task when it can (float32, layouts cblas_sgemm takes)."""
    if not (a.dtype == b.dtype == out.dtype == _F32) or not pool.runs_native_tasks:
        return False
    module = _native_sgemm()
    args = module.pack(a, b, out, split) if module is not None else None
    if args is None:
        return False
    pool.run_native(module.sgemm_part.address, args, pool.num_threads)
    return True


def _gemv_by_rows(pool, a: np.ndarray, b: np.ndarray, out: np.ndarray | None) -> np.ndarray | None:
    """``a`` (1, K) @ ``b`` (K, N) where ``b`` is the transpose of a row-major (N, K) matrix (a Gemm's transB, a MatMul
    by W^T: a classifier) as ``math/gemv_rows``' native task over the pool, eight of its rows at a time; None where it
    does not apply (other dtypes or layouts, no numba). Measured on 2 Zen 5 cores, mobilenet_v2's 1000 x 1280
    classifier in its runs: 107-114 us as cblas_sgemv parts, 71-76 in the rows' task."""
    k, n = b.shape
    if not (a.dtype == b.dtype == _F32 and a.strides[1] == 4 and b.strides == (4, 4 * k) and pool.runs_native_tasks
            and (out is None or out.dtype == _F32 and out.flags.c_contiguous and out.shape == (1, n))):
        return None
    module = optional_module("onyxrt.providers.cpu.math.gemv_rows")
    if module is None:
        return None
    y = out if out is not None else np.empty((1, n), _F32)
    pool.run_native(module.gemv_part.address, module.task_args(b.T, a.reshape(k), y.reshape(n)),
                    min(pool.num_threads, -(-n // 8)))
    return y


def gemv_task_usable() -> bool:
    """Whether ``math/gemv_rows``' GEMV tasks compile here (numba usable)."""
    return optional_module("onyxrt.providers.cpu.math.gemv_rows") is not None


def _gemv_by_axpy(pool, a: np.ndarray, b: np.ndarray, out: np.ndarray | None) -> np.ndarray | None:
    """``a`` (1, K) @ ``b`` (K, N) row-major with N > K (a decoder's widening projection) as ``math/gemv_rows``' axpy
    task over the pool, each thread a block of B's rows, their partial sums added after; None where it does not apply.
    Measured on 2 Zen 4 cores, the weights evicted from the caches, interleaved in one process: 512x2816 250 us by
    the rows of B's transposed copy, 175 this way; 512x768 82 -> 67; 512x512 even (53 / 51), 1408x512 105 / 119."""
    k, n = b.shape
    if not (a.dtype == b.dtype == _F32 and a.strides[1] == 4 and b.flags.c_contiguous and pool.runs_native_tasks
            and (out is None or out.dtype == _F32 and out.flags.c_contiguous and out.shape == (1, n))):
        return None
    module = optional_module("onyxrt.providers.cpu.math.gemv_rows")
    if module is None:
        return None
    parts = min(pool.num_threads, k)
    y = out if out is not None else np.empty((1, n), _F32)
    partials = np.empty((parts - 1, n), _F32)
    pool.run_native(module.gemv_axpy_part.address, module.axpy_task_args(b, a.reshape(k), y.reshape(n), partials),
                    parts)
    if parts > 1:
        np.add(y, partials.sum(axis=0, keepdims=True) if parts > 2 else partials, out=y)
    return y


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
    if ((pool.splits_gemms or threads == 1) and a.ndim == 2 and b.ndim == 2
            and _own_sgemm_shape(a.shape[0], a.shape[1], b.shape[1]) and (out is None or out.flags.c_contiguous)):
        y = _own_sgemm(a, b, out, pool)
        if y is not None:
            return y
    if not pool.splits_gemms or a.ndim < 2 or b.ndim < 2 or (out is not None and not out.flags.c_contiguous):
        return np.matmul(a, b, out=out)
    m, k = a.shape[-2:]
    n = b.shape[-1]
    if m == 1 and a.ndim == b.ndim == 2 and k * n >= GEMV_ROWS_SPLIT_MIN_ELEMENTS:
        y = _gemv_by_axpy(pool, a, b, out) if k < n <= GEMV_AXPY_MAX_COLUMNS else None
        if y is None:
            y = _gemv_by_rows(pool, a, b, out)
        if y is not None:
            return y
    if m <= GEMV_MAX_ROWS and k * n < GEMV_SPLIT_MIN_ELEMENTS:
        return np.matmul(a, b, out=out)
    batch = a.shape[:-2]
    count = math.prod(batch)  # 1 without a batch
    macs = m * k * n * count
    if (macs < (MIN_PARALLEL_MACS if batch else CBLAS_PARTS_MIN_MACS) or b.shape[-2] != k
            or (a.ndim > 2 or b.ndim > 2) and a.shape[:-2] != b.shape[:-2]):
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty(batch + (m, n), np.result_type(a, b))
    if batch:
        if count < threads:
            return np.matmul(a, b, out=out)
        if _split_natively(pool, a, b, out, 2):
            return out
        a3, b3, o3 = a.reshape((count, m, k)), b.reshape((count, k, n)), out.reshape(count, m, n)
        pool.run_chunks(lambda i0, i1: np.matmul(a3[i0:i1], b3[i0:i1], out=o3[i0:i1]), count, macs, MIN_PARALLEL_MACS)
    elif m >= 2 * threads and (m * k >= k * n or n < COLUMN_SPLIT_MIN or m > k):
        # split the rows (each part writes a contiguous block of out), where A is the larger operand
        # or the product has more rows than its inner dimension (a 1x1 convolution expanding its
        # channels: 192x33x784 0.17 ms by columns, 0.10 by rows): every part reads all of B
        if _split_natively(pool, a, b, out, 0):
            return out
        pool.run_chunks(lambda r0, r1: np.matmul(a[r0:r1], b, out=out[r0:r1]), m, macs, MIN_PARALLEL_MACS)
    else:  # few rows, or B the larger operand (a convolution's columns): split the columns
        if _split_natively(pool, a, b, out, 1):
            return out
        pool.run_chunks(lambda c0, c1: np.matmul(a, b[:, c0:c1], out=out[:, c0:c1]), n, macs, MIN_PARALLEL_MACS)
    return out
