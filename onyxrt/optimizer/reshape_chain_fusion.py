"""Reshape-chain fusion: consecutive Reshape/Squeeze/Unsqueeze/Flatten nodes on one value become one node.

A chain is a run of these shape-only ops (ONNX domain, constant parameters) where each
intermediate value has the next node as its only reader and is no graph output. The pass
follows the dims through the chain — known sizes, copies of the input's own dims, unknown —
refined by the inferred shape of every value on the way, and writes one
``Reshape(x, target)``: a known size as itself, a dim of ``x`` staying at its index as ``0``
(copy), and at most one other dim as ``-1``. The rewrite must be legal whatever the run-time
shape, so a ``-1`` is written only when every other entry is a known size, or where the chain's
last node is itself a Reshape with its ``-1`` there (the two then fail or succeed together,
on empty tensors too); a known size 0 blocks the chain (``0`` would copy). A chain of
Unsqueezes alone becomes one Unsqueeze with the axes combined (legal for every shape).
onnxruntime: ReshapeFusion (its contiguous-reshape case).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from ..graph.builder import UniqueNames
from ..graph.tensors import constant_array, from_array
from .matching import is_constant, only_reader, replace_with
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel

_SHAPE_OPS = ("Reshape", "Squeeze", "Unsqueeze", "Flatten")
# Dims are tracked through a chain as lists of: a known size (int), ("x", i) for a copy of the
# input's dim i, None for unknown; the list itself is None while the rank is unknown.


class ReshapeChainFusion(GraphPass):
    """Merges chains of shape-only ops into one Reshape (or one Unsqueeze)."""

    name = "reshape_chain_fusion"
    ort_names = ("ReshapeFusion",)
    level = OptimizationLevel.BASIC

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        opset = context.opset_imports.get("", 1)
        if opset < 5:
            return 0  # Reshape's target is an attribute before 5
        fused = 0
        names = UniqueNames(graph)
        for last in [node for node in graph if _is_shape_op(node)]:
            if last.graph is not graph or _is_shape_op(only_reader(last.outputs[0])):
                continue  # removed already, or not a chain's end
            chain = _chain_ending_at(last)
            if len(chain) < 2:
                continue
            replacement = _merged(chain, graph, names, opset)
            if replacement is not None:
                replace_with(graph, chain, last.outputs[0], replacement)
                fused += 1
        return fused


def _is_shape_op(node: ir.Node | None) -> bool:
    return (
        node is not None and node.op_type in _SHAPE_OPS and node.domain == ""
        and bool(node.inputs) and node.inputs[0] is not None
        and all(is_constant(value) for value in node.inputs[1:] if value is not None)
    )


def _chain_ending_at(last: ir.Node) -> list[ir.Node]:
    chain = [last]
    while True:
        producer = chain[0].inputs[0].producer()
        if not _is_shape_op(producer) or producer.graph is not last.graph or only_reader(producer.outputs[0]) is not chain[0]:
            return chain
        chain.insert(0, producer)


def _merged(chain: list[ir.Node], graph: ir.Graph, names: UniqueNames, opset: int) -> ir.Node | None:
    """The one node doing what ``chain`` does for every input shape, else None."""
    x = chain[0].inputs[0]
    name = f"{chain[-1].name or 'reshape'}_merged"
    if all(node.op_type == "Unsqueeze" for node in chain):
        axes = _combined_unsqueeze_axes(chain, x)
        if axes is None:
            return None
        if opset < 13:  # axes an attribute
            return ir.Node("", "Unsqueeze", [x], attributes=[ir.AttrInt64s("axes", axes)], num_outputs=1, name=name)
        return ir.Node("", "Unsqueeze", [x, _int64_constant(graph, names, f"{name}_axes", axes)], num_outputs=1, name=name)
    dims = _dims_of(x)
    for node in chain:
        dims = _refined(_STEPS[node.op_type](node, dims), node.outputs[0], x)
        if dims is _INVALID:
            return None
    target = _target(dims, chain[-1])
    if target is None:
        return None
    return ir.Node("", "Reshape", [x, _int64_constant(graph, names, f"{name}_shape", target)], num_outputs=1, name=name)


_INVALID = object()  # a chain whose dims contradict themselves: left to fail at run time as written


def _dims_of(x: ir.Value) -> list | None:
    if x.shape is None:
        return None
    return [dim if isinstance(dim, int) else ("x", index) for index, dim in enumerate(x.shape.dims)]


def _refined(dims, value: ir.Value, x: ir.Value):
    """``dims`` with what inference knows of ``value``: its known sizes, and input dims by their symbol."""
    if dims is _INVALID or value.shape is None or (dims is not None and len(dims) != len(value.shape)):
        return dims
    symbols = {}
    if x.shape is not None:
        symbols = {dim.value: ("x", i) for i, dim in enumerate(x.shape.dims)
                   if isinstance(dim, ir.SymbolicDim) and dim.value and not dim.value.startswith("unk__")}
    refined = list(dims) if dims is not None else [None] * len(value.shape)
    for index, dim in enumerate(value.shape.dims):
        if isinstance(dim, int):
            refined[index] = dim
        elif refined[index] is None and isinstance(dim, ir.SymbolicDim) and dim.value in symbols:
            refined[index] = symbols[dim.value]
    return refined


def _target(dims: list | None, last: ir.Node) -> list[int] | None:
    """The Reshape target giving ``dims`` from the chain's input, legal for every run-time shape; else None."""
    if dims is None:
        return None
    target, unknown = [], []
    for index, dim in enumerate(dims):
        if isinstance(dim, int):
            if dim <= 0:
                return None  # a known 0 would read as "copy"; negative: inference gone wrong
            target.append(dim)
        elif dim == ("x", index):
            target.append(0)
        else:
            unknown.append(index)
            target.append(-1)
    if len(unknown) > 1:
        return None
    if unknown and not all(isinstance(dim, int) for index, dim in enumerate(dims) if index != unknown[0]):
        last_target = _ints(last, 1) if last.op_type == "Reshape" else None
        if last_target is None or last_target[unknown[0]] != -1:
            return None
    return target


# ---------------------------------------------------------------- dims through each op


def _unsqueeze(node: ir.Node, dims):
    listed = _axes(node)
    if dims is None or listed is None:
        return None
    rank = len(dims) + len(listed)
    axes = {axis + rank if axis < 0 else axis for axis in listed}
    if len(axes) != len(listed) or not all(0 <= axis < rank for axis in axes):
        return _INVALID
    rest = iter(dims)
    return [1 if index in axes else next(rest) for index in range(rank)]


def _squeeze(node: ir.Node, dims):
    axes = _axes(node)
    if dims is None:
        return None
    if axes is None:  # every dim of size 1: which ones must be known
        return [dim for dim in dims if dim != 1] if all(isinstance(dim, int) for dim in dims) else None
    axes = {axis + len(dims) if axis < 0 else axis for axis in axes}
    if not all(0 <= axis < len(dims) for axis in axes) or any(isinstance(dims[a], int) and dims[a] != 1 for a in axes):
        return _INVALID
    return [dim for index, dim in enumerate(dims) if index not in axes]


def _flatten(node: ir.Node, dims):
    if dims is None:
        return [None, None]
    axis = node.attributes.get_int("axis", 1)
    axis = axis + len(dims) if axis < 0 else axis
    if not 0 <= axis <= len(dims):
        return _INVALID
    return [_product(dims[:axis]), _product(dims[axis:])]


def _reshape(node: ir.Node, dims):
    target = _ints(node, 1)
    if target is None:
        return None
    copies_zero = not node.attributes.get_int("allowzero", 0)
    out = []
    for index, entry in enumerate(target):
        if entry == 0 and copies_zero:
            out.append(dims[index] if dims is not None and index < len(dims) else None)
        elif entry == -1:
            out.append(None)
        else:
            out.append(entry)
    if target.count(-1) == 1 and dims is not None and all(isinstance(d, int) for d in dims):
        known = [dim for index, dim in enumerate(out) if index != target.index(-1)]
        if all(isinstance(dim, int) for dim in known) and math.prod(known):
            out[target.index(-1)] = math.prod(dims) // math.prod(known)
    return out


_STEPS = {"Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Flatten": _flatten, "Reshape": _reshape}


def _product(dims: list):
    """The product of tracked dims: a size when all are known, the one copied dim when the rest are 1s."""
    if all(isinstance(dim, int) for dim in dims):
        return math.prod(dims)
    others = [dim for dim in dims if dim != 1]
    return others[0] if len(others) == 1 and isinstance(others[0], tuple) else None


def _combined_unsqueeze_axes(chain: list[ir.Node], x: ir.Value) -> list[int] | None:
    """The axes of one Unsqueeze doing what ``chain`` of Unsqueezes does (needs ``x``'s rank)."""
    if x.shape is None:
        return None
    dims = ["input"] * len(x.shape)
    for node in chain:
        dims = _unsqueeze(node, dims)
        if dims is None or dims is _INVALID:
            return None
        dims = ["inserted" if dim == 1 else dim for dim in dims]
    return [index for index, dim in enumerate(dims) if dim == "inserted"]


def _axes(node: ir.Node) -> list[int] | None:
    axes = node.attributes.get_ints("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = _ints(node, 1)
    return list(axes) if axes is not None else None


def _ints(node: ir.Node, index: int) -> list[int] | None:
    if index >= len(node.inputs) or not is_constant(node.inputs[index]):
        return None
    array = constant_array(node.inputs[index])
    return [int(v) for v in array.reshape(-1)] if array.dtype.kind in "iu" else None


def _int64_constant(graph: ir.Graph, names: UniqueNames, base: str, values: list[int]) -> ir.Value:
    array = np.array(values, dtype=np.int64)
    name = names.fresh(base)
    value = ir.Value(name=name, type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(array.shape),
                     const_value=from_array(array, name))
    graph.register_initializer(value)
    return value
