"""Load a model from a path, bytes or ModelProto into the IR.

Resolves external data relative to the model's folder (refusing locations that
escape it), inlines model-local functions, and runs ONNX shape/type inference
with symbolic dimensions so later stages know every value's type it can tell.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from ..errors import Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile
from .ir import Model, model_from_proto

ModelSource = Union[str, bytes, os.PathLike, onnx.ModelProto]

# Initializers above this many elements are hidden from shape inference (typed
# graph inputs instead): inference serializes the whole model, and only small
# tensors (shapes, axes) carry information it needs.
_INFERENCE_INLINE_LIMIT = 1024


def read_model_proto(source: ModelSource) -> tuple[onnx.ModelProto, str | None]:
    """Parse ``source`` without external data; returns the proto and its folder (None for bytes/protos)."""
    if isinstance(source, onnx.ModelProto):
        return source, None
    if isinstance(source, (bytes, bytearray, memoryview)):
        try:
            return onnx.load_model_from_string(bytes(source)), None
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise InvalidProtobuf(f"Failed to load model from bytes: unable to parse protobuf: {exc}") from None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise NoSuchFile(f"Load model from {path} failed: File doesn't exist")
        if path.is_dir():
            raise InvalidArgument(f"Load model from {path} failed: path is a directory")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise InvalidProtobuf(f"Load model from {path} failed: Protobuf parsing failed: {exc}") from None
        return proto, str(path.resolve().parent)
    raise InvalidArgument(f"Cannot load a model from an object of type {type(source).__name__}")


def _tensors_with_external_data(model: onnx.ModelProto):
    return [t for t in external_data_helper._get_all_tensors(model) if external_data_helper.uses_external_data(t)]


def check_external_data_locations(model: onnx.ModelProto, base_dir: str | None) -> None:
    """Refuse external data that is unreachable or escapes the model's folder."""
    tensors = _tensors_with_external_data(model)
    if not tensors:
        return
    if base_dir is None:
        raise InvalidArgument(
            f"Model has external data (tensor '{tensors[0].name}') but was loaded from bytes or a "
            "ModelProto: load it from its file path so the data can be found"
        )
    root = os.path.realpath(base_dir)
    for tensor in tensors:
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if not location or os.path.isabs(location) or Path(location).drive:
            raise InvalidGraph(
                f"External data of tensor '{tensor.name}' has location '{location}': it must be a "
                "relative path inside the model's folder"
            )
        resolved = os.path.realpath(os.path.join(root, location))
        if os.path.commonpath([root, resolved]) != root:
            raise InvalidGraph(
                f"External data of tensor '{tensor.name}' has location '{location}', which escapes "
                f"the model's folder {root}"
            )
        if not os.path.isfile(resolved):
            raise NoSuchFile(f"External data file '{location}' of tensor '{tensor.name}' does not exist in {root}")


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape-infer a light copy of ``model`` (large initializers become typed inputs)."""
    light = onnx.ModelProto()
    light.CopyFrom(model)
    graph = light.graph
    keep = []
    existing_inputs = {i.name for i in graph.input}
    for tensor in graph.initializer:
        if external_data_helper.uses_external_data(tensor) or _numel(tensor) > _INFERENCE_INLINE_LIMIT:
            if tensor.name not in existing_inputs:
                graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
        else:
            keep.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    try:
        return onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is advisory; kernels compute real shapes
        return light


def _numel(tensor: onnx.TensorProto) -> int:
    n = 1
    for d in tensor.dims:
        n *= d
    return n


def _merge_inferred_types(model: onnx.ModelProto, inferred: onnx.ModelProto) -> None:
    known = {vi.name for vi in model.graph.value_info}
    for vi in inferred.graph.value_info:
        if vi.name not in known:
            model.graph.value_info.append(vi)
    for out, inf in zip(model.graph.output, inferred.graph.output):
        if inf.HasField("type") and (not out.HasField("type") or not _has_full_shape(out.type)):
            out.type.CopyFrom(inf.type)


def _has_full_shape(type_proto: onnx.TypeProto) -> bool:
    return type_proto.HasField("tensor_type") and type_proto.tensor_type.HasField("shape")


def load_model(source: ModelSource) -> Model:
    """Read, validate, inline and type a model; returns the IR :class:`Model`."""
    proto, base_dir = read_model_proto(source)
    if not proto.HasField("graph"):
        raise InvalidGraph("Model has no graph")
    check_external_data_locations(proto, base_dir)
    if proto.functions:
        try:
            proto = onnx.inliner.inline_local_functions(proto)
        except Exception as exc:  # noqa: BLE001
            raise InvalidGraph(f"Failed to inline model-local functions: {exc}") from None
    if isinstance(source, onnx.ModelProto) and proto is source:
        proto = _copy(proto)  # inference adds value_info; never mutate the caller's proto
    _merge_inferred_types(proto, _inferred(proto))
    try:
        return model_from_proto(proto, base_dir)
    except (OSError, ValueError, TypeError) as exc:
        raise Fail(f"Failed to read model tensors: {exc}") from None


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy
