"""What native tasks (``framework.native_spin``: C-callable ``void task(int64 args, int64 part, int64
parts)``, run on the pool's spinning workers without the GIL) need to read their arguments.

A task's arguments are one int64 array: addresses of the operands (``array.ctypes.data``; the
caller keeps the arrays alive until the task returns), their sizes and the scalar parameters.
The task rebuilds typed arrays from them with :func:`int64_array`, :func:`float32_array` and the like.
Imported only by the modules defining tasks (it imports numba at its top).
"""

from __future__ import annotations

from typing import Callable

import numba
from llvmlite import binding, ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic

_I64 = ir.IntType(64)


def _array_at(element: types.Type, llvm_element: ir.Type, itemsize: int):
    @intrinsic
    def array_at(typingctx, address, length):
        """The C-contiguous 1-D array of ``length`` elements at ``address`` (no owner: a view)."""

        def codegen(context, builder, signature, values):
            array = context.make_array(signature.return_type)(context, builder)
            context.populate_array(array, data=builder.inttoptr(values[0], llvm_element.as_pointer()),
                                   shape=[values[1]], strides=[ir.Constant(_I64, itemsize)],
                                   itemsize=ir.Constant(_I64, itemsize), meminfo=None)
            return array._getvalue()

        return types.Array(element, 1, "C")(types.int64, types.int64), codegen

    return array_at


int64_array = _array_at(types.int64, _I64, 8)
int32_array = _array_at(types.int32, ir.IntType(32), 4)
int16_array = _array_at(types.int16, ir.IntType(16), 2)
int8_array = _array_at(types.int8, ir.IntType(8), 1)
uint8_array = _array_at(types.uint8, ir.IntType(8), 1)
float32_array = _array_at(types.float32, ir.FloatType(), 4)


@numba.njit(cache=True, inline="always")
def part_ranges(rows, panels, by_panels, part, parts):
    """(r0, r1, p0, p1): part ``part`` of ``parts`` of a product of ``rows`` rows of A by ``panels`` column panels of
    B, split by rows (each part writes its own rows of C) or, with ``by_panels``, by panels (few rows)."""
    if by_panels:
        return 0, rows, panels * part // parts, panels * (part + 1) // parts
    return rows * part // parts, rows * (part + 1) // parts, 0, panels


def linked_kernel(symbol: str, kernel: numba.core.ccallback.CFunc, signature: types.Type) -> Callable:
    """An intrinsic ``call((argument, ...))`` calling ``kernel``, a compiled ``numba.cfunc`` of the C ``signature``
    (scalar arguments, returning nothing), by the symbol ``symbol``, which it registers with LLVM's linker in this
    process (the arguments are cast to the signature's types).

    Why: numba links a callee's IR into each caller's module and optimizes it and emits its machine code again
    there, at every level of callers. For the large kernels (the GEMM tiles of every row count, the convolvers of
    every filter size, the epilogue's loops for every activation) that repeated seconds of compile per caller: a
    fresh machine's first session waited for it. Through the symbol the callers hold a declaration only, and the
    kernel is compiled (and cached) once; the call is a C call (LLVM did not inline code of their size either)."""
    binding.add_symbol(symbol, kernel.address)
    kinds = signature.args

    @intrinsic
    def call(typingctx, arguments):
        if not isinstance(arguments, types.BaseTuple) or len(arguments) != len(kinds):
            return None

        def codegen(context, builder, _, values):
            function_type = ir.FunctionType(ir.VoidType(), [context.get_value_type(kind) for kind in kinds])
            function = cgutils.get_or_insert_function(builder.module, function_type, symbol)
            builder.call(function, [context.cast(builder, builder.extract_value(values[0], i), given, kind)
                                    for i, (given, kind) in enumerate(zip(arguments, kinds))])
            return context.get_dummy_value()

        return types.void(arguments), codegen

    return call
