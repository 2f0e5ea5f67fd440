"""Adding nodes to an ``onnx_ir`` graph: fresh names, Python attribute values, output rewiring.

Passes that write new nodes (function expansion, autodiff, fusions) share these
helpers. :class:`GraphBuilder` creates :class:`onnx_ir.Node` objects whose
values and nodes get names no other value or node of the model has (onnx_ir's
own name authority knows one graph only, so a subgraph's fresh names could
shadow an outer one); :func:`replace_node` puts such nodes in place of an
existing one. Topological order is restored with onnx_ir's ``Graph.sort()``.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from .tensors import from_array


def subgraphs(node: ir.Node) -> Iterator[ir.Graph]:
    """The graphs held by ``node``'s attributes (If branches, Loop/Scan bodies...)."""
    attributes = node.attributes
    if not attributes:  # most nodes: skip the (slower) mapping iteration
        return
    for attr in attributes.data.values():  # the plain dict: several times faster than the mapping views
        if attr.type == ir.AttributeType.GRAPH and not attr.is_ref():
            yield attr.as_graph()
        elif attr.type == ir.AttributeType.GRAPHS and not attr.is_ref():
            yield from attr.as_graphs()


def has_subgraphs(node: ir.Node) -> bool:
    """Whether ``node`` holds a graph attribute (control flow)."""
    return next(subgraphs(node), None) is not None


def all_graphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    """``graph`` and every graph nested in it, outer before inner."""
    yield graph
    for node in graph:
        for sub in subgraphs(node):
            yield from all_graphs(sub)


def captured_values(graph: ir.Graph) -> list[ir.Value]:
    """Values ``graph`` (or a graph nested in it) reads but does not define: its outer-scope captures, in first-read order."""
    nested = list(all_graphs(graph))
    inner = set(nested)
    captured: dict[ir.Value, None] = {}
    for sub in nested:
        for node in sub:
            for value in node.inputs:
                if value is not None and value.graph not in inner:
                    captured.setdefault(value)
        for value in sub.outputs:
            if value.graph not in inner:
                captured.setdefault(value)
    return list(captured)


def reads(node: ir.Node) -> list[ir.Value]:
    """Every value ``node`` reads: its inputs, then what its subgraphs capture from outside."""
    values = [value for value in node.inputs if value is not None]
    for sub in subgraphs(node):
        values.extend(captured_values(sub))
    return values


def nodes_inside(node: ir.Node) -> list[ir.Node]:
    """Every node of ``node``'s subgraph attributes, recursively."""
    return [inner for sub in subgraphs(node) for inner in sub.all_nodes()]


def names_in(graph: ir.Graph) -> set[str]:
    """The names of every value and node of ``graph`` and the graphs nested in it."""
    names: set[str] = set()
    for sub in all_graphs(graph):
        names.update(value.name for value in sub.inputs if value.name)
        names.update(name for name in sub.initializers)
        for node in sub:
            if node.name:
                names.add(node.name)
            names.update(value.name for value in node.outputs if value.name)
    return names


class UniqueNames:
    """Hands out names no value or node of a graph (its subgraphs included) has.

    The graph is read on the first request, so a pass that adds nothing pays nothing.
    """

    def __init__(self, graph: ir.Graph) -> None:
        self._graph = graph
        self._taken: set[str] | None = None

    def fresh(self, base: str) -> str:
        """``base`` itself when free, else ``base_1``, ``base_2``...; the name is taken from then on."""
        if self._taken is None:
            self._taken = names_in(self._graph)
        name, count = base, 0
        while name in self._taken:
            count += 1
            name = f"{base}_{count}"
        self._taken.add(name)
        return name


def attribute(name: str, value: Any) -> ir.Attr:
    """``value`` (a Python/numpy value, ``ir.Tensor``, ``ir.Graph`` or ``ir.Attr``) as an attribute ``name``."""
    if isinstance(value, ir.Attr):
        if value.name == name:
            return value
        return ir.Attr(name, value.type, value.value, value.ref_attr_name, doc_string=value.doc_string)
    if isinstance(value, (bool, np.bool_, np.integer)):
        return ir.Attr(name, ir.AttributeType.INT, int(value))
    if isinstance(value, np.floating):
        return ir.Attr(name, ir.AttributeType.FLOAT, float(value))
    if isinstance(value, np.ndarray):
        return ir.Attr(name, ir.AttributeType.TENSOR, from_array(value, name))
    if isinstance(value, (list, tuple)) and value:
        if all(isinstance(v, (int, np.integer)) for v in value):  # bools included
            return ir.Attr(name, ir.AttributeType.INTS, value)
        if all(isinstance(v, (int, float, np.number)) for v in value):
            return ir.Attr(name, ir.AttributeType.FLOATS, value)
    return ir.convenience.convert_attribute(name, value)


class GraphBuilder:
    """Creates nodes with fresh names and collects them, in creation order, in :attr:`nodes`.

    ``names`` is shared by every builder writing into one model; ``prefix`` starts
    each new name (the name of the node being replaced reads well there).
    """

    def __init__(self, names: UniqueNames, prefix: str) -> None:
        self.names = names
        self.prefix = prefix
        self.nodes: list[ir.Node] = []

    def fresh(self, hint: str) -> str:
        return self.names.fresh(f"{self.prefix}{hint}")

    def node(
        self,
        op_type: str,
        inputs: Sequence[ir.Value | None],
        attributes: Mapping[str, Any] | None = None,
        *,
        domain: str = "",
        num_outputs: int = 1,
        output_names: Sequence[str] | None = None,
    ) -> ir.Node:
        """A new node (attributes whose value is None are left out); outputs named ``output_names`` or fresh."""
        attrs = [attribute(key, value) for key, value in (attributes or {}).items() if value is not None]
        names = list(output_names) if output_names is not None else [self.fresh(op_type) for _ in range(num_outputs)]
        outputs = [ir.Value(name=name) for name in names]
        node = ir.Node(domain, op_type, inputs, attrs, outputs=outputs, name=self.fresh(f"{op_type}_node"))
        self.nodes.append(node)
        return node

    def op(
        self,
        op_type: str,
        inputs: Sequence[ir.Value | None],
        attributes: Mapping[str, Any] | None = None,
        *,
        domain: str = "",
        type: ir.TypeProtocol | None = None,
        shape: ir.Shape | None = None,
    ) -> ir.Value:
        """The single output of a new node, with ``type`` and ``shape`` where the caller knows them."""
        value = self.node(op_type, inputs, attributes, domain=domain).outputs[0]
        value.type = type
        value.shape = shape
        return value

    def insert_before(self, anchor: ir.Node) -> list[ir.Node]:
        """Insert the nodes built so far before ``anchor`` (in ``anchor``'s graph); returns them."""
        nodes, self.nodes = self.nodes, []
        graph = anchor.graph
        if graph is None:
            raise ValueError(f"node '{anchor.name}' ({anchor.op_type}) is in no graph")
        graph.insert_before(anchor, nodes)
        return nodes


def replace_node(node: ir.Node, new_nodes: Iterable[ir.Node], new_outputs: Sequence[ir.Value | None]) -> None:
    """Put ``new_nodes`` where ``node`` is and make ``new_outputs[i]`` stand for ``node.outputs[i]``.

    Uses (in subgraphs too) and graph outputs move to the new values, which take
    the old names (a graph output keeps its name; attributes that name values,
    as Gradient's ``y``, still find them) and, where they lack them, the old
    types and shapes. A new value that cannot take a name (an existing value, or
    one standing for two outputs) is copied by an Identity that does. An old
    output without a replacement must be unused.
    """
    graph = node.graph
    if graph is None:
        raise ValueError(f"node '{node.name}' ({node.op_type}) is in no graph")
    new_nodes = [n for n in new_nodes if n.graph is not graph]  # nodes already inserted stay where they are
    graph.insert_before(node, new_nodes)
    created = {value for n in new_nodes for value in n.outputs}
    renames: list[tuple[ir.Value, str]] = []
    for old, new in zip(node.outputs, new_outputs):
        if not old.name and not old.uses() and not old.is_graph_output():
            continue  # an omitted output
        if new is None:
            if old.uses() or old.is_graph_output():
                raise ValueError(f"output '{old.name}' of node '{node.name}' ({node.op_type}) is used but not replaced")
            continue
        if old.name:
            if new not in created:
                identity = ir.Node("", "Identity", [new])  # named by the graph on insertion
                graph.insert_before(node, identity)
                new = identity.outputs[0]
            created.discard(new)
            renames.append((new, old.name))
        if (new.type is None or new.type.dtype == ir.DataType.UNDEFINED) and old.type is not None:
            new.type = old.type
        if new.shape is None and old.shape is not None:
            new.shape = old.shape.copy()
        old.replace_all_uses_with(new, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    for value, name in renames:
        value.name = name


__all__ = [
    "GraphBuilder",
    "UniqueNames",
    "attribute",
    "all_graphs",
    "captured_values",
    "has_subgraphs",
    "names_in",
    "nodes_inside",
    "reads",
    "replace_node",
    "subgraphs",
]
