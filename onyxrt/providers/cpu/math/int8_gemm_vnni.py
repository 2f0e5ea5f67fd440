"""The AVX-512 VNNI route of the int8 GEMM (``int8_gemm``): numba code around one LLVM intrinsic.

Imported only by ``int8_gemm`` once it has checked that the CPU reports ``avx512f`` and
``avx512_vnni`` and that numba compiles for the host CPU (this module imports numba at its top;
the instruction cannot be selected for a CPU without it).

Why an intrinsic: LLVM does not form ``vpdpbusd`` (4 unsigned-by-signed byte products summed
into each int32 lane, wrapping) from a plain loop, and the widening code it emits instead runs at
a tenth of the speed. The micro-kernel below is written directly in LLVM IR: a tile of ``rows``
(1..8) rows of A times one 32-column panel of packed B, two zmm accumulators per row, K consumed
4 bytes at a time. Measured on a 2-core EPYC (Zen 4): ~450 GOPS per core at 128x384x1536
(``benchmarks/int8_gemm.md``).

Packed B layout (``pack_panels``): panel p holds columns [32p, 32p+32); for each group of 4
rows of K, 128 bytes: column j's 4 values at bytes [4j, 4j+4). Padding (K to a multiple of 4,
N to a multiple of 32) is zero, so it adds nothing to any sum.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic

from ..native_tasks import float32_array, int8_array, int32_array, int64_array, part_ranges, uint8_array

PANEL = 32  # columns per panel: two 16-lane int32 accumulators
MAX_ROWS = 8  # rows per tile: 16 accumulators, 2 B vectors and a broadcast fit AVX-512's 32 registers

_V16 = ir.VectorType(ir.IntType(32), 16)
_F16 = ir.VectorType(ir.FloatType(), 16)  # 16 float32 lanes
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_jit = dict(cache=True, nogil=True, error_model="numpy")


def _tile_intrinsic(rows: int, float_out: bool = False):
    """An intrinsic ``tile(c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr)``:
    C[rows, 32] = A[rows, 4*k4] @ panel - za[r] * ct[j] - rs[r] * bz[j] (int32, wrapping).

    Addresses are byte addresses (za/rs: ``rows`` int32 from row 0 of the tile; ct/bz: 32 int32 from
    the panel's first column); ``ldc`` counts int32 elements, ``lda`` bytes. C is overwritten.
    With ``float_out`` the intrinsic takes two more addresses, cs and bias (32 float32 each), and
    stores float32 ``float(C) * cs[j] + bias[j]`` (a multiply then an add, not fused: the same
    roundings as numpy's ``y = C.astype(float32); y *= cs; y += bias``).
    """

    def codegen(context, builder, signature, args):
        c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr = args[:10]
        dot = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V16, [_V16, _V16, _V16]), "llvm.x86.avx512.vpdpbusd.512"
        )
        zero = ir.Constant(_V16, None)
        entry = builder.basic_block
        head = builder.append_basic_block("vnni.head")
        body = builder.append_basic_block("vnni.body")
        done = builder.append_basic_block("vnni.done")
        builder.branch(head)

        builder.position_at_end(head)
        i = builder.phi(_I64, "k4")
        i.add_incoming(ir.Constant(_I64, 0), entry)
        accs = []
        for _ in range(2 * rows):
            acc = builder.phi(_V16)
            acc.add_incoming(zero, entry)
            accs.append(acc)
        builder.cbranch(builder.icmp_signed("<", i, k4), body, done)

        builder.position_at_end(body)
        b_row = builder.add(b_addr, builder.mul(i, ir.Constant(_I64, 4 * PANEL)))
        b_lo = builder.load(builder.inttoptr(b_row, _V16.as_pointer()), align=1)
        b_hi = builder.load(builder.inttoptr(builder.add(b_row, ir.Constant(_I64, 64)), _V16.as_pointer()), align=1)
        a_col = builder.add(a_addr, builder.mul(i, ir.Constant(_I64, 4)))
        updated = []
        for r in range(rows):
            a_ptr = builder.inttoptr(builder.add(a_col, builder.mul(lda, ir.Constant(_I64, r))), _I32.as_pointer())
            quad = builder.load(a_ptr, align=1)  # 4 unsigned bytes of row r, broadcast to every lane
            lane0 = builder.insert_element(ir.Constant(_V16, ir.Undefined), quad, ir.Constant(_I32, 0))
            splat = builder.shuffle_vector(lane0, ir.Constant(_V16, ir.Undefined), ir.Constant(_V16, None))
            updated.append(builder.call(dot, [accs[2 * r], splat, b_lo]))
            updated.append(builder.call(dot, [accs[2 * r + 1], splat, b_hi]))
        i.add_incoming(builder.add(i, ir.Constant(_I64, 1)), builder.basic_block)
        for acc, value in zip(accs, updated):
            acc.add_incoming(value, builder.basic_block)
        builder.branch(head)

        builder.position_at_end(done)

        def vector_at(addr, offset):
            return builder.load(builder.inttoptr(builder.add(addr, ir.Constant(_I64, offset)), _V16.as_pointer()),
                                align=1)

        def splat_at(addr, offset):
            value = builder.load(builder.inttoptr(builder.add(addr, ir.Constant(_I64, offset)), _I32.as_pointer()),
                                 align=1)
            lane0 = builder.insert_element(ir.Constant(_V16, ir.Undefined), value, ir.Constant(_I32, 0))
            return builder.shuffle_vector(lane0, ir.Constant(_V16, ir.Undefined), ir.Constant(_V16, None))

        col_terms = (vector_at(ct_addr, 0), vector_at(ct_addr, 64))
        b_zeros = (vector_at(bz_addr, 0), vector_at(bz_addr, 64))
        if float_out:
            cs_addr, bias_addr = args[10], args[11]
            col_scales = tuple(builder.bitcast(vector_at(cs_addr, o), _F16) for o in (0, 64))
            biases = tuple(builder.bitcast(vector_at(bias_addr, o), _F16) for o in (0, 64))
        for r in range(rows):
            za = splat_at(za_addr, 4 * r)
            rs = splat_at(rs_addr, 4 * r)
            row = builder.add(c_addr, builder.mul(ldc, ir.Constant(_I64, 4 * r)))
            for half in range(2):
                fix = builder.add(builder.mul(za, col_terms[half]), builder.mul(rs, b_zeros[half]))
                value = builder.sub(accs[2 * r + half], fix)
                if float_out:
                    scaled = builder.fmul(builder.sitofp(value, _F16), col_scales[half])
                    value = builder.bitcast(builder.fadd(scaled, biases[half]), _V16)
                ptr = builder.inttoptr(builder.add(row, ir.Constant(_I64, 64 * half)), _V16.as_pointer())
                builder.store(value, ptr, align=1)
        return context.get_dummy_value()

    if float_out:
        @intrinsic
        def tile(typingctx, c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr, cs_addr,
                 bias_addr):
            return types.void(*([types.intp] * 12)), codegen
    else:
        @intrinsic
        def tile(typingctx, c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr):
            return types.void(*([types.intp] * 10)), codegen

    return tile


_tile1, _tile2, _tile3, _tile4, _tile5, _tile6, _tile7, _tile8 = (_tile_intrinsic(r) for r in range(1, MAX_ROWS + 1))


@numba.njit(**_jit)
def _tile(c_addr, ldc, a_addr, lda, b_addr, k4, rows, za_addr, rs_addr, ct_addr, bz_addr):
    if rows == 8:
        _tile8(c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr)
    elif rows == 7:
        _tile7(c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr)
    elif rows == 6:
        _tile6(c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr)
    elif rows == 5:
        _tile5(c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr)
    elif rows == 4:
        _tile4(c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr)
    elif rows == 3:
        _tile3(c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr)
    elif rows == 2:
        _tile2(c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr)
    else:
        _tile1(c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr)


_ftile1, _ftile2, _ftile3, _ftile4, _ftile5, _ftile6, _ftile7, _ftile8 = (
    _tile_intrinsic(r, float_out=True) for r in range(1, MAX_ROWS + 1))


@numba.njit(**_jit)
def _float_tile(c_addr, ldc, a_addr, lda, b_addr, k4, rows, za_addr, rs_addr, ct_addr, bz_addr, cs_addr, bias_addr):
    if rows == 8:
        _ftile8(c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr, cs_addr, bias_addr)
    elif rows == 7:
        _ftile7(c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr, cs_addr, bias_addr)
    elif rows == 6:
        _ftile6(c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr, cs_addr, bias_addr)
    elif rows == 5:
        _ftile5(c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr, cs_addr, bias_addr)
    elif rows == 4:
        _ftile4(c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr, cs_addr, bias_addr)
    elif rows == 3:
        _ftile3(c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr, cs_addr, bias_addr)
    elif rows == 2:
        _ftile2(c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr, cs_addr, bias_addr)
    else:
        _ftile1(c_addr, ldc, a_addr, lda, b_addr, k4, za_addr, rs_addr, ct_addr, bz_addr, cs_addr, bias_addr)


@numba.njit(**_jit)
def gemm_u8s8_scaled(a, panels, c, m0, m1, p0, p1, a_zero, a_rowsum, col_term, b_zero, col_scale, bias):
    """``gemm_u8s8`` with a float32 ``c``: ``float(C) * col_scale[n] + bias[n]`` stored directly
    (``col_scale`` and ``bias``: (32 * P,) float32, padded)."""
    k4 = panels.shape[1]
    n = c.shape[1]
    lda = a.shape[1]
    a_base = a.ctypes.data
    b_base = panels.ctypes.data
    c_base = c.ctypes.data
    za_base = a_zero.ctypes.data
    rs_base = a_rowsum.ctypes.data
    scratch = np.empty((MAX_ROWS, PANEL), np.float32)
    s_base = scratch.ctypes.data
    for p in range(p0, p1):
        col0 = p * PANEL
        width = min(PANEL, n - col0)
        b_panel = b_base + p * k4 * 4 * PANEL
        cols = (col_term.ctypes.data + 4 * col0, b_zero.ctypes.data + 4 * col0)
        epilogue = (col_scale.ctypes.data + 4 * col0, bias.ctypes.data + 4 * col0)
        m = m0
        while m < m1:
            rows = min(MAX_ROWS, m1 - m)
            if width == PANEL:
                _float_tile(c_base + (m * n + col0) * 4, n, a_base + m * lda, lda, b_panel, k4, rows,
                            za_base + 4 * m, rs_base + 4 * m, *cols, *epilogue)
            else:
                _float_tile(s_base, PANEL, a_base + m * lda, lda, b_panel, k4, rows,
                            za_base + 4 * m, rs_base + 4 * m, *cols, *epilogue)
                for r in range(rows):
                    for j in range(width):
                        c[m + r, col0 + j] = scratch[r, j]
            m += rows


@numba.njit(**_jit)
def gemm_u8s8(a, panels, c, m0, m1, p0, p1, a_zero, a_rowsum, col_term, b_zero):
    """Rows [m0, m1) and panels [p0, p1) of ``C = (A - a_zero) @ (B - b_zero)`` (int32, wrapping).

    ``a``: (M, 4*K4) uint8, C-contiguous; ``panels``: (P, K4, 128) int8 (``pack_panels``);
    ``c``: (M, N) int32, C-contiguous, overwritten. The raw products are corrected in the tile's
    registers by ``- a_zero[m] * col_term[n] - a_rowsum[m] * b_zero[n]``, with
    ``col_term = colsum(B) - K * b_zero``; ``a_zero``/``a_rowsum`` are (M,) int32, ``col_term``/``b_zero``
    (32 * P,) int32 (zeros where there is nothing to correct).
    """
    k4 = panels.shape[1]
    n = c.shape[1]
    lda = a.shape[1]
    a_base = a.ctypes.data
    b_base = panels.ctypes.data
    c_base = c.ctypes.data
    za_base = a_zero.ctypes.data
    rs_base = a_rowsum.ctypes.data
    ct_base = col_term.ctypes.data
    bz_base = b_zero.ctypes.data
    scratch = np.empty((MAX_ROWS, PANEL), np.int32)  # the last panel's tile when N is not a multiple of 32
    s_base = scratch.ctypes.data
    for p in range(p0, p1):
        col0 = p * PANEL
        width = min(PANEL, n - col0)
        b_panel = b_base + p * k4 * 4 * PANEL
        m = m0
        while m < m1:
            rows = min(MAX_ROWS, m1 - m)
            fix = (za_base + 4 * m, rs_base + 4 * m, ct_base + 4 * col0, bz_base + 4 * col0)
            if width == PANEL:
                _tile(c_base + (m * n + col0) * 4, n, a_base + m * lda, lda, b_panel, k4, rows, *fix)
            else:
                _tile(s_base, PANEL, a_base + m * lda, lda, b_panel, k4, rows, *fix)
                for r in range(rows):
                    for j in range(width):
                        c[m + r, col0 + j] = scratch[r, j]
            m += rows


_TASK_ARGS = 16


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def gemm_part(args, part, parts):
    """Native task (``framework.native_spin``): part ``part`` of ``parts`` of ``gemm_u8s8`` or
    ``gemm_u8s8_scaled`` as :func:`task_args` describes it, split by rows or by panels."""
    d = int64_array(args, _TASK_ARGS)
    m, lda, panel_count, k4, n = d[1], d[2], d[4], d[5], d[7]
    a = uint8_array(d[0], m * lda).reshape((m, lda))
    panels = int8_array(d[3], panel_count * k4 * 4 * PANEL).reshape((panel_count, k4, 4 * PANEL))
    width = panel_count * PANEL
    m0, m1, p0, p1 = part_ranges(m, panel_count, d[8] != 0, part, parts)
    a_zero, a_rowsum = int32_array(d[10], m), int32_array(d[11], m)
    col_term, b_zero = int32_array(d[12], width), int32_array(d[13], width)
    if d[9] == 0:
        gemm_u8s8(a, panels, int32_array(d[6], m * n).reshape((m, n)), m0, m1, p0, p1, a_zero, a_rowsum,
                  col_term, b_zero)
    else:
        gemm_u8s8_scaled(a, panels, float32_array(d[6], m * n).reshape((m, n)), m0, m1, p0, p1, a_zero, a_rowsum,
                         col_term, b_zero, float32_array(d[14], width), float32_array(d[15], width))


def task_args(a: np.ndarray, panels: np.ndarray, c: np.ndarray, by_panels: bool, tail: tuple) -> np.ndarray:
    """:func:`gemm_part`'s arguments for C-contiguous operands as ``gemm_u8s8`` / ``gemm_u8s8_scaled`` take them
    (``tail``: their arguments after ``p1``: a_zero, a_rowsum, col_term, b_zero[, col_scale, bias]; each int32
    or float32, C-contiguous)."""
    scaled = len(tail) == 6
    scale, bias = tail[4:] if scaled else (tail[0], tail[0])  # (unread without the epilogue)
    return _task_args(a, panels, c, by_panels, scaled, *tail[:4], scale, bias)


@numba.njit(**_jit)
def _task_args(a, panels, c, by_panels, scaled, a_zero, a_rowsum, col_term, b_zero, scale, bias):
    # compiled: reading 10 addresses through numpy's ``ndarray.ctypes`` costs ~8 us a product
    args = np.empty(_TASK_ARGS, np.int64)
    args[0], args[1], args[2] = a.ctypes.data, a.shape[0], a.shape[1]
    args[3], args[4], args[5] = panels.ctypes.data, panels.shape[0], panels.shape[1]
    args[6], args[7], args[8], args[9] = c.ctypes.data, c.shape[1], by_panels, scaled
    args[10], args[11], args[12], args[13] = a_zero.ctypes.data, a_rowsum.ctypes.data, col_term.ctypes.data, b_zero.ctypes.data
    args[14], args[15] = scale.ctypes.data, bias.ctypes.data
    return args


def pack_panels(b: np.ndarray) -> np.ndarray:
    """int8 (K, N) -> (ceil(N/32), ceil(K/4), 128) int8 panels (see the module docstring), zero padded."""
    k, n = b.shape
    k4 = -(-k // 4)
    panels = -(-n // PANEL)
    padded = np.zeros((k4 * 4, panels * PANEL), np.int8)
    padded[:k, :n] = b
    laid = padded.reshape(k4, 4, panels, PANEL).transpose(2, 0, 3, 1)  # (P, K4, 32 columns, 4 of K)
    return np.ascontiguousarray(laid).reshape(panels, k4, 4 * PANEL)
