"""What a small integer subgraph computes: the sizes exporters spell with Shape, Gather, Slice, Concat and arithmetic.

Exporters build Reshape targets and Slice bounds at run time, e.g.
``Concat(Unsqueeze(Gather(Shape(x), 0)), ..., [-1], [64])`` (TorchScript),
``Concat(Shape(x, start=0, end=1), ..., Slice(Shape(k), -2, -1))`` (dynamo) or
``Div(Gather(Shape(x), -1), 2)``, and constant folding leaves them in the graph because part of
them is symbolic. :func:`shape_entries` reads such a 1-D (or scalar) int tensor as a list whose
entries are ints where known, :class:`Dim` where they copy a dim of a value that the graph's
shapes leave symbolic, and None where they are unknown. :func:`same_dim` says when an entry is
provably a given dim of a value. Fusions use these to prove that a Reshape only splits or merges
the axes they expect, or that a Slice takes the half they expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import numpy as np
import onnx_ir as ir

from ..graph.tensors import constant_array
from .matching import is_constant

_MAX_DEPTH = 16
_MAX_CONSTANT = 64  # a shape vector, not a weight


@dataclass(frozen=True)
class Dim:
    """Dim ``axis`` (non-negative) of ``value``: a dim the graph's shapes leave symbolic or unknown."""

    value: ir.Value
    axis: int


# A known integer, a dim of some value, or None when the entry is not known.
Entry = Union[int, Dim, None]


def dim_of(value: ir.Value, axis: int) -> Entry:
    """``value``'s dim ``axis`` (negative counts from the end): an int when static, else a :class:`Dim`."""
    rank = _rank(value)
    if rank is None or not -rank <= axis < rank:
        return None
    dim = value.shape.dims[axis] if value.shape is not None else None
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
    value: ir.Value | None, known: Mapping[ir.Value, Sequence[Entry]] | None = None, depth: int = _MAX_DEPTH
) -> list[Entry] | None:
    """The entries ``value`` (a 1-D or scalar int tensor) holds, or None when not even their number is known.

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
        return read(0)  # a scalar and its one-element vector hold the same entry
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
    if op == "Where":
        return _where_equal(node, known, depth - 1)
    if op in _ARITHMETIC:
        first, second = read(0), read(1)
        if first is None or second is None or (len(first) != len(second) and 1 not in (len(first), len(second))):
            return None
        length = max(len(first), len(second))
        first, second = first * (length // len(first)), second * (length // len(second))
        return [_ARITHMETIC[op](a, b) if isinstance(a, int) and isinstance(b, int) else None for a, b in zip(first, second)]
    return None


def same_dim(entry: Entry, value: ir.Value, axis: int) -> bool:
    """Whether ``entry`` is provably dim ``axis`` of ``value``.

    The same dim, equal static sizes, or dims shape inference gave one symbolic name (it names
    unknown sizes uniquely).
    """
    rank = _rank(value)
    if isinstance(entry, Dim) and entry.value is value and rank is not None and entry.axis == axis % rank:
        return True
    if value.shape is None or not -len(value.shape) <= axis < len(value.shape):
        return False
    target = value.shape[axis]
    if isinstance(entry, int):
        return isinstance(target, int) and entry == target
    if not isinstance(entry, Dim) or entry.value.shape is None:
        return False
    known = entry.value.shape[entry.axis]
    if isinstance(known, int) or isinstance(target, int):
        return isinstance(known, int) and isinstance(target, int) and known == target
    return known.value is not None and known.value == target.value


def _rank(value: ir.Value) -> int | None:
    """The rank of ``value``: inferred, or that of a Transpose's perm (inference gives up on some Reshapes)."""
    if value.shape is not None:
        return len(value.shape)
    node = value.producer()
    perm = node.attributes.get_ints("perm", None) if node is not None and node.op_type == "Transpose" else None
    return len(perm) if perm is not None else None


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


def _shape(node: ir.Node, known: Mapping[ir.Value, Sequence[Entry]]) -> list[Entry] | None:
    source = node.inputs[0]
    if source is None:
        return None
    if source in known:
        dims = list(known[source])
    else:
        rank = _rank(source)
        if rank is None:
            return None
        dims = [dim_of(source, axis) for axis in range(rank)]
    rank = len(dims)
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", rank)
    start, end = (max(0, min(rank, i + rank if i < 0 else i)) for i in (start, end))
    return dims[start:end]


def _slice(node: ir.Node, data: list[Entry] | None) -> list[Entry] | None:
    if data is None:
        return None
    if len(node.inputs) >= 3:
        starts, ends = constant_ints(node.inputs[1]), constant_ints(node.inputs[2])
        axes = constant_ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else [0]
        steps = constant_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
    else:  # Slice-1: attributes
        starts, ends = node.attributes.get_ints("starts"), node.attributes.get_ints("ends")
        axes, steps = node.attributes.get_ints("axes", [0]), [1]
    if None in (starts, ends, axes, steps) or len(starts) != 1 or len(ends) != 1:
        return None
    if list(axes) not in ([0], [-1]) or len(steps) != 1 or steps[0] == 0:
        return None
    # Python's slices clamp out-of-range bounds as ONNX's do, negative ones counting from the end, any step
    return data[slice(starts[0], ends[0], steps[0])]


def _where_equal(node: ir.Node, known, depth: int) -> list[Entry] | None:
    """``Where(Equal(c, k), r, c)`` entry by entry: how exporters replace -1 entries of a shape."""
    if len(node.inputs) != 3 or any(v is None for v in node.inputs):
        return None
    condition, replacement, otherwise = node.inputs
    test = condition.producer()
    if test is None or test.op_type != "Equal" or test.domain != "" or otherwise not in test.inputs:
        return None
    entries = shape_entries(otherwise, known, depth)
    compared = shape_entries(test.inputs[1] if test.inputs[0] is otherwise else test.inputs[0], known, depth)
    replaced = shape_entries(replacement, known, depth)
    if entries is None or compared is None or replaced is None:
        return None
    n = len(entries)
    if any(len(e) not in (1, n) for e in (compared, replaced)):
        return None
    result: list[Entry] = []
    for i, entry in enumerate(entries):
        k, r = compared[i % len(compared)], replaced[i % len(replaced)]
        if isinstance(entry, int) and isinstance(k, int):
            result.append(r if entry == k else entry)
        elif isinstance(entry, Dim) and isinstance(k, int) and k < 0:
            result.append(entry)  # a dim is never negative
        else:
            result.append(None)
    return result
