"""Expanding an op into the function body its ONNX schema defines.

Many ONNX ops (Celu, LayerNormalization, GroupNormalization, Mish, ...) are
specified as functions of simpler ops. When no provider has a kernel for such a
node, it is replaced by the body, which the providers can run op by op —
the same thing onnxruntime does for function ops it has no kernel for.
"""

from __future__ import annotations

import itertools
from typing import Callable

import numpy as np
import onnx
import onnx.defs
from onnx import AttributeProto

from .ir import Graph, Node, _attribute_to_proto, node_from_proto, node_to_proto

_counter = itertools.count()


def schema_function(node: Node, opset: int, input_types: list[onnx.TypeProto | None]) -> onnx.FunctionProto | None:
    """The function body defining ``node`` at ``opset``, or None if its schema has none."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return None
    if schema.has_function:
        versions = [v for v in schema.function_opset_versions if v <= opset]
        body = schema.get_function_with_opset_version(max(versions)) if versions else schema.function_body
        return _as_function(body)
    if schema.has_context_dependent_function:
        if any(t is None for t in input_types):
            return None
        proto = node_to_proto(node)
        types = [t.SerializeToString() for t in input_types]
        versions = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
        try:
            if versions:
                body = schema.get_context_dependent_function_with_opset_version(max(versions), proto.SerializeToString(), types)
            else:
                body = schema.get_context_dependent_function(proto.SerializeToString(), types)
        except Exception:  # noqa: BLE001 - the schema could not build a body for these types
            return None
        return _as_function(body) if body else None
    return None


def _as_function(body: bytes | onnx.FunctionProto) -> onnx.FunctionProto:
    if isinstance(body, onnx.FunctionProto):
        return body
    function = onnx.FunctionProto()
    function.ParseFromString(body)
    return function


def _schema_defaults(node: Node, opset: int) -> dict[str, AttributeProto]:
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return {}
    return {name: a.default_value for name, a in schema.attributes.items() if a.default_value.type != AttributeProto.UNDEFINED}


def _rename_captures(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Point a body subgraph's reads of function-scope values at their inlined names."""
    for inner in graph.node:
        for i, name in enumerate(inner.input):
            if name in rename:
                inner.input[i] = rename[name]
        for attr in inner.attribute:
            for sub in [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs):
                _rename_captures(sub, rename)
    for output in graph.output:
        if output.name in rename:
            output.name = rename[output.name]


def inline_function(node: Node, function: onnx.FunctionProto, opset: int) -> list[Node]:
    """The body of ``function`` as IR nodes computing ``node``'s outputs from its inputs."""
    prefix = f"{node.name or node.op_type}__fn{next(_counter)}__"
    rename: dict[str, str] = {"": ""}
    for formal, actual in itertools.zip_longest(function.input, node.inputs, fillvalue=""):
        if formal:
            rename[formal] = actual
    for formal, actual in zip(function.output, node.outputs):
        rename[formal] = actual or prefix + formal
    defaults = _schema_defaults(node, opset)
    defaults.update({a.name: a for a in function.attribute_proto})
    caller = {name: _attribute_to_proto(name, attr) for name, attr in node.attributes.items()}

    nodes = []
    for inner in function.node:
        proto = onnx.NodeProto()
        proto.CopyFrom(inner)
        resolved = []
        for attr in proto.attribute:
            if attr.ref_attr_name:
                source = caller.get(attr.ref_attr_name) or defaults.get(attr.ref_attr_name)
                if source is None:
                    continue  # the caller left an optional attribute unset
                value = AttributeProto()
                value.CopyFrom(source)
                value.name = attr.name
                resolved.append(value)
            else:
                resolved.append(attr)
        del proto.attribute[:]
        proto.attribute.extend(resolved)
        for attr in proto.attribute:
            for sub in [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs):
                _rename_captures(sub, rename)
        for i, name in enumerate(proto.input):
            proto.input[i] = rename.setdefault(name, prefix + name) if name else ""
        for i, name in enumerate(proto.output):
            proto.output[i] = rename.setdefault(name, prefix + name) if name else ""
        proto.name = prefix + (inner.name or inner.op_type)
        nodes.append(node_from_proto(proto))
    return nodes


def value_type(graph: Graph, name: str) -> onnx.TypeProto | None:
    """The type of ``name`` in ``graph`` as far as it is known (initializers included)."""
    known = graph.type_of(name)
    if known is not None:
        return known
    array = graph.initializers.get(name)
    if isinstance(array, np.ndarray):
        from .types import onnx_elem_type

        return onnx.helper.make_tensor_type_proto(onnx_elem_type(array.dtype), array.shape)
    return None


def expand_unsupported(graph: Graph, opsets: dict[str, int], can_run: Callable[[Node, int], bool], depth: int = 0) -> None:
    """Replace every node no provider can run by its schema's function body (recursively, subgraphs included)."""
    expanded: list[Node] = []
    for node in graph.nodes:
        for sub in node.subgraphs():
            expand_unsupported(sub, opsets, can_run, depth)
        opset = opsets.get(node.domain, 1)
        if depth < 8 and not can_run(node, opset):
            function = schema_function(node, opset, [value_type(graph, n) if n else onnx.TypeProto() for n in node.inputs])
            if function is not None:
                body = Graph(inline_function(node, function, opset), graph.inputs, [], {}, graph.value_info)
                expand_unsupported(body, opsets, can_run, depth + 1)
                expanded.extend(body.nodes)
                continue
        expanded.append(node)
    graph.nodes = expanded


__all__ = ["expand_unsupported", "inline_function", "schema_function"]
