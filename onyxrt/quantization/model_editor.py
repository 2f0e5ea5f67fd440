"""Loading, inspecting and rewriting the model a quantizer works on (plain ``onnx`` protos, main graph only)."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import QuantizationError

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
PROTOBUF_LIMIT = 2**31 - 1
MS_DOMAIN = "com.microsoft"


def load_model(model_input: "str | os.PathLike | onnx.ModelProto") -> onnx.ModelProto:
    """A copy of the model (a ``FileNotFoundError`` naming a missing file), with onnx's shape inference applied."""
    if isinstance(model_input, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(model_input)
    elif isinstance(model_input, (str, os.PathLike)):
        path = Path(model_input)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        try:
            model = onnx.load(path)
        except Exception as exc:  # onnx raises DecodeError/ValidationError for a file that is no model
            raise QuantizationError(f"cannot read {path} as an ONNX model: {exc}") from exc
    else:
        raise TypeError(f"model_input must be a path or an onnx.ModelProto, got {type(model_input).__name__}")
    if model.ByteSize() < PROTOBUF_LIMIT:
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # types then come from the declared value_info only; quantization still proceeds
            pass
    return model


def save_model(model: onnx.ModelProto, model_output: "str | os.PathLike", use_external_data_format: bool = False) -> None:
    """Write the model; weights go to ``<name>.data`` beside it when asked or when over protobuf's 2 GB limit."""
    path = Path(model_output)
    if not str(path):
        raise ValueError("model_output must name a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    if use_external_data_format or model.ByteSize() >= PROTOBUF_LIMIT:
        location = path.name + ".data"
        if (path.parent / location).exists():
            (path.parent / location).unlink()
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=1024)
    else:
        onnx.save_model(model, path)


class ModelEditor:
    """The main graph of a model with lookups (initializers, producers, consumers, element types) and new names."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        _constants_to_initializers(self.graph)
        self.initializers: dict[str, TensorProto] = {t.name: t for t in self.graph.initializer}
        self._arrays: dict[str, np.ndarray] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.graph.node:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        # Identity of an initializer (exporters write them for shared weights) counts as that constant.
        self.aliases: dict[str, str] = {}
        for node in self.graph.node:
            if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.input and node.output[0] not in self.graph_outputs_names():
                source = self.aliases.get(node.input[0], node.input[0])
                if source in self.initializers:
                    self.aliases[node.output[0]] = source
        self.elem_types: dict[str, int] = {}
        for info in [*self.graph.input, *self.graph.output, *self.graph.value_info]:
            if info.type.HasField("tensor_type"):
                self.elem_types[info.name] = info.type.tensor_type.elem_type
        for tensor in self.graph.initializer:
            self.elem_types[tensor.name] = tensor.data_type
        self.graph_outputs = {output.name for output in self.graph.output}
        self._taken = set(self.producer) | set(self.initializers) | {i.name for i in self.graph.input}
        self._taken |= {node.name for node in self.graph.node}
        self.new_initializers: list[TensorProto] = []
        self._name_nodes()

    def _name_nodes(self) -> None:
        """Give unnamed nodes a name (nodes_to_exclude/nodes_to_quantize and reports refer to nodes by name)."""
        for index, node in enumerate(self.graph.node):
            if not node.name:
                node.name = self.unique_name(f"{node.op_type}_{index}")

    def unique_name(self, base: str) -> str:
        name, suffix = base, 1
        while name in self._taken:
            name = f"{base}_{suffix}"
            suffix += 1
        self._taken.add(name)
        return name

    def opset(self, domain: str = "") -> int:
        for entry in self.model.opset_import:
            if entry.domain in (domain, "ai.onnx" if domain == "" else domain):
                return entry.version
        return 0

    def ensure_opset(self, domain: str, version: int) -> None:
        for entry in self.model.opset_import:
            if entry.domain == domain:
                entry.version = max(entry.version, version)
                return
        self.model.opset_import.append(helper.make_opsetid(domain, version))

    def is_float(self, name: str) -> bool:
        return self.elem_types.get(name) in FLOAT_TYPES

    def graph_outputs_names(self) -> set[str]:
        return {output.name for output in self.graph.output}

    def is_constant(self, name: str) -> bool:
        return name in self.initializers or name in self.aliases

    def array(self, name: str) -> np.ndarray:
        name = self.aliases.get(name, name)
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self.initializers[name])
        return self._arrays[name]

    def add_initializer(self, array: np.ndarray, base: str, exact_name: bool = False) -> str:
        name = base if exact_name else self.unique_name(base)
        self._taken.add(name)
        tensor = numpy_helper.from_array(np.asarray(array), name)
        self.new_initializers.append(tensor)
        self.initializers[name] = tensor
        self.elem_types[name] = tensor.data_type
        return name

    def finish(self, nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
        """Install ``nodes`` (sorted into dependency order) and the new initializers; drop unused initializers."""
        self.graph.initializer.extend(self.new_initializers)
        self.new_initializers = []
        ordered = topological_order(nodes, {i.name for i in self.graph.input} | set(self.initializers))
        ordered = _without_dead_nodes(ordered, self.graph_outputs)
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        used = {name for node in ordered for name in all_inputs(node)} | self.graph_outputs
        kept = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)
        # Shapes of rewritten values may no longer be valid (types change): keep only declarations of live values.
        live = {name for node in ordered for name in node.output} | self.graph_outputs
        kept_info = [info for info in self.graph.value_info if info.name in live and self.elem_types.get(info.name) == info.type.tensor_type.elem_type]
        del self.graph.value_info[:]
        self.graph.value_info.extend(kept_info)
        return self.model


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Constant nodes of the main graph become initializers, so weights and scalars they hold are constants here."""
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1 and node.output[0]:
            attribute = node.attribute[0]
            value = None
            if attribute.name == "value" and attribute.type == onnx.AttributeProto.TENSOR:
                value = numpy_helper.to_array(attribute.t)
            elif attribute.name in ("value_float", "value_floats"):
                value = np.asarray(helper.get_attribute_value(attribute), dtype=np.float32)
            elif attribute.name in ("value_int", "value_ints"):
                value = np.asarray(helper.get_attribute_value(attribute), dtype=np.int64)
            if value is not None and value.dtype != object:
                graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
                continue
        kept.append(node)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)


def all_inputs(node: onnx.NodeProto) -> list[str]:
    """The node's inputs and the outer-scope names its subgraphs read."""
    names = [name for name in node.input if name]
    for attribute in node.attribute:
        graphs = list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else [])
        for graph in graphs:
            for inner in graph.node:
                names.extend(all_inputs(inner))
    return names


def _without_dead_nodes(nodes: list[onnx.NodeProto], graph_outputs: set[str]) -> list[onnx.NodeProto]:
    """Drop nodes nothing reads (e.g. an Identity of a weight whose readers now take its quantized form)."""
    read = set(graph_outputs)
    kept: list[onnx.NodeProto] = []
    for node in reversed(nodes):
        if not node.output or any(name in read for name in node.output if name) or any(
                a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            kept.append(node)
            read.update(all_inputs(node))
    return kept[::-1]


def topological_order(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` in an order where each comes after the producers of its inputs, else their given order."""
    produced_by = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    waiting_on: list[int] = []
    dependents: dict[int, list[int]] = defaultdict(list)
    for index, node in enumerate(nodes):
        producers = {produced_by[name] for name in all_inputs(node) if name in produced_by and name not in available}
        producers.discard(index)
        waiting_on.append(len(producers))
        for producer in producers:
            dependents[producer].append(index)
    import heapq
    ready = [index for index, count in enumerate(waiting_on) if count == 0]
    heapq.heapify(ready)
    order: list[onnx.NodeProto] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(nodes[index])
        for dependent in dependents[index]:
            waiting_on[dependent] -= 1
            if waiting_on[dependent] == 0:
                heapq.heappush(ready, dependent)
    if len(order) != len(nodes):
        stuck = [nodes[i].name or nodes[i].op_type for i, count in enumerate(waiting_on) if count > 0]
        raise QuantizationError(f"the rewritten graph has a cycle through nodes {stuck[:5]}")
    return order
