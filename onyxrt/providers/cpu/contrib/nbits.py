"""MatMulNBits on its packed 4-/8-bit weights, without a float copy of the weight.

A constant weight is re-laid out once (:func:`pack_tiles`) into column tiles that the numba
kernels of :mod:`.nbits_kernels` read directly; the float weight is never kept:

* few rows (decode, M <= ``DIRECT_MAX_ROWS``): one pass over the packed bytes computes every
  output (4-bit weights read 1/8 of the bytes of float32 ones); the column tiles are split over
  the session pool as a native task (``nbits_kernels.direct_part``) when the product is large
  enough. A plan holding these kernels runs with the pool splitting GEMMs (``KERNELS_ON_POOL``),
  so its workers spin between the step's products;
* more rows (prefill): the weight is dequantized ``CHUNK_COLUMNS`` columns at a time into a
  small scratch matrix (it stays in cache) and multiplied by BLAS; on a pool that owns the cores,
  each thread dequantizes and multiplies its own chunks (``nbits_kernels.prefill_part``).

Memory: the prepared weight is the packed bytes plus float32 scales and scale*zero-point per
block (for 4 bits, block 32: 0.75 bytes a weight, against 4 for a cached float32 copy, which
the numpy fallback keeps). The price is the dequantization in the prefill route (measured in
``benchmarks/quantized_conv_nbits.md``).

Only float32 compute (float32 or float16 A), 4 or 8 bits, no ``g_idx``; anything else, or
numba absent/disabled (``ONYXRT_DISABLE_NUMBA=1``), runs the dequantizing numpy kernel in
``quantized.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ....framework.thread_pool import current_pool
from ..gemm import matmul as pool_matmul
from ..gemm import native_sgemm_function
from ..jit import LazyModuleKernel, optional_module

_MODULE = "onyxrt.providers.cpu.contrib.nbits_kernels"
_DIRECT = {4: LazyModuleKernel(_MODULE, "q4_tiles"), 8: LazyModuleKernel(_MODULE, "q8_tiles")}
_DEQUANTIZE = {4: LazyModuleKernel(_MODULE, "dequantize_q4_tiles"), 8: LazyModuleKernel(_MODULE, "dequantize_q8_tiles")}

TILE = 64  # must equal nbits_kernels.TILE (that module imports numba, so it is not imported here)
# Rows up to which the direct kernel runs. It costs ~M times the one-row pass (compute-bound
# per row, the weight read once), BLAS on a dequantized chunk costs a dequantization plus a GEMM
# that hardly grows with M: measured on llama_tiny's matrices (512 x 32000, 512 x 1408, 1408 x 512,
# 4 bits, one thread), the direct kernel wins up to 8 rows and ties at 16.
DIRECT_MAX_ROWS = 8
# Columns dequantized at once in the BLAS route: K * CHUNK_COLUMNS float32 stays in L2 for K <= 4096.
CHUNK_COLUMNS = 256
# Multiply-adds from which the direct kernel's tiles are split over the pool as a native task: where the
# workers spin (a hand-off ~3.5 us), and where each split wakes a blocked worker (50-80 us on a VM).
PARALLEL_MIN_WORK = 1 << 18
PARALLEL_MIN_WORK_WAKING = 1 << 23


class TiledNBits(NamedTuple):
    """A MatMulNBits weight laid out for :mod:`.nbits_kernels` (read-only arrays)."""

    bits: int
    block_size: int
    k: int
    n: int
    b: np.ndarray  # (NT, KB, bytes or values per block, TILE) uint8
    scales: np.ndarray  # (NT, KB, TILE) float32
    scaled_zero_points: np.ndarray  # (NT, KB, TILE) float32: scale * zero point
    bias: np.ndarray | None  # float32 (N,), or None when absent or not constant
    zero_points: bool  # whether zero_points was given (a computed one is not in ``scaled_zero_points``)


def _read_only(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def _tiles(a: np.ndarray, n: int) -> np.ndarray:
    """(N, ...) -> (NT, ..., TILE): columns padded with zeros to whole tiles, then tiled."""
    nt = -(-n // TILE)
    padded = np.zeros((nt * TILE,) + a.shape[1:], dtype=a.dtype)
    padded[:n] = a
    tiled = padded.reshape((nt, TILE) + a.shape[1:])
    return np.moveaxis(tiled, 1, -1)


def supported(bits: int, scales_dtype: np.dtype, g_idx) -> bool:
    """Whether the tiled kernels can serve a weight of this kind (numba aside)."""
    return int(bits) in (4, 8) and g_idx is None and np.dtype(scales_dtype) in (np.float32, np.float16)


def kernels_enabled(bits: int) -> bool:
    """numba importable and not disabled, for ``bits``."""
    return _DIRECT[int(bits)].enabled() and _DEQUANTIZE[int(bits)].enabled()


def pack_tiles(b, scales, zero_points, bias, *, k: int, n: int, bits: int, block_size: int,
               unpack_bits) -> TiledNBits:
    """Lay out MatMulNBits' B (N, KB, blob), scales and zero points for the kernels.

    ``unpack_bits`` is quantized.py's unpacker of bit-packed zero points. Raises ValueError
    when the shapes do not fit (the caller then takes the checking numpy path).
    """
    kb = -(-k // block_size)
    blob = block_size * bits // 8
    packed = np.asarray(b, dtype=np.uint8)
    if packed.size != n * kb * blob:
        raise ValueError("B's size does not match N, K and block_size")
    packed = packed.reshape(n, kb, blob)
    sc = np.asarray(scales).astype(np.float32).reshape(-1)
    if sc.size < n * kb:
        raise ValueError("too few scales")
    sc = sc.reshape(n, -1)[:, :kb]
    if zero_points is None:
        zp = np.full((n, kb), float(1 << (bits - 1)), dtype=np.float32)
    elif np.asarray(zero_points).dtype == np.uint8:
        zp = unpack_bits(np.asarray(zero_points).reshape(n, -1), bits, kb, np.float32)
    else:
        zp = np.asarray(zero_points).astype(np.float32).reshape(n, -1)[:, :kb]
    return TiledNBits(
        bits, block_size, k, n,
        _read_only(_tiles(packed, n)),
        _read_only(_tiles(sc, n)),
        _read_only(_tiles(sc * zp, n)),
        None if bias is None else _read_only(np.asarray(bias).astype(np.float32).reshape(n)),
        zero_points is not None,
    )


def _padded_rows(a2: np.ndarray, kp: int) -> np.ndarray:
    """(M, K) float32 rows padded with zeros to ``kp`` columns, C-contiguous."""
    if a2.shape[1] == kp:
        return np.ascontiguousarray(a2)
    out = np.zeros((a2.shape[0], kp), dtype=np.float32)
    out[:, : a2.shape[1]] = a2
    return out


def matmul(a2: np.ndarray, w: TiledNBits) -> np.ndarray | None:
    """``a2 @ dequantize(B)^T`` for float32 rows ``a2`` (M, K), bias not added; None when the kernels
    cannot run (the caller then takes the numpy path)."""
    m = a2.shape[0]
    nt, kb = w.b.shape[0], w.b.shape[1]
    kp = kb * w.block_size
    ap = _padded_rows(a2, kp)
    if m <= DIRECT_MAX_ROWS:
        return _direct(ap, w, m, nt, kb)
    return _dequantized_gemm(ap, w, m, nt)


def _direct(ap: np.ndarray, w: TiledNBits, m: int, nt: int, kb: int) -> np.ndarray | None:
    blocks = ap.reshape(m, kb, w.block_size)
    a_sum = blocks.sum(axis=-1, dtype=np.float32)
    y = np.empty((m, nt * TILE), dtype=np.float32)
    if w.bits == 4:
        args = (np.ascontiguousarray(blocks[:, :, 0::2]), np.ascontiguousarray(blocks[:, :, 1::2]), a_sum,
                w.b, w.scales, w.scaled_zero_points, y)
    else:
        args = (blocks, a_sum, w.b, w.scales, w.scaled_zero_points, y)
    kernel = _DIRECT[w.bits].compiled_for((w.bits, "direct"), *args, 0, 0)
    if kernel is None:
        return None
    pool = current_pool()
    work = m * w.n * w.k
    parts = min(pool.num_threads, nt)
    if parts < 2 or not pool.runs_native_tasks or work < (PARALLEL_MIN_WORK if pool.workers_spin else PARALLEL_MIN_WORK_WAKING):
        kernel(*args, 0, nt)
    else:
        module = optional_module(_MODULE)
        even, odd = (args[0], args[1]) if w.bits == 4 else (args[0], args[0])
        task = module.direct_args(w.bits, even, odd, a_sum, w.b, w.scales, w.scaled_zero_points, y)
        pool.run_native(module.direct_part.address, task, parts)
    return y[:, : w.n] if y.shape[1] != w.n else y


def _dequantized_gemm_task(ap: np.ndarray, w: TiledNBits, nt: int, per_chunk: int, pool) -> np.ndarray | None:
    """The prefill route as one native task (``nbits_kernels.prefill_part``): each thread dequantizes its own
    column chunks and multiplies them (single-threaded BLAS: the pool owns the cores), so the dequantization
    is split too and no chunk's product is copied into place; None where numba or cblas_sgemm is missing."""
    module = optional_module(_MODULE)  # (its task compiles the dequantizing kernels as the module loads)
    sgemm = native_sgemm_function()
    if module is None or sgemm is None:
        return None
    parts = pool.num_threads
    y = np.empty((ap.shape[0], nt * TILE), dtype=np.float32)
    scratch = np.empty((parts, ap.shape[1], per_chunk * TILE), dtype=np.float32)
    args = module.prefill_args(w.bits, ap, w.b, w.scales, w.scaled_zero_points, y, scratch, sgemm.address,
                               sgemm.wide)
    pool.run_native(module.prefill_part.address, args, parts)
    return y[:, : w.n] if y.shape[1] != w.n else y


def _dequantized_gemm(ap: np.ndarray, w: TiledNBits, m: int, nt: int) -> np.ndarray | None:
    kp = ap.shape[1]
    per_chunk = max(1, CHUNK_COLUMNS // TILE)
    pool = current_pool()
    if pool.splits_gemms and pool.runs_native_tasks and nt >= pool.num_threads:
        y = _dequantized_gemm_task(ap, w, nt, per_chunk, pool)
        if y is not None:
            return y
    scratch = np.empty((kp, per_chunk * TILE), dtype=np.float32)
    kernel = _DEQUANTIZE[w.bits].compiled_for((w.bits, "dequantize"), w.b, w.scales, w.scaled_zero_points,
                                              scratch, 0, 0)
    if kernel is None:
        return None
    y = np.empty((m, w.n), dtype=np.float32)
    for t0 in range(0, nt, per_chunk):
        t1 = min(nt, t0 + per_chunk)
        kernel(w.b, w.scales, w.scaled_zero_points, scratch, t0, t1)
        c0, c1 = t0 * TILE, min(w.n, t1 * TILE)
        y[:, c0:c1] = pool_matmul(ap, scratch[:, : c1 - c0])
    return y
