"""Identity elimination: readers of an Identity's output read its input instead."""

from __future__ import annotations

import onnx_ir as ir

from .matching import bypass
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
            if node.inputs[0] is not None and bypass(node, node.inputs[0], graph):
                removed += 1
        return removed
