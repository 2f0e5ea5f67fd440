"""float32 MaxPool of the two commonest strided windows, 3x3 / 2 with one pixel of begin padding (ResNet's and
ShuffleNet's stems) and 2x2 / 2 without, on NCHW planes as they lie: two output rows a pass from the four or five
input rows they read (the row both 3-wide windows share loaded once; one loop's set-up for two rows: 8x24x16x16
12.7 -> 9.3 us, resnet50's 64x112x112 118 -> 86 us on one Zen 5 core), in vectors of :data:`LANES` floats.

The input rows' maximum is taken first (vertical), then each output pixel's window along it: 2 x LANES input columns are
two vectors, split into their even and odd columns by two shuffles, so that output j is the maximum of column 2j
(even lane j), 2j + 1 (odd lane j) and, for the 3-wide window, 2j - 1 (the odd lane before: the odd vector moved one
lane, the previous chunk's last odd column coming in). Columns past the row's end load as -inf under a lane mask,
the row's first window starts from -inf (the begin padding), and an absent row (the top padding, or a last row past
the input) is the row next to it again (a maximum does not change for a repeated value). A maximum is NaN wherever
a window holds one, as ``np.maximum`` gives (a compare and a select for the larger, one for a NaN; LLVM's own
``llvm.maximum`` also orders -0 below +0 and cost a fifth more here). The planar numba kernel
(``pool._max_pool_planes``) walks a row a column at a time and the channels-last blocks transpose each block of
channels twice; for 8x24x16x16 this is ~4x and ~2x faster (measured on 2 Zen 5 cores, see ``pool``).

Imported by ``pool`` on first use (it imports numba at its top).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

from ....framework.cpu_features import has_flags
from ..ir_vectors import lanes_below, masked_load, masked_store, splat, switch_codegen
from ..native_tasks import int64_array

# floats a vector: sixteen with AVX-512, else eight (an AVX2 register). Sixteen on a Zen 3 split every vector in two, and
# a 16-column row's chunk ran its second half and its eight outputs under masks (3x3/2 of 8x24x16x16 12 against 36 us,
# 64x112x112 155 against 337 us on one core, with ``ir_vectors``' plain loads and stores where a mask is all on)
LANES = 16 if has_flags("avx512f") else 8
_F = ir.FloatType()
_V = ir.VectorType(_F, LANES)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
WINDOWS = (2, 3)  # the windows (stride 2; begin padding 0 for 2, 1 for 3) this module pools


def _rows_body(window: int):
    """The codegen of two output rows for ``window`` 2 or 3: ``y0[0:OW]`` and ``y1[0:OW]`` = the windows of the
    maximum of input rows r0.. and of rows r2.. (rows of ``W`` float32 at byte addresses; 3-wide windows read r0-r2
    and r2-r4, columns 2j - 1, 2j, 2j + 1 with column -1 the padding; 2-wide ones r0-r1 and r2-r3, columns 2j and
    2j + 1), in one loop over the chunks, a row both read loaded once; ``y1`` not written where ``rows`` is 1."""

    def codegen(context, builder, signature, args):
        y0_addr, y1_addr, r0, r1, r2, r3, r4, width, outputs, rows = args
        pointer = _V.as_pointer()

        def maximum(pair):  # the larger, NaN where either is NaN (np.maximum's rule)
            a, b = pair
            larger = builder.select(builder.fcmp_ordered("<", a, b), b, a)  # (a where either is NaN)
            return builder.select(builder.fcmp_unordered("uno", b, b), b, larger)

        lowest = ir.Constant(_V, [float("-inf")] * LANES)
        second = builder.icmp_signed(">", rows, ir.Constant(_I64, 1))

        def load(row, column):  # LANES columns from ``column`` of a row, -inf past its end
            address = builder.add(row, builder.mul(column, ir.Constant(_I64, 4)))
            return masked_load(builder, builder.inttoptr(address, pointer),
                               lanes_below(builder, builder.sub(width, column), LANES), lowest)

        def shuffle(a, b, indices):
            return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, LANES), indices))

        inputs = (r0, r1, r2, r3, r4)
        bands = ((range(0, window), y0_addr, None), (range(2, 2 + window), y1_addr, second))
        carries = [cgutils.alloca_once_value(builder, lowest) for _ in bands]  # the previous chunk's odd columns
        chunks = builder.udiv(builder.add(outputs, ir.Constant(_I64, LANES - 1)), ir.Constant(_I64, LANES))
        with cgutils.for_range(builder, chunks) as loop:
            first = builder.mul(loop.index, ir.Constant(_I64, 2 * LANES))  # the chunk's first input column
            start = builder.mul(loop.index, ir.Constant(_I64, LANES))
            loaded = {}  # (input row, half) -> its vector
            for (band, y_addr, wanted), carry in zip(bands, carries):
                halves = []
                for half in (0, 1):
                    column = builder.add(first, ir.Constant(_I64, half * LANES))
                    values = []
                    for r in band:
                        if (r, half) not in loaded:
                            loaded[r, half] = load(inputs[r], column)
                        values.append(loaded[r, half])
                    top = values[0]
                    for value in values[1:]:
                        top = maximum((top, value))
                    halves.append(top)
                even = shuffle(halves[0], halves[1], list(range(0, 2 * LANES, 2)))
                odd = shuffle(halves[0], halves[1], list(range(1, 2 * LANES, 2)))
                result = maximum((even, odd))
                if window == 3:
                    before = shuffle(builder.load(carry), odd, [LANES - 1] + list(range(LANES, 2 * LANES - 1)))
                    builder.store(odd, carry)
                    result = maximum((result, before))
                target = builder.inttoptr(builder.add(y_addr, builder.mul(start, ir.Constant(_I64, 4))), pointer)
                mask = lanes_below(builder, builder.sub(outputs, start), LANES)
                if wanted is not None:
                    mask = builder.and_(mask, splat(builder, wanted, mask.type))
                masked_store(builder, result, target, mask)
        return context.get_dummy_value()

    return codegen


@intrinsic
def _pool_rows(typingctx, y0_addr, y1_addr, r0, r1, r2, r3, r4, width, outputs, rows, window):
    return types.void(*([types.int64] * 11)), switch_codegen({w: _rows_body(w) for w in WINDOWS})


@numba.njit(cache=True, nogil=True, inline="always")
def _planes(x_address, y_address, H, W, OH, OW, window, p0, p1):
    """Planes p0..p1 of the pool (see :func:`max_pool_planes`), the tensors at byte addresses; two output rows a
    pass. A row outside the plane (the top padding, a last row past the input) is the row next to it again: a
    maximum does not change for a repeated value."""
    pad = window - 2
    last = (H - 1) * W * 4
    for p in range(p0, p1):
        plane = x_address + p * H * W * 4
        out = y_address + p * OH * OW * 4
        for oh in range(0, OH, 2):
            top = 2 * oh - pad  # the first window's first row (-1: the padding row)
            r0 = plane + min(max(top, 0) * W * 4, last)
            r1 = plane + min((top + 1) * W * 4, last)
            r2 = plane + min((top + 2) * W * 4, last)
            r3 = plane + min((top + 3) * W * 4, last)
            r4 = plane + min((top + 4) * W * 4, last)
            _pool_rows(out + oh * OW * 4, out + (oh + 1) * OW * 4, r0, r1, r2, r3, r4, W, OW, min(2, OH - oh), window)


@numba.njit(cache=True, nogil=True)
def max_pool_planes(x, y, window, p0, p1):
    """Planes p0..p1 of ``y`` (P, OH, OW) = the ``window`` x ``window`` / 2 MaxPool (:data:`WINDOWS`; begin padding
    ``window - 2``) of float32 ``x`` (P, H, W), both C-contiguous."""
    _planes(x.ctypes.data, y.ctypes.data, x.shape[1], x.shape[2], y.shape[1], y.shape[2], window, p0, p1)


@numba.njit(cache=True)
def task_args(x, y, window):
    """:func:`max_pool_part`'s arguments for :func:`max_pool_planes`' ``x``, ``y`` and ``window`` (the caller keeps the
    arrays alive until the task returns)."""
    args = np.empty(_TASK_ARGS, np.int64)
    args[0], args[1], args[2], args[3], args[4] = x.ctypes.data, y.ctypes.data, x.shape[0], x.shape[1], x.shape[2]
    args[5], args[6], args[7] = y.shape[1], y.shape[2], window
    return args


_TASK_ARGS = 8


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def max_pool_part(args, part, parts):
    """Native task (``framework.native_spin``): the planes [P * part / parts, P * (part + 1) / parts) of the pool at
    ``args`` (:func:`task_args`)."""
    d = int64_array(args, _TASK_ARGS)
    planes = d[2]
    _planes(d[0], d[1], d[3], d[4], d[5], d[6], d[7], planes * part // parts, planes * (part + 1) // parts)
