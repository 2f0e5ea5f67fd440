"""FastGelu fusion: the tanh approximation of GELU becomes com.microsoft FastGelu, with its bias Add.

``0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` in the spellings exporters emit:
the cube as ``Pow(x, 3)`` or products of ``x``, the inner term factored as
``x * (1 + 0.044715 * x * x)`` (Megatron / GPT-NeoX), the constants on either side of
each product and the outer ``0.5 * x`` product in any association. An ONNX ``Gelu`` with
``approximate="tanh"`` (opset 20) fuses its bias Add the same way. When ``x`` is
``Add(a, bias)`` with a constant 1-D bias read only by the pattern, the Add joins as
FastGelu's bias input. float32 only (onnxruntime's CPU kernel). onnxruntime: FastGeluFusion.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from .gelu_fusion import bias_add_of, biased_inputs, half_x_times, other_than
from .matching import is_close, is_float32, only_reader, replace_with, scalar, self_contained
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_CUBIC = 0.044715


class FastGeluFusion(GraphPass):
    """Replaces the tanh-GELU subgraph (and a Gelu(approximate="tanh") op's bias Add) by FastGelu."""

    name = "fast_gelu_fusion"
    ort_names = ("FastGeluFusion",)
    level = OptimizationLevel.EXTENDED
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        fused = 0
        for node in list(graph):
            if node.graph is not graph or node.domain != "":
                continue
            if node.op_type == "Tanh":
                match = _match_tanh_form(node)
            elif node.op_type == "Gelu" and node.attributes.get_string("approximate", "none") == "tanh":
                match = (node.inputs[0], [node], node.outputs[0])
            else:
                continue
            if match is None or not is_float32(match[0]):
                continue
            x, nodes, output = match
            bias_add = bias_add_of(x, nodes)
            if bias_add is None and node.op_type == "Gelu":
                continue  # already one node
            inputs = [x]
            if bias_add is not None:
                inputs = biased_inputs(bias_add)
                nodes = [bias_add, *nodes]
            if not self_contained(nodes, output):
                continue
            context.require_opset("com.microsoft", 1)
            fast_gelu = ir.Node("com.microsoft", "FastGelu", inputs, num_outputs=1, name=f"{node.name or 'gelu'}_fast")
            replace_with(graph, nodes, output, fast_gelu)
            fused += 1
        return fused


def _match_tanh_form(tanh: ir.Node) -> tuple[ir.Value, list[ir.Node], ir.Value] | None:
    """(x, the pattern's nodes, its output) when ``tanh`` is the heart of a tanh-GELU, else None."""
    nodes: list[ir.Node] = [tanh]
    scale, leaves = _factors(tanh.inputs[0], nodes)
    if not is_close(scale, _SQRT_2_OVER_PI, rounded=True):
        return None
    if len(leaves) == 1:  # sqrt(2/pi) * (x + 0.044715 * x^3)
        offset, terms = _terms(leaves[0], nodes)
        if offset != 0.0 or len(terms) != 2:
            return None
        for x, cubic in (terms, terms[::-1]):
            trial = list(nodes)  # a failed reading adds nothing
            coefficient, powers = _factors(cubic, trial)
            if is_close(coefficient, _CUBIC, rounded=True) and _powers_of(x, powers, trial) == 3:
                nodes = trial
                break
        else:
            return None
    elif len(leaves) == 2:  # sqrt(2/pi) * x * (1 + 0.044715 * x * x)
        for x, inner in (leaves, leaves[::-1]):
            trial = list(nodes)
            offset, terms = _terms(inner, trial)
            if offset == 1.0 and len(terms) == 1:
                coefficient, powers = _factors(terms[0], trial)
                if is_close(coefficient, _CUBIC, rounded=True) and _powers_of(x, powers, trial) == 2:
                    nodes = trial
                    break
        else:
            return None
    else:
        return None
    plus_one = only_reader(tanh.outputs[0])
    if plus_one is None or plus_one.op_type != "Add" or other_than(plus_one, 1.0) is not tanh.outputs[0]:
        return None
    product = half_x_times(x, plus_one.outputs[0])
    if product is None:
        return None
    muls, output = product
    return x, [*nodes, plus_one, *muls], output


def _inner(value: ir.Value | None, op_type: str) -> ir.Node | None:
    """The ONNX ``op_type`` node producing ``value`` when the pattern may absorb it (its only reader is inside)."""
    if value is None or len(value.uses()) != 1 or value.is_graph_output():
        return None
    producer = value.producer()
    if producer is None or producer.op_type != op_type or producer.domain != "" or len(producer.inputs) != 2:
        return None
    return producer


def _factors(value: ir.Value, nodes: list[ir.Node]) -> tuple[float, list[ir.Value]]:
    """``value`` as constant * product of leaves, through absorbable Muls (appended to ``nodes``)."""
    constants, leaves = _flattened(value, "Mul", nodes)
    return math.prod(constants), leaves


def _terms(value: ir.Value, nodes: list[ir.Node]) -> tuple[float, list[ir.Value]]:
    """``value`` as constant + sum of terms, through absorbable Adds (appended to ``nodes``)."""
    constants, terms = _flattened(value, "Add", nodes)
    return sum(constants, 0.0), terms


def _flattened(value: ir.Value, op_type: str, nodes: list[ir.Node]) -> tuple[list[float], list[ir.Value]]:
    """(scalar constants, other operands) of the tree of absorbable ``op_type`` nodes computing ``value``."""
    node = _inner(value, op_type)
    if node is None:
        constant = scalar(value)
        return ([constant], []) if constant is not None else ([], [value])
    nodes.append(node)
    constants, operands = [], []
    for operand in node.inputs:
        more_constants, more = _flattened(operand, op_type, nodes)
        constants += more_constants
        operands += more
    return constants, operands


def _powers_of(x: ir.Value, leaves: list[ir.Value], nodes: list[ir.Node]) -> int:
    """The power of ``x`` the product of ``leaves`` is (``Pow(x, n)`` counts n); -1 when another factor appears."""
    power = 0
    for leaf in leaves:
        if leaf is x:
            power += 1
            continue
        pow_node = _inner(leaf, "Pow")
        exponent = scalar(pow_node.inputs[1]) if pow_node is not None else None
        if pow_node is None or pow_node.inputs[0] is not x or exponent not in (2.0, 3.0):
            return -1
        nodes.append(pow_node)
        power += int(exponent)
    return power
