"""No-op elimination: nodes whose output provably equals their input are bypassed.

Readers of ``y = op(x, ...)`` read ``x`` instead when one of these holds (ONNX domain only):

* ``Dropout`` at inference: ``training_mode`` absent or a constant false (opset 12+; earlier
  opsets have no training switch at inference), its mask output unread;
* ``Cast`` / ``CastLike`` to the input's own, known element type;
* ``Reshape`` to a constant shape equal to the input's (each entry a copy ``0`` without
  ``allowzero``, the known dim itself, or one ``-1`` when every other dim is known);
* ``Expand`` by a constant shape of no higher rank whose entries are 1 or the known dim;
* ``Squeeze`` without axes of a static shape holding no 1;
* ``Flatten`` of a rank-2 input at axis 1;
* ``Slice`` with constant parameters, steps 1, every start 0 and every end past the dim
  (the dim known, or the end INT64_MAX);
* ``Pad`` with all-zero pads (any mode);
* ``Transpose`` with the identity perm (or no perm on a rank ≤ 1 input);
* ``Tile`` with all-one repeats;
* ``Concat`` of a single input;
* ``x * 1``, ``1 * x``, ``x / 1``, ``x + 0``, ``0 + x``, ``x - 0`` where the constant, all one value,
  broadcasts to ``x``'s shape without changing it (rank no higher, dims 1 or ``x``'s known
  dims) and ``x``'s type is known. For floats, the zero's sign must keep ``x`` bit-exact:
  ``x + (-0.0)`` and ``x - (+0.0)`` are the identity, ``x + 0.0`` turns ``-0.0`` into ``+0.0``.

Parameters must be initializers no caller can override. A graph output keeps its name:
when ``y`` is one, ``x`` takes the name if it is a node output of the same graph and no
graph output itself; otherwise the node stays. onnxruntime spreads these over several
rewrite rules: ``EliminateDropout``, ``CastElimination``, ``EliminateSlice``,
``ExpandElimination`` and ``NoopElimination`` (the arithmetic identities).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_ir as ir

from ..graph.tensors import constant_array
from .matching import bypass, is_constant
from .pass_manager import GraphPass, OptimizationContext

_INT64_MAX = np.iinfo(np.int64).max
# Dims of a value's shape: ints where known, None where symbolic or unknown.
Dims = list["int | None"]


class NoopElimination(GraphPass):
    """Bypasses nodes that copy their input unchanged (see the module docstring)."""

    name = "noop_elimination"
    ort_names = ("EliminateDropout", "CastElimination", "EliminateSlice", "ExpandElimination", "NoopElimination")

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        removed = 0
        for node in list(graph):
            if node.domain != "" or not node.inputs or node.inputs[0] is None:
                continue
            check = _NO_OP_CHECKS.get(node.op_type)
            if check is not None and check(node, context.opset(node)):
                source = node.inputs[0]
            elif node.op_type in _NEUTRAL_OPERANDS:
                source = _other_operand_of_neutral(node)
            else:
                continue
            if source is not None and bypass(node, source, graph):
                removed += 1
        return removed


# ---------------------------------------------------------------- reading parameters


def _constant(node: ir.Node, index: int) -> np.ndarray | None:
    """Input ``index`` of ``node`` as an array when it is an initializer no caller can override, else None."""
    if index >= len(node.inputs):
        return None
    value = node.inputs[index]
    if not is_constant(value):
        return None
    return constant_array(value)


def _ints(node: ir.Node, index: int) -> list[int] | None:
    """A constant integer input as a flat list, else None."""
    array = _constant(node, index)
    if array is None or array.dtype.kind not in "iu":
        return None
    return [int(v) for v in array.reshape(-1)]


def _dims(value: ir.Value) -> Dims | None:
    """``value``'s dims (None for a symbolic one), or None when its rank is unknown."""
    if value.shape is None:
        return None
    return [dim if isinstance(dim, int) else None for dim in value.shape]


def _dtype(value: ir.Value | None) -> ir.DataType | None:
    if value is None or not isinstance(value.type, ir.TensorType):
        return None
    dtype = value.type.dtype
    return None if dtype == ir.DataType.UNDEFINED else dtype


# ---------------------------------------------------------------- one check per op


def _dropout(node: ir.Node, opset: int) -> bool:
    if opset < 12:
        return True  # no training switch: inference runs Dropout as the identity
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return True
    training_mode = _constant(node, 2)
    return training_mode is not None and training_mode.size == 1 and not bool(training_mode.reshape(-1)[0])


def _cast(node: ir.Node, opset: int) -> bool:
    source = _dtype(node.inputs[0])
    return source is not None and node.attributes.get_int("to", 0) == source.value


def _cast_like(node: ir.Node, opset: int) -> bool:
    source = _dtype(node.inputs[0])
    return source is not None and len(node.inputs) > 1 and _dtype(node.inputs[1]) == source


def _reshape(node: ir.Node, opset: int) -> bool:
    dims, target = _dims(node.inputs[0]), _ints(node, 1)
    if dims is None or target is None or len(target) != len(dims):
        return False
    copies_zero = not node.attributes.get_int("allowzero", 0)
    unmatched = [
        i for i, (dim, entry) in enumerate(zip(dims, target)) if not ((entry == 0 and copies_zero) or entry == dim)
    ]
    if not unmatched:
        return True
    # One -1 equals its own dim when every other dim is a known, non-zero size.
    return (
        len(unmatched) == 1
        and target[unmatched[0]] == -1
        and all(dim is not None and dim > 0 for i, dim in enumerate(dims) if i != unmatched[0])
    )


def _expand(node: ir.Node, opset: int) -> bool:
    target = _ints(node, 1)
    return target is not None and _broadcast_keeps_shape(tuple(target), _dims(node.inputs[0]))


def _squeeze(node: ir.Node, opset: int) -> bool:
    has_axes = node.attributes.get("axes") is not None or (len(node.inputs) > 1 and node.inputs[1] is not None)
    dims = _dims(node.inputs[0])
    return not has_axes and dims is not None and all(dim is not None and dim != 1 for dim in dims)


def _flatten(node: ir.Node, opset: int) -> bool:
    dims = _dims(node.inputs[0])
    return dims is not None and len(dims) == 2 and node.attributes.get_int("axis", 1) in (1, -1)


def _slice(node: ir.Node, opset: int) -> bool:
    dims = _dims(node.inputs[0])
    if dims is None:
        return False
    if opset < 10:
        starts, ends = node.attributes.get_ints("starts"), node.attributes.get_ints("ends")
        axes, steps = node.attributes.get_ints("axes"), None
    else:
        starts, ends = _ints(node, 1), _ints(node, 2)
        axes = _ints(node, 3) if _present(node, 3) else None
        steps = _ints(node, 4) if _present(node, 4) else None
        if (_present(node, 3) and axes is None) or (_present(node, 4) and steps is None):
            return False  # parameters known only at run time
    if starts is None or ends is None or len(starts) != len(ends):
        return False
    axes = list(range(len(starts))) if axes is None else list(axes)
    steps = [1] * len(starts) if steps is None else steps
    if len(axes) != len(starts) or len(steps) != len(starts):
        return False
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if not -len(dims) <= axis < len(dims):
            return False
        dim = dims[axis]
        if step != 1 or start != 0:
            return False
        if end != _INT64_MAX and (dim is None or end < dim):
            return False
    return True


def _present(node: ir.Node, index: int) -> bool:
    return index < len(node.inputs) and node.inputs[index] is not None


def _pad(node: ir.Node, opset: int) -> bool:
    pads = node.attributes.get_ints("pads") if opset < 11 else _ints(node, 1)
    return pads is not None and not any(pads)


def _transpose(node: ir.Node, opset: int) -> bool:
    perm = node.attributes.get_ints("perm")
    if perm is not None:
        return list(perm) == list(range(len(perm)))
    dims = _dims(node.inputs[0])
    return dims is not None and len(dims) <= 1  # the default perm reverses the dims


def _tile(node: ir.Node, opset: int) -> bool:
    repeats = _ints(node, 1)
    return repeats is not None and all(r == 1 for r in repeats)


def _concat(node: ir.Node, opset: int) -> bool:
    return len(node.inputs) == 1


_NO_OP_CHECKS: dict[str, Callable[[ir.Node, int], bool]] = {
    "Dropout": _dropout,
    "Cast": _cast,
    "CastLike": _cast_like,
    "Reshape": _reshape,
    "Expand": _expand,
    "Squeeze": _squeeze,
    "Flatten": _flatten,
    "Slice": _slice,
    "Pad": _pad,
    "Transpose": _transpose,
    "Tile": _tile,
    "Concat": _concat,
}


# op: (the neutral element, the operand positions it may take)
_NEUTRAL_OPERANDS: dict[str, tuple[int, tuple[int, ...]]] = {
    "Mul": (1, (1, 0)),
    "Div": (1, (1,)),
    "Add": (0, (1, 0)),
    "Sub": (0, (1,)),
}


def _other_operand_of_neutral(node: ir.Node) -> ir.Value | None:
    """For ``x op c`` (or ``c op x``) with ``c`` a constant neutral element that leaves ``x`` bit-exact, ``x``."""
    if len(node.inputs) != 2 or None in node.inputs:
        return None
    neutral, positions = _NEUTRAL_OPERANDS[node.op_type]
    for position in positions:
        constant = _constant(node, position)
        operand = node.inputs[1 - position]
        dtype = _dtype(operand)
        if constant is None or dtype is None or _dtype(node.inputs[position]) != dtype:
            continue
        if not _broadcast_keeps_shape(constant.shape, _dims(operand)):
            continue
        if constant.size and np.all(constant == neutral) and _keeps_zero_sign(node.op_type, constant):
            return operand
    return None


def _broadcast_keeps_shape(shape: tuple[int, ...], dims: Dims | None) -> bool:
    """Whether broadcasting a tensor of ``shape`` with one of ``dims`` gives ``dims``."""
    if dims is None or len(shape) > len(dims):
        return False
    return all(size == 1 or size == dim for size, dim in zip(shape, dims[len(dims) - len(shape):]))


def _keeps_zero_sign(op_type: str, constant: np.ndarray) -> bool:
    """Adding +0.0 (or subtracting -0.0) maps -0.0 to +0.0: only the other zero keeps every float."""
    if op_type not in ("Add", "Sub") or constant.dtype.kind not in "fcV":
        return True
    negative = np.signbit(constant.astype(np.float32) if constant.dtype.kind == "V" else constant.real)
    return bool(np.all(negative)) if op_type == "Add" else not bool(np.any(negative))
