"""Attention fusion: an encoder's spelled-out self-attention becomes one com.microsoft Attention node.

The pattern, anchored at the Softmax (every projection ``p = MatMul(x, W) [+ b]``; ``heads(p)`` is
``Transpose(Reshape(p, [B, S, N, H]), perm=(0, 2, 1, 3))``)::

    scores = MatMul(heads(q), Kᵀ) · scale       Kᵀ: Transpose(Reshape(k), (0, 2, 3, 1)),
                                                 Transpose(heads(k), (0, 1, 3, 2)), dynamo's
                                                 Reshape/Transpose(0, 2, 1)/Reshape of heads(k),
                                                 or heads(k) under FusedMatMul transB=1
    probs  = Softmax(scores [+ bias], axis=-1) [→ Where(IsNaN(probs), 0, probs)]
    y      = Reshape(Transpose(MatMul(probs, heads(v)) [→ a Reshape to its own shape], (0, 2, 1, 3)), [B, S, N·Hv])

The scale is FusedMatMul's alpha and/or Mul/Div by scalar constants on the scores or on
either operand. When q, k and v are projections of one ``x`` by constant weights (constant
1-D biases or none), the result is ``Attention(x, [Wq|Wk|Wv], [bq|bk|bv], attention_bias=bias,
num_heads=N)`` with new packed initializers; otherwise
``MultiHeadAttention(q, k, v, attention_bias=bias)``. ``scale`` is set when it is not
1/sqrt(H). The bias (the additive mask, computed once and shared by all layers) stays as
computed. When the pattern guards fully masked rows (transformers 5: the -inf mask makes
their softmax NaN, the guard makes them 0), the fused node, whose rows are then NaN too, is
followed by ``Where(IsNaN(y), 0, y)``: the same zeros, as a NaN row there can only be a fully
masked one (or a NaN input, which the original's guard zeroes as well).

Preconditions: float32 projections; a 4-D Softmax over its last axis; every Reshape proven
(from the nodes computing its target and from inferred shapes, see :mod:`.shape_values`) to
split ``[B, S, N·H]`` into heads with constant N or H and to merge them back; N and H the same
for q and k, N for v; a nonzero positive scale; every value the pattern computes read only
inside it, or by shape computations that die with it; the result's name kept; the result
not quantized (read by no (Dynamic)QuantizeLinear, DynamicQuantizeMatMul or int8-input
MatMulNBits: there the fused kernel's float rounding, tiny itself, would move values across
whole quantization steps). The bias:
float32 of rank 4, dimension 1 one or N, dimension 3 not a static 1 (onnxruntime takes
``[B or 1, N or 1, S, T]`` only). A bias broadcast over the query rows (``[B, 1, 1, T]``, the
older exports' ``(1 - mask) · c``) is expanded once to ``[B, 1, T, T]`` and shared, which
needs S = T: only for the packed form, where q and k project one x. Sizes inference leaves
unknown are taken to be S and T: onyxrt's kernels broadcast either way, onnxruntime refuses
a saved model whose mask turns out narrower at run time rather than computing otherwise.
onnxruntime: AttentionFusion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ..graph.builder import UniqueNames
from ..graph.tensors import constant_array, from_array
from .matching import constant_vector, is_close, is_constant, only_reader, partner, scalar
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel
from .shape_values import same_dim, shape_entries

_MICROSOFT = "com.microsoft"
_TO_HEADS = (0, 2, 1, 3)
# Ops that quantize a float input: the fused kernel's other float rounding of the attention
# output would move values across quantization steps (onnxruntime fuses such graphs into
# QAttention instead).
_QUANTIZERS = frozenset({"DynamicQuantizeLinear", "QuantizeLinear", "DynamicQuantizeMatMul"})


@dataclass
class _Heads:
    """A [B, S, N·H] projection split into N heads of H: ``heads`` is [B, N, S, H] (or the key's [B, N, H, S])."""

    projection: ir.Value
    num_heads: int
    head_size: int
    nodes: list[ir.Node]


@dataclass
class _Match:
    q: _Heads
    k: _Heads
    v: _Heads
    scale: float
    bias: ir.Value | None
    guard_zero: ir.Value | None  # the 0 of the pattern's NaN guard, None without one
    output: ir.Value
    nodes: list[ir.Node]  # the pattern's, in graph order's spirit: the last is the merging Reshape


class AttentionFusion(GraphPass):
    """Replaces each spelled-out multi-head self-attention by one Attention or MultiHeadAttention node."""

    name = "attention_fusion"
    ort_names = ("AttentionFusion",)
    level = OptimizationLevel.EXTENDED
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        rewrite = _Rewrite(graph, context, UniqueNames(graph))
        fused = 0
        for softmax in [node for node in graph if node.op_type == "Softmax" and node.domain == ""]:
            if softmax.graph is not graph:  # removed with an earlier match
                continue
            match = _match(softmax, context)
            if match is not None and _fuse(rewrite, match):
                fused += 1
        return fused


# --------------------------------------------------------------------------- matching


def _match(softmax: ir.Node, context: OptimizationContext) -> _Match | None:
    probs = softmax.outputs[0]
    default_axis = -1 if context.opset(softmax) >= 13 else 1
    # float32 is checked on the projections (inference may not type a contrib FusedMatMul's output)
    if softmax.attributes.get_int("axis", default_axis) not in (-1, 3):
        return None
    weights, guard_zero, guard_nodes = _nan_guard(probs)
    context_matmul = only_reader(weights)
    if context_matmul is None or not _is_op(context_matmul, "MatMul") or context_matmul.inputs[0] is not weights:
        return None
    biased = softmax.inputs[0]
    scores, bias, add = _split_bias(biased)
    found = _scores(scores)
    if found is None:
        return None
    q_heads, k_side, transposed_b, scale, score_nodes = found
    q = _heads(q_heads)
    k = _heads(k_side) if transposed_b else _key_transposed(k_side)
    v = _heads(context_matmul.inputs[1])
    if q is None or k is None or v is None or scale <= 0.0:
        return None
    if q.num_heads != k.num_heads or q.num_heads != v.num_heads or q.head_size != k.head_size:
        return None
    merged = _merged_heads(context_matmul.outputs[0], q.projection, q.nodes[-1].outputs[0], context_matmul.inputs[1])
    if merged is None:
        return None
    output, output_nodes = merged
    if any(_quantizes_input(use.node) for use in output.uses()):
        return None
    if bias is not None and not _usable_bias(bias, q.num_heads):
        return None
    nodes = [*q.nodes, *k.nodes, *v.nodes, *score_nodes, *([add] if add else []), softmax, *guard_nodes,
             context_matmul, *output_nodes]
    return _Match(q, k, v, scale, bias, guard_zero, output, nodes)


def _nan_guard(probs: ir.Value) -> tuple[ir.Value, ir.Value | None, list[ir.Node]]:
    """(the attention weights, the 0 of ``Where(IsNaN(probs), 0, probs)`` when that guards them, its nodes)."""
    readers = {use.node for use in probs.uses()}
    if len(readers) != 2 or probs.is_graph_output():
        return probs, None, []
    is_nan = next((n for n in readers if _is_op(n, "IsNaN")), None)
    where = next((n for n in readers if _is_op(n, "Where")), None)
    if is_nan is None or where is None or list(where.inputs) != [is_nan.outputs[0], where.inputs[1], probs]:
        return probs, None, []
    if scalar(where.inputs[1]) != 0.0 or only_reader(is_nan.outputs[0]) is not where:
        return probs, None, []
    return where.outputs[0], where.inputs[1], [is_nan, where]


def _split_bias(biased: ir.Value) -> tuple[ir.Value, ir.Value | None, ir.Node | None]:
    """(the scores, the additive bias or None, the Add) of the Softmax input."""
    add = biased.producer()
    if add is None or not _is_op(add, "Add") or len(add.inputs) != 2:
        return biased, None, None
    for scores in add.inputs:
        if scores is not None and _scores(scores) is not None:
            return scores, partner(add, scores), add
    return biased, None, None


def _scores(value: ir.Value) -> tuple[ir.Value, ir.Value, bool, float, list[ir.Node]] | None:
    """(q heads, key operand, whether it is used transposed (transB), the scale, the nodes) of ``Q·Kᵀ·scale``."""
    scale, nodes = 1.0, []
    node = value.producer()
    scaled = _scaled(node) if node is not None else None
    if scaled is not None:
        value, factor = scaled
        scale *= factor
        nodes.append(node)
        node = value.producer()
    if node is None or len(node.inputs) != 2 or any(v is None for v in node.inputs):
        return None
    if _is_op(node, "MatMul"):
        transposed_b = False
    elif node.op_type == "FusedMatMul" and node.domain == _MICROSOFT:
        if any(node.attributes.get_int(name, 0) for name in ("transA", "transBatchA", "transBatchB")):
            return None
        transposed_b = bool(node.attributes.get_int("transB", 0))
        scale *= node.attributes.get_float("alpha", 1.0)
    else:
        return None
    nodes.append(node)
    operands = []
    for operand in node.inputs:
        producer = operand.producer()
        unscaled = _scaled(producer) if producer is not None else None
        if unscaled is not None:
            operand, factor = unscaled
            scale *= factor
            nodes.append(producer)
        operands.append(operand)
    return operands[0], operands[1], transposed_b, scale, nodes


def _scaled(node: ir.Node) -> tuple[ir.Value, float] | None:
    """(x, f) when ``node`` is ``Mul(x, c)``, ``Mul(c, x)`` or ``Div(x, c)`` by a nonzero float scalar constant c."""
    if node.op_type not in ("Mul", "Div") or node.domain != "" or len(node.inputs) != 2:
        return None
    for index, value in enumerate(node.inputs):
        factor = scalar(partner(node, value)) if value is not None and not is_constant(value) else None
        if factor is None or factor == 0.0 or (node.op_type == "Div" and index != 0):
            continue
        return value, (1.0 / factor if node.op_type == "Div" else factor)
    return None


def _heads(value: ir.Value, perm: tuple[int, ...] = _TO_HEADS) -> _Heads | None:
    """``Transpose(Reshape(p, [B, S, N, H]), perm)`` with p [B, S, N·H]."""
    transpose = value.producer()
    if transpose is None or not _is_op(transpose, "Transpose") or _perm(transpose) != perm:
        return None
    reshape = transpose.inputs[0].producer()
    if reshape is None or not _is_op(reshape, "Reshape"):
        return None
    projection = reshape.inputs[0]
    split = _head_split(reshape, projection)
    if split is None:
        return None
    return _Heads(projection, *split, [reshape, transpose])


def _key_transposed(value: ir.Value) -> _Heads | None:
    """Kᵀ [B, N, H, T] in any of the spellings the module docstring lists."""
    direct = _heads(value, (0, 2, 3, 1))
    if direct is not None:
        return direct
    node = value.producer()
    if node is None:
        return None
    if _is_op(node, "Transpose") and _perm(node) == (0, 1, 3, 2):
        heads = _heads(node.inputs[0])
        return None if heads is None else _Heads(heads.projection, heads.num_heads, heads.head_size, [*heads.nodes, node])
    # dynamo: Reshape(Transpose(Reshape(K, [-1, T, H]), (0, 2, 1)), [B, N, H, T])
    if not _is_op(node, "Reshape"):
        return None
    swap = node.inputs[0].producer()
    flatten = swap.inputs[0].producer() if swap is not None and _is_op(swap, "Transpose") and _perm(swap) == (0, 2, 1) else None
    if flatten is None or not _is_op(flatten, "Reshape"):
        return None
    keys = flatten.inputs[0]
    heads = _heads(keys)
    flat, unflat = shape_entries(flatten.inputs[1]), shape_entries(node.inputs[1])
    if heads is None or flat is None or unflat is None or len(flat) != 3 or len(unflat) != 4:
        return None
    flat_ok = same_dim(flat[1], keys, 2) and same_dim(flat[2], keys, 3)
    unflat_ok = all(same_dim(e, keys, axis) for e, axis in zip(unflat, (0, 1, 3, 2)))
    if not (flat_ok and unflat_ok):
        return None
    return _Heads(heads.projection, heads.num_heads, heads.head_size, [*heads.nodes, flatten, swap, node])


def _head_split(reshape: ir.Node, projection: ir.Value) -> tuple[int, int] | None:
    """(N, H) when ``reshape`` turns ``projection`` [B, S, D] into [B, S, N, H]."""
    if not _is_float32(projection) or projection.shape is None or len(projection.shape) != 3:
        return None
    hidden = projection.shape[2]
    target = shape_entries(reshape.inputs[1])
    if not isinstance(hidden, int) or target is None or len(target) != 4:
        return None
    copies = reshape.attributes.get_int("allowzero", 0) == 0
    for axis in (0, 1):
        if not (same_dim(target[axis], projection, axis) or (copies and target[axis] == 0)):
            return None
    heads, size = target[2], target[3]
    if isinstance(size, int) and size > 0 and hidden % size == 0 and heads in (-1, hidden // size):
        return hidden // size, size
    if isinstance(heads, int) and heads > 0 and hidden % heads == 0 and size in (-1, hidden // heads):
        return heads, hidden // heads
    return None


def _merged_heads(
    context: ir.Value, projection: ir.Value, q_heads: ir.Value, v_heads: ir.Value
) -> tuple[ir.Value, list[ir.Node]] | None:
    """(y, nodes) for ``y = Reshape(Transpose(context, (0, 2, 1, 3)), [B, S, -1])``, B and S those of ``projection``.

    transformers 5 first reshapes ``context`` to its own shape ``[B, -1, S, Hv]``; that Reshape
    is taken along.
    """
    nodes = []
    node = _data_reader(context)
    if node is not None and _is_op(node, "Reshape") and _reshapes_to_itself(node, {2: q_heads, 3: v_heads}):
        nodes.append(node)
        node = _data_reader(node.outputs[0])
    if node is None or not _is_op(node, "Transpose") or _perm(node) != _TO_HEADS:
        return None
    nodes.append(node)
    merge = _data_reader(node.outputs[0])
    if merge is None or not _is_op(merge, "Reshape"):
        return None
    target = shape_entries(merge.inputs[1])
    copies = merge.attributes.get_int("allowzero", 0) == 0
    # With B and S in place the last entry can only be N·Hv (or -1): anything else fails at run time.
    # The transposed context's own first two dimensions are B and S by construction.
    merged = node.outputs[0]
    in_place = [
        same_dim(target[axis], projection, axis) or same_dim(target[axis], merged, axis) or (copies and target[axis] == 0)
        for axis in (0, 1)
    ] if target is not None and len(target) == 3 else [False]
    if not all(in_place):
        return None
    nodes.append(merge)
    return merge.outputs[0], nodes


def _reshapes_to_itself(reshape: ir.Node, aliases: dict[int, ir.Value]) -> bool:
    """A Reshape whose target is each input dimension but at most one -1 (the exporters' ``view`` to the same shape).

    ``aliases``: values whose dimension of that axis is the input's (the batched MatMul's rows are
    the query's, its columns the value's), which inference may name differently.
    """
    source = reshape.inputs[0]
    target = shape_entries(reshape.inputs[1])
    if target is None or source.shape is None or len(target) != len(source.shape) or target.count(-1) > 1:
        return False
    return all(
        element == -1 or same_dim(element, source, axis) or (axis in aliases and same_dim(element, aliases[axis], axis))
        for axis, element in enumerate(target)
    )


def _usable_bias(bias: ir.Value, num_heads: int) -> bool:
    """onnxruntime's attention_bias: [B or 1, N or 1, S, T], float32, by inferred rank and sizes.

    A bias broadcast over the query rows (S 1) is expanded (:func:`_rows_expanded`); one
    broadcast over the keys is not taken.
    """
    if not _is_float32(bias) or bias.shape is None or len(bias.shape) != 4:
        return False
    heads, columns = bias.shape[1], bias.shape[3]
    if isinstance(heads, int) and heads not in (1, num_heads):
        return False
    return columns != 1


# --------------------------------------------------------------------------- rewriting


@dataclass
class _Rewrite:
    """What one run of the pass shares between its rewrites: the graph, fresh names, row-expanded biases."""

    graph: ir.Graph
    context: OptimizationContext
    names: UniqueNames
    expanded: dict[int, ir.Value] = field(default_factory=dict)


def _fuse(rewrite: _Rewrite, match: _Match) -> bool:
    packed = _packed_projections(match)
    # Packed into Attention when the projections can go with the pattern, else MultiHeadAttention on them.
    for projection_nodes in ([packed[3]] if packed is not None else []) + [[]]:
        x = packed[0] if projection_nodes else None
        # A bias broadcast over the query rows ([B, 1, 1, T], the older exports' mask) fits
        # onnxruntime's [B, 1, S, T] once expanded; S = T only where q and k project one x.
        if match.bias is not None and _broadcast_rows(match.bias) and x is None:
            continue
        removed = _removable(rewrite.graph, [*projection_nodes, *match.nodes], match.output)
        if removed is None or _reads_any(match, x, removed):
            continue
        _replace(rewrite, match, packed if projection_nodes else None, removed)
        return True
    return False


def _replace(rewrite: _Rewrite, match: _Match, packed, removed: list[ir.Node]) -> None:
    graph, names = rewrite.graph, rewrite.names
    rewrite.context.require_opset(_MICROSOFT, 1)
    last = match.nodes[-1]
    label = last.name or "attention"
    attributes = [ir.AttrInt64("num_heads", match.q.num_heads)]
    if not is_close(match.scale, 1.0 / math.sqrt(match.q.head_size), 1e-6):
        attributes.append(ir.AttrFloat32("scale", match.scale))
    new_nodes: list[ir.Node] = []
    bias = match.bias
    if bias is not None and _broadcast_rows(bias):
        bias = _rows_expanded(rewrite, bias, new_nodes)
    if packed is not None:
        x, weight, projection_bias, _ = packed
        sizes = [h.num_heads * h.head_size for h in (match.q, match.k, match.v)]
        if sizes[2] != sizes[0]:
            attributes.append(ir.AttrInt64s("qkv_hidden_sizes", sizes))
        inputs = [x, _initializer(graph, names, f"{label}_qkv_weight", weight),
                  _initializer(graph, names, f"{label}_qkv_bias", projection_bias), None, None, bias]
        op_type = "Attention"
    else:
        inputs = [match.q.projection, match.k.projection, match.v.projection, None, None, bias]
        op_type = "MultiHeadAttention"
    fused = ir.Node(_MICROSOFT, op_type, _trim(inputs), attributes=attributes, name=f"{label}_fused")
    new_nodes.append(fused)
    result = fused.outputs[0]
    if match.guard_zero is not None:
        is_nan = ir.Node("", "IsNaN", [result], name=f"{label}_nan")
        guard = ir.Node("", "Where", [is_nan.outputs[0], match.guard_zero, result], name=f"{label}_nan_to_zero")
        new_nodes += [is_nan, guard]
        result = guard.outputs[0]
    output = match.output
    for value in (fused.outputs[0], result):
        value.type, value.shape = output.type, output.shape
    graph.insert_before(last, new_nodes)
    name = output.name
    output.replace_all_uses_with(result, replace_graph_outputs=True)
    graph.remove(removed, safe=True)
    result.name = name


def _broadcast_rows(bias: ir.Value) -> bool:
    return bias.shape[2] == 1


def _rows_expanded(rewrite: _Rewrite, bias: ir.Value, new_nodes: list[ir.Node]) -> ir.Value:
    """``Expand(bias, [T, 1])``: [B, 1, 1, T] → [B, 1, T, T], made once per bias and shared by its layers."""
    if id(bias) in rewrite.expanded:
        return rewrite.expanded[id(bias)]
    base = bias.name or "attention_bias"
    if rewrite.context.opset_imports.get("", 1) >= 15:
        length = ir.Node("", "Shape", [bias], attributes=[ir.AttrInt64("start", 3), ir.AttrInt64("end", 4)])
        new_nodes.append(length)
    else:
        shape = ir.Node("", "Shape", [bias])
        three = _initializer(rewrite.graph, rewrite.names, f"{base}_key_axis", np.array([3], np.int64))
        length = ir.Node("", "Gather", [shape.outputs[0], three])
        new_nodes += [shape, length]
    one = _initializer(rewrite.graph, rewrite.names, f"{base}_one", np.array([1], np.int64))
    target = ir.Node("", "Concat", [length.outputs[0], one], attributes=[ir.AttrInt64("axis", 0)])
    expand = ir.Node("", "Expand", [bias, target.outputs[0]], name=f"{base}_rows")
    new_nodes += [target, expand]
    keys = bias.shape[3]
    result = expand.outputs[0]
    result.name = rewrite.names.fresh(f"{base}_rows")
    result.type, result.shape = bias.type, ir.Shape([bias.shape[0], bias.shape[1], keys, keys])
    rewrite.expanded[id(bias)] = result
    return result


def _packed_projections(match: _Match) -> tuple[ir.Value, np.ndarray, np.ndarray, list[ir.Node]] | None:
    """(x, [Wq|Wk|Wv], [bq|bk|bv], their nodes) when q, k, v are ``MatMul(x, W) [+ b]`` of one x by constants."""
    parts = [_projection(h.projection) for h in (match.q, match.k, match.v)]
    if any(p is None for p in parts) or len({id(p[0]) for p in parts}) != 1:
        return None
    x = parts[0][0]
    if x.shape is None or len(x.shape) != 3:
        return None
    weight = np.concatenate([p[1] for p in parts], axis=1)
    bias = np.concatenate([p[2] if p[2] is not None else np.zeros(p[1].shape[1], np.float32) for p in parts])
    return x, weight, bias, [n for p in parts for n in p[3]]


def _projection(value: ir.Value) -> tuple[ir.Value, np.ndarray, np.ndarray | None, list[ir.Node]] | None:
    node = value.producer()
    bias = None
    nodes = []
    if node is not None and _is_op(node, "Add") and len(node.inputs) == 2:
        for candidate in node.inputs:
            if constant_vector(candidate) and candidate.const_value.dtype == ir.DataType.FLOAT:
                bias = np.asarray(constant_array(candidate))
                nodes.append(node)
                node = partner(node, candidate).producer()
                break
        else:
            return None
    if node is None or not _is_op(node, "MatMul") or not is_constant(node.inputs[1]):
        return None
    weight = np.asarray(constant_array(node.inputs[1]))
    if weight.ndim != 2 or weight.dtype != np.float32 or (bias is not None and bias.shape != (weight.shape[1],)):
        return None
    return node.inputs[0], weight, bias, [node, *nodes]


def _removable(graph: ir.Graph, nodes: list[ir.Node], output: ir.Value) -> list[ir.Node] | None:
    """``nodes`` plus the nodes that only compute shapes from them (dead once they go), or None.

    None when a value they compute, other than ``output``, is a graph output or is read by a
    node that outlives the rewrite; values read inside subgraphs count as reads by their node.
    """
    inside = {id(n): n for n in nodes}
    if any(n.graph is not graph for n in nodes):
        return None
    pending = list(nodes)
    while pending:
        node = pending.pop()
        for value in node.outputs:
            if value is output:
                continue
            if value.is_graph_output():
                return None
            for use in value.uses():
                reader = use.node
                if id(reader) in inside:
                    continue
                # Only shape computations may ride along; they are dead once their readers are.
                if reader.graph is not graph or reader.op_type not in _SHAPE_OPS or reader.domain != "":
                    return None
                inside[id(reader)] = reader
                pending.append(reader)
    return list(inside.values())


_SHAPE_OPS = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast"})


def _reads_any(match: _Match, x: ir.Value | None, removed: list[ir.Node]) -> bool:
    """Whether the fused node would read a value computed by a node it replaces."""
    gone = set(map(id, removed))
    reads = [match.bias, x] if x is not None else [match.bias, match.q.projection, match.k.projection, match.v.projection]
    return any(v is not None and v.producer() is not None and id(v.producer()) in gone for v in reads)


def _initializer(graph: ir.Graph, names: UniqueNames, base: str, array: np.ndarray) -> ir.Value:
    name = names.fresh(base)
    value = ir.Value(name=name, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), shape=ir.Shape(array.shape),
                     const_value=from_array(np.ascontiguousarray(array), name))
    graph.register_initializer(value)
    return value


def _trim(inputs: list[ir.Value | None]) -> list[ir.Value | None]:
    while inputs and inputs[-1] is None:
        inputs.pop()
    return inputs


def _data_reader(value: ir.Value) -> ir.Node | None:
    """The one node reading ``value`` other than Shape nodes (those die with the pattern, see :func:`_removable`)."""
    readers = [use.node for use in value.uses() if not _is_op(use.node, "Shape")]
    if len(readers) != 1 or value.is_graph_output():
        return None
    return readers[0]


def _quantizes_input(node: ir.Node) -> bool:
    # MatMulNBits at accuracy level 4 quantizes its input to int8 too
    return node.op_type in _QUANTIZERS or (node.op_type == "MatMulNBits" and node.attributes.get_int("accuracy_level", 0) == 4)


def _is_op(node: ir.Node, op_type: str) -> bool:
    return node.op_type == op_type and node.domain == ""


def _perm(transpose: ir.Node) -> tuple[int, ...] | None:
    perm = transpose.attributes.get_ints("perm", None)
    return tuple(perm) if perm is not None else None


def _is_float32(value: ir.Value) -> bool:
    return isinstance(value.type, ir.TensorType) and value.type.dtype == ir.DataType.FLOAT
