"""Dead-code elimination: drop nodes and initializers nothing reads."""

from __future__ import annotations

import onnx_ir as ir

from ..graph.builder import subgraphs
from .pass_manager import GraphPass, OptimizationContext


class DeadCodeElimination(GraphPass):
    """Removes nodes none of whose outputs is read or is a graph output, and unread initializers.

    Reads by nodes of subgraphs (outer-scope references) count: onnx_ir records them as
    uses of the outer value. Graph inputs are never removed, including initializers that
    are graph inputs (a caller may feed them).
    """

    name = "dead_code_elimination"

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        removed = 0
        # Last to first: removing a node drops its reads, which can make its producers dead in turn.
        for node in reversed(list(graph)):
            if any(output.uses() or output.is_graph_output() for output in node.outputs):
                continue
            _detach_subgraph_reads(node)
            graph.remove(node, safe=True)
            removed += 1
        for name, value in list(graph.initializers.items()):
            if not value.uses() and not value.is_graph_input() and not value.is_graph_output():
                del graph.initializers[name]
                removed += 1
        return removed


def _detach_subgraph_reads(node: ir.Node) -> None:
    """Drop the reads of ``node``'s subgraphs, so outer values they alone read become dead too."""
    for subgraph in subgraphs(node):
        for inner in ir.traversal.RecursiveGraphIterator(subgraph):
            for index in range(len(inner.inputs)):
                inner.replace_input_with(index, None)
