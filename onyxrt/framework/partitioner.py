"""Assigns every node (subgraphs included) to the first provider that can run it."""

from __future__ import annotations

from typing import Sequence

import onnx_ir as ir

from ..errors import NotImplemented as OrtNotImplemented
from ..graph.opsets import describe, opset_for
from ..providers.base import ExecutionProvider

PROVIDER_KEY = "execution_provider"  # node.meta key holding the assigned provider's name


def partition(graph: ir.Graph, opset_imports: dict[str, int], providers: Sequence[ExecutionProvider]) -> None:
    """Record on each node (``node.meta["execution_provider"]``) the first of ``providers`` that can run it.

    Every node still without an implementation, in the main graph or any subgraph, is
    listed in one NOT_IMPLEMENTED error at session creation.
    """
    missing: list[str] = []
    _assign(graph, opset_imports, providers, missing)
    if missing:
        listed = "\n  ".join(missing)
        raise OrtNotImplemented(f"Could not find an implementation for the following nodes:\n  {listed}")


def _assign(graph: ir.Graph, opset_imports, providers, missing: list[str]) -> None:
    for node in graph:
        opset = opset_for(node, opset_imports)
        for provider in providers:
            if provider.can_run(node, opset):
                node.meta[PROVIDER_KEY] = provider.name
                break
        else:
            missing.append(f"{describe(node)} at opset {opset}")
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                _assign(attr.value, opset_imports, providers, missing)
            elif attr.type == ir.AttributeType.GRAPHS:
                for sub in attr.value:
                    _assign(sub, opset_imports, providers, missing)
