"""float32 layout transposes between channels-first (N, C, H, W) and channels-last (N, H, W, C) tensors, compiled.

Each image is a 2-D transpose, (C, H*W) to (H*W, C) or back, done eight rows by eight columns at a time in registers
(an 8x8 shuffle transpose of eight 8-lane vectors: eight loads of consecutive floats, eight stores); the rows and
columns past the last multiple of eight one element at a time. numpy's strided copy of the same transpose
(``np.ascontiguousarray(x.transpose(0, 2, 3, 1))``) walks the output element by element: measured on a Zen 5 core,
32x112x112 115 us, 112x112x32 back 278 us. Large tensors are split by rows over the pool as a native task.

Used by the Transpose op for those two permutations (models exported from channels-last frameworks, ConvNeXt's
LayerNorm blocks). Imported on first use (it imports numba at its top).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic

from ..ir_vectors import transpose_8x8
from ..native_tasks import float32_array, int64_array

_F = ir.FloatType()
_V8 = ir.VectorType(_F, 8)
_I64 = ir.IntType(64)
_jit = dict(cache=True, nogil=True)


@intrinsic
def _tiles(typingctx, source, target, rows, columns, r0, r1):
    """IR: target (columns, rows) = the transpose of source (rows, columns), float32 addresses, for the row groups
    of eight from r0 to r1 (multiples of eight) and the columns below the last multiple of eight."""

    def codegen(context, builder, signature, args):
        src_address, dst_address, rows_, columns_, first, last = args
        src = builder.inttoptr(src_address, _F.as_pointer())
        dst = builder.inttoptr(dst_address, _F.as_pointer())
        eight = ir.Constant(_I64, 8)
        whole = builder.mul(builder.sdiv(columns_, eight), eight)
        with cgutils.for_range_slice(builder, first, last, eight) as (r, _):
            with cgutils.for_range_slice(builder, ir.Constant(_I64, 0), whole, eight) as (c, _):
                vectors = []
                for i in range(8):
                    at = builder.add(builder.mul(builder.add(r, ir.Constant(_I64, i)), columns_), c)
                    vectors.append(builder.load(builder.bitcast(builder.gep(src, [at]), _V8.as_pointer()), align=4))
                for i, column in enumerate(transpose_8x8(builder, vectors)):
                    at = builder.add(builder.mul(builder.add(c, ir.Constant(_I64, i)), rows_), r)
                    builder.store(column, builder.bitcast(builder.gep(dst, [at]), _V8.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(source, target, rows, columns, r0, r1), codegen


@numba.njit(**_jit)
def transpose_rows(source, target, r0, r1):
    """target (S, R) = source (R, S) transposed, both C-contiguous float32, for source rows r0..r1 (r0 a multiple of
    eight)."""
    rows, columns = source.shape
    grouped = r0 + (r1 - r0) // 8 * 8
    _tiles(source.ctypes.data, target.ctypes.data, rows, columns, r0, grouped)
    whole = columns // 8 * 8
    for r in range(r0, grouped):  # the last columns
        for c in range(whole, columns):
            target[c, r] = source[r, c]
    for r in range(grouped, r1):  # the last rows
        for c in range(columns):
            target[c, r] = source[r, c]


@numba.njit(**_jit)
def transpose_images(source, target):
    """target[i] (S, R) = source[i] (R, S) transposed for every image i (3-D, C-contiguous float32): one call for a
    batch (a Python loop over the images cost a dispatch and two views each, ~1 us an image)."""
    for i in range(source.shape[0]):
        transpose_rows(source[i], target[i], 0, source.shape[1])


_ARGS = 5


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def transpose_part(args, part, parts):
    """Native task: part ``part`` of ``parts`` of the rows (in groups of eight) of every image's transpose,
    arguments (source, target, images, rows, columns)."""
    d = int64_array(args, _ARGS)
    images, rows, columns = d[2], d[3], d[4]
    source = float32_array(d[0], images * rows * columns).reshape((images, rows, columns))
    target = float32_array(d[1], images * rows * columns).reshape((images, columns, rows))
    groups = (rows + 7) // 8
    units = images * groups
    for unit in range(units * part // parts, units * (part + 1) // parts):
        image, group = unit // groups, unit % groups
        transpose_rows(source[image], target[image], group * 8, min(rows, group * 8 + 8))


@numba.njit(cache=True)
def task_args(source, target):
    """:func:`transpose_part`'s arguments for ``source`` (N, R, S) into ``target`` (N, S, R)."""
    args = np.empty(_ARGS, np.int64)
    args[0], args[1] = source.ctypes.data, target.ctypes.data
    args[2], args[3], args[4] = source.shape[0], source.shape[1], source.shape[2]
    return args
