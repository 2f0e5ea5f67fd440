"""The execution-provider interface every provider implements (after onnxruntime's IExecutionProvider).

A provider answers three questions:

* **which nodes it takes**: ``get_capability(graph, opset_imports)`` returns
  :class:`NodeGroup` s of nodes not yet assigned to a provider. The partitioner asks
  the providers in priority order, so a later provider only sees what earlier ones left.
* **how it runs them**: a *fused* group (``NodeGroup.fused``) becomes one node of the
  graph, run by the single step ``compile(group)`` returns; a node of an unfused group
  is run by ``compile_node(...)``.
* **where its data lives**: ``device`` and its ``data_transfer`` (copies to and from the
  host, allocation on the device). The plan copies values only where the devices of a
  producer and a consumer differ (see ``framework.memcpy``).

A per-node provider (the CPU provider) implements ``can_run`` and ``compile_node``
only: the default ``get_capability`` offers every free node it can run as its own
unfused group. A region provider (one that compiles subgraphs, like onnxruntime's
OpenVINO or TensorRT providers) overrides ``get_capability`` and ``compile``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from ..errors import NotImplemented as OrtNotImplemented
from ..framework.device import DataTransfer, Device, HostDataTransfer, data_transfer_for
from ..graph.attributes import attribute_value
from ..graph.builder import nodes_inside, reads
from ..graph.opsets import describe, opset_for
from ..graph.tensors import constant_array

# The key of ``node.meta`` naming the provider a node is assigned to.
PROVIDER_KEY = "execution_provider"

# One compiled group: its input values in ``NodeGroup.inputs`` order in, its outputs
# (a sequence in ``NodeGroup.outputs`` order) out.
Step = Callable[..., Sequence[Any]]


@dataclass
class NodeGroup:
    """Nodes one provider takes together, with the values crossing the group's border.

    ``inputs``: values the group reads but does not produce (graph inputs, initializers,
    outer-scope values, other nodes' outputs), in first-use order. ``outputs``: values the
    group produces that something outside reads (another node, a subgraph, a graph
    output), in production order. ``fused``: whether the group becomes one node run by
    ``compile(group)``; an unfused group holds exactly one node.
    """

    nodes: list[ir.Node]
    inputs: list[ir.Value]
    outputs: list[ir.Value]
    opset_imports: Mapping[str, int] = field(default_factory=dict)
    fused: bool = True

    @classmethod
    def of(cls, nodes: Iterable[ir.Node], opset_imports: Mapping[str, int], fused: bool = True) -> NodeGroup:
        """The group of ``nodes`` (in topological order) with its border values computed from the graph."""
        nodes = list(nodes)
        # a read from inside a member's subgraph is a read by that member
        members = set(nodes).union(*(nodes_inside(node) for node in nodes))
        produced: set[ir.Value] = set()
        inputs: dict[ir.Value, None] = {}
        outputs: list[ir.Value] = []
        for node in nodes:
            for value in reads(node):
                if value not in produced:
                    inputs.setdefault(value)
            for value in node.outputs:
                produced.add(value)
                if value.is_graph_output() or any(user not in members for user, _ in value.uses()):
                    outputs.append(value)
        return cls(nodes, list(inputs), outputs, opset_imports, fused)


def is_assigned(node: ir.Node) -> bool:
    """Whether the partitioner has given ``node`` to a provider already."""
    return PROVIDER_KEY in node.meta


def connected_groups(graph: ir.Graph, nodes: Sequence[ir.Node]) -> list[list[ir.Node]]:
    """``nodes`` grouped into connected components by the values passing between them, each group in graph order
    (a region provider's candidate regions; the partitioner splits any that a path leaves and re-enters)."""
    members = set(nodes)
    root: dict[ir.Node, ir.Node] = {node: node for node in nodes}

    def find(node: ir.Node) -> ir.Node:
        while root[node] is not node:
            root[node] = root[root[node]]
            node = root[node]
        return node

    for node in nodes:
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer in members:
                root[find(node)] = find(producer)
    groups: dict[ir.Node, list[ir.Node]] = {}
    for node in graph:
        if node in members:
            groups.setdefault(find(node), []).append(node)
    return list(groups.values())


class ExecutionProvider:
    """One way of running nodes: a device, its data transfer, and a set of kernels or a compiler."""

    name: ClassVar[str] = ""
    # The device type this provider's data lives on, and how to reach it from the host.
    device_type: ClassVar[str] = "cpu"
    data_transfer_type: ClassVar[Callable[[Device], DataTransfer]] = HostDataTransfer

    def __init__(self, options: dict[str, str] | None = None) -> None:
        self.options: dict[str, str] = dict(options or {})
        self.device = Device(self.device_type, int(self.options.get("device_id", 0)))

    def use_session_options(self, session_options: Any) -> None:
        """Take defaults from the session's ``SessionOptions`` (called once, before partitioning); default: none."""

    @property
    def data_transfer(self) -> DataTransfer:
        """Copies between the host and this provider's device."""
        return data_transfer_for(self.device)

    def allocate(self, shape: Sequence[int], dtype: np.dtype) -> Any:
        """Uninitialized memory for a tensor on this provider's device."""
        return self.data_transfer.allocate(shape, dtype)

    # ------------------------------------------------------------------ capability

    def can_run(self, node: ir.Node, opset: int) -> bool:
        """Whether this provider has an implementation of ``node`` at ``opset`` (per-node providers)."""
        return False

    def get_capability(self, graph: ir.Graph, opset_imports: Mapping[str, int]) -> list[NodeGroup]:
        """Groups of ``graph``'s not-yet-assigned nodes this provider takes (subgraphs are asked separately).

        The default offers each free node ``can_run`` accepts as its own unfused group
        (whose border is simply the node's inputs and outputs).
        """
        return [
            NodeGroup([node], list(dict.fromkeys(reads(node))),
                      list(node.outputs), opset_imports, fused=False)
            for node in graph
            if not is_assigned(node) and self.can_run(node, opset_for(node, opset_imports))
        ]

    # ------------------------------------------------------------------ compilation

    def compile_node(self, node: ir.Node, opset: int, attributes: dict[str, Any],
                     constants: Sequence[Any] = ()) -> tuple[Callable[..., Any], bool]:
        """A callable computing ``node`` from its input values, and whether it returns a tuple of outputs.

        ``attributes`` are the node's attribute values (graph attributes compiled to
        callables); ``constants`` gives, per input, its value when it is a constant
        weight (else None), so a provider can prepare weights once at session creation.
        """
        raise OrtNotImplemented(f"{self.name} compiles node groups only, not single nodes ({node.op_type})")

    def compile(self, group: NodeGroup) -> Step:
        """One step running the fused ``group``: its inputs in, its outputs (a sequence) out.

        The default chains ``compile_node`` over the group's nodes (which must have no
        graph attributes), so a per-node provider can run any group of nodes it can run.
        """
        steps = []
        for node in group.nodes:
            if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
                raise OrtNotImplemented(f"{self.name} cannot run {describe(node)} inside a fused group")
            attributes = {name: attribute_value(attr) for name, attr in node.attributes.items()}
            # weights no feed can override, as the plan passes them
            constants = [constant_array(v) if v is not None and v.is_initializer() and not v.is_graph_input()
                         else None for v in node.inputs]
            fn, multi = self.compile_node(node, opset_for(node, group.opset_imports), attributes, constants)
            steps.append((fn, node.inputs, node.outputs, multi))

        def run_group(*inputs: Any) -> list[Any]:
            values: dict[ir.Value | None, Any] = dict(zip(group.inputs, inputs))
            values[None] = None
            for fn, node_inputs, node_outputs, multi in steps:
                result = fn(*[values[v] for v in node_inputs])
                values.update(zip(node_outputs, result) if multi else [(node_outputs[0], result)])
            return [values[v] for v in group.outputs]

        return run_group
