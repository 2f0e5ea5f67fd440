"""Transpose optimizer: Transposes merged, cancelled across elementwise ops, and folded into Gemm.

* ``Transpose(Transpose(x, p), q)`` reads ``x`` with the composed perm; an identity result is
  bypassed (its readers read ``x``), and the first Transpose goes once nothing else reads it.
* ``Transpose(p)`` → a chain of elementwise ops → ``Transpose(q)``: the first Transpose moves
  to the end (folded into the second as above) when every op of the chain is unary (Relu,
  Cast, Neg, Sigmoid, Clip...) or binary with a constant, one-element operand of no higher
  rank (a scalar scale or offset, which broadcasts the same whatever the axis order), and each
  value of the chain has the next node as its only reader and is no graph output.
* ``Gemm`` reading a 2-D ``Transpose(x)`` reads ``x`` with transA/transB toggled.

ONNX domain only; perms must be constant attributes (a missing perm, which reverses the
axes, needs the input's rank). A graph output keeps its name. onnxruntime: TransposeOptimizer,
GemmTransposeFusion.
"""

from __future__ import annotations

import onnx_ir as ir

from .matching import bypass, is_constant, only_reader, partner
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel

# Elementwise ops whose only tensor input is the data (Clip's min/max are scalars by its schema).
_UNARY = frozenset({
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BitwiseNot", "Cast", "Ceil", "Celu", "Clip", "Cos",
    "Cosh", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN",
    "LeakyRelu", "Log", "Mish", "Neg", "Not", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin",
    "Sinh", "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu",
})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"})


class TransposeOptimizer(GraphPass):
    """Merges, cancels and folds Transposes (see the module docstring)."""

    name = "transpose_optimizer"
    ort_names = ("TransposeOptimizer", "GemmTransposeFusion")
    level = OptimizationLevel.BASIC

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        rewrites = 0
        for node in list(graph):
            if node.graph is not graph or node.domain != "":
                continue
            if node.op_type == "Transpose":
                rewrites += _merge_with_earlier_transpose(graph, node) or _cancel_across_elementwise(graph, node)
            elif node.op_type == "Gemm":
                rewrites += _fold_into_gemm(graph, node)
        return rewrites


def perm_of(node: ir.Node) -> list[int] | None:
    """A Transpose's perm (its default, reversed axes, when the input's rank is known), else None."""
    perm = node.attributes.get_ints("perm")
    if perm is not None:
        return list(perm)
    data = node.inputs[0] if node.inputs else None
    if data is None or data.shape is None:
        return None
    return list(reversed(range(len(data.shape))))


def transposed_input(value: ir.Value | None) -> tuple[ir.Node, list[int]] | None:
    """(the Transpose producing ``value``, its perm) when an ONNX Transpose of a known perm produces it."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "Transpose" or producer.domain != "" or producer.inputs[0] is None:
        return None
    perm = perm_of(producer)
    return (producer, perm) if perm is not None else None


def _remove_if_unread(graph: ir.Graph, node: ir.Node) -> None:
    """Removes ``node`` once nothing reads its outputs (its other readers keep it otherwise)."""
    if node.graph is graph and not any(value.uses() or value.is_graph_output() for value in node.outputs):
        graph.remove(node, safe=True)


def _merge_with_earlier_transpose(graph: ir.Graph, second: ir.Node) -> int:
    earlier = transposed_input(second.inputs[0])
    perm = perm_of(second)
    if earlier is None or perm is None or earlier[0].graph is not graph or len(earlier[1]) != len(perm):
        return 0
    first, first_perm = earlier
    composed = [first_perm[axis] for axis in perm]
    source = first.inputs[0]
    # An identity that cannot be bypassed (a graph output's name) stays as one identity Transpose.
    if composed != list(range(len(composed))) or not bypass(second, source, graph):
        second.replace_input_with(0, source)
        second.attributes["perm"] = ir.AttrInt64s("perm", composed)
    _remove_if_unread(graph, first)
    return 1


def _cancel_across_elementwise(graph: ir.Graph, first: ir.Node) -> int:
    """Moves ``first`` past a single-reader elementwise chain ending at a Transpose, which absorbs it."""
    perm = perm_of(first)
    if perm is None or first.outputs[0].is_graph_output():
        return 0
    chain, value = [], first.outputs[0]
    while True:
        reader = only_reader(value)
        if reader is None or reader.domain != "" or reader.graph is not graph:
            return 0
        if reader.op_type == "Transpose":
            break
        if not _elementwise_on(reader, value, len(perm)):
            return 0
        chain.append(reader)
        value = reader.outputs[0]
    if not chain:
        return 0  # a direct Transpose pair: the merge handles it
    last, last_perm = reader, perm_of(reader)
    if last_perm is None or len(last_perm) != len(perm):
        return 0
    inverse = [perm.index(axis) for axis in range(len(perm))]
    chain[0].replace_input_with(_position(chain[0], first.outputs[0]), first.inputs[0])
    for node in chain:  # the chain now runs on the untransposed layout
        output = node.outputs[0]
        if output.shape is not None and len(output.shape) == len(perm):
            output.shape = ir.Shape([output.shape[inverse[axis]] for axis in range(len(perm))])
    graph.remove(first, safe=True)
    composed = [perm[axis] for axis in last_perm]
    if composed != list(range(len(composed))) or not bypass(last, last.inputs[0], graph):
        last.attributes["perm"] = ir.AttrInt64s("perm", composed)
    return 1


def _elementwise_on(node: ir.Node, value: ir.Value, rank: int) -> bool:
    """``node`` is elementwise in ``value`` and commutes with any transpose of it (single output)."""
    if len(node.outputs) != 1:
        return False
    if node.op_type in _UNARY:
        return node.inputs[0] is value and all(other is not value for other in node.inputs[1:])
    if node.op_type in _BINARY:
        other = partner(node, value)
        if other is None or not is_constant(other):
            return False
        shape = other.const_value.shape
        return len(shape) <= rank and all(dim == 1 for dim in shape)
    return False


def _position(node: ir.Node, value: ir.Value) -> int:
    return next(index for index, input_value in enumerate(node.inputs) if input_value is value)


def _fold_into_gemm(graph: ir.Graph, gemm: ir.Node) -> int:
    folded = 0
    for index, flag in ((0, "transA"), (1, "transB")):
        if index >= len(gemm.inputs):
            continue
        transposed = transposed_input(gemm.inputs[index])
        if transposed is None or transposed[1] != [1, 0] or transposed[0].graph is not graph:
            continue
        transpose = transposed[0]
        gemm.replace_input_with(index, transpose.inputs[0])
        gemm.attributes[flag] = ir.AttrInt64(flag, 1 - gemm.attributes.get_int(flag, 0))
        _remove_if_unread(graph, transpose)
        folded += 1
    return folded
