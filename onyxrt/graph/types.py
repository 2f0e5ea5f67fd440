"""ONNX element types <-> numpy dtypes, and onnxruntime's type strings."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

_NP_TO_ONNX: dict[np.dtype, int] = {}
_ONNX_TO_NP: dict[int, np.dtype] = {}
for _elem in TensorProto.DataType.values():
    if _elem == TensorProto.UNDEFINED:
        continue
    try:
        _dt = np.dtype(helper.tensor_dtype_to_np_dtype(_elem))
    except (KeyError, TypeError, ValueError):
        continue
    _ONNX_TO_NP[_elem] = _dt
    if _elem != TensorProto.STRING:
        _NP_TO_ONNX.setdefault(_dt, _elem)
_NP_TO_ONNX[np.dtype(object)] = TensorProto.STRING
_NP_TO_ONNX[np.dtype(np.str_)] = TensorProto.STRING


def np_dtype(elem_type: int) -> np.dtype:
    """numpy dtype for an ONNX TensorProto element type (strings are ``object``).

    Raises ValueError for a number that is no tensor element type: it comes from a model's
    attribute or declaration, so it is a bad value, not a programming error.
    """
    try:
        return _ONNX_TO_NP[elem_type]
    except (KeyError, TypeError):
        raise ValueError(f"{elem_type!r} is not a tensor element type onyxrt supports") from None


def onnx_elem_type(dtype: Any) -> int:
    """ONNX TensorProto element type for a numpy dtype."""
    dt = np.dtype(dtype)
    if dt.kind == "U":
        return TensorProto.STRING
    try:
        return _NP_TO_ONNX[dt]
    except KeyError:
        raise TypeError(f"numpy dtype {dt} has no ONNX equivalent") from None


def elem_type_name(elem_type: int) -> str:
    """onnxruntime's spelling of an element type: 1 -> 'float', 11 -> 'double'."""
    return TensorProto.DataType.Name(elem_type).lower()


def type_string(type_proto: onnx.TypeProto) -> str:
    """onnxruntime's type string for a TypeProto: 'tensor(float)', 'seq(tensor(int64))' ..."""
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({elem_type_name(type_proto.tensor_type.elem_type)})"
    if kind == "sparse_tensor_type":
        return f"sparse_tensor({elem_type_name(type_proto.sparse_tensor_type.elem_type)})"
    if kind == "sequence_type":
        return f"seq({type_string(type_proto.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({type_string(type_proto.optional_type.elem_type)})"
    if kind == "map_type":
        key = elem_type_name(type_proto.map_type.key_type)
        return f"map({key},{type_string(type_proto.map_type.value_type)})"
    return "unknown"


def value_type_string(value: Any) -> str:
    """onnxruntime's type string for a runtime value (array, list, dict, None)."""
    if isinstance(value, np.ndarray):
        return f"tensor({elem_type_name(onnx_elem_type(value.dtype))})"
    if isinstance(value, list):
        return f"seq({value_type_string(value[0])})" if value else "seq"
    if isinstance(value, dict):
        return "map"
    return type(value).__name__


def tensor_shape(type_proto: onnx.TypeProto) -> list[int | str | None] | None:
    """Dims as onnxruntime reports them: ints, strings for symbolic dims, None when unknown.

    Returns None for a tensor type without any shape (unknown rank).
    """
    kind = type_proto.WhichOneof("value")
    if kind not in ("tensor_type", "sparse_tensor_type"):
        return None
    tt = getattr(type_proto, kind)
    if not tt.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            # converters write -1 for a dynamic dim; onnxruntime reads any negative dim as unknown
            dims.append(d.dim_value if d.dim_value >= 0 else None)
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def value_type_proto(value: Any) -> onnx.TypeProto | None:
    """The ``onnx.TypeProto`` (shape included when known) of an ``onnx_ir.Value``; None when its type is unknown."""
    if "type_proto" in value.meta:  # a type onnx_ir cannot hold (maps), kept from the file
        return value.meta["type_proto"]
    if value.type is None:
        return None
    from .attributes import type_proto_of

    return type_proto_of(value)
