"""The many-row CSR product of ``sparse_gemm``: numba code around an LLVM-IR register tile.

Imported only through ``sparse_gemm``'s lazy kernel (this module imports numba at its top; without
numba the import fails and the numpy path runs).

Why an intrinsic: a column's output tile must stay in registers while its nonzeros stream past
(``tile[m] += w_j * X^T[k_j, m0 + m]``). Written as numba loops, LLVM either keeps the tile in
memory (a load and store of it per nonzero, with overlap checks before each vectorized loop) or,
with scalar accumulators, leaves them scalar (numba turns off the SLP vectorizer). The tile below
is written directly in LLVM IR: up to 8 vectors of 8 float32 lanes (64 rows; 8 independent
multiply-add chains hide their latency), one broadcast weight and one row load per vector per
nonzero. Measured on AMD EPYC (AVX2, one thread, 64-128 rows, 80-95% zeros): 1.25-2x faster than
the buffered loop it replaced (1.25-1.35x on minilm_l6's pruned weights; ``benchmarks/sparse_kernels.md``).
``llvm.fmuladd`` fuses the multiply-add where the CPU has FMA
(a rounding per step instead of two; the dense GEMM fuses as well); on any other x86 LLVM splits
the 8-lane vectors and the multiply-add as the target needs.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic

LANES = 8  # float32 lanes of a tile vector (one AVX register; LLVM splits it where vectors are narrower)
MAX_VECTORS = 8  # vectors of the widest tile: 64 rows
COLUMN_BLOCK = 16  # output columns whose tiles are gathered before being written into the output's rows

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VECTOR = ir.VectorType(_F32, LANES)
_jit = dict(cache=True, nogil=True)


def _tile_intrinsic(vectors: int, index_bytes: int):
    """An intrinsic ``tile(out_addr, xt_addr, row_bytes, indices_addr, values_addr, start, end)``:
    ``out[0:8 * vectors] = sum_{start <= j < end} values[j] * xt_row(indices[j])[0:8 * vectors]``
    where ``xt_row(k)`` starts at byte ``xt_addr + k * row_bytes`` (float32), ``indices`` are unsigned
    of ``index_bytes`` bytes and ``values`` float32; all addresses are byte addresses."""
    index_type = ir.IntType(8 * index_bytes)

    def codegen(context, builder, signature, args):
        out_addr, xt_addr, row_bytes, indices_addr, values_addr, start, end = args
        fmuladd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VECTOR, [_VECTOR, _VECTOR, _VECTOR]), "llvm.fmuladd.v8f32")
        entry = builder.basic_block
        head = builder.append_basic_block("csr_tile.head")
        body = builder.append_basic_block("csr_tile.body")
        done = builder.append_basic_block("csr_tile.done")
        builder.branch(head)

        builder.position_at_end(head)
        j = builder.phi(_I64, "j")
        j.add_incoming(start, entry)
        accumulators = []
        for _ in range(vectors):
            accumulator = builder.phi(_VECTOR)
            accumulator.add_incoming(ir.Constant(_VECTOR, None), entry)
            accumulators.append(accumulator)
        builder.cbranch(builder.icmp_signed("<", j, end), body, done)

        builder.position_at_end(body)
        index_addr = builder.add(indices_addr, builder.mul(j, ir.Constant(_I64, index_bytes)))
        k = builder.zext(builder.load(builder.inttoptr(index_addr, index_type.as_pointer()), align=index_bytes), _I64)
        value_addr = builder.add(values_addr, builder.mul(j, ir.Constant(_I64, 4)))
        weight = builder.load(builder.inttoptr(value_addr, _F32.as_pointer()), align=4)
        lane0 = builder.insert_element(ir.Constant(_VECTOR, ir.Undefined), weight, ir.Constant(_I32, 0))
        splat = builder.shuffle_vector(lane0, ir.Constant(_VECTOR, ir.Undefined),
                                       ir.Constant(ir.VectorType(_I32, LANES), None))
        row = builder.add(xt_addr, builder.mul(k, row_bytes))
        updated = []
        for v, accumulator in enumerate(accumulators):
            pointer = builder.inttoptr(builder.add(row, ir.Constant(_I64, 4 * LANES * v)), _VECTOR.as_pointer())
            updated.append(builder.call(fmuladd, [builder.load(pointer, align=4), splat, accumulator]))
        j.add_incoming(builder.add(j, ir.Constant(_I64, 1)), builder.basic_block)
        for accumulator, value in zip(accumulators, updated):
            accumulator.add_incoming(value, builder.basic_block)
        builder.branch(head)

        builder.position_at_end(done)
        for v, accumulator in enumerate(accumulators):
            pointer = builder.inttoptr(builder.add(out_addr, ir.Constant(_I64, 4 * LANES * v)), _VECTOR.as_pointer())
            builder.store(accumulator, pointer, align=4)
        return context.get_dummy_value()

    @intrinsic
    def tile(typingctx, out_addr, xt_addr, row_bytes, indices_addr, values_addr, start, end):
        return types.void(*([types.intp] * 7)), codegen

    return tile


_tile8_u16, _tile4_u16, _tile2_u16, _tile1_u16 = (_tile_intrinsic(v, 2) for v in (8, 4, 2, 1))
_tile8_u32, _tile4_u32, _tile2_u32, _tile1_u32 = (_tile_intrinsic(v, 4) for v in (8, 4, 2, 1))


@numba.njit(**_jit)
def _column_tile(out_addr, xt_addr, row_bytes, indices_addr, index_bytes, values_addr, start, end, width):
    """One column's tile of ``width`` rows (64, 32, 16 or 8) into ``out_addr`` (see ``_tile_intrinsic``)."""
    if index_bytes == 2:
        if width == 64:
            _tile8_u16(out_addr, xt_addr, row_bytes, indices_addr, values_addr, start, end)
        elif width == 32:
            _tile4_u16(out_addr, xt_addr, row_bytes, indices_addr, values_addr, start, end)
        elif width == 16:
            _tile2_u16(out_addr, xt_addr, row_bytes, indices_addr, values_addr, start, end)
        else:
            _tile1_u16(out_addr, xt_addr, row_bytes, indices_addr, values_addr, start, end)
    elif width == 64:
        _tile8_u32(out_addr, xt_addr, row_bytes, indices_addr, values_addr, start, end)
    elif width == 32:
        _tile4_u32(out_addr, xt_addr, row_bytes, indices_addr, values_addr, start, end)
    elif width == 16:
        _tile2_u32(out_addr, xt_addr, row_bytes, indices_addr, values_addr, start, end)
    else:
        _tile1_u32(out_addr, xt_addr, row_bytes, indices_addr, values_addr, start, end)


@numba.njit(**_jit)
def csr_columns(xt, indptr, indices, values, y, n0, n1, transposed):
    """``y[:, n] = sum_j values[j] * xt[indices[j], :]`` over column n's nonzeros, for n in [n0, n1)
    (``transposed``: ``y[n, :]``, y being N x rows). ``xt`` (K x rows) has contiguous rows; ``indices``
    (uint16 or uint32) and ``values`` (float32) are contiguous.

    Rows go in tiles of 64 (then 32, 16, 8; the last 1-7 rows are copied into a zero-padded 8-row
    tile), and for each tile every column: so the slice of ``xt`` a tile reads stays in cache. Without
    ``transposed``, ``COLUMN_BLOCK`` columns' tiles are gathered in a buffer, then written into ``y``'s rows."""
    k_rows, rows = xt.shape
    tile_rows = LANES * MAX_VECTORS
    block = np.empty((COLUMN_BLOCK, tile_rows), np.float32)
    block_addr = block.ctypes.data
    padded = np.zeros((k_rows, LANES), np.float32)  # the last rows' tile, when rows is not a multiple of 8
    index_bytes = indices.itemsize
    indices_addr = indices.ctypes.data
    values_addr = values.ctypes.data
    m0 = 0
    while m0 < rows:
        width = tile_rows
        while width > LANES and m0 + width > rows:
            width //= 2
        valid = min(width, rows - m0)
        if valid < width:
            for k in range(k_rows):
                for m in range(valid):
                    padded[k, m] = xt[k, m0 + m]
            source_addr, row_bytes = padded.ctypes.data, LANES * 4
        else:
            source_addr, row_bytes = xt.ctypes.data + m0 * 4, xt.strides[0]
        into_y = transposed and valid == width and y.strides[1] == 4  # the tile written in place
        for b0 in range(n0, n1, COLUMN_BLOCK):
            b1 = min(b0 + COLUMN_BLOCK, n1)
            for n in range(b0, b1):
                if into_y:
                    out_addr = y.ctypes.data + n * y.strides[0] + m0 * 4
                else:
                    out_addr = block_addr + (n - b0) * tile_rows * 4
                _column_tile(out_addr, source_addr, row_bytes, indices_addr, index_bytes, values_addr,
                             indptr[n], indptr[n + 1], width)
                if transposed and not into_y:
                    for m in range(valid):
                        y[n, m0 + m] = block[n - b0, m]
            if not transposed:
                for m in range(valid):
                    for n in range(b0, b1):
                        y[m0 + m, n] = block[n - b0, m]
        m0 += valid


def _shuffle(builder, a, b, mask: tuple[int, ...]):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, LANES), [ir.Constant(_I32, i) for i in mask]))


@intrinsic
def _transpose8x8(typingctx, src_addr, src_row_bytes, dst_addr, dst_row_bytes):
    """``dst[c, r] = src[r, c]`` for an 8 x 8 float32 block (byte addresses and row strides): eight
    row loads, three rounds of shuffles (LLVM lowers them to unpck/shufps/vperm2f128 on AVX), eight
    row stores."""

    def codegen(context, builder, signature, args):
        src, src_step, dst, dst_step = args

        def row_pointer(base, step, r):
            return builder.inttoptr(builder.add(base, builder.mul(step, ir.Constant(_I64, r))), _VECTOR.as_pointer())

        r = [builder.load(row_pointer(src, src_step, i), align=4) for i in range(LANES)]
        # rows (2i, 2i+1) interleaved, then pairs of those, then the 128-bit halves
        t = []
        for i in range(0, LANES, 2):
            t += [_shuffle(builder, r[i], r[i + 1], (0, 8, 1, 9, 4, 12, 5, 13)),
                  _shuffle(builder, r[i], r[i + 1], (2, 10, 3, 11, 6, 14, 7, 15))]
        low, high = (0, 1, 8, 9, 4, 5, 12, 13), (2, 3, 10, 11, 6, 7, 14, 15)
        s = []  # s[j]: columns j | j + 4 of rows 0-3 (j < 4) or 4-7 (j >= 4)
        for base in (0, 4):
            s += [_shuffle(builder, t[base], t[base + 2], low), _shuffle(builder, t[base], t[base + 2], high),
                  _shuffle(builder, t[base + 1], t[base + 3], low), _shuffle(builder, t[base + 1], t[base + 3], high)]
        for j in range(4):
            builder.store(_shuffle(builder, s[j], s[j + 4], (0, 1, 2, 3, 8, 9, 10, 11)), row_pointer(dst, dst_step, j),
                          align=4)
            builder.store(_shuffle(builder, s[j], s[j + 4], (4, 5, 6, 7, 12, 13, 14, 15)),
                          row_pointer(dst, dst_step, j + 4), align=4)
        return context.get_dummy_value()

    return types.void(*([types.intp] * 4)), codegen


@numba.njit(**_jit)
def transpose_into(a, out, r0, r1):
    """``out[:, r0:r1] = a[r0:r1].T`` (``a`` rows x K, ``out`` K x rows, both C-contiguous): the ``X^T``
    the products read.

    8 x 8 blocks transposed in registers (``_transpose8x8``), the columns of a band of 8 rows in turn;
    the ragged edges element by element. Measured on AMD EPYC (AVX2, one thread, 128 x 3072): 0.18 ms,
    against 0.65 ms for the 16-column scalar loop it replaced."""
    rows, columns = a.shape
    a_step, out_step = a.strides[0], out.strides[0]
    a_addr, out_addr = a.ctypes.data, out.ctypes.data
    full_columns = columns - columns % LANES
    r = r0
    while r + LANES <= r1:
        for c in range(0, full_columns, LANES):
            _transpose8x8(a_addr + r * a_step + c * 4, a_step, out_addr + c * out_step + r * 4, out_step)
        for c in range(full_columns, columns):
            for i in range(r, r + LANES):
                out[c, i] = a[i, c]
        r += LANES
    for i in range(r, r1):
        for c in range(columns):
            out[c, i] = a[i, c]
