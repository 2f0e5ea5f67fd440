"""What a small integer subgraph computes: the sizes exporters spell with Shape, Gather, Slice, Concat and arithmetic.

The attention and rotary fusions must know a Slice bound (``x.shape[-1] // 2``) or a Reshape
target (``[batch, heads, -1, head_size]``) that constant folding leaves in the graph because
part of it is symbolic. :func:`shape_entries` reads such a 1-D (or scalar) int tensor as a list
whose entries are ints where known, :class:`Dim` where they copy a symbolic dim of a value, and
None where they are unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from ..graph.tensors import constant_array
from .matching import is_constant

_MAX_DEPTH = 16
_MAX_CONSTANT = 64  # a shape vector, not a weight


@dataclass(frozen=True)
class Dim:
    """Dim ``axis`` of ``value`` (a dim the graph's shapes leave symbolic)."""

    value: ir.Value
    axis: int


def dim_of(value: ir.Value, axis: int) -> "int | Dim | None":
    """``value``'s dim ``axis`` (negative counts from the end): an int when static, else a :class:`Dim`."""
    if value.shape is None:
        return None
    rank = len(value.shape)
    if not -rank <= axis < rank:
        return None
    dim = value.shape.dims[axis]
    return dim if isinstance(dim, int) else Dim(value, axis % rank)


def constant_ints(value: ir.Value | None) -> list[int] | None:
    """The entries of a small integer constant, else None."""
    if not is_constant(value):
        return None
    array = constant_array(value)
    if array.dtype.kind not in "iu" or array.size > _MAX_CONSTANT:
        return None
    return [int(v) for v in np.asarray(array).reshape(-1)]


def shape_entries(
    value: ir.Value | None, known: Mapping[ir.Value, Sequence] | None = None, depth: int = _MAX_DEPTH
) -> "list[int | Dim | None] | None":
    """The entries ``value`` (a 1-D or scalar int tensor) holds, or None when its structure is not understood.

    ``known`` gives the dims (ints or :class:`Dim`) of values whose shape the graph does not record.
    """
    if value is None or depth <= 0:
        return None
    constant = constant_ints(value)
    if constant is not None:
        return constant
    node = value.producer()
    if node is None or node.domain != "" or value is not node.outputs[0]:
        return None
    read = lambda index: shape_entries(node.inputs[index] if len(node.inputs) > index else None, known, depth - 1)  # noqa: E731
    op = node.op_type
    if op == "Shape":
        return _shape(node, known or {})
    if op in ("Identity", "Unsqueeze", "Squeeze", "Reshape") or (op == "Cast" and _to_int(node)):
        return read(0)
    if op == "Concat":
        if node.attributes.get_int("axis", 0) not in (0, -1):
            return None
        parts = [shape_entries(v, known, depth - 1) for v in node.inputs]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    if op == "Gather":
        data, indices = read(0), constant_ints(node.inputs[1])
        if data is None or indices is None or node.attributes.get_int("axis", 0) != 0:
            return None
        if any(not -len(data) <= i < len(data) for i in indices):
            return None
        return [data[i] for i in indices]
    if op == "Slice":
        return _slice(node, read(0))
    if op in _ARITHMETIC:
        first, second = read(0), read(1)
        if first is None or second is None or (len(first) != len(second) and 1 not in (len(first), len(second))):
            return None
        length = max(len(first), len(second))
        first, second = first * (length // len(first)), second * (length // len(second))
        return [_ARITHMETIC[op](a, b) if isinstance(a, int) and isinstance(b, int) else None for a, b in zip(first, second)]
    return None


def _truncating_div(a: int, b: int) -> int | None:
    if b == 0:
        return None
    quotient = abs(a) // abs(b)
    return quotient if (a >= 0) == (b >= 0) else -quotient


_ARITHMETIC = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": _truncating_div,
}


def _to_int(cast: ir.Node) -> bool:
    return cast.attributes.get_int("to", 0) in (ir.DataType.INT64, ir.DataType.INT32)


def _shape(node: ir.Node, known: Mapping[ir.Value, Sequence]) -> "list[int | Dim | None] | None":
    source = node.inputs[0]
    if source in known:
        dims = list(known[source])
    elif source is not None and source.shape is not None:
        dims = [dim_of(source, axis) for axis in range(len(source.shape))]
    else:
        return None
    rank = len(dims)
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", rank)
    start, end = (max(0, min(rank, i + rank if i < 0 else i)) for i in (start, end))
    return dims[start:end]


def _slice(node: ir.Node, data: "list | None") -> "list | None":
    if data is None:
        return None
    if len(node.inputs) >= 3:
        starts, ends = constant_ints(node.inputs[1]), constant_ints(node.inputs[2])
        axes = constant_ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else [0]
        steps = constant_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
    else:  # Slice-1: attributes
        starts, ends = node.attributes.get_ints("starts"), node.attributes.get_ints("ends")
        axes, steps = node.attributes.get_ints("axes", [0]), [1]
    if None in (starts, ends, axes, steps) or len(starts) != 1 or list(axes) not in ([0], [-1]) or list(steps) != [1]:
        return None
    return data[slice(starts[0], ends[0])]
