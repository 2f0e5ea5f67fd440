"""A float32 GEMM of register tiles: C = A @ B with B read where it lies (row-major K x N), no packing.

Imported only once ``gemm.own_sgemm_usable`` has checked that the CPU reports ``avx512f`` (or ``avx2`` and ``fma``) and
that numba compiles for the host CPU (this module imports numba at its top). The tiles take the CPU's vectors
(:data:`LANES`): 16 floats with AVX-512, 8 with AVX2, whose 16 registers hold a tile of at most 6 rows x 16 columns;
the figures below are AVX-512's (12 x 32). Which products AVX2's tiles take: ``gemm.own_sgemm_fits``.

Why: OpenBLAS packs both operands on every call; for a transformer's products (128 rows by a 768 x 3072
weight) that costs as much as a fifth of the product. Here a micro-kernel of up to 12 rows x 32 columns keeps
24 zmm accumulators, broadcasts one element of A per row and reads a 32-column slice of B's row k (two
vectors) per step of K: B's columns stream from memory once per panel and stay in L2 while every row tile
of A passes. A last panel narrower than 32 columns is one or two vectors wide, its C and residual read and written
under a lane mask. Measured on 2 Zen 5 cores, 128 x 768 x 3072 and its kin: 240-260 GFLOP/s on one thread (OpenBLAS
190-230) and 400-470 on two (OpenBLAS 350-400).

The micro-kernel is LLVM IR (``llvm.fma.v16f32`` or ``v8f32``); each output element is one fused multiply-add chain over
K in order, so results differ from BLAS's by float rounding only. A last panel narrower than :data:`PANEL` columns
reads B's columns from a zero-padded copy (``tail``) so that no load passes B's end.

An epilogue (a bias per row, a residual, an activation of :data:`IN_REGISTERS`) is applied to the tile's
accumulators after the last K block, before the one store: a pointwise convolution's FusedConv epilogue costs no
pass over its output (``conv_core._own_gemm_runner``; resnet50's and mobilenet_v2's 28x28 to 112x112 layers
0.55-0.9x the time of BLAS per block with the epilogue after each block, on 2 Zen 5 cores).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic

from ....framework.cpu_features import has_flags
from ..jit_rows import hard_swish, sigmoid32, x_sigmoid
from ..ir_vectors import IN_REGISTERS, activation, lanes_below, masked_load, masked_store, splat, switch_codegen
from ..native_tasks import float32_array, int64_array, linked_kernel, part_ranges

LANES = 16 if has_flags("avx512f") else 8  # floats in a vector: zmm, else ymm (AVX2)
PANEL = 2 * LANES  # columns per panel: two vector accumulators per row
# rows per tile: their two accumulators each, two B vectors and a broadcast within the 32 zmm (16 ymm) registers
MAX_ROWS = 12 if LANES == 16 else 6
K_BLOCK = 256  # rows of B a pass over the row tiles reads: a panel's slice of 32 KiB stays in L1
# Columns past a multiple of LANES, up to this many (a quarter of them), that a product's last panel leaves to dot
# products (``rest_of``): a lane-masked vector for them costs a whole vector's multiply-adds (a 7x7 image's 49 columns:
# 64 computed), a dot product a sixteenth of them and a sum of its lanes, so only where K is at least DOT_MIN_DEPTH per
# column. Measured on 2 Zen 5 cores, M x K x N alone: 1280 x 320 x 49 135-136 -> 126-127 us, 160 x 960 x 49 71-80 ->
# 61-77, 960 x 160 x 49 even (55); 14x14 images (4 columns) even; in mobilenet_v2's runs its 960 -> 160 and 960 -> 320
# 7x7 layers 58-68 -> 53-56 and 100-106 -> 94-103.
DOT_MAX_COLUMNS = LANES // 4
DOT_MIN_DEPTH = 64
COLUMN_BIAS = 2  # the tile's ``finish`` for a bias per column (1: per row)
_F = ir.FloatType()
_V = ir.VectorType(_F, LANES)
_I64 = ir.IntType(64)
_jit = dict(cache=True, nogil=True, error_model="numpy")


def _tile_codegen(rows: int, vectors: int, masked: bool):
    """The IR of a tile of ``rows`` rows, for :func:`_tiles_intrinsic`; its arguments (c_addr, ldc, a_addr, lda,
    b_addr, ldb, k, accumulate, finish, bias_addr, res_addr, ldres, act, params_addr, width): C[rows, LANES * vectors] =
    A[rows, k] @ B[k, LANES * vectors] (C += ... where ``accumulate`` is nonzero), byte addresses and strides (C, A, B
    and the residual rows of float32); where ``finish`` is nonzero, with the epilogue applied before the store:
    act(C + bias + residual[r]) (the residual where ``res_addr`` is nonzero;
    ``act`` one of :data:`IN_REGISTERS`, parameters params[0], params[1]); the bias bias[r] per row where ``finish``
    is 1, the tile's columns' bias[0..] where it is 2 (:data:`COLUMN_BIAS`). With ``masked``, C and the residual are
    read and written in their first ``width`` columns only (the last vector under a lane mask; B's columns must be
    readable, zero-padded, across the whole tile); else ``width`` is not read."""
    halves = range(vectors)

    def codegen(context, builder, signature, args):
        c_addr, ldc, a_addr, lda, b_addr, ldb, k, accumulate = args[:8]
        finish, bias_addr, res_addr, ldres, act, params_addr, width = args[8:]
        adding = builder.icmp_signed("!=", accumulate, ir.Constant(_I64, 0))
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V, [_V, _V, _V]), f"llvm.fma.v{LANES}f32")
        zero = ir.Constant(_V, None)
        last = vectors - 1
        if masked:  # the last vector's lanes inside the tile's width
            mask = lanes_below(builder, builder.sub(width, ir.Constant(_I64, LANES * last)), LANES)

        def load(address, half):
            pointer = builder.inttoptr(builder.add(address, ir.Constant(_I64, 4 * LANES * half)), _V.as_pointer())
            if masked and half == last:
                return masked_load(builder, pointer, mask, zero)
            return builder.load(pointer, align=4)

        def save(value, address, half):
            pointer = builder.inttoptr(builder.add(address, ir.Constant(_I64, 4 * LANES * half)), _V.as_pointer())
            if masked and half == last:
                masked_store(builder, value, pointer, mask)
            else:
                builder.store(value, pointer, align=4)

        initial = []
        with builder.if_else(adding) as (then, otherwise):
            with then:
                loaded = [load(builder.add(c_addr, builder.mul(ldc, ir.Constant(_I64, r))), half)
                          for r in range(rows) for half in halves]
                from_loads = builder.basic_block
            with otherwise:
                from_zero = builder.basic_block
        for value in loaded:
            phi = builder.phi(_V)
            phi.add_incoming(value, from_loads)
            phi.add_incoming(zero, from_zero)
            initial.append(phi)
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
        b_vectors = [builder.load(builder.inttoptr(builder.add(b_row, ir.Constant(_I64, 4 * LANES * half)),
                                                   _V.as_pointer()), align=4) for half in halves]
        a_column = builder.add(a_addr, builder.mul(i, ir.Constant(_I64, 4)))
        updated = []
        for r in range(rows):
            element = builder.load(builder.inttoptr(builder.add(a_column, builder.mul(lda, ir.Constant(_I64, r))),
                                                    _F.as_pointer()), align=4)
            broadcast = splat(builder, element, _V)
            for half in halves:
                updated.append(builder.call(fma, [broadcast, b_vectors[half], accumulators[vectors * r + half]]))
        i.add_incoming(builder.add(i, ir.Constant(_I64, 1)), builder.basic_block)
        for acc, value in zip(accumulators, updated):
            acc.add_incoming(value, builder.basic_block)
        builder.branch(head)

        builder.position_at_end(done)

        def store(finished: bool, summed: bool, columns: bool = False) -> None:
            if finished:
                params = builder.inttoptr(params_addr, _F.as_pointer())
                a, b = (splat(builder, builder.load(builder.gep(params, [ir.Constant(_I64, i)])), _V) for i in (0, 1))
                if columns:
                    column_shifts = [builder.load(builder.inttoptr(
                        builder.add(bias_addr, ir.Constant(_I64, 4 * LANES * half)), _V.as_pointer()), align=4)
                        for half in halves]
            for r in range(rows):
                row = builder.add(c_addr, builder.mul(ldc, ir.Constant(_I64, r)))
                if finished:
                    if columns:
                        shifts = column_shifts
                    else:
                        bias = builder.inttoptr(builder.add(bias_addr, ir.Constant(_I64, 4 * r)), _F.as_pointer())
                        shifts = [splat(builder, builder.load(bias), _V)] * vectors
                    residual_row = builder.add(res_addr, builder.mul(ldres, ir.Constant(_I64, r)))
                for half in halves:
                    value = accumulators[vectors * r + half]
                    if finished:
                        value = builder.fadd(value, shifts[half])
                        if summed:
                            value = builder.fadd(value, load(residual_row, half))
                        value = activation(builder, value, act, a, b)
                    save(value, row, half)

        null = ir.Constant(_I64, 0)
        with builder.if_else(builder.icmp_signed("!=", finish, null)) as (finishing, plain):
            with finishing:
                by_columns = builder.icmp_signed("==", finish, ir.Constant(_I64, COLUMN_BIAS))
                with builder.if_else(builder.icmp_signed("!=", res_addr, null)) as (summing, alone):
                    with summing:
                        with builder.if_else(by_columns) as (per_column, per_row):
                            with per_column:
                                store(True, True, True)
                            with per_row:
                                store(True, True)
                    with alone:
                        with builder.if_else(by_columns) as (per_column, per_row):
                            with per_column:
                                store(True, False, True)
                            with per_row:
                                store(True, False)
            with plain:
                store(False, False)
        return context.get_dummy_value()

    return codegen


def _tiles_intrinsic(vectors: int = 2, masked: bool = False):
    """``tile(c_addr, ldc, a_addr, lda, b_addr, ldb, k, accumulate, finish, bias_addr, res_addr, ldres, act,
    params_addr, width, rows)``: :func:`_tile_codegen`'s tile of ``rows`` rows (1 to :data:`MAX_ROWS`), each row count
    its own code (its accumulators in registers) behind one switch."""
    codegen = switch_codegen({rows: _tile_codegen(rows, vectors, masked) for rows in range(1, MAX_ROWS + 1)})

    @intrinsic
    def tile(typingctx, c_addr, ldc, a_addr, lda, b_addr, ldb, k, accumulate, finish, bias_addr, res_addr, ldres, act,
             params_addr, width, rows):
        return types.void(*([types.intp] * 16)), codegen

    return tile


_whole = _tiles_intrinsic()
_narrow = _tiles_intrinsic(1, True)  # a last panel of 1 to LANES columns: one vector, masked
_wide = _tiles_intrinsic(2, True)  # of 17 to 31: two, the second masked


_TILE_SIGNATURE = types.void(*([types.int64] * 16))


@numba.cfunc(_TILE_SIGNATURE, cache=True, nopython=True)
def tile_kernel(c, ldc, a, lda, b, ldb, k, accumulate, finish, bias, res, ldres, act, params, width, rows):
    """The tile of ``rows`` rows (:func:`_tiles_intrinsic`'s arguments), a last panel's ``width`` columns (fewer
    than PANEL) under a lane mask: compiled once, called by :func:`_tile` through a linked symbol
    (``native_tasks.linked_kernel``)."""
    if width >= PANEL:
        _whole(c, ldc, a, lda, b, ldb, k, accumulate, finish, bias, res, ldres, act, params, width, rows)
    elif width > LANES:
        _wide(c, ldc, a, lda, b, ldb, k, accumulate, finish, bias, res, ldres, act, params, width, rows)
    else:
        _narrow(c, ldc, a, lda, b, ldb, k, accumulate, finish, bias, res, ldres, act, params, width, rows)


_call_tile = linked_kernel(f"onyxrt_sgemm_tile_{LANES}", tile_kernel, _TILE_SIGNATURE)


@numba.njit(**_jit)
def _tile(c, ldc, a, lda, b, ldb, k, rows, accumulate, e, width=PANEL):
    """The tile of ``rows`` rows; ``e`` the epilogue's (finish, bias, residual, ldres, act, params) arguments; a
    last panel's ``width`` columns (fewer than PANEL) under a lane mask."""
    f, bias, res, ldres, act, params = e
    _call_tile((c, ldc, a, lda, b, ldb, k, accumulate, f, bias, res, ldres, act, params, width, rows))


@numba.njit(**_jit)
def gemm(a, b, tail, rest, c, m0, m1, p0, p1, bias, residual, act, params, column_bias=False):
    """Rows [m0, m1) and column panels [p0, p1) of ``c = act(a @ b + bias[:, None] + residual)`` (``bias[None, :]``
    with ``column_bias``): ``a`` (M, K), ``b`` (K, N), ``c`` (M, N) float32 C-contiguous; ``tail`` (K, PANEL): b's
    last N % PANEL columns zero-padded (unread when N is a multiple of PANEL), their panel computed with C and the
    residual read and written under a lane mask, but for the last ``rest.shape[0]`` columns (``rest``:
    :func:`rest_of`), dot products of A's rows by them. The epilogue: ``bias`` (M,) (or (N,)) or empty, ``residual``
    (M, N) or no rows, ``act`` one of :data:`IN_REGISTERS` with parameters ``params[:2]``; none where all three are
    absent (a plain product). K is taken :data:`K_BLOCK` rows of B at a time (their panel slice stays in L1 while
    the row tiles pass), the first block writing C, the others adding to it, the last applying the epilogue in the
    registers. A panel's K blocks run one after another, so its strip of C stays in the near caches: with the K blocks
    outermost, each block passed over all of the part's C (768 KB of a 128 x 768 x 3072 product a thread), which on 2
    Zen 4 cores (32 KB L1, 1 MB L2): this order took minilm_l6 0.935x and resnet50 0.957x the time (alternating
    processes)."""
    m_total, k = a.shape
    n = c.shape[1]
    full = n // PANEL
    tiled = n - rest.shape[0]  # the columns the tiles compute
    lda, ldb, ldc = k * 4, n * 4, n * 4
    summed = residual.shape[0] > 0
    fused = summed or bias.shape[0] > 0 or act != 0
    # (allocated only where read: a small product's allocations were a measurable share of its time)
    shift = bias if bias.shape[0] > 0 or not fused else np.zeros(n if column_bias else m_total, np.float32)
    kind = COLUMN_BIAS if column_bias else 1
    shift_tail = shift  # the last panel's column bias, zero-padded, where there is one
    if column_bias and fused and n % PANEL and p1 > full:
        shift_tail = np.zeros(PANEL, np.float32)
        for j in range(full * PANEL, n):
            shift_tail[j - full * PANEL] = shift[j]
    for p in range(p0, p1):
        col0 = p * PANEL
        whole = p < full
        width = PANEL if whole else tiled - col0  # (the last panel's columns under a lane mask)
        if width <= 0:
            continue
        for k0 in range(0, k, K_BLOCK):
            depth = min(K_BLOCK, k - k0)
            accumulate = 1 if k0 > 0 else 0
            finish = kind if fused and k0 + K_BLOCK >= k else 0
            b_address = b.ctypes.data + (k0 * n + col0) * 4 if whole else tail.ctypes.data + k0 * PANEL * 4
            b_stride = ldb if whole else PANEL * 4
            m = m0
            while m < m1:
                rows = min(MAX_ROWS, m1 - m)
                a_address = a.ctypes.data + m * lda + k0 * 4
                res = residual.ctypes.data + (m * n + col0) * 4 if summed else 0
                if column_bias:
                    shift_address = shift.ctypes.data + col0 * 4 if whole else shift_tail.ctypes.data
                else:
                    shift_address = shift.ctypes.data + m * 4
                _tile(c.ctypes.data + (m * n + col0) * 4, ldc, a_address, lda, b_address, b_stride, depth, rows,
                      accumulate, (finish, shift_address, res, ldc, act, params.ctypes.data), width)
                m += rows
    if rest.shape[0] and p1 > full:  # (the part holding the last panel)
        _dot_columns(a, rest, c, m0, m1, tiled, shift, column_bias, residual, summed, fused, act, params)


@numba.njit(fastmath={"reassoc", "contract"}, **_jit)
def _dot_columns(a, rest, c, m0, m1, col0, shift, column_bias, residual, summed, fused, act, params):
    """Rows [m0, m1) of C's columns ``col0``.. as :func:`gemm` computes them, each a dot product of A's row by a row of
    ``rest`` (B's columns transposed), summed in vector lanes (so not in :func:`gemm`'s order: equal to float
    rounding), then the epilogue (``act`` one of :data:`IN_REGISTERS`)."""
    r, k = rest.shape
    low, high = params[0], params[1]
    zero, one = np.float32(0.0), np.float32(1.0)
    for m in range(m0, m1):
        row = a[m]
        for j in range(r):
            column = rest[j]
            v = np.float32(0.0)
            for i in range(k):
                v += row[i] * column[i]
            if fused:  # (a scalar form of the tiles' epilogue: a call of ``epilogue_row`` a row cost ~65 cycles)
                v += shift[col0 + j] if column_bias else shift[m]
                if summed:
                    v += residual[m, col0 + j]
                if act == 1:
                    v = zero if v < zero else v
                elif act == 2:
                    v = v * low if v < zero else v
                elif act == 5:
                    v = low if v < low else (high if v > high else v)
                elif act == 6:
                    v = v * low + high
                    v = zero if v < zero else (one if v > one else v)
                elif act == 4:
                    v = sigmoid32(v)
                elif act == 7:
                    v = hard_swish(v, low)
                elif act == 8:
                    v = x_sigmoid(v, low)
            c[m, col0 + j] = v


def panels(n: int) -> int:
    """Column panels of a product with ``n`` columns."""
    return -(-n // PANEL)


def units(m: int, n: int, batch: int) -> int:
    """The most parts :func:`products_part` can share ``batch`` products of ``m`` rows and ``n`` columns into: per
    product its column panels or its row tiles, whichever are more."""
    return batch * max(panels(n), -(-m // MAX_ROWS))


@numba.njit(**_jit)
def tail_of(b):
    """B's last ``N % PANEL`` columns, zero-padded to (K, PANEL) float32; an empty (K, 0) when N is a multiple of
    PANEL."""
    k, n = b.shape
    width = n % PANEL
    tail = np.zeros((k, PANEL if width else 0), np.float32)
    for i in range(k):  # (loops: a slice assignment compiles numba's shape-mismatch message, seconds of cold compile)
        for j in range(width):
            tail[i, j] = b[i, n - width + j]
    return tail


@numba.njit(**_jit)
def rest_of(b):
    """B's last ``N % LANES`` columns transposed (r, K), where :func:`gemm` leaves them to dot products (at most
    :data:`DOT_MAX_COLUMNS` past a multiple of LANES, N not a multiple of PANEL, K at least :data:`DOT_MIN_DEPTH` a
    column), else an empty (0, K)."""
    k, n = b.shape
    r = n % LANES if n % PANEL and n % LANES <= DOT_MAX_COLUMNS else 0
    r = r if k >= DOT_MIN_DEPTH * r else 0
    rest = np.empty((r, k), np.float32)
    for j in range(r):
        for i in range(k):
            rest[j, i] = b[i, n - r + j]
    return rest


_TASK_ARGS = 16


@numba.njit(**_jit)
def products_part(d, part, parts):
    """Part ``part`` of ``parts`` of :func:`gemm` over a batch of products (``C[i] = A @ B[i]``, one A: a pointwise
    convolution's images; or ``C[i] = A[i] @ B[i]``: a filter scaled per image) as :func:`task_args` describes it in
    ``d``: whole products per part where there are as many as parts, else each product split by panels (or by rows
    where there are fewer panels than its parts). Only the part holding a product's last narrow panel copies B's
    last columns."""
    m, k, n, batch, count, res_rows = d[1], d[2], d[4], d[5], d[8], d[14]
    a_stride = d[6]  # elements from one product's A to the next's (0: one A for all)
    bias = float32_array(d[11], d[12])
    params = float32_array(d[15], 2)
    runs = (parts + batch - 1) // batch  # parts per product
    units = batch * runs
    no_tail, no_rest = np.zeros((k, 0), np.float32), np.zeros((0, k), np.float32)  # (once, not per product)
    for unit in range(units * part // parts, units * (part + 1) // parts):
        image, run = unit // runs, unit % runs
        a = float32_array(d[0] + image * a_stride * 4, m * k).reshape((m, k))
        b = float32_array(d[3] + image * d[7] * 4, k * n).reshape((k, n))  # (d[7]: B's stride from product to product)
        c = float32_array(d[9] + image * m * n * 4, m * n).reshape((m, n))
        residual = float32_array(d[13] + image * res_rows * n * 4, res_rows * n).reshape((res_rows, n))
        # by panels only where each run gets several: measured on 2 Zen 5 cores, a 14x14 image's 7 panels split by
        # rows ran 0.83-0.91x the time split by panels (384x64x196, 576x96x196), 7x7's 2 panels 0.72x; 25 panels and
        # more about even, a 12-row product by panels 0.79x
        m0, m1, p0, p1 = part_ranges(m, count, count >= 4 * runs, run, runs)
        last = p1 == count
        tail = tail_of(b) if last and n % PANEL else no_tail
        rest = rest_of(b) if last and n % PANEL else no_rest
        # (d[10]: act << 2 | a bias per column)
        gemm(a, b, tail, rest, c, m0, m1, p0, p1, bias, residual, d[10] >> 2, params, d[10] & 1 != 0)


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def gemm_part(args, part, parts):
    """Native task (``framework.native_spin``): :func:`products_part` of the arguments at address ``args``."""
    products_part(int64_array(args, _TASK_ARGS), part, parts)


@numba.njit(**_jit)
def task_template(a, n, batch, bias, act, params, column_bias):
    """:func:`gemm_part`'s arguments for ``batch`` products of ``a`` (M, K), or of each of a batch ``a`` (batch, M, K),
    by B (K, ``n``) with :func:`gemm`'s epilogue (``bias``, ``act``, ``params``, ``column_bias``), less B's, C's and the
    residual's addresses (:func:`operand_args` adds them per call); the caller keeps ``a``, ``bias`` and ``params``
    alive while the template is used."""
    args = np.zeros(_TASK_ARGS, np.int64)
    m, k = a.shape[a.ndim - 2], a.shape[a.ndim - 1]
    args[0], args[1], args[2] = a.ctypes.data, m, k
    args[6] = m * k if a.ndim == 3 else 0
    args[4], args[5], args[8] = n, batch, (n + PANEL - 1) // PANEL
    args[10] = (1 if column_bias else 0) | (act << 2)
    args[11], args[12], args[15] = bias.ctypes.data, bias.shape[0], params.ctypes.data
    return args


@numba.njit(**_jit)
def operand_args(template, b, c, residual):
    """The ``template``'s arguments with ``b``, ``c`` and ``residual`` (shaped as ``c``, or no rows) as :func:`task_args`
    takes them (compiled: ``ndarray.ctypes`` costs ~1 us an address in Python), ``b``'s products each C-contiguous
    but a batch's apart where its first stride says so; the caller keeps them alive until the task returns."""
    args = template.copy()
    args[3], args[9] = b.ctypes.data, c.ctypes.data
    # (a batch of B's products, each contiguous, may lie apart: a channel slice's images, or be one: a broadcast)
    args[7] = b.strides[0] // 4 if b.ndim == 3 else 0
    args[13], args[14] = residual.ctypes.data, residual.shape[residual.ndim - 2] if residual.size else 0
    return args


@numba.njit(**_jit)
def operand_args_of(template, a, b, c, residual):
    """:func:`operand_args` with A's address too (``a`` shaped as the template's: a batch of filters made per call)."""
    args = operand_args(template, b, c, residual)
    args[0] = a.ctypes.data
    return args


@numba.njit(**_jit)
def task_args(a, b, c, bias, residual, act, params, column_bias=False):
    """:func:`gemm_part`'s arguments: ``a`` (M, K) or a batch (I, M, K), ``b`` (K, N) or a batch (I, K, N) and ``c``
    (M, N) or (I, M, N),
    C-contiguous; ``bias``, ``residual`` ((M, N), (I, M, N) or no rows), ``act``, ``params``, ``column_bias``:
    :func:`gemm`'s epilogue. The caller keeps the arrays alive until the task returns."""
    k, n = b.shape[b.ndim - 2], b.shape[b.ndim - 1]
    return operand_args(task_template(a, n, b.size // (k * n), bias, act, params, column_bias), b, c, residual)
