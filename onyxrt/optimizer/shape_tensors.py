"""What the elements of a shape tensor are, read symbolically from the nodes that compute it.

Exporters build Reshape targets at run time: ``Concat(Unsqueeze(Gather(Shape(x), 0)), ..., [-1], [64])``
(TorchScript) or ``Concat(Shape(x, start=0, end=1), ..., Slice(Shape(k), -2, -1))`` (dynamo).
:func:`shape_elements` follows such chains back to constants and to dimensions of other values;
:func:`same_dim` says when an element is provably a given dimension of a value (the same
dimension, or dimensions that shape inference gave one static size or one symbolic name).
Fusions use these to prove that a Reshape only splits or merges the axes they expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import onnx_ir as ir

from ..graph.tensors import constant_array
from .matching import is_constant


@dataclass(frozen=True)
class DimOf:
    """Dimension ``axis`` of ``value``."""

    value: ir.Value
    axis: int


# A known integer, a dimension of some value, or None when the element is not known.
Element = Union[int, DimOf, None]


def shape_elements(value: ir.Value | None) -> list[Element] | None:
    """The elements of the 0-D or 1-D integer tensor ``value`` as far as its producers show them.

    None when not even the number of elements is known.
    """
    if value is None:
        return None
    if is_constant(value):
        array = np.asarray(constant_array(value))
        return [int(v) for v in array.reshape(-1)] if array.ndim <= 1 and array.dtype.kind in "iu" else None
    node = value.producer()
    if node is None or node.domain != "" or any(v is None for v in node.inputs):
        return None
    op = node.op_type
    if op == "Shape":
        return _shape_of(node)
    if op in ("Unsqueeze", "Squeeze", "Identity") or (op == "Cast" and _casts_to_int(node)):
        return shape_elements(node.inputs[0])  # a scalar and its one-element vector hold the same element
    if op == "Concat":
        parts = [shape_elements(v) for v in node.inputs]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    if op == "Gather":
        return _gathered(node)
    if op == "Slice":
        return _sliced(node)
    if op == "Where":
        return _where_equal(node)
    return None


def same_dim(element: Element, value: ir.Value, axis: int) -> bool:
    """Whether ``element`` is provably dimension ``axis`` of ``value`` (whose rank must be known)."""
    if isinstance(element, DimOf) and element.value is value and element.axis == axis:
        return True
    if value.shape is None or not -len(value.shape) <= axis < len(value.shape):
        return False
    target = value.shape[axis]
    if isinstance(element, int):
        return isinstance(target, int) and element == target
    if not isinstance(element, DimOf):
        return False
    shape = element.value.shape
    if shape is None:
        return False
    known = shape[element.axis]
    if isinstance(known, int) or isinstance(target, int):
        return isinstance(known, int) and isinstance(target, int) and known == target
    # Two dimensions shape inference named alike are one size (it names unknown sizes uniquely).
    return known.value is not None and known.value == target.value


def _shape_of(node: ir.Node) -> list[Element] | None:
    source = node.inputs[0]
    rank = _rank(source)
    if rank is None:
        return None
    start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", rank)
    start, end = (min(max(i + rank if i < 0 else i, 0), rank) for i in (start, end))
    return [DimOf(source, axis) for axis in range(start, end)]


def _rank(value: ir.Value) -> int | None:
    """The rank of ``value``: inferred, or that of a Transpose's perm (inference gives up on some Reshapes)."""
    if value.shape is not None:
        return len(value.shape)
    node = value.producer()
    perm = node.attributes.get_ints("perm", None) if node is not None and node.op_type == "Transpose" else None
    return len(perm) if perm is not None else None


def _casts_to_int(node: ir.Node) -> bool:
    return node.attributes.get_int("to", 0) in (ir.DataType.INT64, ir.DataType.INT32)


def _gathered(node: ir.Node) -> list[Element] | None:
    data, indices = shape_elements(node.inputs[0]), node.inputs[1]
    if data is None or node.attributes.get_int("axis", 0) != 0 or not is_constant(indices):
        return None
    positions = np.asarray(constant_array(indices)).reshape(-1)
    if positions.dtype.kind not in "iu" or any(not -len(data) <= p < len(data) for p in positions):
        return None
    return [data[int(p)] for p in positions]


def _sliced(node: ir.Node) -> list[Element] | None:
    data = shape_elements(node.inputs[0])
    bounds = [shape_elements(v) if is_constant(v) else None for v in node.inputs[1:]]
    if data is None or len(bounds) < 2 or any(b is None or len(b) != 1 for b in bounds):
        return None
    starts, ends, *rest = (b[0] for b in bounds)
    axes, steps = rest[0] if rest else 0, rest[1] if len(rest) > 1 else 1
    if axes not in (0, -1) or steps != 1:
        return None
    return data[starts:ends]  # Python's slice clamps as ONNX's does for step 1


def _where_equal(node: ir.Node) -> list[Element] | None:
    """``Where(Equal(c, k), r, c)`` element by element: how exporters replace -1 entries of a shape."""
    condition, replacement, otherwise = node.inputs
    test = condition.producer()
    if test is None or test.op_type != "Equal" or test.domain != "" or otherwise not in test.inputs:
        return None
    elements = shape_elements(otherwise)
    compared = shape_elements(test.inputs[1] if test.inputs[0] is otherwise else test.inputs[0])
    replaced = shape_elements(replacement)
    if elements is None or compared is None or replaced is None:
        return None
    n = len(elements)
    if any(len(e) not in (1, n) for e in (compared, replaced)):
        return None
    result: list[Element] = []
    for i, element in enumerate(elements):
        k, r = compared[i % len(compared)], replaced[i % len(replaced)]
        if isinstance(element, int) and isinstance(k, int):
            result.append(r if element == k else element)
        elif isinstance(element, DimOf) and isinstance(k, int) and k < 0:
            result.append(element)  # a dimension is never negative
        else:
            result.append(None)
    return result
