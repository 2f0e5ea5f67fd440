"""Gives every node (subgraphs included) to an execution provider, after onnxruntime's graph partitioner.

Providers are asked in priority order; each claims groups of the nodes earlier ones
left (``ExecutionProvider.get_capability``). The provider's name is recorded on the node
(``node.meta["execution_provider"]``). A fused group becomes one node of the graph (as
onnxruntime's ``Graph::FuseSubGraph``): its nodes move into a body graph kept on the
fused node (``node.meta["fused_group"]``), and the plan runs it with
``provider.compile(group)``.

Fusing a group must not create a cycle: when a path leaves the group and comes back
into it, contracting the group to one node would make the graph cyclic, so the group
is split into parts that each have no such path (see :func:`_acyclic_parts`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import onnx
import onnx_ir as ir

from ..errors import EPFail, Fail, InvalidGraph, NotImplemented as OrtNotImplemented
from ..graph.builder import nodes_inside, reads, subgraphs
from ..graph.opsets import describe, onnx_schema, opset_for
from ..providers.base import PROVIDER_KEY, ExecutionProvider, NodeGroup, is_assigned

# The key of ``node.meta`` holding a fused node's NodeGroup (its nodes in their body graph).
FUSED_GROUP = "fused_group"
# The domain of fused nodes; their op type is the provider's name.
FUSED_DOMAIN = "onyxrt.fused"


def on_cpu_kernels(node: ir.Node) -> bool:
    """Whether the partitioner gave ``node`` itself to the CPU provider (not a region another provider
    compiled)."""
    return node.meta.get(PROVIDER_KEY) == "CPUExecutionProvider" and FUSED_GROUP not in node.meta


def partition(graph: ir.Graph, opset_imports: Mapping[str, int], providers: Sequence[ExecutionProvider],
              *, complete: bool = True) -> None:
    """Assign every node of ``graph`` and its subgraphs to one of ``providers`` (highest priority first).

    Every node no provider takes is listed in one error, with onnxruntime's classes:
    INVALID_GRAPH when an ONNX domain has no such op or none at the model's opset, FAIL when
    an op of another domain is not known at all ("not a registered function/op"),
    NOT_IMPLEMENTED otherwise. Assignments left by an earlier partitioning (of a graph it did not
    rewrite) are dropped first; fused nodes keep theirs. With ``complete=False`` nodes no provider
    takes stay free for a later call (the subgraphs of free nodes are offered too) and nothing is raised.
    """
    _drop_assignments(graph)
    missing: list[ir.Node] = []
    _partition_graph(graph, opset_imports, providers, missing, complete)
    if missing:
        unknown = [node for node in missing if not onnx.defs.has(node.op_type, node.domain)]
        unknown_onnx = [node for node in unknown if node.domain in _ONNX_DOMAINS]
        if unknown_onnx:  # onnxruntime: the domain's registry has no such op
            raise InvalidGraph(
                f"This is an invalid model. No op registered for these nodes:\n  {_listed(unknown_onnx, opset_imports)}"
            )
        if unknown:
            raise Fail(f"Fatal error: these ops are not registered functions or ops:\n  {_listed(unknown, opset_imports)}")
        not_at_version = [node for node in missing if not _has_schema(node, opset_for(node, opset_imports))]
        if not_at_version:
            raise InvalidGraph(
                f"This is an invalid model. No op registered for these nodes at their domain's opset:\n  "
                f"{_listed(not_at_version, opset_imports)}"
            )
        raise OrtNotImplemented(f"Could not find an implementation for the following nodes:\n  {_listed(missing, opset_imports)}")


_ONNX_DOMAINS = frozenset({"", "ai.onnx.ml"})


def _listed(nodes: Sequence[ir.Node], opset_imports: Mapping[str, int]) -> str:
    return "\n  ".join(f"{describe(node)} at opset {opset_for(node, opset_imports)}" for node in nodes)


def _has_schema(node: ir.Node, version: int) -> bool:
    return onnx_schema(node.op_type, node.domain, version) is not None


def _drop_assignments(graph: ir.Graph) -> None:
    for node in graph:
        if PROVIDER_KEY in node.meta and FUSED_GROUP not in node.meta:
            del node.meta[PROVIDER_KEY]
        for subgraph in subgraphs(node):
            _drop_assignments(subgraph)


def _partition_graph(graph: ir.Graph, opset_imports: Mapping[str, int], providers: Sequence[ExecutionProvider],
                     missing: list[ir.Node], complete: bool) -> None:
    for provider in providers:
        for group in provider.get_capability(graph, opset_imports):
            _claim(graph, group, provider)
    for node in graph:
        if FUSED_GROUP in node.meta:
            continue
        if complete and not is_assigned(node):
            missing.append(node)
        else:
            for subgraph in subgraphs(node):
                _partition_graph(subgraph, opset_imports, providers, missing, complete)


def _claim(graph: ir.Graph, group: NodeGroup, provider: ExecutionProvider) -> None:
    for node in group.nodes:
        if node.graph is not graph or is_assigned(node):
            raise EPFail(f"{provider.name} claimed {describe(node)}, which is not a free node of graph '{graph.name}'")
    if not group.fused:
        if len(group.nodes) != 1:
            raise EPFail(f"{provider.name} returned an unfused group of {len(group.nodes)} nodes (one expected)")
        group.nodes[0].meta[PROVIDER_KEY] = provider.name
        return
    for part in _acyclic_parts(graph, group.nodes):
        _fuse(graph, NodeGroup.of(part, group.opset_imports), provider)


def _acyclic_parts(graph: ir.Graph, nodes: Sequence[ir.Node]) -> list[list[ir.Node]]:
    """``nodes`` split so that no path leaves a part and re-enters it (each part contracts without a cycle).

    Every node gets a stage: the most times a path reaching it has left the group.
    Along any path the stage never decreases and grows by one on each exit, so a path
    leaving a part and re-entering the group lands in a later part, and parts in stage
    order keep the graph acyclic as each is contracted in turn. Only the nodes from the
    group's first to its last can lie on such a path.
    """
    members = set(nodes)
    remaining = len(members)
    stage: dict[ir.Node, int] = {}  # for members: their stage; for others: the stage they pass on
    parts: dict[int, list[ir.Node]] = {}
    for node in graph:
        if remaining == 0:
            break
        if not stage and node not in members:
            continue  # before the group's first node
        reached = 0
        for value in reads(node):
            producer = value.producer()
            if producer is None or producer not in stage:
                continue
            passed = stage[producer] + 1 if producer in members and node not in members else stage[producer]
            reached = max(reached, passed)
        stage[node] = reached
        if node in members:
            parts.setdefault(reached, []).append(node)
            remaining -= 1
    return [parts[level] for level in sorted(parts)]


def _fuse(graph: ir.Graph, group: NodeGroup, provider: ExecutionProvider) -> ir.Node:
    """Replace ``group``'s nodes in ``graph`` by one node whose body graph holds them."""
    members = set(group.nodes)
    inner = members.union(*(nodes_inside(node) for node in group.nodes))
    fused = ir.Node(FUSED_DOMAIN, provider.name, group.inputs, num_outputs=len(group.outputs))
    _insert_in_order(graph, group.nodes, fused)
    graph.remove(group.nodes)

    # The body reads its own input values, so the moved nodes stop being users of outer values.
    body_inputs = [ir.Value(name=value.name, type=value.type, shape=value.shape) for value in group.inputs]
    replacement = dict(zip(group.inputs, body_inputs))
    for node in inner:
        for index, value in enumerate(node.inputs):
            if value in replacement:
                node.replace_input_with(index, replacement[value])
    # Readers outside the group now read the fused node's outputs, which keep the original names.
    for value, fused_output in zip(group.outputs, fused.outputs):
        fused_output.type, fused_output.shape = value.type, value.shape
        for user, index in list(value.uses()):
            if user not in inner:
                user.replace_input_with(index, fused_output)
        for position, output in enumerate(graph.outputs):
            if output is value:
                graph.outputs[position] = fused_output
        name, value.name = value.name, None
        fused_output.name = name
    body = ir.Graph(body_inputs, list(group.outputs), nodes=group.nodes, name=f"{provider.name}_{fused.name}",
                    opset_imports=dict(group.opset_imports))
    fused.meta[PROVIDER_KEY] = provider.name
    fused.meta[FUSED_GROUP] = NodeGroup(list(body), list(body.inputs), list(body.outputs), group.opset_imports)
    return fused


def _insert_in_order(graph: ir.Graph, nodes: Sequence[ir.Node], fused: ir.Node) -> None:
    """Insert ``fused`` after the last of ``nodes``, keeping the graph in dependency order.

    Nodes between the group's first and last node that read (through any chain) one of
    its outputs move right after ``fused``; the group has no path that leaves it and comes
    back, so none of them feeds the group and every other node may stay before it.
    """
    members = set(nodes)
    produced_by_group: set[ir.Value] = set()
    movers: list[ir.Node] = []
    remaining = len(members)
    for node in graph:
        if remaining == 0:
            break
        if node in members:
            remaining -= 1
            produced_by_group.update(node.outputs)
        elif produced_by_group and any(v in produced_by_group for v in reads(node)):
            movers.append(node)
            produced_by_group.update(node.outputs)
    graph.insert_after(nodes[-1], fused)
    if movers:
        graph.remove(movers)
        graph.insert_after(fused, movers)

