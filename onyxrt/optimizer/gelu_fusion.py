"""GELU fusion: the exported erf spelling of GELU becomes one Gelu node, with its bias Add when it has one.

``x * 0.5 * (1 + Erf(x / sqrt(2)))`` — the division may be a multiplication by 1/sqrt(2), the
product may associate either way, constants may sit on either side — becomes
``Gelu(x)`` (ONNX Gelu at opset 20 and later, com.microsoft Gelu before). When ``x`` is
``Add(a, bias)`` with a constant 1-D bias read by nothing else, the Add joins as
com.microsoft ``BiasGelu(a, bias)``; so does the bias Add before an ONNX ``Gelu`` op (opset 20,
exact form). onnxruntime: GeluFusion, BiasGeluFusion.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from .matching import constant_vector, is_close, is_float32, only_reader, partner, replace_with, scalar, self_contained
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel

_SQRT2 = math.sqrt(2.0)
_MICROSOFT = "com.microsoft"


class GeluFusion(GraphPass):
    """Replaces the erf GELU subgraph (5 nodes, 6 with its bias Add) by one node."""

    name = "gelu_fusion"
    ort_names = ("GeluFusion", "BiasGeluFusion")
    level = OptimizationLevel.EXTENDED
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        fused = 0
        for erf in [node for node in graph if node.op_type == "Erf" and node.domain == ""]:
            match = _match(erf)
            # onnxruntime's CPU Gelu/BiasGelu are float32 kernels; the ONNX op (opset 20) takes any float
            if match is not None and (is_float32(match.x) or context.opset_imports.get("", 1) >= 20):
                _replace(graph, match, context)
                fused += 1
        for gelu in [node for node in graph if node.op_type == "Gelu" and node.domain == ""]:
            # the ONNX op (opset 20) is one node already; only its bias Add is left to fuse
            if gelu.attributes.get_string("approximate", "none") != "none" or gelu.inputs[0] is None:
                continue
            bias_add = bias_add_of(gelu.inputs[0], [gelu])
            if bias_add is not None and is_float32(gelu.inputs[0]):
                context.require_opset(_MICROSOFT, 1)
                fused_node = ir.Node(_MICROSOFT, "BiasGelu", biased_inputs(bias_add), num_outputs=1, name=f"{gelu.name or 'gelu'}_bias")
                replace_with(graph, [bias_add, gelu], gelu.outputs[0], fused_node)
                fused += 1
        return fused


class _Match:
    def __init__(self, x: ir.Value, nodes: list[ir.Node], output: ir.Value) -> None:
        self.x, self.nodes, self.output = x, nodes, output


def _match(erf: ir.Node) -> _Match | None:
    scale = erf.inputs[0].producer() if erf.inputs[0] is not None else None
    if scale is None or scale.domain != "" or len(scale.inputs) != 2:
        return None
    if scale.op_type == "Div":
        x = scale.inputs[0] if _is_scalar(scale.inputs[1], _SQRT2) else None
    elif scale.op_type == "Mul":
        x = other_than(scale, 1 / _SQRT2)
    else:
        return None
    plus_one = only_reader(erf.outputs[0])
    if x is None or plus_one is None or plus_one.op_type != "Add" or other_than(plus_one, 1.0) is not erf.outputs[0]:
        return None
    product = half_x_times(x, plus_one.outputs[0])
    if product is None:
        return None
    muls, output = product
    nodes = [scale, erf, plus_one, *muls]
    return _Match(x, nodes, output) if self_contained(nodes, output) else None


def half_x_times(x: ir.Value, one_plus_erf: ir.Value) -> tuple[list[ir.Node], ir.Value] | None:
    """The two Muls forming ``0.5 * x * one_plus_erf`` in any association, and their result."""
    first = only_reader(one_plus_erf)
    if first is None or first.op_type != "Mul" or first.domain != "":
        return None
    other = partner(first, one_plus_erf)
    if other is x:  # (x * (1 + erf)) * 0.5
        second = only_reader(first.outputs[0])
        if second is not None and second.op_type == "Mul" and other_than(second, 0.5) is first.outputs[0]:
            return [first, second], second.outputs[0]
        return None
    if _is_scalar(other, 0.5):  # x * ((1 + erf) * 0.5)
        second = only_reader(first.outputs[0])
        if second is not None and second.op_type == "Mul" and partner(second, first.outputs[0]) is x:
            return [first, second], second.outputs[0]
        return None
    half = other.producer() if other is not None else None  # (x * 0.5) * (1 + erf)
    if half is not None and half.op_type == "Mul" and half.domain == "" and other_than(half, 0.5) is x:
        return [half, first], first.outputs[0]
    return None


def _replace(graph: ir.Graph, match: _Match, context: OptimizationContext) -> None:
    inputs, op_type, domain = [match.x], "Gelu", _MICROSOFT
    bias_add = bias_add_of(match.x, match.nodes) if is_float32(match.x) else None
    if bias_add is not None:
        inputs, op_type = biased_inputs(bias_add), "BiasGelu"
        match.nodes.insert(0, bias_add)
    elif context.opset_imports.get("", 1) >= 20:
        domain = ""
    if domain == _MICROSOFT:
        context.require_opset(_MICROSOFT, 1)
    fused = ir.Node(domain, op_type, inputs, num_outputs=1, name=f"{match.nodes[-1].name or 'gelu'}_fused")
    replace_with(graph, match.nodes, match.output, fused)


def bias_add_of(x: ir.Value, nodes: list[ir.Node]) -> ir.Node | None:
    """The ``Add(a, bias)`` producing ``x`` (constant 1-D bias) when only ``nodes`` read ``x``, else None."""
    add = x.producer()
    if add is None or add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2 or x.is_graph_output():
        return None
    if not any(constant_vector(value) for value in add.inputs):
        return None
    return add if all(use.node in nodes for use in x.uses()) else None


def biased_inputs(bias_add: ir.Node) -> list[ir.Value]:
    """A bias Add's inputs as (activation input, bias)."""
    first, second = bias_add.inputs
    return [first, second] if constant_vector(second) else [second, first]


def other_than(node: ir.Node, constant: float) -> ir.Value | None:
    """The input of binary ``node`` that is not the scalar ``constant`` (None when neither input is it)."""
    if len(node.inputs) != 2:
        return None
    first, second = node.inputs
    if _is_scalar(second, constant):
        return first
    if _is_scalar(first, constant):
        return second
    return None


def _is_scalar(value: ir.Value | None, expected: float) -> bool:
    """``value`` is a constant holding one element close to ``expected`` (or it rounded to float16: a
    float16 model's constant)."""
    return is_close(scalar(value), expected, rounded=True)
