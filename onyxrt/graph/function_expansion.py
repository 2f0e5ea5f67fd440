"""Expanding an op into the function body its ONNX schema defines.

Many ONNX ops (Celu, LayerNormalization, GroupNormalization, Mish, ...) are
specified as functions of simpler ops. When no provider has a kernel for such a
node, it is replaced by the body, which the providers can run op by op —
the same thing onnxruntime does for function ops it has no kernel for.
"""

from __future__ import annotations

from typing import Callable, Mapping

import onnx
import onnx.defs
import onnx_ir as ir

from .builder import UniqueNames, replace_node, subgraphs
from .opsets import opset_for

# Bodies may hold function ops themselves; a schema whose body calls itself must not loop forever.
_MAX_NESTING = 8


def _schema(node: ir.Node, opset: int) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return None


def schema_function(node: ir.Node, opset: int) -> onnx.FunctionProto | None:
    """The function body defining ``node`` at ``opset``, or None if its schema has none.

    Context-dependent bodies (their ops depend on the input types) are built from
    the types of the node's input values; None when one of them is unknown.
    """
    schema = _schema(node, opset)
    if schema is None:
        return None
    if schema.has_function:
        versions = [v for v in schema.function_opset_versions if v <= opset]
        body = schema.get_function_with_opset_version(max(versions)) if versions else schema.function_body
        return _as_function(body)
    if schema.has_context_dependent_function:
        types = [_type_proto(value) for value in node.inputs]
        if any(t is None for t in types):
            return None
        proto = ir.serde.serialize_node(node).SerializeToString()
        encoded = [t.SerializeToString() for t in types]
        versions = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
        try:
            if versions:
                body = schema.get_context_dependent_function_with_opset_version(max(versions), proto, encoded)
            else:
                body = schema.get_context_dependent_function(proto, encoded)
        except Exception:  # noqa: BLE001 - the schema could not build a body for these types
            return None
        return _as_function(body) if body else None
    return None


def _type_proto(value: ir.Value | None) -> onnx.TypeProto | None:
    """The type of an input as the schema's body builder takes it (empty for an omitted input)."""
    if value is None:
        return onnx.TypeProto()
    if value.type is None or value.type.dtype == ir.DataType.UNDEFINED:
        return None
    proto = ir.serde.serialize_type(value.type)
    if value.shape is not None and isinstance(value.type, ir.TensorType):
        ir.serde.serialize_shape_into(proto, value.shape)
    return proto


def _as_function(body: bytes | onnx.FunctionProto) -> onnx.FunctionProto:
    if isinstance(body, onnx.FunctionProto):
        return body
    return onnx.FunctionProto.FromString(body)


def _attribute_values(node: ir.Node, function: ir.Function, opset: int) -> dict[str, ir.Attr]:
    """The attributes the body's references resolve to: the node's, else the function's or schema's defaults."""
    values: dict[str, ir.Attr] = {}
    schema = _schema(node, opset)
    if schema is not None:
        for name, spec in schema.attributes.items():
            if spec.default_value.type != onnx.AttributeProto.UNDEFINED:
                values[name] = ir.serde.deserialize_attribute(spec.default_value)
    values.update({name: attr for name, attr in function.attributes.items() if attr.value is not None})
    values.update(node.attributes)
    return values


class _Inliner:
    """Copies a function body's nodes into the caller's scope, with fresh value and node names."""

    def __init__(self, attributes: Mapping[str, ir.Attr], names: UniqueNames, prefix: str) -> None:
        self.attributes = attributes
        self.names = names
        self.prefix = prefix
        self.values: dict[ir.Value, ir.Value | None] = {}

    def fresh(self, name: str | None) -> str:
        return self.names.fresh(self.prefix + (name or "value"))

    def copy(self, value: ir.Value) -> ir.Value:
        """A renamed copy of a subgraph input or initializer, which the subgraph's nodes then read."""
        shape = value.shape.copy() if value.shape is not None else None
        copy = ir.Value(name=self.fresh(value.name), type=value.type, shape=shape, const_value=value.const_value)
        self.values[value] = copy
        return copy

    def node(self, node: ir.Node) -> ir.Node:
        inputs = [None if value is None else self.values.get(value, value) for value in node.inputs]
        attributes = [resolved for attr in node.attributes.values() if (resolved := self.attribute(attr)) is not None]
        outputs = [ir.Value(name=self.fresh(value.name) if value.name else "") for value in node.outputs]
        for old, new in zip(node.outputs, outputs):
            self.values[old] = new
        return ir.Node(node.domain, node.op_type, inputs, attributes, outputs=outputs, name=self.fresh(node.name or node.op_type))

    def attribute(self, attr: ir.Attr) -> ir.Attr | None:
        if attr.is_ref():
            source = self.attributes.get(attr.ref_attr_name or "")
            if source is None:
                return None  # the caller left an optional attribute unset
            return ir.Attr(attr.name, source.type, source.value)
        if attr.type == ir.AttributeType.GRAPH:
            return ir.Attr(attr.name, attr.type, self.graph(attr.as_graph()))
        if attr.type == ir.AttributeType.GRAPHS:
            return ir.Attr(attr.name, attr.type, [self.graph(g) for g in attr.as_graphs()])
        return attr

    def graph(self, graph: ir.Graph) -> ir.Graph:
        """A copy of a body's subgraph, reading the inlined values where it captured function-scope ones."""
        inputs = [self.copy(value) for value in graph.inputs]
        initializers = [self.copy(value) for value in graph.initializers.values()]
        nodes = [self.node(node) for node in graph]
        outputs = [self.values.get(value, value) for value in graph.outputs]
        return ir.Graph(inputs, outputs, nodes=nodes, initializers=initializers, name=graph.name)


def _deserialize(function: onnx.FunctionProto) -> tuple[ir.Function, list[ir.Value | None]]:
    """The body as IR, and its outputs (None for one the body leaves unset, as some built for fewer outputs do)."""
    defined = set(function.input) | {name for node in function.node for name in node.output}
    proto = onnx.FunctionProto()
    proto.CopyFrom(function)
    del proto.output[:]
    proto.output.extend(name for name in function.output if name in defined)
    body = ir.serde.deserialize_function(proto)
    by_name = dict(zip(proto.output, body.outputs))
    return body, [by_name.get(name) for name in function.output]


def expand_node(
    node: ir.Node, function: onnx.FunctionProto, opset: int, names: UniqueNames | None = None
) -> list[ir.Node]:
    """Replace ``node`` in its graph by the body of ``function``; returns the inserted nodes.

    The body is inserted where ``node`` was, reading ``node``'s inputs; the uses
    and graph outputs of ``node``'s outputs move to the body's values, which take
    their names. Attribute references resolve to the node's attributes, else the
    function's and schema's defaults. ``names`` hands out the fresh names (by
    default, names unused in ``node``'s graph and the graphs nested in it).
    """
    graph = node.graph
    if graph is None:
        raise ValueError(f"node '{node.name}' ({node.op_type}) is in no graph")
    body, formal_outputs = _deserialize(function)
    inliner = _Inliner(
        _attribute_values(node, body, opset), names or UniqueNames(graph), f"{node.name or node.op_type}__"
    )
    for formal, actual in zip(body.inputs, node.inputs):
        inliner.values[formal] = actual
    for formal in body.inputs[len(node.inputs) :]:
        inliner.values[formal] = None  # an optional input the caller omitted
    new_nodes = [inliner.node(inner) for inner in body]
    outputs = [None if formal is None else inliner.values.get(formal, formal) for formal in formal_outputs]
    replace_node(node, new_nodes, outputs[: len(node.outputs)])
    return new_nodes


def expand_unsupported(
    graph: ir.Graph, opset_imports: Mapping[str, int], can_run: Callable[[ir.Node, int], bool]
) -> int:
    """Replace every node no provider can run by its schema's function body; returns how many were replaced.

    Subgraphs are expanded too, and so are the nodes of inserted bodies that no
    provider runs either.
    """
    return _expand_nodes(list(graph), opset_imports, can_run, UniqueNames(graph), 0)


def _expand_nodes(
    nodes: list[ir.Node],
    opset_imports: Mapping[str, int],
    can_run: Callable[[ir.Node, int], bool],
    names: UniqueNames,
    nesting: int,
) -> int:
    count = 0
    for node in nodes:
        for sub in subgraphs(node):
            count += _expand_nodes(list(sub), opset_imports, can_run, names, nesting)
        opset = opset_for(node, opset_imports)
        if nesting >= _MAX_NESTING or can_run(node, opset):
            continue
        function = schema_function(node, opset)
        if function is None:
            continue
        body = expand_node(node, function, opset, names)
        count += 1 + _expand_nodes(body, opset_imports, can_run, names, nesting + 1)
    return count


__all__ = ["expand_node", "expand_unsupported", "schema_function"]
