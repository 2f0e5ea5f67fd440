"""Assigns every node (subgraphs included) to the first provider that can run it."""

from __future__ import annotations

from ..errors import NotImplemented as OrtNotImplemented
from ..graph.function_expansion import expand_unsupported
from ..graph.ir import Graph, Node
from ..providers.base import ExecutionProvider

Assignment = dict[int, ExecutionProvider]  # id(node) -> provider


def partition(graph: Graph, opsets: dict[str, int], providers: list[ExecutionProvider]) -> Assignment:
    """Map each node to the first of ``providers`` that can run it.

    A node no provider implements is first replaced by its ONNX function body,
    where its schema defines one. Every node still without an implementation, in the main graph or any subgraph, is
    listed in one NOT_IMPLEMENTED error at session creation.
    """
    expand_unsupported(graph, opsets, lambda node, opset: any(p.can_run(node, opset) for p in providers))
    assignment: Assignment = {}
    missing: list[str] = []
    _assign(graph, opsets, providers, assignment, missing)
    if missing:
        listed = "\n  ".join(missing)
        raise OrtNotImplemented(f"Could not find an implementation for the following nodes:\n  {listed}")
    return assignment


def _assign(graph: Graph, opsets, providers, assignment: Assignment, missing: list[str]) -> None:
    for node in graph.nodes:
        opset = opset_for(node, opsets)
        for provider in providers:
            if provider.can_run(node, opset):
                assignment[id(node)] = provider
                break
        else:
            missing.append(f"{node.describe()} at opset {opset}")
        for sub in node.subgraphs():
            _assign(sub, opsets, providers, assignment, missing)


def opset_for(node: Node, opsets: dict[str, int]) -> int:
    """The model's opset version for the node's domain (1 when the model does not import it)."""
    return opsets.get(node.domain, 1)
