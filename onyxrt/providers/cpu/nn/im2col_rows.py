"""The float32 column matrix of a convolution of column stride 1 or 2, a row segment at a time in vectors.

``cols[n, (c * kh + i) * kw + j, oh * OW + ow] = x[n, c, oh * s0 + i * d0 - pt, ow * s1 + j * d1 - pl]`` (0 in the
padding): for each channel, tap and output row, the OW values are one run of an input row (every other column at
stride 2), moved by the tap's column offset. Each run is copied sixteen values at a time by masked loads (two and a
shuffle keeping the even columns at stride 2) and a store: the lanes whose column falls outside the input row load
as 0 (the padding), a row above or below the input is all 0. The numba loop this replaces
(``conv_core._im2col_rows``) copies value by value with a loop per run and per padding strip: for the 7x7 and 14x14
planes of a network's last stages (resnet50's 512-channel 3x3 layers: 4608 runs of 7 per image) its loops' set-up is
most of the work.

Imported by ``conv_core`` on first use (it imports numba at its top).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

from ..ir_vectors import masked_load, masked_store, splat, switch_codegen
from ..native_tasks import int64_array

LANES = 16
STEPS = (1, 2)  # the strides (both ways) the runs are copied at
_F = ir.FloatType()
_V = ir.VectorType(_F, LANES)
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_LANE_NUMBERS = ir.Constant(ir.VectorType(_I32, LANES), list(range(LANES)))


def _constant(value: int) -> ir.Constant:
    return ir.Constant(_I64, value)


def _copy_body(step: int):
    """The codegen of a run at column ``step`` 1 or 2: ``dst[0:count]`` = ``row[offset + step * k]`` for k < count, 0
    where that column is outside [0, ``width``) (float32 at byte addresses; ``width`` 0 gives zeros). At step 2, 32
    columns load as two vectors and their even lanes are kept (one shuffle). Whole vectors are stored where ``room``
    (the values from ``dst`` the caller writes, in order) has them: up to 15 values past ``count``, which the caller
    writes next (masked stores cost several times more on AMD's cores). The lane tests are on 32-bit column numbers."""

    def codegen(context, builder, signature, args):
        dst, row, offset, width, count, room = args
        pointer = _V.as_pointer()
        zero = ir.Constant(_V, [0.0] * LANES)
        lanes = ir.VectorType(_I32, LANES)

        def narrow(value):
            return splat(builder, builder.trunc(value, _I32), lanes)

        def load(column):  # 16 columns from ``column``, 0 outside the row
            columns = builder.add(narrow(column), _LANE_NUMBERS)
            inside = builder.and_(builder.icmp_signed(">=", columns, ir.Constant(lanes, [0] * LANES)),
                                  builder.icmp_signed("<", columns, narrow(width)))
            source = builder.add(row, builder.mul(column, _constant(4)))
            return masked_load(builder, builder.inttoptr(source, pointer), inside, zero)

        chunks = builder.udiv(builder.add(count, _constant(LANES - 1)), _constant(LANES))
        with cgutils.for_range(builder, chunks) as loop:
            first = builder.mul(loop.index, _constant(LANES))
            column = builder.add(offset, builder.mul(first, _constant(step)))
            if step == 1:
                values = load(column)
            else:
                halves = [load(builder.add(column, _constant(half * LANES))) for half in (0, 1)]
                values = builder.shuffle_vector(halves[0], halves[1],
                                                ir.Constant(lanes, list(range(0, 2 * LANES, 2))))
            target = builder.inttoptr(builder.add(dst, builder.mul(first, _constant(4))), pointer)
            masked = builder.icmp_signed("<", builder.sub(room, first), _constant(LANES))
            with builder.if_else(masked) as (tail, whole):
                with tail:
                    masked_store(builder, values, target, builder.icmp_signed("<", _LANE_NUMBERS,
                                                                              narrow(builder.sub(count, first))))
                with whole:
                    builder.store(values, target, align=4)
        return context.get_dummy_value()

    return codegen


@intrinsic
def _copy_run(typingctx, dst, row, offset, width, count, room, step):
    return types.void(*([types.int64] * 7)), switch_codegen({s: _copy_body(s) for s in STEPS})


@numba.njit(cache=True, nogil=True, inline="always")
def _fill(x_addr, cols_addr, C, H, W, rows, kh, kw, s0, s1, d0, d1, pt, pl, OH, OW, n0, n1, c0, c1):
    """Images n0..n1, channels c0..c1 of the column matrix (see :func:`im2col_rows`), the arrays at byte addresses."""
    P = OH * OW
    for n in range(n0, n1):
        for c in range(c0, c1):
            plane = x_addr + (n * C + c) * H * W * 4
            for i in range(kh):
                for j in range(kw):
                    row = cols_addr + (n * rows + (c * kh + i) * kw + j) * P * 4
                    offset = j * d1 - pl
                    for oh in range(OH):
                        h = oh * s0 + i * d0 - pt
                        inside = 0 <= h < H
                        _copy_run(row + oh * OW * 4, plane + h * W * 4 if inside else plane, offset,
                                  W if inside else 0, OW, (OH - oh) * OW, s1)


@numba.njit(cache=True, nogil=True)
def im2col_rows(x, cols, kh, kw, s0, s1, d0, d1, pt, pl, OH, OW, c0, c1):
    """Channels c0..c1 of the column matrix ``cols`` (N, rows, OH * OW; rows >= C * kh * kw, the rows past them left
    as they are) of the float32 C-contiguous ``x`` (N, C, H, W), column stride ``s1`` 1 or 2 (:data:`STEPS`): ``cols[n,
    (c * kh + i) * kw + j, oh * OW + ow] = x[n, c, oh * s0 + i * d0 - pt, ow * s1 + j * d1 - pl]``, 0 in the
    padding."""
    N, C, H, W = x.shape
    _fill(x.ctypes.data, cols.ctypes.data, C, H, W, cols.shape[1], kh, kw, s0, s1, d0, d1, pt, pl, OH, OW, 0, N, c0,
          c1)


_TASK_ARGS = 17


@numba.njit(cache=True)
def task_args(x, cols, kh, kw, s0, s1, d0, d1, pt, pl, OH, OW):
    """:func:`im2col_part`'s arguments for :func:`im2col_rows`' (the caller keeps the arrays alive until the task
    returns)."""
    args = np.empty(_TASK_ARGS, np.int64)
    args[0], args[1], args[2], args[3], args[4] = x.ctypes.data, cols.ctypes.data, x.shape[0], x.shape[1], x.shape[2]
    args[5], args[6], args[7], args[8], args[9] = x.shape[3], cols.shape[1], kh, kw, s0
    args[10], args[11], args[12], args[13], args[14] = s1, d0, d1, pt, pl
    args[15], args[16] = OH, OW
    return args


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def im2col_part(args, part, parts):
    """Native task (``framework.native_spin``): channels [C * part / parts, C * (part + 1) / parts) of every image's
    column matrix at ``args`` (:func:`task_args`)."""
    d = int64_array(args, _TASK_ARGS)
    C = d[3]
    _fill(d[0], d[1], C, d[4], d[5], d[6], d[7], d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15], d[16], 0, d[2],
          C * part // parts, C * (part + 1) // parts)
