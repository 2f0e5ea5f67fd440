"""Save an IR model as an ONNX file, without losing what it was loaded with.

Functions, metadata, value types and initializers round-trip through onnx_ir;
initializers that were sparse when loaded are written back as sparse tensors.
Large weights can go to an external data file beside the model.
"""

from __future__ import annotations

import os

import onnx
import onnx_ir as ir

from .tensors import dense_to_sparse_proto


def model_to_proto(model: ir.Model) -> onnx.ModelProto:
    """The ModelProto of ``model`` (sparse-on-load initializers as sparse tensors again)."""
    proto = ir.serde.serialize_model(model)
    _write_back_map_types(model.graph, proto.graph)
    sparse = set(model.graph.meta.get("sparse_initializers", ()))
    if sparse:
        dense = [t for t in proto.graph.initializer if t.name in sparse]
        kept = [t for t in proto.graph.initializer if t.name not in sparse]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(kept)
        proto.graph.sparse_initializer.extend(dense_to_sparse_proto(t) for t in dense)
    return proto


def _write_back_map_types(graph: ir.Graph, proto: onnx.GraphProto) -> None:
    """Types onnx_ir cannot hold (maps) were kept aside at load; put them back on the graph's inputs/outputs."""
    for value, info in zip(list(graph.inputs) + list(graph.outputs), list(proto.input) + list(proto.output)):
        if "type_proto" in value.meta:
            info.type.CopyFrom(value.meta["type_proto"])


def save_model(model: ir.Model, path: str | os.PathLike, external_data_threshold: int | None = None) -> None:
    """Write ``model`` to ``path``; tensors of at least ``external_data_threshold`` bytes go to ``<name>.data``."""
    proto = model_to_proto(model)
    if external_data_threshold is not None or proto.ByteSize() > 2**31 - 1024:
        location = os.path.basename(os.fspath(path)) + ".data"
        onnx.save_model(proto, os.fspath(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=external_data_threshold or 1024)
    else:
        onnx.save_model(proto, os.fspath(path))
