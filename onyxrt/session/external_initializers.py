"""Initializers whose external data the caller supplies from memory, before the model's files are read.

``SessionOptions.add_external_initializers`` gives OrtValues for named initializers stored
as external data; ``add_external_initializers_from_files_in_memory`` gives the contents of
the external data files themselves. Both replace the tensors' external references in the
model proto with the data (a copy), with onnxruntime's checks and FAIL messages.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from ..errors import Fail
from ..graph.types import onnx_elem_type


def file_key(location: str) -> str:
    """How an external data location is matched against the in-memory files' names."""
    return os.path.normpath(location)


def inject_external_data(proto: onnx.ModelProto, initializers: dict[str, Any],
                         files: dict[str, tuple[memoryview, int]]) -> None:
    """Replace external data in ``proto`` by ``initializers`` (name -> OrtValue) and ``files``
    (normalized location -> (buffer, length)); FAIL where onnxruntime fails."""
    by_name = {tensor.name: tensor for tensor in proto.graph.initializer}
    for name, value in initializers.items():
        tensor = by_name.get(name)
        if tensor is None:
            raise Fail(f"Failed to find existing initializer with name {name}.")
        if not external_data_helper.uses_external_data(tensor):
            raise Fail("Trying to replace non-external initializer with external data")
        array = np.asarray(value.numpy())
        if list(array.shape) != list(tensor.dims):
            raise Fail(f"Replacement tensor's dimensions do not match: initializer '{name}' is {list(tensor.dims)}, "
                       f"the OrtValue {list(array.shape)}.")
        if onnx_elem_type(array.dtype) != tensor.data_type:
            raise Fail(f"Replacement tensor's data type does not match: initializer '{name}'.")
        _set_data(tensor, numpy_helper.from_array(array, name))
    if not files:
        return
    for tensor in external_data_helper._get_all_tensors(proto):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        entry = files.get(file_key(location))
        if entry is None:
            raise Fail(f"External file: {location} not found from the table user provided.")
        buffer, file_length = entry
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else file_length - offset
        if offset < 0 or length < 0 or offset + length > min(file_length, len(buffer)):
            raise Fail(f"External initializer: {tensor.name} offset: {offset} size to read: {length} given "
                       f"file_length: {file_length} are out of bounds or can not be read in full.")
        raw = bytes(buffer[offset: offset + length])
        tensor.ClearField("external_data")
        tensor.data_location = onnx.TensorProto.DEFAULT
        tensor.raw_data = raw


def _set_data(tensor: onnx.TensorProto, data: onnx.TensorProto) -> None:
    name = tensor.name
    tensor.CopyFrom(data)
    tensor.name = name
