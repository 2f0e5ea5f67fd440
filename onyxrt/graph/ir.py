"""The in-memory graph every later stage works on.

A deliberately small, mutable IR: values are named by strings (as in ONNX),
initializers are numpy arrays, attributes are parsed once into Python values
(subgraph attributes into nested :class:`Graph` objects). Conversions from and
to ``onnx`` protos live here too, so the rest of the engine never touches
protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import onnx
from onnx import AttributeProto, helper, numpy_helper

A = AttributeProto


@dataclass(frozen=True)
class Attribute:
    """A node attribute: its ONNX attribute type and its parsed Python value."""

    type: int
    value: Any


@dataclass(eq=False)
class Node:
    """One operator application. Missing optional inputs/outputs are ``""``."""

    op_type: str
    inputs: list[str]
    outputs: list[str]
    attributes: dict[str, Attribute] = field(default_factory=dict)
    domain: str = ""
    name: str = ""

    def subgraphs(self) -> Iterator[Graph]:
        for attr in self.attributes.values():
            if attr.type == A.GRAPH:
                yield attr.value
            elif attr.type == A.GRAPHS:
                yield from attr.value

    def describe(self) -> str:
        domain = self.domain or "ai.onnx"
        return f"node '{self.name}' (op {domain}::{self.op_type})"


@dataclass
class ValueInfo:
    """A named, typed value at a graph boundary (type may be None when unknown)."""

    name: str
    type: onnx.TypeProto | None = None


@dataclass(eq=False)
class Graph:
    """Nodes in topological order, with typed inputs/outputs and constant initializers."""

    nodes: list[Node]
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    value_info: dict[str, onnx.TypeProto] = field(default_factory=dict)
    name: str = ""
    doc_string: str = ""

    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs if out}

    def type_of(self, name: str) -> onnx.TypeProto | None:
        for vi in self.inputs:
            if vi.name == name and vi.type is not None:
                return vi.type
        for vi in self.outputs:
            if vi.name == name and vi.type is not None:
                return vi.type
        return self.value_info.get(name)

    def free_variables(self) -> list[str]:
        """Names this graph (and nested subgraphs) reads but does not define: outer-scope captures."""
        defined = {vi.name for vi in self.inputs} | set(self.initializers) | {""}
        free: dict[str, None] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name not in defined:
                    free.setdefault(name)
            for sub in node.subgraphs():
                for name in sub.free_variables():
                    if name not in defined:
                        free.setdefault(name)
            defined.update(node.outputs)
        for vi in self.outputs:
            if vi.name not in defined:
                free.setdefault(vi.name)
        return list(free)


@dataclass(eq=False)
class Model:
    """A graph plus the model-level metadata onnxruntime exposes."""

    graph: Graph
    opset_imports: dict[str, int]
    ir_version: int = onnx.IR_VERSION
    producer_name: str = ""
    producer_version: str = ""
    domain: str = ""
    model_version: int = 0
    doc_string: str = ""
    metadata_props: dict[str, str] = field(default_factory=dict)

    def opset(self, domain: str) -> int | None:
        return self.opset_imports.get(normalize_domain(domain))


def normalize_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


# --------------------------------------------------------------------------- from proto


def _tensor_to_array(tensor: onnx.TensorProto, base_dir: str | None) -> np.ndarray:
    array = numpy_helper.to_array(tensor, base_dir or "")
    if array.dtype.kind == "S":  # strings come back as bytes
        array = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array) if array.size else array.astype(object)
    elif array.dtype.kind == "U":
        array = array.astype(object)
    return array


def _sparse_to_array(sparse: onnx.SparseTensorProto, base_dir: str | None) -> np.ndarray:
    values = _tensor_to_array(sparse.values, base_dir)
    indices = _tensor_to_array(sparse.indices, base_dir).astype(np.int64)
    dense = np.zeros(tuple(sparse.dims), dtype=values.dtype)
    if indices.ndim == 2:  # [NNZ, rank] coordinates
        dense[tuple(indices.T)] = values
    else:  # linearized indices
        dense.reshape(-1)[indices] = values
    return dense


def _parse_attribute(attr: AttributeProto, base_dir: str | None) -> Any:
    t = attr.type
    if t == A.FLOAT:
        return float(attr.f)
    if t == A.INT:
        return int(attr.i)
    if t == A.STRING:
        return attr.s.decode("utf-8", errors="surrogateescape")
    if t == A.TENSOR:
        return _tensor_to_array(attr.t, base_dir)
    if t == A.SPARSE_TENSOR:
        return _sparse_to_array(attr.sparse_tensor, base_dir)
    if t == A.GRAPH:
        return graph_from_proto(attr.g, base_dir)
    if t == A.TYPE_PROTO:
        return attr.tp
    if t == A.FLOATS:
        return [float(x) for x in attr.floats]
    if t == A.INTS:
        return [int(x) for x in attr.ints]
    if t == A.STRINGS:
        return [s.decode("utf-8", errors="surrogateescape") for s in attr.strings]
    if t == A.TENSORS:
        return [_tensor_to_array(x, base_dir) for x in attr.tensors]
    if t == A.SPARSE_TENSORS:
        return [_sparse_to_array(x, base_dir) for x in attr.sparse_tensors]
    if t == A.GRAPHS:
        return [graph_from_proto(g, base_dir) for g in attr.graphs]
    if t == A.TYPE_PROTOS:
        return list(attr.type_protos)
    raise ValueError(f"attribute '{attr.name}' has unsupported type {t}")


def node_from_proto(proto: onnx.NodeProto, base_dir: str | None = None) -> Node:
    attributes = {}
    for attr in proto.attribute:
        if attr.ref_attr_name:
            raise ValueError(
                f"node '{proto.name}' ({proto.op_type}): attribute '{attr.name}' refers to "
                f"function attribute '{attr.ref_attr_name}' outside a function body"
            )
        attributes[attr.name] = Attribute(attr.type, _parse_attribute(attr, base_dir))
    return Node(
        op_type=proto.op_type,
        inputs=list(proto.input),
        outputs=list(proto.output),
        attributes=attributes,
        domain=normalize_domain(proto.domain),
        name=proto.name,
    )


def graph_from_proto(proto: onnx.GraphProto, base_dir: str | None = None) -> Graph:
    initializers = {t.name: _tensor_to_array(t, base_dir) for t in proto.initializer}
    for sparse in proto.sparse_initializer:
        initializers[sparse.values.name] = _sparse_to_array(sparse, base_dir)
    return Graph(
        nodes=[node_from_proto(n, base_dir) for n in proto.node],
        inputs=[ValueInfo(vi.name, vi.type if vi.HasField("type") else None) for vi in proto.input],
        outputs=[ValueInfo(vi.name, vi.type if vi.HasField("type") else None) for vi in proto.output],
        initializers=initializers,
        value_info={vi.name: vi.type for vi in proto.value_info if vi.HasField("type")},
        name=proto.name,
        doc_string=proto.doc_string,
    )


def model_from_proto(proto: onnx.ModelProto, base_dir: str | None = None) -> Model:
    opsets: dict[str, int] = {}
    for imp in proto.opset_import:
        opsets[normalize_domain(imp.domain)] = int(imp.version)
    return Model(
        graph=graph_from_proto(proto.graph, base_dir),
        opset_imports=opsets,
        ir_version=proto.ir_version,
        producer_name=proto.producer_name,
        producer_version=proto.producer_version,
        domain=proto.domain,
        model_version=proto.model_version,
        doc_string=proto.doc_string,
        metadata_props={p.key: p.value for p in proto.metadata_props},
    )


# --------------------------------------------------------------------------- to proto


def _array_to_tensor(array: np.ndarray, name: str = "") -> onnx.TensorProto:
    if array.dtype == object:
        return helper.make_tensor(name, onnx.TensorProto.STRING, array.shape, [str(s).encode() for s in array.flat])
    return numpy_helper.from_array(np.asarray(array), name)


def _attribute_to_proto(name: str, attr: Attribute) -> AttributeProto:
    value = attr.value
    if attr.type == A.GRAPH:
        value = graph_to_proto(value)
    elif attr.type == A.GRAPHS:
        value = [graph_to_proto(g) for g in value]
    elif attr.type in (A.TENSOR, A.SPARSE_TENSOR):
        value = _array_to_tensor(value)
        return helper.make_attribute(name, value, attr_type=A.TENSOR)
    elif attr.type in (A.TENSORS, A.SPARSE_TENSORS):
        value = [_array_to_tensor(v) for v in value]
        return helper.make_attribute(name, value, attr_type=A.TENSORS)
    return helper.make_attribute(name, value, attr_type=attr.type)


def node_to_proto(node: Node) -> onnx.NodeProto:
    proto = helper.make_node(node.op_type, node.inputs, node.outputs, name=node.name or None, domain=node.domain or None)
    proto.attribute.extend(_attribute_to_proto(k, v) for k, v in node.attributes.items())
    return proto


def _value_info_proto(name: str, type_proto: onnx.TypeProto | None) -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto(name=name)
    if type_proto is not None:
        vi.type.CopyFrom(type_proto)
    return vi


def graph_to_proto(graph: Graph) -> onnx.GraphProto:
    proto = onnx.GraphProto(name=graph.name, doc_string=graph.doc_string)
    proto.node.extend(node_to_proto(n) for n in graph.nodes)
    proto.input.extend(_value_info_proto(vi.name, vi.type) for vi in graph.inputs)
    proto.output.extend(_value_info_proto(vi.name, vi.type) for vi in graph.outputs)
    proto.initializer.extend(_array_to_tensor(arr, name) for name, arr in graph.initializers.items())
    proto.value_info.extend(_value_info_proto(k, v) for k, v in graph.value_info.items())
    return proto


def model_to_proto(model: Model) -> onnx.ModelProto:
    proto = onnx.ModelProto(
        ir_version=model.ir_version,
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        domain=model.domain,
        model_version=model.model_version,
        doc_string=model.doc_string,
    )
    proto.graph.CopyFrom(graph_to_proto(model.graph))
    for domain, version in model.opset_imports.items():
        proto.opset_import.add(domain=domain, version=version)
    for key, value in model.metadata_props.items():
        proto.metadata_props.add(key=key, value=value)
    return proto
