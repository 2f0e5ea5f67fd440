"""The AVX2 route of the int8 GEMM (``int8_gemm``): 16-bit pair products, exact, for CPUs without VNNI.

Imported only by ``int8_gemm`` once it has checked that the CPU reports ``avx2`` and that numba
compiles for it (this module imports numba at its top).

Why 16-bit: AVX2's byte instruction (``vpmaddubsw``, what onnxruntime uses without VNNI) adds
two unsigned-by-signed byte products into a *saturating* int16, so onnxruntime's u8s8 results are
wrong where 255 x 127 pairs meet (proved in ``tests/unit/ort_int8.py``). ``vpmaddwd`` multiplies
int16 pairs into an int32 lane without saturation: with both operands widened to int16 and their
zero points subtracted first ((A - za) and (B - zb) are within [-255, 255]), each product pair is
exact and no correction terms remain. B is stored widened once (2 bytes a value, half of float32);
A is widened per call (one pass over the activations).

The micro-kernel is written in LLVM IR (LLVM does not form ``vpmaddwd`` from a plain loop of
widening multiplies): a tile of ``rows`` (1..6) rows of A times one 16-column panel of B, two
8-lane int32 accumulators per row (12 of AVX2's 16 registers), K consumed 2 values at a time.

Packed B layout (``pack_panels``): panel p holds columns [16p, 16p+16); for each pair of rows of K,
32 int16: column j's 2 values at [2j, 2j+2). Padding (K to even, N to a multiple of 16) is zero.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic

from ..native_tasks import float32_array, int16_array, int32_array, int64_array, part_ranges

PANEL = 16  # columns per panel: two 8-lane int32 accumulators
MAX_ROWS = 6  # rows per tile: 12 accumulators, 2 B vectors and a broadcast fit AVX2's 16 registers

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V8 = ir.VectorType(_I32, 8)
_W16 = ir.VectorType(ir.IntType(16), 16)
_F8 = ir.VectorType(ir.FloatType(), 8)
_jit = dict(cache=True, nogil=True, error_model="numpy")


def _tile_intrinsic(rows: int, float_out: bool):
    """An intrinsic ``tile(c_addr, ldc, a_addr, lda, b_addr, k2[, cs_addr, bias_addr])``:
    C[rows, 16] = A[rows, 2*k2] @ panel (int16 operands, int32 wrapping sums).

    Byte addresses; ``ldc`` counts C's elements (int32, or float32 with ``float_out``), ``lda``
    bytes. C is overwritten. With ``float_out``: float32 ``float(C) * cs[j] + bias[j]`` (a multiply
    then an add, numpy's roundings), cs and bias 16 float32 each from the panel's first column.
    """

    def codegen(context, builder, signature, args):
        c_addr, ldc, a_addr, lda, b_addr, k2 = args[:6]
        pmadd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8, [_W16, _W16]),
                                               "llvm.x86.avx2.pmadd.wd")
        entry = builder.basic_block
        head = builder.append_basic_block("avx2.head")
        body = builder.append_basic_block("avx2.body")
        done = builder.append_basic_block("avx2.done")
        builder.branch(head)

        builder.position_at_end(head)
        i = builder.phi(_I64, "k2")
        i.add_incoming(ir.Constant(_I64, 0), entry)
        accs = []
        for _ in range(2 * rows):
            acc = builder.phi(_V8)
            acc.add_incoming(ir.Constant(_V8, None), entry)
            accs.append(acc)
        builder.cbranch(builder.icmp_signed("<", i, k2), body, done)

        builder.position_at_end(body)
        b_row = builder.add(b_addr, builder.mul(i, ir.Constant(_I64, 4 * PANEL)))
        b_lo = builder.load(builder.inttoptr(b_row, _W16.as_pointer()), align=2)
        b_hi = builder.load(builder.inttoptr(builder.add(b_row, ir.Constant(_I64, 32)), _W16.as_pointer()), align=2)
        a_col = builder.add(a_addr, builder.mul(i, ir.Constant(_I64, 4)))
        updated = []
        for r in range(rows):
            a_ptr = builder.inttoptr(builder.add(a_col, builder.mul(lda, ir.Constant(_I64, r))), _I32.as_pointer())
            pair = builder.load(a_ptr, align=2)  # 2 int16 of row r, broadcast to every lane
            lane0 = builder.insert_element(ir.Constant(_V8, ir.Undefined), pair, ir.Constant(_I32, 0))
            splat = builder.bitcast(builder.shuffle_vector(lane0, ir.Constant(_V8, ir.Undefined),
                                                           ir.Constant(_V8, None)), _W16)
            updated.append(builder.add(accs[2 * r], builder.call(pmadd, [splat, b_lo])))
            updated.append(builder.add(accs[2 * r + 1], builder.call(pmadd, [splat, b_hi])))
        i.add_incoming(builder.add(i, ir.Constant(_I64, 1)), builder.basic_block)
        for acc, value in zip(accs, updated):
            acc.add_incoming(value, builder.basic_block)
        builder.branch(head)

        builder.position_at_end(done)
        if float_out:
            cs_addr, bias_addr = args[6], args[7]

            def floats_at(addr, offset):
                pointer = builder.inttoptr(builder.add(addr, ir.Constant(_I64, offset)), _F8.as_pointer())
                return builder.load(pointer, align=4)

            col_scales = (floats_at(cs_addr, 0), floats_at(cs_addr, 32))
            biases = (floats_at(bias_addr, 0), floats_at(bias_addr, 32))
        for r in range(rows):
            row = builder.add(c_addr, builder.mul(ldc, ir.Constant(_I64, 4 * r)))
            for half in range(2):
                value = accs[2 * r + half]
                if float_out:
                    scaled = builder.fmul(builder.sitofp(value, _F8), col_scales[half])
                    value = builder.bitcast(builder.fadd(scaled, biases[half]), _V8)
                ptr = builder.inttoptr(builder.add(row, ir.Constant(_I64, 32 * half)), _V8.as_pointer())
                builder.store(value, ptr, align=4)
        return context.get_dummy_value()

    if float_out:
        @intrinsic
        def tile(typingctx, c_addr, ldc, a_addr, lda, b_addr, k2, cs_addr, bias_addr):
            return types.void(*([types.intp] * 8)), codegen
    else:
        @intrinsic
        def tile(typingctx, c_addr, ldc, a_addr, lda, b_addr, k2):
            return types.void(*([types.intp] * 6)), codegen

    return tile


_tile1, _tile2, _tile3, _tile4, _tile5, _tile6 = (_tile_intrinsic(r, False) for r in range(1, MAX_ROWS + 1))
_ftile1, _ftile2, _ftile3, _ftile4, _ftile5, _ftile6 = (_tile_intrinsic(r, True) for r in range(1, MAX_ROWS + 1))


@numba.njit(**_jit)
def _tile(c_addr, ldc, a_addr, lda, b_addr, k2, rows):
    if rows == 6:
        _tile6(c_addr, ldc, a_addr, lda, b_addr, k2)
    elif rows == 5:
        _tile5(c_addr, ldc, a_addr, lda, b_addr, k2)
    elif rows == 4:
        _tile4(c_addr, ldc, a_addr, lda, b_addr, k2)
    elif rows == 3:
        _tile3(c_addr, ldc, a_addr, lda, b_addr, k2)
    elif rows == 2:
        _tile2(c_addr, ldc, a_addr, lda, b_addr, k2)
    else:
        _tile1(c_addr, ldc, a_addr, lda, b_addr, k2)


@numba.njit(**_jit)
def _float_tile(c_addr, ldc, a_addr, lda, b_addr, k2, rows, cs_addr, bias_addr):
    if rows == 6:
        _ftile6(c_addr, ldc, a_addr, lda, b_addr, k2, cs_addr, bias_addr)
    elif rows == 5:
        _ftile5(c_addr, ldc, a_addr, lda, b_addr, k2, cs_addr, bias_addr)
    elif rows == 4:
        _ftile4(c_addr, ldc, a_addr, lda, b_addr, k2, cs_addr, bias_addr)
    elif rows == 3:
        _ftile3(c_addr, ldc, a_addr, lda, b_addr, k2, cs_addr, bias_addr)
    elif rows == 2:
        _ftile2(c_addr, ldc, a_addr, lda, b_addr, k2, cs_addr, bias_addr)
    else:
        _ftile1(c_addr, ldc, a_addr, lda, b_addr, k2, cs_addr, bias_addr)


@numba.njit(**_jit)
def widen_a(a, a_zero, k_padded):
    """(M, K) uint8 or int8 ``a`` minus its per-row ``a_zero`` (M,) int32, as (M, k_padded) int16
    (zero columns after K)."""
    m, k = a.shape
    out = np.zeros((m, k_padded), np.int16)
    for r in range(m):
        z = a_zero[r]
        for j in range(k):
            out[r, j] = np.int16(np.int32(a[r, j]) - z)
    return out


@numba.njit(**_jit)
def gemm_s16(a, panels, c, m0, m1, p0, p1):
    """Rows [m0, m1) and panels [p0, p1) of ``C = A @ B`` (int32, wrapping): ``a`` (M, 2*K2) int16
    (``widen_a``), ``panels`` (P, K2, 32) int16 (``pack_panels``), ``c`` (M, N) int32, C-contiguous,
    overwritten."""
    k2 = panels.shape[1]
    n = c.shape[1]
    lda = a.shape[1] * 2
    a_base = a.ctypes.data
    b_base = panels.ctypes.data
    c_base = c.ctypes.data
    scratch = np.empty((MAX_ROWS, PANEL), np.int32)  # the last panel's tile when N is not a multiple of 16
    s_base = scratch.ctypes.data
    for p in range(p0, p1):
        col0 = p * PANEL
        width = min(PANEL, n - col0)
        b_panel = b_base + p * k2 * 4 * PANEL
        m = m0
        while m < m1:
            rows = min(MAX_ROWS, m1 - m)
            if width == PANEL:
                _tile(c_base + (m * n + col0) * 4, n, a_base + m * lda, lda, b_panel, k2, rows)
            else:
                _tile(s_base, PANEL, a_base + m * lda, lda, b_panel, k2, rows)
                for r in range(rows):
                    for j in range(width):
                        c[m + r, col0 + j] = scratch[r, j]
            m += rows


@numba.njit(**_jit)
def gemm_s16_scaled(a, panels, c, m0, m1, p0, p1, col_scale, bias):
    """``gemm_s16`` with a float32 ``c``: ``float(C) * col_scale[n] + bias[n]`` stored directly
    (``col_scale`` and ``bias``: (16 * P,) float32, padded)."""
    k2 = panels.shape[1]
    n = c.shape[1]
    lda = a.shape[1] * 2
    a_base = a.ctypes.data
    b_base = panels.ctypes.data
    c_base = c.ctypes.data
    scratch = np.empty((MAX_ROWS, PANEL), np.float32)
    s_base = scratch.ctypes.data
    for p in range(p0, p1):
        col0 = p * PANEL
        width = min(PANEL, n - col0)
        b_panel = b_base + p * k2 * 4 * PANEL
        epilogue = (col_scale.ctypes.data + 4 * col0, bias.ctypes.data + 4 * col0)
        m = m0
        while m < m1:
            rows = min(MAX_ROWS, m1 - m)
            if width == PANEL:
                _float_tile(c_base + (m * n + col0) * 4, n, a_base + m * lda, lda, b_panel, k2, rows, *epilogue)
            else:
                _float_tile(s_base, PANEL, a_base + m * lda, lda, b_panel, k2, rows, *epilogue)
                for r in range(rows):
                    for j in range(width):
                        c[m + r, col0 + j] = scratch[r, j]
            m += rows


_TASK_ARGS = 12


@numba.cfunc(numba.types.void(numba.types.int64, numba.types.int64, numba.types.int64), cache=True, nopython=True)
def gemm_part(args, part, parts):
    """Native task (``framework.native_spin``): part ``part`` of ``parts`` of ``gemm_s16`` or
    ``gemm_s16_scaled`` as :func:`task_args` describes it, split by rows or by panels."""
    d = int64_array(args, _TASK_ARGS)
    m, a_columns, panel_count, k2, n = d[1], d[2], d[4], d[5], d[7]
    a = int16_array(d[0], m * a_columns).reshape((m, a_columns))
    panels = int16_array(d[3], panel_count * k2 * 2 * PANEL).reshape((panel_count, k2, 2 * PANEL))
    m0, m1, p0, p1 = part_ranges(m, panel_count, d[8] != 0, part, parts)
    if d[9] == 0:
        gemm_s16(a, panels, int32_array(d[6], m * n).reshape((m, n)), m0, m1, p0, p1)
    else:
        gemm_s16_scaled(a, panels, float32_array(d[6], m * n).reshape((m, n)), m0, m1, p0, p1,
                        float32_array(d[10], PANEL * panel_count), float32_array(d[11], PANEL * panel_count))


def task_args(a: np.ndarray, panels: np.ndarray, c: np.ndarray, by_panels: bool, epilogue: tuple) -> np.ndarray:
    """:func:`gemm_part`'s arguments for C-contiguous operands as ``gemm_s16`` / ``gemm_s16_scaled`` take them
    (``epilogue``: () or (col_scale, bias))."""
    scale, bias = epilogue if epilogue else (c, c)  # (unread without the epilogue)
    return np.array([a.ctypes.data, a.shape[0], a.shape[1], panels.ctypes.data, panels.shape[0], panels.shape[1],
                     c.ctypes.data, c.shape[1], int(by_panels), int(bool(epilogue)), scale.ctypes.data,
                     bias.ctypes.data], np.int64)


def pack_panels(b: np.ndarray) -> np.ndarray:
    """(K, N) integers within int16 (B minus its zero point) -> (ceil(N/16), ceil(K/2), 32) int16 panels
    (see the module docstring), zero padded."""
    k, n = b.shape
    k2 = -(-k // 2)
    panels = -(-n // PANEL)
    padded = np.zeros((k2 * 2, panels * PANEL), np.int16)
    padded[:k, :n] = b
    laid = padded.reshape(k2, 2, panels, PANEL).transpose(2, 0, 3, 1)  # (P, K2, 16 columns, 2 of K)
    return np.ascontiguousarray(laid).reshape(panels, k2, 2 * PANEL)
