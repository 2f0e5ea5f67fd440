"""Structural checks of a ModelProto, run before anything native or expensive reads it.

ONNX shape inference and onnx_ir deserialization assume a well-formed graph: an undefined
node input can crash inference (SIGSEGV), and malformed fields surface as internal
exceptions. :func:`validate_model` rejects such models first, with onnxruntime's error
classes and messages naming the node and value:

- every node input is defined in scope (graph inputs, initializers, node outputs, outer
  scopes for subgraphs; INVALID_GRAPH) and every graph output is produced (FAIL, as onnxruntime);
- no value is defined twice by nodes or graph inputs (FAIL);
- each node's input/output counts fit its ONNX schema at the model's opset, and no
  required input or output is empty (INVALID_GRAPH);
- each node's attributes fit its schema: required ones present, none unknown to it, each of
  the schema's type, and no attribute without a type (INVALID_GRAPH);
- names are valid UTF-8, tensor data types and declared element types are known ONNX
  types (FAIL for tensors, INVALID_ARGUMENT for declared types, as onnxruntime).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence, Set as AbstractSet
from typing import NoReturn

import onnx
from onnx import defs

from ..errors import Fail, InvalidArgument, InvalidGraph
from .opsets import onnx_schema

_KNOWN_DATA_TYPES = frozenset(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}
_DECLARABLE_ELEM_TYPES = frozenset(onnx.TensorProto.DataType.values())
_SINGLE = defs.OpSchema.FormalParameterOption.Single
_OPTIONAL = defs.OpSchema.FormalParameterOption.Optional
_GRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
_TENSOR_ATTRS = (onnx.AttributeProto.TENSOR, onnx.AttributeProto.TENSORS)

# (min count, max count, per-formal "must be named") for inputs, then the same for outputs.
_Arity = tuple[int, int, tuple[bool, ...], int, int, tuple[bool, ...]]
# A schema's attributes: the required names, and every name's AttributeProto type.
_AttributeRules = tuple[frozenset[str], dict[str, int]]
_UNRESOLVED = object()
# Domains onnxruntime knows, which a model may use without importing (it takes their latest opset).
_DEFAULTED_DOMAINS = frozenset({
    "", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training", "ai.onnx.preview",
    "com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental", "com.ms.internal.nhwc",
})
# Bits of the narrowest encoding of an element (raw_data; int32_data packs sub-byte types too).
_MIN_BITS = {
    onnx.TensorProto.BOOL: 8, onnx.TensorProto.STRING: 0,
    **{getattr(onnx.TensorProto, name): 4 for name in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, name)},
    **{getattr(onnx.TensorProto, name): 2 for name in ("INT2", "UINT2") if hasattr(onnx.TensorProto, name)},
}
_CONSTANT_OPS = {("Constant", ""), ("Constant", "ai.onnx")}
_CONSTANT_VALUE_ATTRIBUTES = frozenset(
    {"value", "sparse_value", "value_float", "value_floats", "value_int", "value_ints", "value_string", "value_strings"}
)
_MAX_OPSET_VERSION = 2**31 - 1  # onnx.defs takes a C int


def validate_model(model: onnx.ModelProto, serialized_bytes: int | None = None) -> None:
    """Raise a typed onyxrt error if ``model``'s graph is structurally invalid (see module docstring).

    ``serialized_bytes``, the size of the file or bytes the model was read from, bounds how much
    tensor data its dims may declare.
    """
    if model.ir_version > onnx.IR_VERSION:
        raise Fail(f"Unsupported model IR version: {model.ir_version}, max supported IR version: {onnx.IR_VERSION}")
    if not model.opset_import:
        raise Fail(
            "Missing opset in the model. All ModelProtos MUST have at least one entry that specifies which "
            "version of the ONNX OperatorSet is being imported."
        )
    opsets: dict[str, int] = {}
    for opset in model.opset_import:
        domain = _text(opset.domain, "opset domain")
        if not 0 <= opset.version <= _MAX_OPSET_VERSION:
            raise InvalidGraph(f"This is an invalid model. Opset version {opset.version} of domain '{domain}' is out of range.")
        domain = "" if domain == "ai.onnx" else domain
        latest = _latest_opset(domain)
        if latest is not None and opset.version > latest:
            raise Fail(
                f"Opset {opset.version} of domain '{domain or 'ai.onnx'}' is newer than the latest this onyxrt knows ({latest})."
            )
        opsets[domain] = opset.version
    _validate_graph(model.graph, frozenset(), opsets, {}, serialized_bytes, main=True)


def _latest_opset(domain: str) -> int | None:
    """The newest opset of ``domain`` that onnx (or onnxruntime, for com.microsoft) defines; None if unknown."""
    if domain == "":
        return defs.onnx_opset_version()
    if domain == "com.microsoft":
        return 1  # onnxruntime's contrib ops have one opset (it refuses later ones)
    return _latest_schema_opsets().get(domain)


@functools.cache
def _latest_schema_opsets() -> dict[str, int]:
    # Scanning every schema costs ~20 ms, paid only by models importing the rarer domains.
    latest: dict[str, int] = {}
    for schema in defs.get_all_schemas_with_history():
        latest[schema.domain] = max(latest.get(schema.domain, 0), schema.since_version)
    return latest


def _validate_graph(
    graph: onnx.GraphProto, outer: AbstractSet[str], opsets: dict[str, int], arities: dict[tuple[str, str], _Arity | None],
    data_bytes: int | None, main: bool = False,
) -> None:
    """Check ``graph``; ``outer`` holds the names its enclosing graphs define (captures).

    ``arities`` caches, for this model's opsets, each (op_type, domain)'s schema arity;
    ``data_bytes`` is the model's serialized size (None when unknown), which bounds its tensors.
    """
    # A graph's name is only a label: onnxruntime accepts one that is not UTF-8, and so do we.
    graph_name = graph.name if isinstance(graph.name, str) else graph.name.decode("utf-8", "replace")
    defined: set[str] = set()
    for info in graph.input:
        name = _text(info.name, f"input of graph '{graph_name}'")
        if name in defined:
            raise Fail(f"Error: Duplicate definition-site for ({name}) in graph '{graph_name}'.")
        defined.add(name)
        _check_declared_type(info.type, name, graph_io=True)
    initializer_names = set()
    for tensor in graph.initializer:
        name = _text(tensor.name, f"initializer of graph '{graph_name}'")
        _check_tensor_data_type(tensor, f"initializer '{name}'", data_bytes)
        initializer_names.add(name)
    for sparse in graph.sparse_initializer:
        name = _text(sparse.values.name, f"sparse initializer of graph '{graph_name}'")
        _check_tensor_data_type(sparse.values, f"sparse initializer '{name}'", data_bytes)
        initializer_names.add(name)
    for info in graph.value_info:
        _check_declared_type(info.type, _text(info.name, f"value_info of graph '{graph_name}'"))
    # A graph input may share its name with an initializer (the initializer is its default).
    defined |= initializer_names

    # One pass reads each node's fields once (protobuf field access dominates the cost); the
    # checks then run on plain lists and sets, and a node is located only to word an error.
    nodes = graph.node
    node_inputs: list[list[str]] = []
    node_outputs: list[list[str]] = []
    with_attributes: list[int] = []
    arity_suspects: list[tuple[int, _Arity]] = []
    for index, node in enumerate(nodes):
        key = (node.op_type, node.domain)
        if key in _CONSTANT_OPS:
            with_attributes.append(index)  # its value attribute is checked with the others
        arity = arities.get(key, _UNRESOLVED)
        if arity is _UNRESOLVED:
            arity = arities[key] = _resolve_arity(node, index, opsets)
        inputs, outputs = list(node.input), list(node.output)
        node_inputs.append(inputs)
        node_outputs.append(outputs)
        if arity is not None and (
            not (arity[0] <= len(inputs) <= arity[1] and arity[3] <= len(outputs) <= arity[4])
            or "" in inputs
            or "" in outputs
        ):
            arity_suspects.append((index, arity))
        if node.attribute or (node.domain not in opsets and node.domain not in _DEFAULTED_DOMAINS):
            with_attributes.append(index)
        elif arity is not None and _attribute_rules(*_schema_key(node, opsets))[0]:
            arity_suspects.append((index, arity))  # a required attribute is missing
    outputs = [name for names in node_outputs for name in names if name != ""]
    produced = set(outputs)
    if len(produced) != len(outputs) or not produced.isdisjoint(defined):
        _raise_duplicate_output(nodes, node_outputs, defined)
    defined |= produced
    scope = defined | outer if outer else defined
    # onnxruntime's order (graph outputs, node inputs, then schemas), so a model with several
    # faults gets the same error class.
    for info in graph.output:
        name = _text(info.name, f"output of graph '{graph_name}'")
        if name not in scope:
            raise Fail(f"This is an invalid model. Graph output ({name}) does not exist in the graph '{graph_name}'.")
        _check_declared_type(info.type, name, graph_io=True)
    used = set().union(*node_inputs)
    used.discard("")
    if not used <= scope:
        _raise_undefined_input(nodes, node_inputs, scope, graph_name, main)
    _check_acyclic(nodes, node_inputs, node_outputs, graph_name)
    # Per node, as onnxruntime verifies each node against its schema: arity, then attributes.
    suspects = dict(arity_suspects)
    for index in sorted(suspects.keys() | set(with_attributes)):
        node = nodes[index]
        if (node.op_type, node.domain) in _CONSTANT_OPS:
            _check_constant_value(node, index)  # onnxruntime makes it an initializer before verifying nodes
        if node.domain not in opsets and node.domain not in _DEFAULTED_DOMAINS:
            raise InvalidGraph(f"This is an invalid model. {_describe(node, index)}: no opset import for domain '{node.domain}'.")
        if index in suspects:
            _check_arity(node, index, node_inputs[index], node_outputs[index], suspects[index], opsets)
        _check_attribute_rules(node, index, opsets)
        if node.domain in ("", "ai.onnx") and node.op_type in _INFERENCE_HAZARDS:
            _INFERENCE_HAZARDS[node.op_type](node, index)
        if node.attribute:
            _check_attributes(node, index, scope, opsets, arities, data_bytes)


def _check_acyclic(
    nodes: Sequence[onnx.NodeProto], node_inputs: list[list[str]], node_outputs: list[list[str]], graph_name: str
) -> None:
    """Refuse a graph whose nodes cannot be ordered (onnxruntime: FAIL); files may list nodes in any order."""
    producer = {name: index for index, names in enumerate(node_outputs) for name in names if name}
    waiting_on = [0] * len(nodes)
    readers: dict[int, list[int]] = {}
    for index, names in enumerate(node_inputs):
        for source in {producer[name] for name in names if name in producer}:
            waiting_on[index] += 1
            readers.setdefault(source, []).append(index)
    ready = [index for index, count in enumerate(waiting_on) if count == 0]
    ordered = 0
    while ready:
        index = ready.pop()
        ordered += 1
        for reader in readers.get(index, ()):
            waiting_on[reader] -= 1
            if waiting_on[reader] == 0:
                ready.append(reader)
    if ordered != len(nodes):
        stuck = next(index for index, count in enumerate(waiting_on) if count)
        raise Fail(
            f"This is an invalid model. Error: the graph '{graph_name}' is not acyclic: "
            f"{_describe(nodes[stuck], stuck)} is on or after a cycle."
        )


def _raise_duplicate_output(nodes: Sequence[onnx.NodeProto], node_outputs: list[list[str]], defined: set[str]) -> NoReturn:
    seen = set(defined)
    for index, names in enumerate(node_outputs):
        for name in names:
            if type(name) is not str:
                _raise_not_utf8(name, f"output of {_describe(nodes[index], index)}")
            if name in seen:
                raise Fail(
                    f"This is an invalid model. Error: Duplicate definition of name ({name}): "
                    f"{_describe(nodes[index], index)} redefines it."
                )
            if name:
                seen.add(name)
    raise AssertionError("no duplicate output found")  # pragma: no cover - caller saw one


def _raise_undefined_input(
    nodes: Sequence[onnx.NodeProto], node_inputs: list[list[str]], scope: AbstractSet[str], graph_name: str,
    main: bool,
) -> NoReturn:
    for index, names in enumerate(node_inputs):
        for position, name in enumerate(names):
            if type(name) is not str:
                _raise_not_utf8(name, f"input {position} of {_describe(nodes[index], index)}")
            if name and name not in scope:
                # onnxruntime's classes: INVALID_ARGUMENT in the main graph, INVALID_GRAPH in a subgraph
                raise (InvalidArgument if main else InvalidGraph)(
                    f"Invalid model. Node input '{name}' of {_describe(nodes[index], index)} in graph "
                    f"'{graph_name}' is not a graph input, initializer, or output of a node in scope."
                )
    raise AssertionError("no undefined input found")  # pragma: no cover - caller saw one


def _check_attributes(
    node: onnx.NodeProto,
    index: int,
    scope: AbstractSet[str],
    opsets: dict[str, int],
    arities: dict[tuple[str, str], _Arity | None],
    data_bytes: int | None,
) -> None:
    for attr in node.attribute:
        if type(attr.name) is not str:
            _raise_not_utf8(attr.name, f"attribute name of {_describe(node, index)}")
        if attr.type in _GRAPH_ATTRS:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs
            for subgraph in subgraphs:
                _validate_graph(subgraph, scope, opsets, arities, data_bytes)
        elif attr.type == onnx.AttributeProto.STRING or attr.type == onnx.AttributeProto.STRINGS:
            for text in [attr.s] if attr.type == onnx.AttributeProto.STRING else attr.strings:
                try:
                    text.decode("utf-8")
                except UnicodeDecodeError:
                    _raise_not_utf8(text, f"value of attribute '{attr.name}' of {_describe(node, index)}")
        elif attr.type in _TENSOR_ATTRS:
            tensors = [attr.t] if attr.type == onnx.AttributeProto.TENSOR else attr.tensors
            for tensor in tensors:
                _check_tensor_data_type(tensor, f"attribute '{attr.name}' of {_describe(node, index)}", data_bytes)


def _schema_key(node: onnx.NodeProto, opsets: dict[str, int]) -> tuple[str, str, int]:
    domain = "" if node.domain == "ai.onnx" else node.domain
    return node.op_type, domain, opsets.get(domain, 0)


def _check_constant_value(node: onnx.NodeProto, index: int) -> None:
    """A Constant holds exactly one value attribute (onnxruntime: FAIL, when it makes the initializer)."""
    values = [attr.name for attr in node.attribute if attr.name in _CONSTANT_VALUE_ATTRIBUTES]
    if len(values) != 1:
        raise Fail(
            f"This is an invalid model. {_describe(node, index)} must have exactly one value attribute, "
            f"got {values or 'none'}."
        )


def _check_gather_nd(node: onnx.NodeProto, index: int) -> None:
    for attr in node.attribute:
        if attr.name == "batch_dims" and attr.i < 0:
            raise InvalidGraph(f"This is an invalid model. {_describe(node, index)}: batch_dims must be >= 0, got {attr.i}.")


def _check_split(node: onnx.NodeProto, index: int) -> None:
    for attr in node.attribute:
        if attr.name == "num_outputs" and attr.i != len(node.output):
            raise InvalidGraph(
                f"This is an invalid model. {_describe(node, index)}: num_outputs is {attr.i} but the node has "
                f"{len(node.output)} outputs."
            )


# Attribute values the spec forbids that onnx's native inference does not check and crashes on
# (found by tools/fuzz; onnxruntime crashes on them too): refused before inference runs.
_INFERENCE_HAZARDS = {"GatherND": _check_gather_nd, "Split": _check_split}


def _check_attribute_rules(node: onnx.NodeProto, index: int, opsets: dict[str, int]) -> None:
    """``node``'s attributes against its schema's (onnxruntime: INVALID_GRAPH); any typeless attribute is refused."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.UNDEFINED and not attr.ref_attr_name:
            raise InvalidGraph(
                f"This is an invalid model. Attribute '{_text(attr.name, 'attribute name')}' of "
                f"{_describe(node, index)} has no type (type field and data field mismatch)."
            )
    if type(node.op_type) is not str or type(node.domain) is not str:
        return  # reported by the arity check, with the node
    key = _schema_key(node, opsets)
    if key[2] == 0:
        return
    rules = _attribute_rules(*key)
    if rules is None:
        return
    required, types = rules
    present = set()
    for attr in node.attribute:
        name = _text(attr.name, f"attribute name of {_describe(node, index)}")
        if name in present:
            raise InvalidGraph(f"This is an invalid model. {_describe(node, index)} has attribute '{name}' twice.")
        present.add(name)
        expected = types.get(name)
        if expected is None:
            raise InvalidGraph(
                f"This is an invalid model. {_describe(node, index)}: unrecognized attribute '{name}' for "
                f"operator {node.op_type} (opset {key[2]})."
            )
        if attr.type != expected and not attr.ref_attr_name:
            raise InvalidGraph(
                f"This is an invalid model. {_describe(node, index)}: mismatched attribute type in '{name}'. "
                f"Expected: '{onnx.AttributeProto.AttributeType.Name(expected)}', actual: "
                f"'{onnx.AttributeProto.AttributeType.Name(attr.type)}'."
            )
    missing = required - present
    if missing:
        raise InvalidGraph(
            f"This is an invalid model. {_describe(node, index)}: required attribute '{sorted(missing)[0]}' is missing."
        )


@functools.lru_cache(maxsize=4096)  # bounded: op types come from untrusted files
def _attribute_rules(op_type: str, domain: str, version: int) -> _AttributeRules | None:
    schema = onnx_schema(op_type, domain, version)
    if schema is None:
        return None
    required = frozenset(name for name, attr in schema.attributes.items() if attr.required)
    return required, {name: int(attr.type) for name, attr in schema.attributes.items()}


def _resolve_arity(node: onnx.NodeProto, index: int, opsets: dict[str, int]) -> _Arity | None:
    """The arity of ``node``'s schema at the model's opset; None for ops without an ONNX schema."""
    op_type, domain = node.op_type, node.domain
    if type(op_type) is not str or type(domain) is not str:
        _raise_not_utf8(op_type if type(op_type) is not str else domain, f"op_type or domain of {_describe(node, index)}")
    domain = "" if domain == "ai.onnx" else domain
    version = opsets.get(domain)
    return None if version is None else _arity(op_type, domain, version)


def _check_arity(
    node: onnx.NodeProto, index: int, inputs: list[str], outputs: list[str], arity: _Arity, opsets: dict[str, int]
) -> None:
    """Input/output counts and required (Single) slots against the node's schema ``arity``."""
    min_in, max_in, single_in, min_out, max_out, single_out = arity
    op_type, domain = node.op_type, node.domain
    version = opsets.get("" if domain == "ai.onnx" else domain)
    for kind, names, low, high, single in (
        ("input", inputs, min_in, max_in, single_in),
        ("output", outputs, min_out, max_out, single_out),
    ):
        count = len(names)
        if not low <= count <= high:
            raise InvalidGraph(
                f"This is an invalid model. {_describe(node, index)} has {kind} size {count} not in range "
                f"[min={low}, max={high}] of its schema ({op_type}, opset {version})."
            )
        for position, name in enumerate(names):
            if not name and single[min(position, len(single) - 1)]:
                raise InvalidGraph(
                    f"This is an invalid model. {_describe(node, index)}'s {kind} {position} is required "
                    "but has an empty name."
                )


@functools.lru_cache(maxsize=4096)  # bounded: op types come from untrusted files
def _arity(op_type: str, domain: str, version: int) -> _Arity | None:
    schema = onnx_schema(op_type, domain, version)
    if schema is None:
        return None  # not an ONNX op (contrib/custom): its kernel checks its inputs
    return (
        schema.min_input,
        schema.max_input,
        # An input slot of a variadic parameter is never optional (Concat(x, "") fails in every kernel).
        tuple(p.option != _OPTIONAL for p in schema.inputs) or (False,),
        schema.min_output,
        schema.max_output,
        tuple(p.option == _SINGLE for p in schema.outputs) or (False,),
    )


def _check_tensor_data_type(tensor: onnx.TensorProto, what: str, data_bytes: int | None = None) -> None:
    """A known data type, and dims the model's bytes could fill (checked before anything sizes a buffer by them)."""
    if tensor.data_type not in _KNOWN_DATA_TYPES:
        raise Fail(f"This is an invalid model. {what} has an invalid tensor data type {tensor.data_type}.")
    if data_bytes is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return
    elements = 1
    for dim in tensor.dims:
        if dim < 0:
            raise Fail(f"This is an invalid model. {what} has a negative dim {dim}.")
        elements *= dim
    # Each element takes at least this many bits, and the model's serialized bytes bound all the data
    # it holds. (Exact sizes are checked when data is read; this keeps a 100-byte file from declaring
    # terabytes that inference or folding would size buffers by.)
    if elements * _MIN_BITS.get(tensor.data_type, 8) > 8 * data_bytes:
        raise Fail(
            f"This is an invalid model. {what} declares dims {list(tensor.dims)}: more data than the "
            f"model's {data_bytes} bytes hold."
        )


def _check_declared_type(type_proto: onnx.TypeProto, value_name: str, graph_io: bool = False) -> None:
    """Declared element types must be ONNX types; a graph input's or output's must be defined (onnxruntime)."""
    allowed = _KNOWN_DATA_TYPES if graph_io else _DECLARABLE_ELEM_TYPES
    for elem_type in _elem_types(type_proto):
        if elem_type not in allowed:
            raise InvalidArgument(
                f"Failed to load model with error: Invalid tensor data type {elem_type} declared for value '{value_name}'."
            )


def _elem_types(type_proto: onnx.TypeProto) -> Iterable[int]:
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        yield type_proto.tensor_type.elem_type
    elif kind == "sparse_tensor_type":
        yield type_proto.sparse_tensor_type.elem_type
    elif kind == "sequence_type":
        yield from _elem_types(type_proto.sequence_type.elem_type)
    elif kind == "optional_type":
        yield from _elem_types(type_proto.optional_type.elem_type)
    elif kind == "map_type":
        yield type_proto.map_type.key_type
        yield from _elem_types(type_proto.map_type.value_type)


def _text(value: str | bytes, what: str) -> str:
    """``value`` as a str; protobuf hands back bytes for strings that are not valid UTF-8."""
    if isinstance(value, str):
        return value
    _raise_not_utf8(value, what)


def _raise_not_utf8(value: bytes, what: str) -> NoReturn:
    raise InvalidGraph(f"This is an invalid model. The {what} is not valid UTF-8: {value!r}")


def _describe(node: onnx.NodeProto, index: int) -> str:
    op_type = node.op_type if isinstance(node.op_type, str) else repr(node.op_type)
    name = node.name if isinstance(node.name, str) else repr(node.name)
    return f"node {index} ('{name}', {op_type})"
