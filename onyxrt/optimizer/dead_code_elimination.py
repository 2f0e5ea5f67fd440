"""Dead-code elimination: drop nodes and initializers nothing reads."""

from __future__ import annotations

from ..graph.ir import Graph


def eliminate_dead_code(graph: Graph) -> bool:
    """Remove nodes whose outputs no node, subgraph or graph output reads; returns whether anything changed."""
    needed = {vi.name for vi in graph.outputs}
    kept = []
    for node in reversed(graph.nodes):
        if any(name in needed for name in node.outputs if name):
            kept.append(node)
            needed.update(node.inputs)
            for sub in node.subgraphs():
                needed.update(sub.free_variables())
    kept.reverse()
    changed = len(kept) != len(graph.nodes)
    graph.nodes = kept
    graph_inputs = {vi.name for vi in graph.inputs}
    for name in [n for n in graph.initializers if n not in needed and n not in graph_inputs]:
        del graph.initializers[name]
        changed = True
    return changed
