"""Common-subexpression elimination: nodes computing the same thing from the same values run once.

Two nodes of one graph with the same domain, op type, attributes (names and values), the
same inputs (the same values, or small constants of equal content, in order, missing
optional inputs included) and the same
outputs present compute the same outputs; the first in dependency order is kept and the
readers of the others (subgraph reads and graph outputs included) read its outputs. As
onnxruntime's ``CommonSubexpressionElimination``:

* non-deterministic ops (random generators, Dropout) are never merged;
* nodes with subgraph attributes (If, Loop, Scan) or attribute references are never merged;
* only ops of the ONNX, ai.onnx.ml and com.microsoft domains are merged: other domains' ops
  may keep state;
* a graph output keeps its name: a merged node's output that is a graph output hands its
  name to the kept output, unless that one is a graph output too (then the node stays).

Attributes are compared as written: a default spelled out differs from one left implicit
(a missed merge, never a wrong one).
"""

from __future__ import annotations

import math
from typing import Hashable

import onnx_ir as ir

from ..graph.tensors import to_array
from .matching import is_constant
from .pass_manager import GraphPass, OptimizationContext

# Constants up to this many elements compare by content (shapes, axes, scalars).
_SMALL_CONSTANT = 64
_MERGEABLE_DOMAINS = frozenset({"", "ai.onnx.ml", "com.microsoft"})
_NON_DETERMINISTIC = frozenset(
    {
        "RandomUniform",
        "RandomNormal",
        "RandomUniformLike",
        "RandomNormalLike",
        "Multinomial",
        "Bernoulli",
        "Dropout",
        # com.microsoft's training-mode dropouts
        "BiasDropout",
        "BitmaskDropout",
        "BitmaskBiasDropout",
    }
)


class _NotComparable(Exception):
    """An attribute that cannot be part of a node's key (a subgraph, a reference)."""


class CommonSubexpressionElimination(GraphPass):
    """Merges nodes with equal op, attributes and inputs (see the module docstring)."""

    name = "common_subexpression_elimination"
    ort_names = ("CommonSubexpressionElimination",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        first_of: dict[Hashable, ir.Node] = {}
        merged = 0
        # Dependency order: a node's inputs are already merged when its key is taken, so chains merge in one pass.
        for node in list(graph):
            key = _key(node)
            if key is None:
                continue
            kept = first_of.setdefault(key, node)
            if kept is not node and _merge(node, kept, graph):
                merged += 1
        return merged


def _key(node: ir.Node) -> Hashable | None:
    """What two nodes computing the same outputs share, or None when ``node`` must not be merged."""
    if node.domain not in _MERGEABLE_DOMAINS or node.op_type in _NON_DETERMINISTIC:
        return None
    try:
        attributes = tuple(sorted((name, _attribute_key(attr)) for name, attr in node.attributes.items()))
    except _NotComparable:
        return None
    # Values hash by identity (equal keys mean the very same input values), except small
    # constants, which hash by content: folding leaves each Unsqueeze its own axes initializer.
    inputs = tuple(_input_key(value) for value in node.inputs)
    outputs_present = tuple(bool(output.name) or bool(output.uses()) for output in node.outputs)
    return (node.domain, node.op_type, node.overload, inputs, attributes, outputs_present)


def _input_key(value: ir.Value | None) -> Hashable:
    if is_constant(value) and _element_count(value) <= _SMALL_CONSTANT:
        return ("constant", _tensor_key(value.const_value))
    return value


def _element_count(value: ir.Value) -> int:
    """The elements of a constant ``value``: from the value's shape where it is static (a proto-backed tensor's
    ``size`` builds its shape anew from the proto at every call: ~8 ms of a small net's session creation here)."""
    shape = value.shape
    if shape is not None and shape.is_static():
        return math.prod(shape.numpy())
    return value.const_value.size


def _attribute_key(attr: ir.Attr) -> Hashable:
    if attr.is_ref():
        raise _NotComparable(attr.name)
    kind = attr.type
    if kind in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS, ir.AttributeType.SPARSE_TENSOR,
                ir.AttributeType.SPARSE_TENSORS):
        raise _NotComparable(attr.name)
    if kind == ir.AttributeType.TENSOR:
        return (kind, _tensor_key(attr.as_tensor()))
    if kind == ir.AttributeType.TENSORS:
        return (kind, tuple(_tensor_key(tensor) for tensor in attr.as_tensors()))
    if kind == ir.AttributeType.FLOAT:
        return (kind, repr(attr.as_float()))  # repr: a NaN attribute equals itself
    if kind == ir.AttributeType.FLOATS:
        return (kind, tuple(repr(v) for v in attr.as_floats()))
    if kind in (ir.AttributeType.INTS, ir.AttributeType.STRINGS):
        return (kind, tuple(attr.value))
    if kind in (ir.AttributeType.INT, ir.AttributeType.STRING):
        return (kind, attr.value)
    return (kind, str(attr.value))  # TYPE_PROTO(S): their text is their identity


def _tensor_key(tensor: ir.TensorProtocol) -> Hashable:
    array = to_array(tensor)
    data = tuple(array.reshape(-1).tolist()) if array.dtype == object else array.tobytes()
    return (tensor.dtype, tuple(array.shape), data)


def _merge(duplicate: ir.Node, kept: ir.Node, graph: ir.Graph) -> bool:
    """Readers of ``duplicate``'s outputs read ``kept``'s; False (nothing changed) when output names block it."""
    pairs = list(zip(duplicate.outputs, kept.outputs))
    if any(old.is_graph_output() and new.is_graph_output() for old, new in pairs):
        return False  # one value cannot carry two graph output names
    renames = []
    for old, new in pairs:
        if old.is_graph_output():
            renames.append((new, old.name))
        if new.type is None:
            new.type = old.type
        if new.shape is None and old.shape is not None:
            new.shape = old.shape.copy()
        old.replace_all_uses_with(new, replace_graph_outputs=True)
    graph.remove(duplicate, safe=True)
    for value, name in renames:
        value.name = name
    return True
