"""Optional-type kernels: an optional value is its element (tensor or sequence) or ``None`` when empty."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kernel_table import op
from ....errors import NodeInputError, NodeInputTypeError


def _check_matches(value: Any, type_proto) -> None:
    """Raise when ``value`` plainly contradicts the ``type`` attribute (tensor vs sequence, element type)."""
    if type_proto is None:
        return
    kind = type_proto.WhichOneof("value")
    if kind == "optional_type":  # tolerate a type given as optional(T)
        type_proto = type_proto.optional_type.elem_type
        kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        if not isinstance(value, np.ndarray):
            raise NodeInputTypeError(f"Optional input is a {type(value).__name__}, the type attribute says tensor")
        _check_elem(value, type_proto.tensor_type.elem_type)
    elif kind == "sequence_type":
        if not isinstance(value, list):
            raise NodeInputTypeError(f"Optional input is a {type(value).__name__}, the type attribute says sequence")
        elem = type_proto.sequence_type.elem_type
        if value and elem.WhichOneof("value") == "tensor_type":
            _check_elem(value[0], elem.tensor_type.elem_type)


def _check_elem(array: np.ndarray, elem_type: int) -> None:
    if not elem_type:
        return
    from ....graph.types import np_dtype

    try:
        want = np_dtype(elem_type)
    except ValueError:
        return
    if array.dtype != want and not (want == np.dtype(object) and array.dtype.kind in "OU"):
        raise NodeInputTypeError(f"Optional input has element type {array.dtype}, the type attribute says {want}")


@op("Optional", versions=(15, 28))
def optional(input=None, *, type=None):
    if input is None:
        if type is None:
            raise NodeInputError("Optional without an input needs the 'type' attribute")
        return None
    _check_matches(input, type)
    return input


@op("OptionalHasElement", versions=(15, 18, 28))
def optional_has_element(input=None):
    return np.array(input is not None)


@op("OptionalGetElement", versions=(15, 18, 28))
def optional_get_element(input):
    if input is None:
        raise NodeInputError("Trying to use OptionalGetElement on an optional type OrtValue which contains no data")
    return input
