"""Node attributes as the Python values kernels take as keyword arguments.

Parsing happens once, at plan-building time: ints, floats and strings as Python
scalars, lists as lists, tensors as numpy arrays (see :mod:`.tensors`), type
attributes as ``onnx.TypeProto`` and graphs as ``onnx_ir.Graph`` (the plan compiles
those into callables).
"""

from __future__ import annotations

from typing import Any

import onnx
import onnx_ir as ir

from .tensors import to_array

_T = ir.AttributeType


def attribute_value(attr: ir.Attr) -> Any:
    """The Python value of ``attr`` (see the module docstring)."""
    kind, value = attr.type, attr.value
    if kind in (_T.FLOAT, _T.INT, _T.STRING, _T.GRAPH):
        return value
    if kind in (_T.FLOATS, _T.INTS, _T.STRINGS, _T.GRAPHS):
        return list(value)
    if kind == _T.TENSOR:
        return to_array(value)
    if kind == _T.TENSORS:
        return [to_array(t) for t in value]
    if kind == _T.TYPE_PROTO:
        return type_proto_of(value)
    if kind == _T.TYPE_PROTOS:
        return [type_proto_of(v) for v in value]
    raise ValueError(f"attribute '{attr.name}' has unsupported type {kind!r}")


def type_proto_of(type_and_shape: Any) -> onnx.TypeProto:
    """An ``onnx.TypeProto`` for an IR type (or TypeAndShape), shape included when known."""
    proto = onnx.TypeProto()
    ir_type = getattr(type_and_shape, "type", type_and_shape)
    ir.serde.serialize_type_into(proto, ir_type)
    shape = getattr(type_and_shape, "shape", None)
    if shape is not None:
        ir.serde.serialize_shape_into(proto, shape)
    return proto
