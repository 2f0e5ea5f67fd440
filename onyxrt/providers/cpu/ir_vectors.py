"""LLVM IR helpers shared by the kernels written with explicit vectors (``nn/depthwise_channels_last``,
``nn/direct_conv_kernels``, ``nn/patch_conv_kernels``, ``nn/max_pool_rows``, ``math/sgemm_tiles``,
``tensor/channels_last``): a scalar broadcast to a vector, a vector's first lanes as a mask and loads and stores
under one, the epilogue activations those kernels apply in their registers, an 8x8 register transpose, and a switch
between code paths compiled for different constants.

Imported only by those modules (llvmlite comes with numba).
"""

from __future__ import annotations

from typing import Callable

from llvmlite import ir
from numba.core import cgutils

from .math.rational_fits import EXP2_P
from .row_kernels import IN_REGISTERS

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_MINUS_LOG2E = -1.4426950408889634


def splat(builder: ir.IRBuilder, scalar: ir.Value, vector: ir.VectorType) -> ir.Value:
    """``scalar`` in every lane of a ``vector``-typed value."""
    undefined = ir.Constant(vector, ir.Undefined)
    single = builder.insert_element(undefined, scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(single, undefined, ir.Constant(ir.VectorType(_I32, vector.count), [0] * vector.count))


def lanes_below(builder: ir.IRBuilder, bound: ir.Value, count: int) -> ir.Value:
    """The mask of ``count`` lanes that is on for the lanes numbered below ``bound`` (an int64: none where it is 0 or
    less, all from ``count``). Compared as int32 lanes, the bound clamped to [0, count] first: one vector compare
    (an int64 one takes ``count`` / 4 on AVX2 and packs the halves after)."""
    zero, full = ir.Constant(_I64, 0), ir.Constant(_I64, count)
    clamped = builder.select(builder.icmp_signed("<", bound, zero), zero,
                             builder.select(builder.icmp_signed(">", bound, full), full, bound))
    lanes = ir.Constant(ir.VectorType(_I32, count), list(range(count)))
    return builder.icmp_signed("<", lanes, splat(builder, builder.trunc(clamped, _I32), ir.VectorType(_I32, count)))


def _all_on(builder: ir.IRBuilder, mask: ir.Value) -> ir.Value:
    """Whether every lane of ``mask`` is on (an i1)."""
    bits = ir.IntType(mask.type.count)
    return builder.icmp_unsigned("==", builder.bitcast(mask, bits), ir.Constant(bits, (1 << mask.type.count) - 1))


def masked_load(builder: ir.IRBuilder, pointer: ir.Value, mask: ir.Value, passthru: ir.Value) -> ir.Value:
    """The float32 vector at ``pointer`` (4-byte aligned) in the lanes ``mask`` has on, ``passthru``'s in the others
    (``llvm.masked.load``: memory under the lanes off is not read, so a row's end may lie before the vector's). A
    mask all on loads the plain vector: AMD's AVX2 cores run VMASKMOVPS as microcode (a Zen 3's 3x3/2 MaxPool of
    8x24x16x16 by ``max_pool_rows`` was slower than scalar code)."""
    vector = passthru.type
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vector, [vector.as_pointer(), _I32, mask.type, vector]),
        f"llvm.masked.load.v{vector.count}f32.p0")
    with builder.if_else(_all_on(builder, mask), likely=True) as (whole, part):
        with whole:
            plain = builder.load(pointer, align=4)
            whole_block = builder.block
        with part:
            masked = builder.call(function, [pointer, ir.Constant(_I32, 4), mask, passthru])
            part_block = builder.block
    value = builder.phi(vector)
    value.add_incoming(plain, whole_block)
    value.add_incoming(masked, part_block)
    return value


def masked_store(builder: ir.IRBuilder, value: ir.Value, pointer: ir.Value, mask: ir.Value) -> None:
    """``value``'s lanes that ``mask`` has on stored at ``pointer`` (float32, 4-byte aligned; ``llvm.masked.store``;
    a plain store where the mask is all on, as :func:`masked_load`)."""
    vector = value.type
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [vector, vector.as_pointer(), _I32, mask.type]),
        f"llvm.masked.store.v{vector.count}f32.p0")
    with builder.if_else(_all_on(builder, mask), likely=True) as (whole, part):
        with whole:
            builder.store(value, pointer, align=4)
        with part:
            builder.call(function, [value, pointer, ir.Constant(_I32, 4), mask])


def activation(builder: ir.IRBuilder, value: ir.Value, act: ir.Value, a: ir.Value, b: ir.Value) -> ir.Value:
    """``value`` (a float vector) through the epilogue activation ``act`` (an int64 code of :data:`IN_REGISTERS`; any
    other leaves it as it is), parameters ``a`` and ``b`` (vectors of its type): Relu, LeakyRelu(a), Clip(a, b),
    HardSigmoid(a, b) as selects; Sigmoid and QuickGelu(a) (v * sigmoid(a v)) behind one branch on ``act``, HardSwish
    behind another (so no activation's tiles pay for another's operations). Comparisons are false where either side is NaN, so NaN
    stays NaN, as ``jit_rows.epilogue_row`` and numpy keep it; the logistic is ``jit_rows``' (one division by 1 + 2^t)."""
    vector = value.type
    zero, one = _splat_constant(0.0, vector), _splat_constant(1.0, vector)

    def below(x, y):
        return builder.fcmp_ordered("<", x, y)

    def clamp(x, low, high):
        return builder.select(below(x, low), low, builder.select(below(high, x), high, x))

    def code(number):
        return builder.icmp_signed("==", act, ir.Constant(_I64, number))

    def selected():
        relu = builder.select(below(value, zero), zero, value)
        leaky = builder.select(below(value, zero), builder.fmul(value, a), value)
        clip = clamp(value, a, b)
        hard = clamp(builder.fadd(builder.fmul(value, a, flags=["contract"]), b, flags=["contract"]), zero, one)
        result = value
        for number, activated in ((1, relu), (2, leaky), (5, clip), (6, hard)):
            result = builder.select(code(number), activated, result)
        return result

    def hard_swish():
        sixth = builder.fadd(builder.fmul(value, _splat_constant(1.0 / 6.0, vector), flags=["contract"]),
                             _splat_constant(0.5, vector), flags=["contract"])
        return builder.fmul(value, clamp(sixth, zero, one))

    def logistic():
        # Sigmoid 1 / (1 + 2^(-v log2 e)), QuickGelu v / (1 + 2^(-a v log2 e))
        quick = code(8)
        scale = builder.select(quick, builder.fmul(a, _splat_constant(_MINUS_LOG2E, vector)),
                               _splat_constant(_MINUS_LOG2E, vector))
        denominator = builder.fadd(one, exp2_limited(builder, builder.fmul(value, scale)))
        return builder.fdiv(builder.select(quick, value, one), denominator)

    costly = builder.or_(code(4), code(8))
    return _branch(builder, costly, logistic, lambda: _branch(builder, code(7), hard_swish, selected))


def _branch(builder: ir.IRBuilder, condition: ir.Value, then: Callable[[], ir.Value],
            otherwise: Callable[[], ir.Value]) -> ir.Value:
    """``then()`` where ``condition`` holds, else ``otherwise()``: each emitted in its own block, only one run."""
    with builder.if_else(condition) as (taken, not_taken):
        with taken:
            then_value, then_block = then(), builder.basic_block
        with not_taken:
            other_value, other_block = otherwise(), builder.basic_block
    result = builder.phi(then_value.type)
    result.add_incoming(then_value, then_block)
    result.add_incoming(other_value, other_block)
    return result


def exp2_limited(builder: ir.IRBuilder, t: ir.Value) -> ir.Value:
    """2^t of a float vector by ``jit_rows.exp2_limited``'s operations (equal to float rounding: LLVM may contract
    other multiplies and adds into FMAs in the one than in the other)."""
    vector = t.type
    high, low = _splat_constant(128.0, vector), _splat_constant(-126.0, vector)
    t = builder.select(builder.fcmp_ordered(">", t, high), high, builder.select(builder.fcmp_ordered("<", t, low), low, t))
    rounding = _splat_constant(1.5 * 2 ** 23, vector)
    shifted = builder.fadd(t, rounding)
    fraction = builder.fsub(t, builder.fsub(shifted, rounding))
    p = _splat_constant(float(EXP2_P[-1]), vector)
    for coefficient in EXP2_P[-2::-1]:
        p = builder.fadd(builder.fmul(p, fraction, flags=["contract"]), _splat_constant(float(coefficient), vector),
                         flags=["contract"])
    integers = ir.VectorType(_I32, vector.count)
    bits = builder.add(builder.bitcast(shifted, integers), ir.Constant(integers, [127 - 0x4B400000] * vector.count))
    return builder.fmul(p, builder.bitcast(builder.shl(bits, ir.Constant(integers, [23] * vector.count)), vector))


def _splat_constant(value: float, vector: ir.VectorType) -> ir.Constant:
    return ir.Constant(vector, [value] * vector.count)


# the 8x8 transpose: within pairs of rows, pairs of pairs, then halves
_STAGES = (
    ((0, 8, 1, 9, 4, 12, 5, 13), (2, 10, 3, 11, 6, 14, 7, 15)),
    ((0, 1, 8, 9, 4, 5, 12, 13), (2, 3, 10, 11, 6, 7, 14, 15)),
    ((0, 1, 2, 3, 8, 9, 10, 11), (4, 5, 6, 7, 12, 13, 14, 15)),
)


def transpose_8x8(builder: ir.IRBuilder, rows: list) -> list:
    """The columns of the 8x8 matrix whose rows are ``rows`` (eight 8-lane vectors), by 24 shuffles."""

    def shuffle(a, b, mask):
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, 8), list(mask)))

    low, high = _STAGES[0]
    a = []
    for r in range(0, 8, 2):
        a += [shuffle(rows[r], rows[r + 1], low), shuffle(rows[r], rows[r + 1], high)]
    # a[2q], a[2q+1]: rows 2q, 2q+1 interleaved (columns 0,1,4,5 and 2,3,6,7)
    low, high = _STAGES[1]
    b = []
    for half in (0, 4):  # rows 0-3, rows 4-7
        for part in (0, 1):
            x, y = a[half + part], a[half + 2 + part]
            b += [shuffle(x, y, low), shuffle(x, y, high)]
    # b[half + 2*part + q]: columns (2*part + q) and (2*part + q) + 4 of rows half..half+3
    low, high = _STAGES[2]
    columns = [None] * 8
    for c in range(4):
        columns[c] = shuffle(b[c], b[4 + c], low)
        columns[c + 4] = shuffle(b[c], b[4 + c], high)
    return columns


def switch_codegen(bodies: dict):
    """An intrinsic's codegen running the body of ``bodies`` (an int key -> the codegen of the intrinsic's arguments
    but the last) that its last argument, a key, selects (none for another key): one code path per compile-time
    constant (a tile's row count, a filter's size), chosen at run time behind one switch."""

    def codegen(context, builder, signature, args):
        end = builder.append_basic_block("switched.end")
        switch = builder.switch(args[-1], end)
        for key, body in bodies.items():
            block = builder.append_basic_block(f"switched.{key}")
            switch.add_case(ir.Constant(_I64, key), block)
            builder.position_at_end(block)
            body(context, builder, signature, args[:-1])
            builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    return codegen
