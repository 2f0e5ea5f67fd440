"""LLVM IR helpers shared by the kernels written with explicit vectors (``nn/depthwise_channels_last``,
``nn/direct_conv_kernels``, ``math/sgemm_avx512``): a scalar broadcast to a vector, and the epilogue activations
those kernels apply in their registers.

Imported only by those modules (llvmlite comes with numba).
"""

from __future__ import annotations

from llvmlite import ir

from .row_kernels import IN_REGISTERS

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def splat(builder: ir.IRBuilder, scalar: ir.Value, vector: ir.VectorType) -> ir.Value:
    """``scalar`` in every lane of a ``vector``-typed value."""
    undefined = ir.Constant(vector, ir.Undefined)
    single = builder.insert_element(undefined, scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(single, undefined, ir.Constant(ir.VectorType(_I32, vector.count), [0] * vector.count))


def activation(builder: ir.IRBuilder, value: ir.Value, act: ir.Value, a: ir.Value, b: ir.Value) -> ir.Value:
    """``value`` (a float vector) through the epilogue activation ``act`` (an int64 code of :data:`IN_REGISTERS`; any
    other leaves it as it is), parameters ``a`` and ``b`` (vectors of its type): Relu, LeakyRelu(a), Clip(a, b),
    HardSigmoid(a, b). Comparisons are false where either side is NaN, so NaN stays NaN, as ``jit_rows.epilogue_row``
    and numpy keep it."""
    vector = value.type
    zero, one = ir.Constant(vector, [0.0] * vector.count), ir.Constant(vector, [1.0] * vector.count)

    def below(x, y):
        return builder.fcmp_ordered("<", x, y)

    def clamp(x, low, high):
        return builder.select(below(x, low), low, builder.select(below(high, x), high, x))

    relu = builder.select(below(value, zero), zero, value)
    leaky = builder.select(below(value, zero), builder.fmul(value, a), value)
    clip = clamp(value, a, b)
    hard = clamp(builder.fadd(builder.fmul(value, a, flags=["contract"]), b, flags=["contract"]), zero, one)
    result = value
    for code, activated in ((1, relu), (2, leaky), (5, clip), (6, hard)):
        result = builder.select(builder.icmp_signed("==", act, ir.Constant(_I64, code)), activated, result)
    return result
