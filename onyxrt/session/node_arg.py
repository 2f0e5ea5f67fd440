"""NodeArg: a graph input/output as onnxruntime describes it."""

from __future__ import annotations

import onnx

from ..graph.types import tensor_shape, type_string


class NodeArg:
    """Name, shape (ints, strings for symbolic dims, None for unknown) and type string of a value."""

    def __init__(self, name: str, type_proto: onnx.TypeProto | None) -> None:
        self.name = name
        self.type = type_string(type_proto) if type_proto is not None else "unknown"
        shape = tensor_shape(type_proto) if type_proto is not None else None
        self.shape = shape if shape is not None else []
        self._type_proto = type_proto

    def __repr__(self) -> str:
        return f"NodeArg(name='{self.name}', type='{self.type}', shape={self.shape})"


class ModelMetadata:
    """What ``InferenceSession.get_modelmeta()`` returns."""

    def __init__(self, producer_name: str, graph_name: str, domain: str, description: str,
                 graph_description: str, version: int, custom_metadata_map: dict[str, str]) -> None:
        self.producer_name = producer_name
        self.graph_name = graph_name
        self.domain = domain
        self.description = description
        self.graph_description = graph_description
        self.version = version
        self.custom_metadata_map = custom_metadata_map
