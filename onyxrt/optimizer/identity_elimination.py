"""Identity elimination: readers of an Identity's output read its input instead."""

from __future__ import annotations

import onnx_ir as ir

from .pass_manager import GraphPass, OptimizationContext


class IdentityElimination(GraphPass):
    """Removes ``y = Identity(x)`` nodes, rewiring every reader of ``y`` (subgraphs included) to ``x``.

    A graph output keeps its name: when ``y`` is one, ``x`` takes over the name if ``x`` is
    produced by a node of the same graph and is not itself a graph output; otherwise (``x``
    a graph input, an initializer, an outer-scope value or another output) the node stays.
    """

    name = "identity_elimination"
    ort_names = ("EliminateIdentity",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        removed = 0
        for node in list(graph):
            if node.op_type != "Identity" or node.domain != "" or len(node.inputs) != 1 or len(node.outputs) != 1:
                continue
            source, result = node.inputs[0], node.outputs[0]
            if source is None:
                continue
            keeps_output_name = result.is_graph_output()
            if keeps_output_name and not _renamable(source, graph):
                continue
            if source.type is None:
                source.type = result.type
            if source.shape is None:
                source.shape = result.shape
            name = result.name
            result.replace_all_uses_with(source, replace_graph_outputs=True)
            graph.remove(node, safe=True)
            if keeps_output_name:
                source.name = name
            removed += 1
        return removed


def _renamable(value: ir.Value, graph: ir.Graph) -> bool:
    """Whether ``value`` may take a graph output's name: a node output of ``graph`` that is no graph output."""
    producer = value.producer()
    return producer is not None and producer.graph is graph and not value.is_graph_output()
