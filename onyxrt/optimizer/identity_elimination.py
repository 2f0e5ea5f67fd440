"""Identity elimination: consumers of an Identity read its input directly."""

from __future__ import annotations

from ..graph.ir import Graph


def eliminate_identities(graph: Graph) -> bool:
    """Bypass Identity nodes whose output is not a graph output; returns whether anything changed."""
    graph_outputs = {vi.name for vi in graph.outputs}
    captured = {name for node in graph.nodes for sub in node.subgraphs() for name in sub.free_variables()}
    rename: dict[str, str] = {}
    kept = []
    for node in graph.nodes:
        node.inputs = [rename.get(name, name) for name in node.inputs]
        if (
            node.op_type == "Identity"
            and node.domain == ""
            and node.outputs[0] not in graph_outputs
            and node.outputs[0] not in captured
        ):
            rename[node.outputs[0]] = node.inputs[0]
            continue
        kept.append(node)
    graph.nodes = kept
    return bool(rename)
