"""Load a model from a path, bytes or ModelProto into the IR.

Resolves external data relative to the model's folder (refusing locations that
escape it; tensors stay lazy until read), inlines model-local functions, runs ONNX
shape/type inference with symbolic dimensions so later stages know every value's
type it can tell, and builds the ``onnx_ir`` model with its nodes in topological order.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Union

import onnx
import onnx.inliner  # a submodule: "import onnx" alone does not load it
from google.protobuf.message import DecodeError
from onnx import external_data_helper

import onnx_ir as ir

from ..errors import Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile
from .builder import all_graphs
from .contrib_shapes import with_stand_ins
from .opsets import normalize_domain
from .tensors import sparse_to_dense_proto
from .type_checks import check_types
from .validator import validate_model

ModelSource = Union[str, bytes, os.PathLike, onnx.ModelProto]

# Initializers above this many elements are hidden from shape inference (typed
# graph inputs instead): inference serializes the whole model, and only small
# tensors (shapes, axes) carry information it needs.
_INFERENCE_INLINE_LIMIT = 1024
# Declared dims above this are hidden from shape inference (made symbolic): some of onnx's
# inference functions allocate in proportion to a declared dim (a Slice whose `axes` input is
# declared [2**31-1] took 12.9 GB), and no shape-like vector is anywhere near this long.
_INFERENCE_DIM_LIMIT = 1 << 20
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_ERROR_OP_TYPE = re.compile(r"\(op_type:(\w+)")
_UNTYPED_INPUT = "expected to have type but instead is null"
_DOMAIN_NOT_IMPORTED = "No opset import for domain"  # onnxruntime defaults such a domain's opset


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
            raise InvalidProtobuf(f"Load model from {path} failed: path is a directory, not a model file")
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


def _inferred(light: onnx.ModelProto) -> onnx.ModelProto:
    """``light`` (see :func:`_light_copy`) shape-inferred leniently into a new model; ``light`` itself when inference fails."""
    try:
        return onnx.shape_inference.infer_shapes(with_stand_ins(light), check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is advisory; kernels compute real shapes
        return light


def check_node_inference(light: onnx.ModelProto) -> None:
    """Raise Fail when a node's own shape/type inference in ``light`` rejects it, as onnxruntime does at load.

    onnxruntime runs each node's inference function and fails on its errors (an axis out of
    range, dims that cannot broadcast, an attribute that names no type); a declared shape
    that disagrees with an inferred one only warns there. So declared value_info and output
    shapes are left out here (``light``, a :func:`_light_copy`, loses them): what is checked is
    the nodes, fed by the graph's inputs and initializers.
    """
    _prepare_for_strict_inference(light.graph)
    try:
        onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        # onnx lists every failing node; the first is the cause, later ones often its consequences.
        first = str(exc).strip().splitlines()[0]
        # An input whose type nothing could tell (a custom op's output) is missing knowledge, not a fault.
        missing_knowledge = _UNTYPED_INPUT in first or _DOMAIN_NOT_IMPORTED in first
        if not missing_knowledge and not _inside_function_body(first, light):
            raise Fail(f"Node inference failed: {first}") from None
    except Exception:  # noqa: BLE001 - onnx's own limits (not the model's faults) stay advisory
        return


def _inside_function_body(message: str, model: onnx.ModelProto) -> bool:
    """Whether onnx's error arose inside the function body it infers a function op with.

    Such ops (MeanVarianceNormalization, ...) have kernels; their bodies are only onnx's way
    to infer them, and at some opsets the body itself does not check (onnxruntime loads them).
    """
    op_types = _ERROR_OP_TYPE.findall(message)
    if len(op_types) < 2:
        return False
    opsets = {opset.domain or "": opset.version for opset in model.opset_import}
    try:
        schema = onnx.defs.get_schema(op_types[0], opsets.get("", 1), "")
    except onnx.defs.SchemaError:
        return False
    return schema.has_function or schema.has_context_dependent_function


def _prepare_for_strict_inference(graph: onnx.GraphProto) -> None:
    """Declared shapes dropped and nodes in dependency order (inference reads them in file order)."""
    del graph.value_info[:]
    for output in graph.output:
        if output.type.HasField("tensor_type"):
            output.type.tensor_type.ClearField("shape")
    order = _dependency_order(graph.node)
    if order != list(range(len(graph.node))):
        nodes = [graph.node[index] for index in order]
        del graph.node[:]
        graph.node.extend(nodes)
    for node in graph.node:
        for attr in node.attribute:
            for subgraph in (attr.g,) if attr.HasField("g") else attr.graphs:
                _prepare_for_strict_inference(subgraph)


def _dependency_order(nodes) -> list[int]:
    """Node indices, producers first (the validator has refused cycles), file order kept where free."""
    producer = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    order: list[int] = []
    state = [0] * len(nodes)  # 0 unvisited, 1 visiting, 2 placed
    for root in range(len(nodes)):
        stack = [root]
        while stack:
            index = stack[-1]
            if state[index] == 2:
                stack.pop()
                continue
            state[index] = 1
            pending = [producer[name] for name in nodes[index].input if name in producer and state[producer[name]] == 0]
            if pending:
                stack.extend(pending)
            else:
                state[index] = 2
                order.append(index)
                stack.pop()
    return order


def _light_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` for onnx's inference: large initializers become typed inputs (never copied), values bounded."""
    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    source, graph = model.graph, light.graph
    graph.name = source.name
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    existing_inputs = {i.name for i in source.input}
    for tensor in source.initializer:
        if external_data_helper.uses_external_data(tensor) or _numel(tensor) > _INFERENCE_INLINE_LIMIT:
            if tensor.name not in existing_inputs:
                graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
        else:
            graph.initializer.append(tensor)
    _bound_for_inference(graph)
    return light


def _bound_for_inference(graph: onnx.GraphProto) -> None:
    """Keep values that make onnx's native inference misbehave out of ``graph`` and its subgraphs.

    Declared dims above ``_INFERENCE_DIM_LIMIT`` become symbolic. ONNX-domain int attributes
    beyond int32 are clamped into it: some inference functions narrow them to a C int and
    index with the result (LayerNormalization axis=2**31 crashed the process); clamped, they
    are still out of range for any tensor and inference reports them. Constant's values are data
    and stay as they are.
    """
    for info in (*graph.input, *graph.output, *graph.value_info):
        for dim in _declared_dims(info.type):
            if dim.HasField("dim_value") and dim.dim_value > _INFERENCE_DIM_LIMIT:
                dim.dim_param = f"onyxrt_large_dim_{dim.dim_value}"
    for node in graph.node:
        narrow = node.domain in ("", "ai.onnx") and node.op_type != "Constant"
        for attr in node.attribute:
            if narrow and attr.type == onnx.AttributeProto.INT and not _INT32_MIN <= attr.i <= _INT32_MAX:
                attr.i = _INT32_MAX if attr.i > 0 else _INT32_MIN
            elif narrow and attr.type == onnx.AttributeProto.INTS and any(not _INT32_MIN <= i <= _INT32_MAX for i in attr.ints):
                clamped = [min(max(i, _INT32_MIN), _INT32_MAX) for i in attr.ints]
                del attr.ints[:]
                attr.ints.extend(clamped)
            for subgraph in (attr.g,) if attr.HasField("g") else attr.graphs:
                _bound_for_inference(subgraph)


def _declared_dims(type_proto: onnx.TypeProto):
    kind = type_proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        yield from getattr(type_proto, kind).shape.dim
    elif kind == "sequence_type":
        yield from _declared_dims(type_proto.sequence_type.elem_type)
    elif kind == "optional_type":
        yield from _declared_dims(type_proto.optional_type.elem_type)
    elif kind == "map_type":
        yield from _declared_dims(type_proto.map_type.value_type)


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


def load_model(source: ModelSource, prepare: Callable[[onnx.ModelProto], None] | None = None) -> ir.Model:
    """Read, validate, inline and type a model; returns it as an ``onnx_ir.Model`` in topological order.

    ``prepare`` may change the proto first (a copy when ``source`` is the caller's proto), e.g. to
    put in external data the caller supplies from memory.
    """
    proto, base_dir = read_model_proto(source)
    if not proto.HasField("graph"):
        raise InvalidArgument("No graph was found in the protobuf.")  # onnxruntime's class and words
    if prepare is not None:
        if isinstance(source, onnx.ModelProto) and proto is source:
            proto = _copy(proto)
        prepare(proto)
    check_external_data_locations(proto, base_dir)
    size = _serialized_size(source, proto) if prepare is None else max(_serialized_size(source, proto), proto.ByteSize())
    validate_model(proto, size)  # before native inlining/inference, which may crash on malformed graphs
    if isinstance(source, onnx.ModelProto) and proto is source:
        proto = _copy(proto)  # inference adds value_info; never mutate the caller's proto
    _relabel_graphs_not_utf8(proto.graph)
    if proto.functions:
        try:
            proto = onnx.inliner.inline_local_functions(proto)
        except Exception as exc:  # noqa: BLE001
            raise InvalidGraph(f"Failed to inline model-local functions: {exc}") from None
        validate_model(proto, size)  # the inlined function bodies
    light = _light_copy(proto)  # one copy serves both inference runs
    inferred = _inferred(light)
    check_types(proto, inferred)
    _merge_inferred_types(proto, inferred)
    check_node_inference(light)
    model = model_from_proto(proto, base_dir)
    try:
        model.graph.sort()  # subgraphs too; files need not list nodes in dependency order
    except ValueError as exc:
        raise Fail(f"This is an invalid model. Graph '{model.graph.name}' is not acyclic: {exc}") from None
    return model


def _serialized_size(source: ModelSource, proto: onnx.ModelProto) -> int:
    """Bytes the model was read from: no tensor in it can hold more data than that."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return len(source)
    if isinstance(source, (str, os.PathLike)):
        return os.path.getsize(source)
    return proto.ByteSize()


def _relabel_graphs_not_utf8(graph: onnx.GraphProto) -> None:
    """Graph names that are not UTF-8 (onnxruntime accepts them: they are labels) get a decodable one."""
    if not isinstance(graph.name, str):
        graph.name = graph.name.decode("utf-8", "replace")
    for node in graph.node:
        for attr in node.attribute:
            for subgraph in (attr.g,) if attr.HasField("g") else attr.graphs:
                _relabel_graphs_not_utf8(subgraph)


def model_from_proto(proto: onnx.ModelProto, base_dir: str | None = None) -> ir.Model:
    """The IR of ``proto`` (not copied; it must outlive the model): sparse tensors densified, domains normalized.

    The names of initializers that were sparse are kept in ``model.graph.meta["sparse_initializers"]``
    so that saving writes them back as sparse tensors.
    """
    sparse_names = _densify_sparse(proto, base_dir)
    _bridge_outer_outputs(proto.graph, set())
    opaque = _set_aside_map_types(proto.graph)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # noqa: BLE001 - onnx_ir raises SerdeError/ValueError/... on malformed graphs
        raise InvalidGraph(f"Failed to read the model graph: {exc}") from None
    if opaque:
        _restore_map_types(model.graph, opaque)
    if base_dir is not None:
        ir.external_data.set_base_dir(model.graph, base_dir)
    model.graph.meta["sparse_initializers"] = sparse_names
    for domain in [d for d in model.opset_imports if d == "ai.onnx"]:
        model.opset_imports[""] = model.opset_imports.pop(domain)
    for graph in all_graphs(model.graph):
        for node in graph:
            node.domain = normalize_domain(node.domain)
        _forget_negative_dims(graph)
    return model


def _forget_negative_dims(graph: ir.Graph) -> None:
    """Negative declared dims (converters write -1 for dynamic) become unknown, as onnxruntime reads them.

    Left as ints, passes would take them for static dims (Shape folded to [-1, ...]).
    """
    values = [*graph.inputs, *graph.outputs, *(value for node in graph for value in node.outputs)]
    for value in values:
        shape = value.shape
        if shape is not None and any(isinstance(d, int) and d < 0 for d in shape.dims):
            value.shape = ir.Shape(
                [ir.SymbolicDim(None) if isinstance(d, int) and d < 0 else d for d in shape.dims],
                denotations=[shape.get_denotation(i) for i in range(len(shape.dims))],
            )


def _densify_sparse(proto: onnx.ModelProto, base_dir: str | None) -> list[str]:
    """Sparse initializers and Constant(sparse_value) become dense tensors, as onnxruntime loads them."""
    names = [s.values.name for s in proto.graph.sparse_initializer]
    try:
        _densify_graph(proto.graph, base_dir)
    except (ValueError, IndexError, TypeError, OSError) as exc:
        raise InvalidGraph(f"Invalid sparse tensor: {exc}") from None
    return names


def _bridge_outer_outputs(graph: onnx.GraphProto, outer: set[str]) -> None:
    """A subgraph output that is an outer-scope value gets an Identity inside the subgraph.

    onnx_ir links such an output to a new, unconnected value instead of the outer one; the
    Identity makes the capture an ordinary node input, which it does resolve.
    """
    names: set[str] | None = None
    for node in graph.node:
        if not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        if names is None:
            names = outer | {i.name for i in graph.input} | {t.name for t in graph.initializer}
            names |= {o for n in graph.node for o in n.output}
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                defined = {i.name for i in sub.input} | {t.name for t in sub.initializer}
                defined |= {o for n in sub.node for o in n.output}
                for output in sub.output:
                    if output.name not in defined and output.name in names:
                        inner = f"{output.name}__outer_{len(sub.node)}"
                        sub.node.append(onnx.helper.make_node("Identity", [output.name], [inner]))
                        output.name = inner
                _bridge_outer_outputs(sub, names)


def _densify_graph(graph: onnx.GraphProto, base_dir: str | None) -> None:
    for sparse in graph.sparse_initializer:
        graph.initializer.append(sparse_to_dense_proto(sparse, base_dir))
    del graph.sparse_initializer[:]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                attr.t.CopyFrom(sparse_to_dense_proto(attr.sparse_tensor, base_dir))
                attr.ClearField("sparse_tensor")
                attr.type = onnx.AttributeProto.TENSOR
                if node.op_type == "Constant" and attr.name == "sparse_value":
                    attr.name = "value"
            elif attr.type == onnx.AttributeProto.SPARSE_TENSORS:
                dense = [sparse_to_dense_proto(s, base_dir) for s in attr.sparse_tensors]
                del attr.sparse_tensors[:]
                attr.tensors.extend(dense)
                attr.type = onnx.AttributeProto.TENSORS
            elif attr.type == onnx.AttributeProto.GRAPH:
                _densify_graph(attr.g, base_dir)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _densify_graph(sub, base_dir)


def _has_map(type_proto: onnx.TypeProto) -> bool:
    kind = type_proto.WhichOneof("value")
    if kind == "map_type":
        return True
    if kind == "sequence_type":
        return _has_map(type_proto.sequence_type.elem_type)
    if kind == "optional_type":
        return _has_map(type_proto.optional_type.elem_type)
    return False


def _set_aside_map_types(graph: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    """Clear the types onnx_ir cannot represent (maps, as ZipMap writes) and return them by value name.

    onnx_ir 1.x has no map type; the values keep their ONNX TypeProto in ``value.meta["type_proto"]``
    (see :func:`onyxrt.graph.types.value_type_proto`), so session metadata still reports them.
    """
    opaque: dict[str, onnx.TypeProto] = {}
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        if info.HasField("type") and _has_map(info.type):
            kept = onnx.TypeProto()
            kept.CopyFrom(info.type)
            opaque[info.name] = kept
            info.ClearField("type")
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                opaque.update(_set_aside_map_types(sub))
    return opaque


def _restore_map_types(graph: ir.Graph, opaque: dict[str, onnx.TypeProto]) -> None:
    for sub in all_graphs(graph):
        values = list(sub.inputs) + list(sub.outputs) + [v for node in sub for v in node.outputs]
        for value in values:
            if value.name in opaque:
                value.meta["type_proto"] = opaque[value.name]


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy
