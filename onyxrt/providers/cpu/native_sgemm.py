"""float32 products split over the pool as a *native task* (``framework.native_spin``): each thread
calls the BLAS library numpy uses (``cblas_sgemm``, single-threaded during the run) on its block,
without the GIL, so a spinning worker starts its block within microseconds.

Imported only by ``providers.cpu.gemm`` (it imports numba at its top). The library is the BLAS loaded in the
process (``framework.blas_libraries``: OpenBLAS as numpy's wheels bundle it, whose symbols carry a
``scipy_`` prefix and a ``64_`` suffix with 64-bit integers, or a plain ``cblas_sgemm``); where none
is found, :data:`SGEMM` is None and the products are split as Python tasks instead.

A task's arguments are an int64 array (:func:`pack`): the product C = A @ B (B transposed where
``trans_b``), of ``batch`` matrices ``stride_*`` elements apart, split by rows of C (``split`` 0),
by columns (1: B's columns, a GEMV's parts) or by matrices of the batch (2).
"""

from __future__ import annotations

import ctypes
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic

from ...framework.blas_libraries import loaded_blas_libraries
from .native_tasks import int64_array

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
SPLIT_ROWS, SPLIT_COLUMNS, SPLIT_BATCH = 0, 1, 2
_F32_BYTES = 4
(_FN, _WIDE, _M, _N, _K, _A, _LDA, _B, _LDB, _C, _LDC, _TRANS_B, _BATCH, _STRIDE_A, _STRIDE_B, _STRIDE_C,
 _SPLIT, _GEMV, _ARGS) = range(19)


class Sgemm(NamedTuple):
    address: int  # of cblas_sgemm
    gemv_address: int  # of cblas_sgemv
    wide: bool  # 64-bit integer arguments


def _find_sgemm() -> Sgemm | None:
    for library in loaded_blas_libraries():
        try:
            handle = ctypes.CDLL(library.filepath)
        except OSError:
            continue
        for prefix, suffix, wide in (("scipy_cblas_", "64_", True), ("cblas_", "64_", True), ("cblas_", "", False)):
            gemm = getattr(handle, f"{prefix}sgemm{suffix}", None)
            gemv = getattr(handle, f"{prefix}sgemv{suffix}", None)
            if gemm is not None and gemv is not None:
                return Sgemm(ctypes.cast(gemm, ctypes.c_void_p).value, ctypes.cast(gemv, ctypes.c_void_p).value,
                             wide and library.internal_api != "mkl")
    return None


SGEMM = _find_sgemm()


def _sgemm_intrinsic(wide: bool):
    integer = ir.IntType(64 if wide else 32)

    def codegen(context, builder, signature, values):
        enum = ir.IntType(32)
        pointer = ir.FloatType().as_pointer()
        function_type = ir.FunctionType(ir.VoidType(), [enum, enum, enum, integer, integer, integer, ir.FloatType(),
                                                        pointer, integer, pointer, integer, ir.FloatType(), pointer,
                                                        integer])
        fn, trans_b, m, n, k, a, lda, b, ldb, c, ldc = values

        def size(v):
            return builder.trunc(v, integer) if not wide else v

        builder.call(builder.inttoptr(fn, function_type.as_pointer()), [
            ir.Constant(enum, ROW_MAJOR), ir.Constant(enum, NO_TRANS), builder.trunc(trans_b, enum),
            size(m), size(n), size(k), ir.Constant(ir.FloatType(), 1.0), builder.inttoptr(a, pointer), size(lda),
            builder.inttoptr(b, pointer), size(ldb), ir.Constant(ir.FloatType(), 0.0), builder.inttoptr(c, pointer),
            size(ldc)])
        return context.get_dummy_value()

    @intrinsic
    def call(typingctx, fn, trans_b, m, n, k, a, lda, b, ldb, c, ldc):
        return types.void(*([types.int64] * 11)), codegen

    return call


_sgemm64 = _sgemm_intrinsic(True)
_sgemm32 = _sgemm_intrinsic(False)


def _sgemv_intrinsic(wide: bool):
    integer = ir.IntType(64 if wide else 32)

    def codegen(context, builder, signature, values):
        enum = ir.IntType(32)
        pointer = ir.FloatType().as_pointer()
        function_type = ir.FunctionType(ir.VoidType(), [enum, enum, integer, integer, ir.FloatType(), pointer,
                                                        integer, pointer, integer, ir.FloatType(), pointer, integer])
        fn, trans, rows, columns, matrix, ld, x, y = values

        def size(v):
            return builder.trunc(v, integer) if not wide else v

        one = ir.Constant(integer, 1)
        builder.call(builder.inttoptr(fn, function_type.as_pointer()), [
            ir.Constant(enum, ROW_MAJOR), builder.trunc(trans, enum), size(rows), size(columns),
            ir.Constant(ir.FloatType(), 1.0), builder.inttoptr(matrix, pointer), size(ld), builder.inttoptr(x, pointer),
            one, ir.Constant(ir.FloatType(), 0.0), builder.inttoptr(y, pointer), one])
        return context.get_dummy_value()

    @intrinsic
    def call(typingctx, fn, trans, rows, columns, matrix, ld, x, y):
        return types.void(*([types.int64] * 8)), codegen

    return call


_sgemv64 = _sgemv_intrinsic(True)
_sgemv32 = _sgemv_intrinsic(False)


@numba.njit(cache=True, nogil=True, inline="always")
def _call(wide, fn, trans_b, m, n, k, a, lda, b, ldb, c, ldc):
    if wide:
        _sgemm64(fn, trans_b, m, n, k, a, lda, b, ldb, c, ldc)
    else:
        _sgemm32(fn, trans_b, m, n, k, a, lda, b, ldb, c, ldc)


@numba.njit(cache=True, nogil=True, inline="always")
def _call_gemv(wide, fn, trans, rows, columns, matrix, ld, x, y):
    if wide:
        _sgemv64(fn, trans, rows, columns, matrix, ld, x, y)
    else:
        _sgemv32(fn, trans, rows, columns, matrix, ld, x, y)


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def sgemm_part(args, part, parts):
    """Native task: part ``part`` of ``parts`` of the product described at ``args`` (see ``pack``)."""
    d = int64_array(args, _ARGS)
    fn, wide, m, n, k = d[_FN], d[_WIDE], d[_M], d[_N], d[_K]
    a, lda, b, ldb, c, ldc, trans_b = d[_A], d[_LDA], d[_B], d[_LDB], d[_C], d[_LDC], d[_TRANS_B]
    split = d[_SPLIT]
    if split == SPLIT_BATCH:
        batch = d[_BATCH]
        for i in range(batch * part // parts, batch * (part + 1) // parts):
            _call(wide, fn, trans_b, m, n, k, a + i * d[_STRIDE_A] * _F32_BYTES, lda,
                  b + i * d[_STRIDE_B] * _F32_BYTES, ldb, c + i * d[_STRIDE_C] * _F32_BYTES, ldc)
    elif split == SPLIT_ROWS:
        r0, r1 = m * part // parts, m * (part + 1) // parts
        if r1 > r0:
            _call(wide, fn, trans_b, r1 - r0, n, k, a + r0 * lda * _F32_BYTES, lda, b, ldb,
                  c + r0 * ldc * _F32_BYTES, ldc)
    else:
        # columns in multiples of 16 (whole vectors of C's rows for each part)
        blocks = (n + 15) // 16
        c0, c1 = min(n, 16 * (blocks * part // parts)), min(n, 16 * (blocks * (part + 1) // parts))
        if c1 > c0 and m <= 2:  # GEMVs: y = B^T x, per row of A (sgemm's M=1 path is much slower)
            gemv = d[_GEMV]
            for r in range(m):
                if trans_b == TRANS:  # B (K, N) is stored as (N, K) rows
                    _call_gemv(wide, gemv, NO_TRANS, c1 - c0, k, b + c0 * ldb * _F32_BYTES, ldb,
                               a + r * lda * _F32_BYTES, c + (r * ldc + c0) * _F32_BYTES)
                else:
                    _call_gemv(wide, gemv, TRANS, k, c1 - c0, b + c0 * _F32_BYTES, ldb, a + r * lda * _F32_BYTES,
                               c + (r * ldc + c0) * _F32_BYTES)
        elif c1 > c0:
            b_offset = c0 * ldb if trans_b == TRANS else c0
            _call(wide, fn, trans_b, m, c1 - c0, k, a, lda, b + b_offset * _F32_BYTES, ldb,
                  c + c0 * _F32_BYTES, ldc)


def pack(a: np.ndarray, b: np.ndarray, out: np.ndarray, split: int) -> np.ndarray | None:
    """The task arguments for ``out = a @ b`` (float32, same batch shape, ``out`` C-contiguous), or None
    when an operand's layout is not one cblas_sgemm takes (rows or, for B, columns contiguous with
    a regular stride between matrices)."""
    m, k = a.shape[-2:]
    n = b.shape[-1]
    if a.strides[-1] != _F32_BYTES or a.strides[-2] % _F32_BYTES or a.strides[-2] < k * _F32_BYTES:
        return None
    if b.strides[-1] == _F32_BYTES and b.strides[-2] % _F32_BYTES == 0 and b.strides[-2] >= n * _F32_BYTES:
        trans_b, ldb = NO_TRANS, b.strides[-2] // _F32_BYTES
    elif b.strides[-2] == _F32_BYTES and b.strides[-1] % _F32_BYTES == 0 and b.strides[-1] >= k * _F32_BYTES:
        trans_b, ldb = TRANS, b.strides[-1] // _F32_BYTES
    else:
        return None
    batch = 1
    stride_a = stride_b = 0
    if a.ndim > 2:
        a3, b3 = a.reshape((-1, m, k)), b.reshape((-1, k, n))  # views where the batch is regular
        if not (np.shares_memory(a3, a) and np.shares_memory(b3, b)) or a3.strides[-1] != _F32_BYTES:
            return None
        batch = a3.shape[0]
        stride_a, stride_b = a3.strides[0], b3.strides[0]
        if stride_a % _F32_BYTES or stride_b % _F32_BYTES or a3.strides[1:] != a.strides[-2:] \
                or b3.strides[1:] != b.strides[-2:]:
            return None
        stride_a //= _F32_BYTES
        stride_b //= _F32_BYTES
    return np.array([SGEMM.address, SGEMM.wide, m, n, k, a.ctypes.data, a.strides[-2] // _F32_BYTES,
                     b.ctypes.data, ldb, out.ctypes.data, n, trans_b, batch, stride_a, stride_b, m * n, split,
                     SGEMM.gemv_address],
                    np.int64)
