"""Seeded mutations of serialized ONNX models: byte-level and structured.

Byte-level mutations (flips, insertions, deletions, truncation, spliced copies) test the
protobuf parser and everything that trusts it; structured mutations (attribute values at
their extremes, element types, declared dims, wiring, op types, opsets, initializer
contents) make well-formed files whose graphs are wrong in one specific way.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import onnx
from onnx import defs

_EXTREME_INTS = (0, 1, -1, 2, -2, 3, 7, 64, 2**31 - 1, -(2**31), 2**31, 2**63 - 1, -(2**63), 2**32 + 1)
_EXTREME_FLOATS = (0.0, -1.0, 1e30, -1e30, float("nan"), float("inf"), float("-inf"), 1e-30)
_ELEM_TYPES = tuple(range(0, 26)) + (99, -1)
_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft", "org.unknown", "ai.onnx.preview.training")
_DIM_VALUES = (0, 1, 2, 3, -1, -5, 1000, 2**31 - 1, 2**40)

Mutation = Callable[[onnx.ModelProto, random.Random], str]


def mutate(base: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A mutated copy of ``base`` and a short description of what was changed."""
    if rng.random() < 0.3:
        return _mutate_bytes(base, rng)
    model = onnx.ModelProto()
    model.ParseFromString(base)
    done = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        mutation = rng.choice(_STRUCTURED)
        done.append(mutation(model, rng))
    return model.SerializeToString(), "; ".join(done)


def _mutate_bytes(base: bytes, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(base)
    kind = rng.choice(("flip", "flip", "insert", "delete", "truncate", "splice", "set"))
    if not data:
        return bytes(data), "empty"
    position = rng.randrange(len(data))
    if kind == "flip":
        count = rng.randint(1, 8)
        for _ in range(count):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data), f"bytes: flipped {count} bits"
    if kind == "insert":
        chunk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        data[position:position] = chunk
        return bytes(data), f"bytes: inserted {len(chunk)} at {position}"
    if kind == "delete":
        length = rng.randint(1, 16)
        del data[position : position + length]
        return bytes(data), f"bytes: deleted {length} at {position}"
    if kind == "truncate":
        return bytes(data[:position]), f"bytes: truncated at {position}"
    if kind == "splice":
        start = rng.randrange(len(data))
        chunk = data[start : start + rng.randint(1, 64)]
        data[position:position] = chunk
        return bytes(data), f"bytes: copied {len(chunk)} from {start} to {position}"
    value = rng.choice((0x00, 0x7F, 0x80, 0xFF))
    data[position] = value
    return bytes(data), f"bytes: set {position} to {value:#x}"


def _all_graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    graphs = [graph]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                graphs.extend(_all_graphs(attr.g))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attr.graphs:
                    graphs.extend(_all_graphs(subgraph))
    return graphs


def _nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for graph in _all_graphs(model.graph) for node in graph.node]


def _value_names(graph: onnx.GraphProto) -> list[str]:
    names = [i.name for i in graph.input] + [t.name for t in graph.initializer]
    return names + [o for node in graph.node for o in node.output if o]


def _attribute_value(model: onnx.ModelProto, rng: random.Random) -> str:
    attrs = [(node, attr) for node in _nodes(model) for attr in node.attribute]
    if not attrs:
        return _add_attribute(model, rng)
    node, attr = rng.choice(attrs)
    if attr.type == onnx.AttributeProto.INT:
        attr.i = rng.choice(_EXTREME_INTS)
    elif attr.type == onnx.AttributeProto.INTS:
        values = list(attr.ints) or [0]
        choice = rng.random()
        if choice < 0.6:
            values[rng.randrange(len(values))] = rng.choice(_EXTREME_INTS)
        elif choice < 0.8:
            values.append(rng.choice(_EXTREME_INTS))
        else:
            values = values[:-1]
        del attr.ints[:]
        attr.ints.extend(values)
    elif attr.type == onnx.AttributeProto.FLOAT:
        attr.f = rng.choice(_EXTREME_FLOATS)
    elif attr.type == onnx.AttributeProto.FLOATS and attr.floats:
        attr.floats[rng.randrange(len(attr.floats))] = rng.choice(_EXTREME_FLOATS)
    elif attr.type == onnx.AttributeProto.STRING:
        attr.s = rng.choice((b"", b"unknown", b"NOTSET", b"\xff\xfe", attr.s.upper()))
    elif attr.type == onnx.AttributeProto.TENSOR:
        _corrupt_tensor(attr.t, rng)
    else:
        attr.type = rng.choice((onnx.AttributeProto.INT, onnx.AttributeProto.FLOATS, onnx.AttributeProto.STRING))
        return f"attribute {attr.name} of {node.op_type}: type changed"
    return f"attribute {attr.name} of {node.op_type} changed"


def _add_attribute(model: onnx.ModelProto, rng: random.Random) -> str:
    nodes = _nodes(model)
    if not nodes:
        return "no nodes"
    node = rng.choice(nodes)
    name = rng.choice(("axis", "axes", "keepdims", "perm", "to", "mode", "unknown_attribute"))
    node.attribute.append(onnx.helper.make_attribute(name, rng.choice(_EXTREME_INTS)))
    return f"attribute {name} added to {node.op_type}"


def _drop_attribute(model: onnx.ModelProto, rng: random.Random) -> str:
    candidates = [node for node in _nodes(model) if node.attribute]
    if not candidates:
        return _add_attribute(model, rng)
    node = rng.choice(candidates)
    removed = node.attribute.pop(rng.randrange(len(node.attribute)))
    return f"attribute {removed.name} removed from {node.op_type}"


def _elem_type(model: onnx.ModelProto, rng: random.Random) -> str:
    graph = rng.choice(_all_graphs(model.graph))
    infos = [*graph.input, *graph.output, *graph.value_info]
    if graph.initializer and (not infos or rng.random() < 0.25):
        tensor = rng.choice(graph.initializer)
        tensor.data_type = rng.choice(_ELEM_TYPES)
        return f"initializer {tensor.name} data_type -> {tensor.data_type}"
    tensors = [info for info in infos if info.type.HasField("tensor_type")]
    if not tensors:
        return "no typed values"
    info = rng.choice(tensors)
    info.type.tensor_type.elem_type = rng.choice(_ELEM_TYPES)
    return f"value {info.name} elem_type -> {info.type.tensor_type.elem_type}"


def _declared_dims(model: onnx.ModelProto, rng: random.Random) -> str:
    graph = rng.choice(_all_graphs(model.graph))
    tensors = [info for info in (*graph.input, *graph.output, *graph.value_info) if info.type.HasField("tensor_type")]
    if not tensors:
        return "no typed values"
    info = rng.choice(tensors)
    shape = info.type.tensor_type.shape
    choice = rng.random()
    if shape.dim and choice < 0.6:
        shape.dim[rng.randrange(len(shape.dim))].dim_value = rng.choice(_DIM_VALUES)
    elif choice < 0.8:
        shape.dim.add().dim_value = rng.choice(_DIM_VALUES)
    elif shape.dim:
        shape.dim.pop()
    else:
        info.type.tensor_type.ClearField("shape")
    return f"value {info.name} dims changed"


def _rewire(model: onnx.ModelProto, rng: random.Random) -> str:
    graph = rng.choice([g for g in _all_graphs(model.graph) if g.node] or [model.graph])
    if not graph.node:
        return "no nodes"
    node = rng.choice(graph.node)
    names = _value_names(graph)
    choice = rng.random()
    if node.input and choice < 0.45:
        position = rng.randrange(len(node.input))
        node.input[position] = rng.choice(["", "missing_value", *names])
        return f"{node.op_type} input {position} -> {node.input[position]!r}"
    if choice < 0.6:
        node.input.append(rng.choice(["", *names]))
        return f"{node.op_type}: input appended"
    if node.input and choice < 0.7:
        node.input.pop()
        return f"{node.op_type}: last input removed"
    if node.output and choice < 0.85:
        position = rng.randrange(len(node.output))
        node.output[position] = rng.choice(["", *names])
        return f"{node.op_type} output {position} -> {node.output[position]!r}"
    node.output.append(f"extra_{rng.randrange(100)}")
    return f"{node.op_type}: output appended"


def _graph_structure(model: onnx.ModelProto, rng: random.Random) -> str:
    graph = model.graph
    choice = rng.random()
    if graph.node and choice < 0.25:
        removed = graph.node.pop(rng.randrange(len(graph.node)))
        return f"node {removed.op_type} removed"
    if graph.node and choice < 0.45:
        copy = graph.node.add()
        copy.CopyFrom(rng.choice(graph.node))
        return f"node {copy.op_type} duplicated"
    if len(graph.node) > 1 and choice < 0.6:
        nodes = list(graph.node)
        rng.shuffle(nodes)
        del graph.node[:]
        graph.node.extend(nodes)
        return "nodes shuffled"
    if graph.input and choice < 0.75:
        removed = graph.input.pop(rng.randrange(len(graph.input)))
        return f"graph input {removed.name} removed"
    if graph.output and choice < 0.9:
        removed = graph.output.pop(rng.randrange(len(graph.output)))
        return f"graph output {removed.name} removed"
    graph.output.add().name = rng.choice(_value_names(graph) or ["nothing"])
    return "graph output added"


def _op_type(model: onnx.ModelProto, rng: random.Random) -> str:
    nodes = _nodes(model)
    if not nodes:
        return "no nodes"
    node = rng.choice(nodes)
    before = node.op_type
    if rng.random() < 0.2:
        node.domain = rng.choice(_DOMAINS)
        return f"{before}: domain -> {node.domain!r}"
    node.op_type = rng.choice(_op_names())
    return f"op {before} -> {node.op_type}"


def _op_names() -> list[str]:
    return sorted({schema.name for schema in defs.get_all_schemas() if schema.domain == ""})


def _opset(model: onnx.ModelProto, rng: random.Random) -> str:
    choice = rng.random()
    if choice < 0.15:
        model.ir_version = rng.choice((0, 1, 3, 7, 10, 11, 99))
        return f"ir_version -> {model.ir_version}"
    if not model.opset_import or choice < 0.25:
        opset = model.opset_import.add()
        opset.domain, opset.version = rng.choice(_DOMAINS), rng.choice((1, 7, 13, 99))
        return f"opset import added {opset.domain!r}"
    opset = rng.choice(model.opset_import)
    opset.version = rng.choice((0, 1, 5, 6, 7, 9, 10, 11, 12, 13, 15, 17, 18, 19, 21, 23, 25, 99, 2**31 - 1))
    return f"opset {opset.domain!r} -> {opset.version}"


def _initializer(model: onnx.ModelProto, rng: random.Random) -> str:
    tensors = [t for graph in _all_graphs(model.graph) for t in graph.initializer]
    tensors += [a.t for node in _nodes(model) for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
    if not tensors:
        return _attribute_value(model, rng)
    tensor = rng.choice(tensors)
    _corrupt_tensor(tensor, rng)
    return f"tensor {tensor.name or '(attribute)'} corrupted"


def _corrupt_tensor(tensor: onnx.TensorProto, rng: random.Random) -> None:
    choice = rng.random()
    if choice < 0.3 and tensor.dims:
        tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice(_DIM_VALUES)
    elif choice < 0.45:
        tensor.dims.append(rng.choice((0, 1, 2, 3)))
    elif choice < 0.6 and tensor.raw_data:
        tensor.raw_data = tensor.raw_data[: rng.randrange(len(tensor.raw_data) + 1)]
    elif choice < 0.85:
        # Integer tensors are often shapes, axes or indices: extreme values probe bounds checks.
        values = onnx.numpy_helper.to_array(tensor) if _readable(tensor) else None
        if values is not None and values.size and values.dtype.kind in "iu":
            flat = values.reshape(-1).copy()
            flat[rng.randrange(flat.size)] = rng.choice(
                [v for v in _EXTREME_INTS if _fits(v, flat.dtype)] or [0]
            )
            tensor.CopyFrom(onnx.numpy_helper.from_array(flat.reshape(values.shape), tensor.name))
        else:
            tensor.data_type = rng.choice(_ELEM_TYPES)
    else:
        tensor.data_type = rng.choice(_ELEM_TYPES)


def _readable(tensor: onnx.TensorProto) -> bool:
    try:
        onnx.numpy_helper.to_array(tensor)
    except Exception:  # noqa: BLE001 - a tensor already broken by an earlier mutation
        return False
    return True


def _fits(value: int, dtype) -> bool:
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


_STRUCTURED: tuple[Mutation, ...] = (
    _attribute_value, _attribute_value, _attribute_value, _add_attribute, _drop_attribute,
    _elem_type, _elem_type, _declared_dims, _declared_dims, _rewire, _rewire, _graph_structure,
    _op_type, _opset, _initializer, _initializer,
)
