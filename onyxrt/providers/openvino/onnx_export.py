"""Standalone ONNX models of a set of nodes, which OpenVINO's ONNX frontend reads.

The nodes stay in their graph; their protos are copied into a new model whose inputs
are the values the nodes read and whose outputs are the values the caller names. Every
value gets a unique name in the copy (passes may leave values unnamed), so OpenVINO's
tensor names map back to the values.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import onnx
import onnx_ir as ir

from ...graph.builder import reads

# Initializers up to this size are exported with their data (a shape or axes input the
# frontend needs as a constant); larger ones (weights) as typed inputs, sparing protobuf copies.
EMBEDDED_BYTES = 1 << 16
# The IR version of the copies: the newest OpenVINO 2024.4's frontend reads (int4, float8 types).
_IR_VERSION = 10


class ValueNames:
    """Unique names for values in an exported copy: their own where they have one."""

    def __init__(self) -> None:
        self._names: dict[ir.Value, str] = {}
        self._taken: set[str] = set()
        self.values: dict[str, ir.Value] = {}

    def __call__(self, value: ir.Value | None) -> str:
        if value is None:
            return ""
        name = self._names.get(value)
        if name is None:
            name = value.name or f"onyxrt_value_{len(self._names)}"
            while name in self._taken:
                name = f"{name}_{len(self._names)}"
            self._names[value] = name
            self._taken.add(name)
            self.values[name] = value
        return name


def export_nodes(
    nodes: Sequence[ir.Node],
    inputs: Iterable[ir.Value],
    outputs: Iterable[ir.Value],
    opset_imports: Mapping[str, int],
    names: ValueNames,
    constants: Mapping[ir.Value, ir.TensorProtocol] | None = None,
) -> onnx.ModelProto:
    """A model running ``nodes`` (in topological order, without graph attributes).

    ``inputs`` become graph inputs, except those in ``constants``, which become
    initializers holding the given tensors.
    """
    constants = constants or {}
    outputs = list(outputs)
    exported = set(outputs)
    node_protos = []
    domains = dict(opset_imports)
    for index, node in enumerate(nodes):
        proto = ir.serde.serialize_node(node)
        proto.name = f"node_{index}_{node.name or node.op_type}"
        del proto.input[:], proto.output[:]
        proto.input.extend(names(value) for value in node.inputs)
        # an optional output the model leaves out stays left out ("" in ONNX): naming it would ask for it
        proto.output.extend("" if value is None or (not value.name and not value.uses() and value not in exported)
                            else names(value) for value in node.outputs)
        node_protos.append(proto)
        domains.setdefault(node.domain, 1)
    graph_inputs, initializers = [], []
    for value in inputs:
        if value in constants:
            initializers.append(ir.serde.serialize_tensor(constants[value]))
            initializers[-1].name = names(value)
        else:
            graph_inputs.append(ir.serde.serialize_value(value, name=names(value)))
    graph_outputs = [ir.serde.serialize_value(value, name=names(value)) for value in outputs]
    graph = onnx.helper.make_graph(node_protos, "openvino_region", graph_inputs, graph_outputs, initializers)
    opsets = [onnx.helper.make_opsetid("" if domain == "ai.onnx" else domain, version)
              for domain, version in domains.items()]
    return onnx.helper.make_model(graph, opset_imports=opsets, ir_version=_IR_VERSION, producer_name="onyxrt")


def border_inputs(nodes: Sequence[ir.Node]) -> list[ir.Value]:
    """Values ``nodes`` read that none of them produces, in first-use order."""
    produced = {value for node in nodes for value in node.outputs}
    return list(dict.fromkeys(value for node in nodes for value in reads(node) if value not in produced))
