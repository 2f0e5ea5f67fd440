"""Sibling DynamicQuantizeMatMul nodes reading one activation become one node and a Split.

What ``quantize_dynamic`` leaves of a transformer's attention input, once
``DynamicQuantizeMatMulFusion`` has run: the query, key and value projections as three
com.microsoft DynamicQuantizeMatMul nodes over the same float activation. Each quantizes that
activation again (to the same scale and zero point: it is the same tensor) and multiplies by its own
weight. Merged, the activation is quantized once and multiplied by the weights side by side
(K x (N1 + N2 + ...)), each column keeping its own weight scale, zero point and bias, and a Split
(last axis) gives back the outputs: the same integer products and the same float32 roundings per
column, so identical results. One product three times wider also splits over the session's threads
where each alone is too small to (``int8_gemm._MIN_PARALLEL_MACS``). onnxruntime has no such pass.

Preconditions: two or more DynamicQuantizeMatMul nodes of one graph read the same A; each B is a
constant 2-D 8-bit matrix, all of one dtype and one K; each weight scale a constant float32 scalar
or (N,) vector; each zero point a constant of B's dtype (scalar or (N,)) or absent (zero); biases
constant float32 (N,) vectors on all of them or on none (a zero bias would turn -0.0 into +0.0).
The merged node goes where the first of them was; the outputs keep their names.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx_ir as ir

from ..graph.builder import UniqueNames
from ..graph.tensors import constant_array
from .matching import is_constant, new_initializer
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel

_MICROSOFT = "com.microsoft"
_EIGHT_BIT = (np.dtype(np.uint8), np.dtype(np.int8))
_SPLIT_SIZES_AS_INPUT = 13  # Split takes its sizes as an input from opset 13, as an attribute before


class DynamicQuantizeMatMulMerge(GraphPass):
    """Merges DynamicQuantizeMatMul nodes that share their activation (see the module docstring)."""

    name = "dynamic_quantize_matmul_merge"
    level = OptimizationLevel.EXTENDED
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        groups: dict[tuple, list[tuple[ir.Node, _Operands]]] = {}
        for node in graph:
            if node.op_type == "DynamicQuantizeMatMul" and node.domain == _MICROSOFT and node.inputs:
                operands = _operands(node)
                if operands is not None:
                    key = (id(node.inputs[0]), operands.b.dtype, operands.b.shape[0], operands.bias is not None)
                    groups.setdefault(key, []).append((node, operands))
        names = UniqueNames(graph)
        merged = 0
        for members in groups.values():
            if len(members) > 1:
                _merge(graph, context, names, members)
                merged += 1
        return merged


class _Operands(NamedTuple):
    """A DynamicQuantizeMatMul's constant operands, per column."""

    b: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    bias: np.ndarray | None


def _operands(node: ir.Node) -> _Operands | None:
    inputs = list(node.inputs) + [None] * (5 - len(node.inputs))
    b_value, scale_value, zero_value, bias_value = inputs[1:5]
    if not is_constant(b_value) or not is_constant(scale_value):
        return None
    b = constant_array(b_value)
    if b.dtype not in _EIGHT_BIT or b.ndim != 2 or b.shape[1] == 0:
        return None
    n = b.shape[1]
    scale = constant_array(scale_value)
    if scale.dtype != np.float32 or scale.ndim > 1 or scale.size not in (1, n):
        return None
    zero = np.zeros(n, b.dtype)
    if zero_value is not None:
        if not is_constant(zero_value):
            return None
        given = constant_array(zero_value)
        if given.dtype != b.dtype or given.ndim > 1 or given.size not in (1, n):
            return None
        zero = np.broadcast_to(given.reshape(-1), (n,))
    bias = None
    if bias_value is not None:
        if not is_constant(bias_value):
            return None
        bias = constant_array(bias_value)
        if bias.dtype != np.float32 or bias.shape != (n,):
            return None
    return _Operands(b, np.broadcast_to(scale.reshape(-1), (n,)), zero, bias)


def _merge(graph: ir.Graph, context: OptimizationContext, names: UniqueNames,
           members: list[tuple[ir.Node, _Operands]]) -> None:
    nodes = [node for node, _ in members]
    parts = [operands for _, operands in members]
    first = nodes[0]
    base = first.name or "DynamicQuantizeMatMul"
    inputs = [
        first.inputs[0],
        new_initializer(graph, names, f"{base}_merged_B", np.concatenate([p.b for p in parts], axis=1)),
        new_initializer(graph, names, f"{base}_merged_scale", np.concatenate([p.scale for p in parts])),
        new_initializer(graph, names, f"{base}_merged_zero_point", np.concatenate([p.zero for p in parts])),
    ]
    if parts[0].bias is not None:
        inputs.append(new_initializer(graph, names, f"{base}_merged_bias", np.concatenate([p.bias for p in parts])))
    merged = ir.Node(_MICROSOFT, "DynamicQuantizeMatMul", inputs, num_outputs=1, name=names.fresh(f"{base}_merged"))
    sizes = np.array([p.b.shape[1] for p in parts], np.int64)
    if context.opset_imports.get("", 1) >= _SPLIT_SIZES_AS_INPUT:
        split = ir.Node("", "Split", [merged.outputs[0], new_initializer(graph, names, f"{base}_split", sizes)],
                        attributes=[ir.AttrInt64("axis", -1)], num_outputs=len(parts), name=names.fresh(f"{base}_split"))
    else:
        split = ir.Node("", "Split", [merged.outputs[0]],
                        attributes=[ir.AttrInt64("axis", -1), ir.AttrInt64s("split", sizes.tolist())],
                        num_outputs=len(parts), name=names.fresh(f"{base}_split"))
    graph.insert_before(first, [merged, split])  # A and the constants are defined there; every reader comes later
    merged.outputs[0].name = names.fresh(f"{base}_merged_output")
    kept_names = []
    for node, piece in zip(nodes, split.outputs):
        output = node.outputs[0]
        piece.type, piece.shape = output.type, output.shape
        kept_names.append(output.name)
        output.replace_all_uses_with(piece, replace_graph_outputs=True)
    graph.remove(nodes, safe=True)
    for piece, name in zip(split.outputs, kept_names):
        piece.name = name
