"""A float32 GEMM for AVX-512 CPUs: C = A @ B with B read where it lies (row-major K x N), no packing.

Imported only by ``matmul`` once it has checked that the CPU reports ``avx512f`` and that numba compiles for
the host CPU (this module imports numba at its top).

Why: OpenBLAS packs both operands on every call; for a transformer's products (128 rows by a 768 x 3072
weight) that costs as much as a fifth of the product. Here a micro-kernel of up to 12 rows x 32 columns keeps
24 zmm accumulators, broadcasts one element of A per row and reads a 32-column slice of B's row k (two
vectors) per step of K: B's columns stream from memory once per panel and stay in L2 while every row tile
of A passes. Measured on 2 Zen 5 cores, 128 x 768 x 3072 and its kin: 240-260 GFLOP/s on one thread (OpenBLAS
190-230) and 400-470 on two (OpenBLAS 350-400).

The micro-kernel is LLVM IR (``llvm.fma.v16f32``); each output element is one fused multiply-add chain over
K in order, so results differ from BLAS's by float rounding only. A last panel narrower than 32 columns reads
B's columns from a zero-padded copy (``tail``) so that no load passes B's end.

An epilogue (a bias per row, a residual, an activation of :data:`IN_REGISTERS`) is applied to the tile's
accumulators after the last K block, before the one store: a pointwise convolution's FusedConv epilogue costs no
pass over its output (``conv_core._own_gemm_pointwise``; resnet50's and mobilenet_v2's 28x28 to 112x112 layers
0.55-0.9x the time of BLAS per block with the epilogue after each block, on 2 Zen 5 cores).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic

from ..ir_vectors import IN_REGISTERS, activation, splat
from ..native_tasks import float32_array, int64_array, part_ranges

PANEL = 32  # columns per panel: two 16-lane accumulators per row
MAX_ROWS = 12  # rows per tile: 24 accumulators, two B vectors and a broadcast within AVX-512's 32 registers
K_BLOCK = 256  # rows of B a pass over the row tiles reads: a panel's slice of 32 KiB stays in L1
_F = ir.FloatType()
_V = ir.VectorType(_F, 16)
_I64 = ir.IntType(64)
_jit = dict(cache=True, nogil=True, error_model="numpy")


def _tile_intrinsic(rows: int):
    """``tile(c_addr, ldc, a_addr, lda, b_addr, ldb, k, accumulate, finish, bias_addr, res_addr, ldres, act,
    params_addr)``: C[rows, 32] = A[rows, k] @ B[k, 32] (C += ... where ``accumulate`` is nonzero), byte addresses and
    strides (C, A, B and the residual rows of float32); where ``finish`` is nonzero, with the epilogue applied before
    the store: act(C + bias[r] + residual[r]) (the residual where ``res_addr`` is nonzero; ``act`` one of
    :data:`IN_REGISTERS`, parameters params[0], params[1])."""

    def codegen(context, builder, signature, args):
        c_addr, ldc, a_addr, lda, b_addr, ldb, k, accumulate = args[:8]
        finish, bias_addr, res_addr, ldres, act, params_addr = args[8:]
        adding = builder.icmp_signed("!=", accumulate, ir.Constant(_I64, 0))
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V, [_V, _V, _V]), "llvm.fma.v16f32")
        zero = ir.Constant(_V, None)
        initial = []
        for r in range(rows):
            row = builder.add(c_addr, builder.mul(ldc, ir.Constant(_I64, r)))
            for half in range(2):
                pointer = builder.inttoptr(builder.add(row, ir.Constant(_I64, 64 * half)), _V.as_pointer())
                initial.append(builder.select(adding, builder.load(pointer, align=4), zero))
        entry = builder.basic_block
        head = builder.append_basic_block("sgemm.head")
        body = builder.append_basic_block("sgemm.body")
        done = builder.append_basic_block("sgemm.done")
        builder.branch(head)

        builder.position_at_end(head)
        i = builder.phi(_I64, "k")
        i.add_incoming(ir.Constant(_I64, 0), entry)
        accumulators = []
        for start in initial:
            acc = builder.phi(_V)
            acc.add_incoming(start, entry)
            accumulators.append(acc)
        builder.cbranch(builder.icmp_signed("<", i, k), body, done)

        builder.position_at_end(body)
        b_row = builder.add(b_addr, builder.mul(i, ldb))
        b_low = builder.load(builder.inttoptr(b_row, _V.as_pointer()), align=4)
        b_high = builder.load(builder.inttoptr(builder.add(b_row, ir.Constant(_I64, 64)), _V.as_pointer()), align=4)
        a_column = builder.add(a_addr, builder.mul(i, ir.Constant(_I64, 4)))
        updated = []
        for r in range(rows):
            element = builder.load(builder.inttoptr(builder.add(a_column, builder.mul(lda, ir.Constant(_I64, r))),
                                                    _F.as_pointer()), align=4)
            broadcast = splat(builder, element, _V)
            updated.append(builder.call(fma, [broadcast, b_low, accumulators[2 * r]]))
            updated.append(builder.call(fma, [broadcast, b_high, accumulators[2 * r + 1]]))
        i.add_incoming(builder.add(i, ir.Constant(_I64, 1)), builder.basic_block)
        for acc, value in zip(accumulators, updated):
            acc.add_incoming(value, builder.basic_block)
        builder.branch(head)

        builder.position_at_end(done)

        def store(finished: bool, summed: bool) -> None:
            if finished:
                params = builder.inttoptr(params_addr, _F.as_pointer())
                a, b = (splat(builder, builder.load(builder.gep(params, [ir.Constant(_I64, i)])), _V) for i in (0, 1))
            for r in range(rows):
                row = builder.add(c_addr, builder.mul(ldc, ir.Constant(_I64, r)))
                if finished:
                    bias = builder.inttoptr(builder.add(bias_addr, ir.Constant(_I64, 4 * r)), _F.as_pointer())
                    shift = splat(builder, builder.load(bias), _V)
                    residual_row = builder.add(res_addr, builder.mul(ldres, ir.Constant(_I64, r)))
                for half in range(2):
                    value = accumulators[2 * r + half]
                    if finished:
                        value = builder.fadd(value, shift)
                        if summed:
                            extra = builder.inttoptr(builder.add(residual_row, ir.Constant(_I64, 64 * half)),
                                                     _V.as_pointer())
                            value = builder.fadd(value, builder.load(extra, align=4))
                        value = activation(builder, value, act, a, b)
                    pointer = builder.inttoptr(builder.add(row, ir.Constant(_I64, 64 * half)), _V.as_pointer())
                    builder.store(value, pointer, align=4)

        null = ir.Constant(_I64, 0)
        with builder.if_else(builder.icmp_signed("!=", finish, null)) as (finishing, plain):
            with finishing:
                with builder.if_else(builder.icmp_signed("!=", res_addr, null)) as (summing, alone):
                    with summing:
                        store(True, True)
                    with alone:
                        store(True, False)
            with plain:
                store(False, False)
        return context.get_dummy_value()

    @intrinsic
    def tile(typingctx, c_addr, ldc, a_addr, lda, b_addr, ldb, k, accumulate, finish, bias_addr, res_addr, ldres, act,
             params_addr):
        return types.void(*([types.intp] * 14)), codegen

    return tile


(_t1, _t2, _t3, _t4, _t5, _t6, _t7, _t8, _t9, _t10, _t11, _t12) = (_tile_intrinsic(r) for r in range(1, MAX_ROWS + 1))


@numba.njit(**_jit)
def _tile(c, ldc, a, lda, b, ldb, k, rows, accumulate, e):
    """The tile of ``rows`` rows; ``e`` the epilogue's (finish, bias, residual, ldres, act, params) arguments."""
    if rows == 12:
        _t12(c, ldc, a, lda, b, ldb, k, accumulate, e[0], e[1], e[2], e[3], e[4], e[5])
    elif rows == 11:
        _t11(c, ldc, a, lda, b, ldb, k, accumulate, e[0], e[1], e[2], e[3], e[4], e[5])
    elif rows == 10:
        _t10(c, ldc, a, lda, b, ldb, k, accumulate, e[0], e[1], e[2], e[3], e[4], e[5])
    elif rows == 9:
        _t9(c, ldc, a, lda, b, ldb, k, accumulate, e[0], e[1], e[2], e[3], e[4], e[5])
    elif rows == 8:
        _t8(c, ldc, a, lda, b, ldb, k, accumulate, e[0], e[1], e[2], e[3], e[4], e[5])
    elif rows == 7:
        _t7(c, ldc, a, lda, b, ldb, k, accumulate, e[0], e[1], e[2], e[3], e[4], e[5])
    elif rows == 6:
        _t6(c, ldc, a, lda, b, ldb, k, accumulate, e[0], e[1], e[2], e[3], e[4], e[5])
    elif rows == 5:
        _t5(c, ldc, a, lda, b, ldb, k, accumulate, e[0], e[1], e[2], e[3], e[4], e[5])
    elif rows == 4:
        _t4(c, ldc, a, lda, b, ldb, k, accumulate, e[0], e[1], e[2], e[3], e[4], e[5])
    elif rows == 3:
        _t3(c, ldc, a, lda, b, ldb, k, accumulate, e[0], e[1], e[2], e[3], e[4], e[5])
    elif rows == 2:
        _t2(c, ldc, a, lda, b, ldb, k, accumulate, e[0], e[1], e[2], e[3], e[4], e[5])
    else:
        _t1(c, ldc, a, lda, b, ldb, k, accumulate, e[0], e[1], e[2], e[3], e[4], e[5])


@numba.njit(**_jit)
def gemm(a, b, tail, c, m0, m1, p0, p1, bias, residual, act, params):
    """Rows [m0, m1) and column panels [p0, p1) of ``c = act(a @ b + bias[:, None] + residual)``: ``a`` (M, K), ``b``
    (K, N), ``c`` (M, N) float32 C-contiguous; ``tail`` (K, 32): b's last N % 32 columns zero-padded (unread when N is
    a multiple of 32). The epilogue: ``bias`` (M,) or empty, ``residual`` (M, N) or no rows, ``act`` one of
    :data:`IN_REGISTERS` with parameters ``params[:2]``; none where all three are absent (a plain product). K is
    taken :data:`K_BLOCK` rows of B at a time (their panel slice stays in L1 while the row tiles pass), the
    first block writing C, the others adding to it, the last applying the epilogue in the registers."""
    m_total, k = a.shape
    n = c.shape[1]
    full = n // PANEL
    scratch = np.zeros((MAX_ROWS, PANEL), np.float32)
    lda, ldb, ldc = k * 4, n * 4, n * 4
    summed = residual.shape[0] > 0
    fused = summed or bias.shape[0] > 0 or act != 0
    shift = bias if bias.shape[0] > 0 else np.zeros(m_total, np.float32)
    residual_tail = np.zeros((MAX_ROWS, PANEL), np.float32)
    for k0 in range(0, k, K_BLOCK):
        depth = min(K_BLOCK, k - k0)
        accumulate = 1 if k0 > 0 else 0
        finish = 1 if fused and k0 + K_BLOCK >= k else 0
        for p in range(p0, p1):
            col0 = p * PANEL
            m = m0
            while m < m1:
                rows = min(MAX_ROWS, m1 - m)
                a_address = a.ctypes.data + m * lda + k0 * 4
                if p < full:
                    res = residual.ctypes.data + (m * n + col0) * 4 if summed else 0
                    _tile(c.ctypes.data + (m * n + col0) * 4, ldc, a_address, lda, b.ctypes.data + (k0 * n + col0) * 4,
                          ldb, depth, rows, accumulate, (finish, shift.ctypes.data + m * 4, res, ldc, act,
                                                         params.ctypes.data))
                else:
                    for r in range(rows):
                        for j in range(PANEL):
                            scratch[r, j] = c[m + r, col0 + j] if accumulate and col0 + j < n else 0
                    res = 0
                    if summed and finish:
                        for r in range(rows):
                            for j in range(n - col0):
                                residual_tail[r, j] = residual[m + r, col0 + j]
                        res = residual_tail.ctypes.data
                    _tile(scratch.ctypes.data, PANEL * 4, a_address, lda, tail.ctypes.data + k0 * PANEL * 4, PANEL * 4,
                          depth, rows, 1, (finish, shift.ctypes.data + m * 4, res, PANEL * 4, act, params.ctypes.data))
                    for r in range(rows):
                        for j in range(n - col0):
                            c[m + r, col0 + j] = scratch[r, j]
                m += rows


def panels(n: int) -> int:
    """Column panels of a product with ``n`` columns."""
    return -(-n // PANEL)


def tail_of(b: np.ndarray) -> np.ndarray:
    """B's last ``N % 32`` columns, zero-padded to 32 (K, 32) float32; an empty (K, 32) when N is a multiple of 32."""
    k, n = b.shape
    width = n % PANEL
    tail = np.zeros((k, PANEL if width else 0), np.float32)
    if width:
        tail[:, :width] = b[:, n - width:]
    return tail


_TASK_ARGS = 16


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def gemm_part(args, part, parts):
    """Native task (``framework.native_spin``): part ``part`` of ``parts`` of :func:`gemm` as :func:`task_args`
    describes it, split by panels (or by rows where there are fewer panels than parts)."""
    d = int64_array(args, _TASK_ARGS)
    m, k, n, count = d[1], d[2], d[4], d[8]
    a = float32_array(d[0], m * k).reshape((m, k))
    b = float32_array(d[3], k * n).reshape((k, n))
    tail = float32_array(d[5], d[6] * d[7]).reshape((d[6], d[7]))
    c = float32_array(d[9], m * n).reshape((m, n))
    bias = float32_array(d[11], d[12])
    residual = float32_array(d[13], d[14] * n).reshape((d[14], n))
    params = float32_array(d[15], 2)
    m0, m1, p0, p1 = part_ranges(m, count, d[10] & 1 != 0, part, parts)  # (d[10]: by_panels | act << 1)
    gemm(a, b, tail, c, m0, m1, p0, p1, bias, residual, d[10] >> 1, params)


@numba.njit(cache=True)
def task_args(a, b, tail, c, by_panels, bias, residual, act, params):
    """:func:`gemm_part`'s arguments (compiled: ``ndarray.ctypes`` costs ~1 us an address); the caller keeps the
    arrays alive until the task returns. ``bias``, ``residual``, ``act``, ``params``: :func:`gemm`'s epilogue."""
    args = np.empty(_TASK_ARGS, np.int64)
    args[0], args[1], args[2] = a.ctypes.data, a.shape[0], a.shape[1]
    args[3], args[4], args[5], args[6], args[7] = b.ctypes.data, b.shape[1], tail.ctypes.data, tail.shape[0], tail.shape[1]
    args[8], args[9], args[10] = (b.shape[1] + PANEL - 1) // PANEL, c.ctypes.data, by_panels | (act << 1)
    args[11], args[12], args[13], args[14], args[15] = (bias.ctypes.data, bias.shape[0], residual.ctypes.data,
                                                        residual.shape[0], params.ctypes.data)
    return args
