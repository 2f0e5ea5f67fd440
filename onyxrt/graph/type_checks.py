"""Load-time type checks of every node against its ONNX schema, as onnxruntime makes them.

onnxruntime resolves the types of a graph at load, node by node in graph order, and
refuses a model when:

- an input's type is not one its schema's formal parameter allows (INVALID_GRAPH);
- one type parameter is bound to two types by a node's inputs (FAIL);
- the type a node produces differs from the type declared for that value as a graph
  output or in value_info (FAIL);
- a node reads an initializer whose data type is not the type its graph input declares (FAIL);
- a Loop, Scan or SequenceMap body declares an input of another element type than the node
  passes, or an If's branches give an output two element types (FAIL).

Inside a subgraph (If/Loop/Scan bodies, ...) each of these is FAIL, reported at the node
that owns the subgraph, as onnxruntime reports errors of subgraph inference. Ops without an
ONNX schema (com.microsoft, custom domains) are not checked; their outputs keep their
declared or inferred types, and so does any value whose type these rules cannot tell.
Constant outputs are not checked either: onnxruntime turns Constant nodes into initializers
before it checks types.
"""

from __future__ import annotations

import functools
from collections import ChainMap
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

import onnx
from onnx import defs

from ..errors import Fail, InvalidGraph, OnyxRuntimeError
from .opsets import normalize_domain, onnx_schema

_GRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
_ELEM_TYPE_NAMES = {
    value: name.lower() for name, value in onnx.TensorProto.DataType.items() if value != onnx.TensorProto.UNDEFINED
}
_ELEM_TYPES = {name: value for value, name in _ELEM_TYPE_NAMES.items()}
_CONSTANT_ATTRIBUTE_TYPES = {
    "value_float": "tensor(float)", "value_floats": "tensor(float)", "value_int": "tensor(int64)",
    "value_ints": "tensor(int64)", "value_string": "tensor(string)", "value_strings": "tensor(string)",
}


@dataclass(frozen=True)
class _Formal:
    """One formal input or output of a schema: its type parameter (or type) and the types it allows."""

    type_str: str
    allowed: frozenset[str]
    homogeneous: bool  # False for heterogeneous variadics (Loop/Scan state), which bind no parameter


@dataclass(frozen=True)
class _Signature:
    inputs: tuple[_Formal, ...]
    outputs: tuple[_Formal, ...]


def check_types(model: onnx.ModelProto, inferred: onnx.ModelProto) -> None:
    """Raise onnxruntime's typed error for the first node whose types break its schema (module docstring).

    ``inferred`` is ``model`` after ONNX shape inference, with the same nodes in the same order:
    it gives the types of values these rules cannot tell by themselves (outputs of Cast-like
    ops bound by attributes, of ops without a schema, ...).
    """
    opsets = {normalize_domain(opset.domain): opset.version for opset in model.opset_import}
    _check_graph(model.graph, inferred.graph, opsets, {})


def _check_graph(
    graph: onnx.GraphProto, inferred: onnx.GraphProto | None, opsets: Mapping[str, int], outer: Mapping[str, str]
) -> list[str | None]:
    """Check ``graph``'s nodes in order; returns the types of its outputs where known.

    ``outer`` maps the names enclosing graphs define to their types.
    """
    types: MutableMapping[str, str] = ChainMap({}, outer) if outer else {}
    initializer_types = {
        tensor.name: f"tensor({_ELEM_TYPE_NAMES.get(tensor.data_type, '')})" for tensor in graph.initializer
    }
    types.update(initializer_types)
    for info in graph.input:  # a graph input's declaration wins over the initializer that defaults it
        _set_known(types, info.name, info.type)
    # Initializers whose data type is not the type their graph input declares (checked at each use).
    retyped = {name: data_type for name, data_type in initializer_types.items() if types[name] != data_type}
    declared: dict[str, str] = {}
    for info in (*graph.value_info, *graph.output):
        _set_known(declared, info.name, info.type)
    inferred_nodes = inferred.node if inferred is not None and len(inferred.node) == len(graph.node) else None
    fallback_types = _FallbackTypes(inferred)

    for index, node in enumerate(graph.node):
        if retyped:
            _check_initializer_uses(node, index, retyped, types)
        signature = _signature_of(node, opsets)
        if signature is None:  # no ONNX schema: nothing to check against
            for name in node.output:
                if name:
                    _set_output_type(types, name, declared.get(name) or fallback_types.get(name))
            continue
        bindings = _check_inputs(node, index, signature, types)
        body_outputs: list[str | None] = []
        if any(attr.type in _GRAPH_ATTRS for attr in node.attribute):
            inferred_node = inferred_nodes[index] if inferred_nodes is not None else None
            body_outputs = _check_subgraphs(node, index, inferred_node, types, opsets)
        inferred_by_schema: dict[str, str] | None = None
        for position, name in enumerate(node.output):
            if not name:
                continue
            existing = declared.get(name)
            if node.op_type == "Constant":
                # onnxruntime makes Constants initializers: their data's type holds, whatever is declared
                produced = _constant_type(node) or existing
            elif not signature.outputs:
                produced = None
            else:
                formal = signature.outputs[min(position, len(signature.outputs) - 1)]
                produced = _produced_type(node, formal, bindings)
                if produced is None and position < len(body_outputs):
                    produced = body_outputs[position]
                if produced is None and existing is not None:
                    if inferred_by_schema is None:
                        inferred_by_schema = _infer_node(node, types, opsets)
                    produced = inferred_by_schema.get(name)
                if produced is not None and existing is not None and produced != existing:
                    raise Fail(
                        f"Type Error: Type ({existing}) of output arg ({name}) of {_describe(node, index)} "
                        f"does not match expected type ({produced})."
                    )
            _set_output_type(types, name, produced or existing or fallback_types.get(name))
    return [types.get(info.name) or declared.get(info.name) for info in graph.output]


def _check_initializer_uses(
    node: onnx.NodeProto, index: int, retyped: Mapping[str, str], types: Mapping[str, str]
) -> None:
    for name in node.input:
        if name in retyped:
            raise Fail(
                f"Type Error: Data in initializer '{name}' has element type {retyped[name]} but usage of initializer "
                f"in graph expects {types[name]} (input of {_describe(node, index)})."
            )


def _check_inputs(node: onnx.NodeProto, index: int, signature: _Signature, types: Mapping[str, str]) -> dict[str, str]:
    """Each typed input against its formal parameter; returns the type parameters the inputs bind."""
    bindings: dict[str, str] = {}
    last = len(signature.inputs) - 1
    for position, name in enumerate(node.input):
        value_type = types.get(name) if name else None
        if value_type is None or last < 0:
            continue
        formal = signature.inputs[min(position, last)]
        if value_type not in formal.allowed:
            raise InvalidGraph(
                f"This is an invalid model. Type Error: Type '{value_type}' of input parameter ({name}) of "
                f"operator ({node.op_type}) in {_describe(node, index)} is invalid."
            )
        if formal.homogeneous:
            bound = bindings.setdefault(formal.type_str, value_type)
            if bound != value_type:
                raise Fail(
                    f"Type Error: Type parameter ({formal.type_str}) of Optype ({node.op_type}) bound to different "
                    f"types ({bound} and {value_type}) in {_describe(node, index)} (input '{name}')."
                )
    return bindings


def _check_subgraphs(
    node: onnx.NodeProto,
    index: int,
    inferred_node: onnx.NodeProto | None,
    types: Mapping[str, str],
    opsets: Mapping[str, int],
) -> list[str | None]:
    """Check the node's bodies with the outer values in scope; their errors become FAIL at this node.

    Returns the types of the node's outputs as its bodies produce them (If, Loop, Scan,
    SequenceMap; empty for other ops).
    """
    inferred_graphs = {}
    if inferred_node is not None:
        inferred_graphs = {attr.name: _attribute_graphs(attr) for attr in inferred_node.attribute}
    body_outputs: dict[str, list[str | None]] = {}
    try:
        for attr in node.attribute:
            if attr.type not in _GRAPH_ATTRS:
                continue
            inferred_bodies = inferred_graphs.get(attr.name, [])
            for position, body in enumerate(_attribute_graphs(attr)):
                if node.op_type in ("Loop", "Scan", "SequenceMap") and normalize_domain(node.domain) == "":
                    _check_body_inputs(node, body, types, opsets[""])
                inferred_body = inferred_bodies[position] if position < len(inferred_bodies) else None
                body_outputs[attr.name] = _check_graph(body, inferred_body, opsets, types)
    except OnyxRuntimeError as exc:
        raise Fail(
            f"{_describe(node, index)} [TypeInferenceError] Graph attribute inferencing failed: {exc.message}"
        ) from None
    return _control_flow_outputs(node, index, body_outputs)


def _control_flow_outputs(
    node: onnx.NodeProto, index: int, body_outputs: Mapping[str, list[str | None]]
) -> list[str | None]:
    """The types of a control-flow node's outputs, from the types its bodies' outputs have."""
    if normalize_domain(node.domain) != "":
        return []
    body_types = body_outputs.get("body", [])
    if node.op_type == "If":
        then_types, else_types = body_outputs.get("then_branch", []), body_outputs.get("else_branch", [])
        for position, (then_type, else_type) in enumerate(zip(then_types, else_types)):
            if _is_tensor(then_type) and _is_tensor(else_type) and then_type != else_type:
                raise Fail(
                    f"{_describe(node, index)} [TypeInferenceError] Mismatched tensor element type: output {position} "
                    f"is {then_type} in then_branch but {else_type} in else_branch."
                )
        return list(then_types)
    if node.op_type == "Loop":  # the body's first output is the condition; scan outputs keep their element type
        return [t if _is_tensor(t) else None for t in body_types[1:]]
    if node.op_type == "Scan":
        return [t if _is_tensor(t) else None for t in body_types]
    if node.op_type == "SequenceMap":
        return [f"seq({t})" if _is_tensor(t) else None for t in body_types]
    return []


def _is_tensor(type_text: str | None) -> bool:
    return type_text is not None and type_text.startswith("tensor(")


def _check_body_inputs(node: onnx.NodeProto, body: onnx.GraphProto, types: Mapping[str, str], opset: int) -> None:
    """Loop state, Scan state and scan inputs, SequenceMap elements: the body declares their element types."""
    if node.op_type == "Loop":
        pairs = zip(node.input[2:], body.input[2:])  # the body's first two inputs are the counter and condition
    elif node.op_type == "Scan" and opset < 9:
        pairs = zip(node.input[1:], body.input)  # Scan-8's first input is sequence_lens
    else:
        pairs = zip(node.input, body.input)
    for outer_name, body_input in pairs:
        outer_type = types.get(outer_name) if outer_name else None
        if outer_type is not None and node.op_type == "SequenceMap" and outer_type.startswith("seq("):
            outer_type = outer_type[len("seq(") : -1]  # the body maps one element at a time
        body_elem = _tensor_elem_type(body_input.type)
        if outer_type is None or body_elem is None or not outer_type.startswith("tensor("):
            continue
        if outer_type != f"tensor({_ELEM_TYPE_NAMES.get(body_elem)})":
            raise Fail(
                f"Node: Tensor element type mismatch: {node.op_type} input '{outer_name}' is {outer_type} but its "
                f"body declares input '{body_input.name}' as tensor({_ELEM_TYPE_NAMES.get(body_elem)})."
            )


def _produced_type(node: onnx.NodeProto, formal: _Formal, bindings: Mapping[str, str]) -> str | None:
    """The type the node gives an output, where its schema (or Cast's ``to``) says it; else None."""
    if formal.homogeneous and formal.type_str in bindings:
        return bindings[formal.type_str]
    if len(formal.allowed) == 1:
        return next(iter(formal.allowed))
    if node.op_type == "Cast":
        for attr in node.attribute:
            if attr.name == "to" and attr.i in _ELEM_TYPE_NAMES:
                return f"tensor({_ELEM_TYPE_NAMES[attr.i]})"
    return None


def _infer_node(node: onnx.NodeProto, types: Mapping[str, str], opsets: Mapping[str, int]) -> dict[str, str]:
    """The output types ONNX's inference function of the node's schema gives; empty where it cannot tell.

    Only asked for outputs with a declared type that the schema's constraints do not fix (types
    bound by attributes: Bernoulli, EyeLike, DequantizeLinear, ...). Inference errors are not
    fatal here: without shapes and constant inputs it may fail where onnxruntime's succeeds.
    """
    input_types = {}
    for name in node.input:
        if name:
            text = types.get(name)
            if text is None:
                return {}
            input_types[name] = _type_proto(text)
    domain = normalize_domain(node.domain)
    try:
        schema = defs.get_schema(node.op_type, opsets[domain], domain)
        outputs = onnx.shape_inference.infer_node_outputs(
            schema, node, input_types, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()]
        )
    except Exception:  # noqa: BLE001 - see docstring
        return {}
    produced = {}
    for name, type_proto in outputs.items():
        _set_known(produced, name, type_proto)
    return produced


def _constant_type(node: onnx.NodeProto) -> str | None:
    """The type of a Constant's value, whichever attribute holds it."""
    for attr in node.attribute:
        if attr.name in ("value", "sparse_value"):  # sparse constants are loaded dense, as onnxruntime does
            data_type = attr.t.data_type if attr.name == "value" else attr.sparse_tensor.values.data_type
            name = _ELEM_TYPE_NAMES.get(data_type)
            return None if name is None else f"tensor({name})"
        if attr.name in _CONSTANT_ATTRIBUTE_TYPES:
            return _CONSTANT_ATTRIBUTE_TYPES[attr.name]
    return None


class _FallbackTypes:
    """Types from shape inference, read from its value_info only when a rule cannot tell a type."""

    def __init__(self, inferred: onnx.GraphProto | None) -> None:
        self._graph = inferred
        self._types: dict[str, str] | None = None

    def get(self, name: str) -> str | None:
        if self._types is None:
            self._types = {}
            if self._graph is not None:
                for info in (*self._graph.value_info, *self._graph.output):
                    _set_known(self._types, info.name, info.type)
        return self._types.get(name)


def _set_known(types: MutableMapping[str, str], name: str, type_proto: onnx.TypeProto) -> None:
    text = _type_str(type_proto)
    if text is not None:
        types[name] = text


def _set_output_type(types: MutableMapping[str, str], name: str, value_type: str | None) -> None:
    if value_type is None:
        types.pop(name, None)  # an output shadows any outer value of that name, even untyped
    else:
        types[name] = value_type


def _type_str(type_proto: onnx.TypeProto) -> str | None:
    """ONNX's spelling of a type (``tensor(float)``, ``seq(map(int64, float))``); None where not fully known."""
    kind = type_proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        name = _ELEM_TYPE_NAMES.get(getattr(type_proto, kind).elem_type)
        return None if name is None else f"{'tensor' if kind == 'tensor_type' else 'sparse_tensor'}({name})"
    if kind in ("sequence_type", "optional_type"):
        inner = _type_str(getattr(type_proto, kind).elem_type)
        return None if inner is None else f"{'seq' if kind == 'sequence_type' else 'optional'}({inner})"
    if kind == "map_type":
        key = _ELEM_TYPE_NAMES.get(type_proto.map_type.key_type)
        value = _type_str(type_proto.map_type.value_type)
        if key is None or value is None:
            return None
        # ONNX writes a map's tensor value type by its element type alone: map(string, float)
        if value.startswith("tensor("):
            value = value[len("tensor(") : -1]
        return f"map({key}, {value})"
    return None


def _type_proto(text: str) -> onnx.TypeProto:
    """The TypeProto (without shape) of a type spelled as :func:`_type_str` spells it."""
    kind, inner = text[:-1].split("(", 1)
    if kind == "tensor":
        return onnx.helper.make_tensor_type_proto(_ELEM_TYPES[inner], None)
    if kind == "sparse_tensor":
        return onnx.helper.make_sparse_tensor_type_proto(_ELEM_TYPES[inner], None)
    if kind == "seq":
        return onnx.helper.make_sequence_type_proto(_type_proto(inner))
    if kind == "optional":
        return onnx.helper.make_optional_type_proto(_type_proto(inner))
    key, value = inner.split(", ", 1)
    value_proto = _type_proto(value) if "(" in value else onnx.helper.make_tensor_type_proto(_ELEM_TYPES[value], None)
    return onnx.helper.make_map_type_proto(_ELEM_TYPES[key], value_proto)


def _tensor_elem_type(type_proto: onnx.TypeProto) -> int | None:
    if type_proto.WhichOneof("value") == "tensor_type" and type_proto.tensor_type.elem_type in _ELEM_TYPE_NAMES:
        return type_proto.tensor_type.elem_type
    return None


def _attribute_graphs(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attr.type == onnx.AttributeProto.GRAPH:
        return [attr.g]
    if attr.type == onnx.AttributeProto.GRAPHS:
        return list(attr.graphs)
    return []


def _signature_of(node: onnx.NodeProto, opsets: Mapping[str, int]) -> _Signature | None:
    domain = normalize_domain(node.domain)
    version = opsets.get(domain)
    return None if version is None else _signature(node.op_type, domain, version)


@functools.lru_cache(maxsize=4096)  # bounded: op types come from untrusted files
def _signature(op_type: str, domain: str, version: int) -> _Signature | None:
    schema = onnx_schema(op_type, domain, version)
    if schema is None:
        return None

    def formal(parameter: defs.OpSchema.FormalParameter) -> _Formal:
        return _Formal(parameter.type_str, frozenset(parameter.types), parameter.is_homogeneous)

    return _Signature(tuple(map(formal, schema.inputs)), tuple(map(formal, schema.outputs)))


def _describe(node: onnx.NodeProto, index: int) -> str:
    return f"node {index} ('{node.name}', {node.op_type})"
