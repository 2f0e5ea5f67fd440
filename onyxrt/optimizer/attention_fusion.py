"""Attention fusion: a spelled-out multi-head self-attention becomes one com.microsoft Attention node.

The pattern, anchored at the Softmax (every projection ``p = MatMul(x, W) [+ b]``; ``heads(p)`` is
``Transpose(Reshape(p, [B, S, N, H]), perm=(0, 2, 1, 3))``)::

    scores = MatMul(heads(q), Kᵀ) · scale       Kᵀ: Transpose(Reshape(k), (0, 2, 3, 1)),
                                                 Transpose(heads(k), (0, 1, 3, 2)), dynamo's
                                                 Reshape/Transpose(0, 2, 1)/Reshape of heads(k),
                                                 or heads(k) under FusedMatMul transB=1
    probs  = Softmax(scores [masked_fill] [+ bias], axis=-1) [→ Where(IsNaN(probs), 0, probs)]
    y      = Reshape(Transpose(MatMul(probs, heads(v)) [→ a Reshape to its own shape], (0, 2, 1, 3)), [B, S, N·Hv])

Packed projections: q, k and v may be the column blocks of one projection, either
``Split(p, axis=-1)`` outputs (GPT-2's c_attn) or heads unbound from
``Transpose(Reshape(p, [B, S, 3, N, H]), (2, 0, 3, 1, 4))`` by Split/Slice + Squeeze or Gather
on axis 0 (timm's ViT). Reshape targets may give B or S as the one -1 when the rest is proven.
A mask may be a ``masked_fill`` with the lowest float32 or -inf: ``Where(masked, lowest, scores)``
or ``Where(kept, scores, lowest)``. When proven causal (exactly the keys j > i masked:
``Not(Trilu(ones[S, T]))``, ``Trilu(ones, k=1, upper)``, a constant table or the top-left
``[S, T]`` corner of one) it becomes ``unidirectional=1``; otherwise the additive
``Where(masked, lowest, 0)`` lifted to rank 4 (once per mask) is the attention_bias: masked
scores become score + lowest, still the lowest (or -inf), so the weights are the same.

The scale is FusedMatMul's alpha and/or Mul/Div by one-element floats on the scores or on
either operand: constants, or computed from the heads' shapes (TorchScript's SDPA:
``q · sqrt(1/sqrt(q.shape[-1]))`` and the same on Kᵀ). When q, k and v are projections of one
``x`` by constant weights (constant 1-D biases or none), the result is
``Attention(x, [Wq|Wk|Wv], [bq|bk|bv], attention_bias=bias, num_heads=N)`` with new packed
initializers (``unidirectional=1`` only here: one x, so S = T and no past); otherwise
``MultiHeadAttention(q, k, v, attention_bias=bias)`` (neither for a causal mask nor for
heads unbound from a packed projection). ``scale`` is set when it is not
1/sqrt(H). The bias (the additive mask, computed once and shared by all layers) stays as
computed. When the pattern guards fully masked rows (transformers 5: the -inf mask makes
their softmax NaN, the guard makes them 0), the fused node, whose rows are then NaN too, is
followed by ``Where(IsNaN(y), 0, y)``: the same zeros, as a NaN row there can only be a fully
masked one (or a NaN input, which the original's guard zeroes as well).

Preconditions: float32 projections; a 4-D Softmax over its last axis; every Reshape proven
(from the nodes computing its target and from inferred shapes, see :mod:`.shape_values`) to
split ``[B, S, N·H]`` into heads with constant N or H and to merge them back; N and H the same
for q and k, N for v; a nonzero positive scale; every value the pattern computes read only
inside it, or by shape computations that die with it; the result's name kept. A result that is
quantized next (dynamically quantized encoders: the output projection is a DynamicQuantizeMatMul)
is fused too: the kernel's float rounding, tiny itself, moves the odd value across a rounding
boundary, by one quantization step. Measured on onnxruntime's ``quantize_dynamic`` minilm_l6 (u8 x u8,
exact in both runtimes, 10 random inputs): the largest difference to onnxruntime, relative to
the output's range, was 0.057 fused and 0.042 unfused (medians 0.038 and 0.036: the dynamic
quantization's own flips dominate), and the mean cosine of pooled embeddings to float32 0.90013
fused and 0.89997 unfused (onnxruntime: 0.89992). The bias:
float32 of rank 4, dimension 1 one or N, dimension 3 not a static 1 (onnxruntime takes
``[B or 1, N or 1, S, T]`` only); a masked_fill's bool mask of rank 2 to 4 whose rows and
columns are not a static 1. A bias broadcast over the query rows (``[B, 1, 1, T]``, the
older exports' ``(1 - mask) · c``) is expanded once to ``[B, 1, T, T]`` and shared, which
needs S = T: only for the packed form, where q and k project one x. Sizes inference leaves
unknown are taken to be S and T: onyxrt's kernels broadcast either way, onnxruntime refuses
a saved model whose mask turns out narrower at run time rather than computing otherwise.
onnxruntime: AttentionFusion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import onnx_ir as ir

from ..graph.builder import UniqueNames
from ..graph.tensors import constant_array
from .matching import constant_vector, is_close, is_constant, is_float32, new_initializer, only_reader, partner, scalar
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel
from .shape_values import constant_ints, dim_of, same_dim, shape_entries

_MICROSOFT = "com.microsoft"
_TO_HEADS = (0, 2, 1, 3)


@dataclass
class _Heads:
    """A [B, S, N·H] projection split into N heads of H: ``heads`` is [B, N, S, H] (or the key's [B, N, H, S])."""

    projection: ir.Value
    num_heads: int
    head_size: int
    nodes: list[ir.Node]  # the last computes the heads
    # (i, n): the heads are the i-th of n equal column blocks of ``projection`` (a packed
    # projection split into heads, then unbound); None: all of its columns.
    part: tuple[int, int] | None = None


@dataclass
class _Match:
    q: _Heads
    k: _Heads
    v: _Heads
    scale: float
    bias: ir.Value | None
    causal: bool  # the scores were masked exactly causally (key j > query i), S = T
    # A masked_fill that is not (provably) causal: (condition, whether it marks the kept keys, fill),
    # fed as the additive bias Where(condition, fill, 0).
    fill_mask: tuple[ir.Value, bool, ir.Value] | None
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
    scores, bias, add = _split_bias(softmax.inputs[0])
    masked = _masked_fill(scores)
    mask_nodes = [node for node in (add, masked[4] if masked is not None else None) if node is not None]
    if masked is not None:
        scores = masked[0]
    found = _scores(scores)
    if found is None:
        return None
    q_heads, k_side, transposed_b, scale, factors, score_nodes = found
    q = _heads(q_heads)
    k = _heads(k_side) if transposed_b else _key_transposed(k_side)
    v = _heads(context_matmul.inputs[1])
    if q is None or k is None or v is None:
        return None
    if q.num_heads != k.num_heads or q.num_heads != v.num_heads or q.head_size != k.head_size:
        return None
    # Factors computed from the heads' shapes (``1 / sqrt(q.shape[-1])``) are known once the heads are.
    known = {q_heads: _heads_dims(q_heads, q.num_heads, q.head_size)}
    for factor, divides in factors:
        value = _scalar_expression(factor, known)
        if value is None or value[0] is None or value[0] == 0.0:
            return None
        scale = scale / value[0] if divides else scale * value[0]
    if not scale > 0.0 or not math.isfinite(scale):
        return None
    causal = masked is not None and _is_causal(masked[1], masked[2], q.projection, k.projection)
    fill_mask = masked[1:4] if masked is not None and not causal else None
    # A masked_fill that is not causal becomes the attention_bias: there is no room for a second one.
    if fill_mask is not None and (bias is not None or not _usable_condition(fill_mask[0], q.num_heads)):
        return None
    width = q.num_heads * v.head_size
    merged = _merged_heads(context_matmul.outputs[0], q.projection, q.nodes[-1].outputs[0], context_matmul.inputs[1], width)
    if merged is None:
        return None
    output, output_nodes = merged
    if bias is not None and not _usable_bias(bias, q.num_heads):
        return None
    nodes = [*q.nodes, *k.nodes, *v.nodes, *score_nodes, *mask_nodes, softmax, *guard_nodes,
             context_matmul, *output_nodes]
    return _Match(q, k, v, scale, bias, causal, fill_mask, guard_zero, output, nodes)


def _heads_dims(value: ir.Value, num_heads: int, head_size: int) -> list:
    """The dims of heads ``value`` [B, N, S, H] as :func:`.shape_values.shape_entries` takes them, N and H proven."""
    return [dim_of(value, 0), num_heads, dim_of(value, 2), head_size]


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
    """(the scores, possibly masked_fill'ed, the additive bias or None, the Add) of the Softmax input."""
    add = biased.producer()
    if add is None or not _is_op(add, "Add") or len(add.inputs) != 2:
        return biased, None, None
    for scores in add.inputs:
        if scores is not None and (_scores(scores) is not None or _masked_fill(scores) is not None):
            return scores, partner(add, scores), add
    return biased, None, None


def _masked_fill(biased: ir.Value) -> tuple[ir.Value, ir.Value, bool, ir.Value, ir.Node] | None:
    """(scores, condition, whether it marks the kept keys, fill, the Where) of ``masked_fill``:
    ``Where(masked, fill, scores)`` or ``Where(kept, scores, fill)`` with fill the lowest float32 or -inf.

    Either way a masked key's weight is 0 as in the fused kernel's causal mask, and the additive
    bias Where(masked, fill, 0) gives its scores fill + score, still the lowest (or -inf).
    """
    where = biased.producer()
    if where is None or not _is_op(where, "Where") or len(where.inputs) != 3 or any(v is None for v in where.inputs):
        return None
    condition, when_true, when_false = where.inputs
    for scores, fill, keeps in ((when_false, when_true, False), (when_true, when_false, True)):
        value = scalar(fill)
        if value is not None and value <= _LOWEST and _scores(scores) is not None:
            return scores, condition, keeps, fill, where
    return None


_LOWEST = float(np.finfo(np.float32).min)


def _is_causal(condition: ir.Value, keeps: bool, query: ir.Value, key: ir.Value) -> bool:
    """Whether ``condition`` is provably [.., S, T] with S = T (query and key rows), True exactly on
    the kept keys j <= i (``keeps``) or on the masked ones j > i.

    Spelled ``Trilu(ones, k)`` (lower k=0 keeps, upper k=1 masks) under any number of Not, ones a
    ConstantOfShape or Expand of a nonzero scalar to [.., S, T]; or a constant table.
    """
    node = condition.producer()
    if node is not None and _is_op(node, "Not"):
        return _is_causal(node.inputs[0], not keeps, query, key)
    if node is not None and _is_op(node, "Slice"):
        return _is_causal_table_corner(node, keeps, query, key)
    if is_constant(condition):
        size = _causal_table_size(condition, keeps)
        return size is not None and same_dim(size, query, 1) and same_dim(size, key, 1)
    if node is None or not _is_op(node, "Trilu") or node.inputs[0] is None:
        return False
    offset = constant_ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else [0]
    upper = node.attributes.get_int("upper", 1)
    if offset != ([1] if upper else [0]) or bool(upper) == keeps:
        return False
    return _ones(node.inputs[0], query, key)


_MAX_TABLE = 1 << 24


def _causal_table_size(table: ir.Value, keeps: bool) -> int | None:
    """C when the constant ``table`` is [1.., C, C] and True exactly on the kept keys j <= i (``keeps``) or the masked ones."""
    array = np.asarray(constant_array(table))
    if not 2 <= array.ndim <= 4 or array.size > _MAX_TABLE or any(d != 1 for d in array.shape[:-2]):
        return None
    rows, columns = array.shape[-2:]
    kept = np.tril(np.ones((rows, rows), bool))
    wanted = kept if keeps else ~kept
    return rows if rows == columns and np.array_equal(array.reshape(rows, columns) != 0, wanted) else None


def _is_causal_table_corner(node: ir.Node, keeps: bool, query: ir.Value, key: ir.Value) -> bool:
    """A top-left [S, T] corner of a constant causal table [1.., C, C] (GPT-2's ``bias[:, :, :S, :T]``):
    one Slice from 0 with step 1, ending at S on the rows and T on the columns (anywhere on leading axes)."""
    table = node.inputs[0]
    if table is None or not is_constant(table) or len(node.inputs) < 3:
        return False
    size = _causal_table_size(table, keeps)
    if size is None:
        return False
    rank = len(table.shape)
    starts, ends = shape_entries(node.inputs[1]), shape_entries(node.inputs[2])
    if starts is None or ends is None:
        return False
    axes = constant_ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else list(range(len(starts)))
    steps = constant_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1] * len(starts)
    if axes is None or steps is None or not len(starts) == len(ends) == len(axes) == len(steps):
        return False
    ends_by_axis = {}
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if start != 0 or step != 1 or not -rank <= axis < rank:
            return False
        ends_by_axis[axis % rank] = end
    if any(axis < rank - 2 and not (isinstance(end, int) and end >= 1) for axis, end in ends_by_axis.items()):
        return False
    return all(axis in ends_by_axis and same_dim(ends_by_axis[axis], value, 1)
               for axis, value in ((rank - 2, query), (rank - 1, key)))


def _ones(value: ir.Value, query: ir.Value, key: ir.Value) -> bool:
    """Whether ``value`` is all nonzero of shape [1.., S, T]: S the query's rows, T the key's."""
    node = value.producer()
    if node is None or node.domain != "" or any(v is None for v in node.inputs):
        return False
    if node.op_type == "ConstantOfShape":
        fill = node.attributes.get("value")
        fill_value = np.asarray(fill.as_tensor().numpy()).reshape(-1) if fill is not None else np.zeros(1)
        shape = shape_entries(node.inputs[0])
    elif node.op_type == "Expand" and is_constant(node.inputs[0]):
        fill_value = np.asarray(constant_array(node.inputs[0]))
        shape = shape_entries(node.inputs[1])
        if shape is not None and fill_value.ndim > len(shape):  # it would add axes
            return False
    else:
        return False
    if fill_value.size != 1 or not fill_value.all() or shape is None or not 2 <= len(shape) <= 4:
        return False
    return all(d == 1 for d in shape[:-2]) and same_dim(shape[-2], query, 1) and same_dim(shape[-1], key, 1)


def _scores(value: ir.Value) -> tuple[ir.Value, ir.Value, bool, float, list, list[ir.Node]] | None:
    """(q heads, key operand, whether it is used transposed (transB), the constant scale, the computed
    factors (value, whether it divides), the nodes) of ``Q·Kᵀ·scale``."""
    scale, factors, nodes = 1.0, [], []
    node = value.producer()
    scaled = _scaled(node) if node is not None else None
    if scaled is not None:
        value, factor, divides, factor_nodes = scaled
        factors.append((factor, divides))
        nodes += [node, *factor_nodes]
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
            operand, factor, divides, factor_nodes = unscaled
            factors.append((factor, divides))
            nodes += [producer, *factor_nodes]
        operands.append(operand)
    return operands[0], operands[1], transposed_b, scale, factors, nodes


def _scaled(node: ir.Node) -> tuple[ir.Value, ir.Value, bool, list[ir.Node]] | None:
    """(x, c, whether c divides, the nodes computing c) when ``node`` is ``Mul(x, c)``, ``Mul(c, x)`` or ``Div(x, c)``.

    c is a one-element float: a constant, or computed from constants and shapes (see
    :func:`_scalar_expression`; its value is read once the heads' shapes are known).
    """
    if node.op_type not in ("Mul", "Div") or node.domain != "" or len(node.inputs) != 2:
        return None
    for index, value in enumerate(node.inputs):
        if value is None or is_constant(value) or (node.op_type == "Div" and index != 0):
            continue
        factor = partner(node, value)
        expression = _scalar_expression(factor, None) if factor is not None and _one_element(factor) else None
        if expression is None or _scalar_expression(value, None) is not None:
            continue
        return value, factor, node.op_type == "Div", expression[1]
    return None


def _one_element(value: ir.Value) -> bool:
    """One element that broadcasts without adding axes to the 4-D scores or heads."""
    return value.shape is not None and len(value.shape) <= 4 and all(d == 1 for d in value.shape)


# Float ops of a scale computed at run time, e.g. TorchScript's SDPA ``sqrt(1 / sqrt(q.shape[-1]))``.
_SCALAR_OPS = frozenset({"Sqrt", "Reciprocal", "Mul", "Div", "Cast", "Identity"})


def _scalar_expression(value: ir.Value, known) -> tuple[float | None, list[ir.Node]] | None:
    """(its value, or None when not known; the float nodes computing it) of a one-element float.

    None when ``value`` is not built from float constants and ``Cast`` of shape entries by
    Sqrt, Reciprocal, Mul and Div. ``known``: dims of values (see :func:`.shape_values.shape_entries`).
    """
    constant = scalar(value)
    if constant is not None:
        return constant, []
    node = value.producer()
    if node is None or node.domain != "" or node.op_type not in _SCALAR_OPS or any(v is None for v in node.inputs):
        return None
    if not is_float32(value) or not _one_element(value):
        return None
    source = node.inputs[0]
    if node.op_type == "Cast" and isinstance(source.type, ir.TensorType) and source.type.dtype in _INTEGERS:
        entries = shape_entries(source, known)
        if entries is None or len(entries) != 1:
            return None
        return (float(entries[0]) if isinstance(entries[0], int) else None), [node]
    parts = [_scalar_expression(v, known) for v in node.inputs]
    if any(p is None for p in parts):
        return None
    values, nodes = [p[0] for p in parts], [node, *(n for p in parts for n in p[1])]
    if any(v is None for v in values):
        return None, nodes
    a = values[0]
    if node.op_type == "Sqrt":
        return (math.sqrt(a) if a >= 0.0 else None), nodes
    if node.op_type == "Reciprocal":
        return (1.0 / a if a != 0.0 else None), nodes
    if node.op_type == "Mul":
        return a * values[1], nodes
    if node.op_type == "Div":
        return (a / values[1] if values[1] != 0.0 else None), nodes
    return a, nodes  # Cast to float, Identity


_INTEGERS = frozenset({ir.DataType.INT64, ir.DataType.INT32})


def _heads(value: ir.Value, perm: tuple[int, ...] = _TO_HEADS) -> _Heads | None:
    """``Transpose(Reshape(p, [B, S, N, H]), perm)`` with p [B, S, N·H], or a head group unbound from a packed p."""
    transpose = value.producer()
    if transpose is None:
        return None
    if perm == _TO_HEADS and not _is_op(transpose, "Transpose"):
        return _unbound_heads(value)
    if not _is_op(transpose, "Transpose") or _perm(transpose) != perm:
        return None
    reshape = transpose.inputs[0].producer()
    if reshape is None or not _is_op(reshape, "Reshape"):
        return None
    projection = reshape.inputs[0]
    split = _head_split(reshape, projection)
    if split is None:
        return None
    return _Heads(projection, *split, [reshape, transpose])


def _unbound_heads(value: ir.Value) -> _Heads | None:
    """Group i [B, N, S, H] of ``Transpose(Reshape(p, [B, S, n, N, H]), (2, 0, 3, 1, 4))`` (timm's packed qkv).

    Unbound as PyTorch's ``unbind(0)`` exports it: ``Squeeze(Split(t, [1]·n, axis=0)[i], [0])``,
    ``Squeeze(Slice(t, [i], [i + 1], [0]), [0])`` or ``Gather(t, i, axis=0)``.
    """
    node = value.producer()
    if node is None:
        return None
    taken: list[ir.Node] = [node]
    if _is_op(node, "Gather"):
        index = constant_ints(node.inputs[1])
        packed = node.inputs[0]
        if node.attributes.get_int("axis", 0) != 0 or index is None or len(index) != 1 or node.inputs[1].shape is None \
                or len(node.inputs[1].shape) != 0:
            return None
        index = index[0]
    elif _is_op(node, "Squeeze") and _squeezed_axes(node) == [0]:
        found = _unbound_part(node.inputs[0])
        if found is None:
            return None
        packed, index, unbind = found
        taken.insert(0, unbind)
    else:
        return None
    transpose = packed.producer() if packed is not None else None
    if transpose is None or not _is_op(transpose, "Transpose") or _perm(transpose) != (2, 0, 3, 1, 4):
        return None
    reshape = transpose.inputs[0].producer()
    if reshape is None or not _is_op(reshape, "Reshape"):
        return None
    projection = reshape.inputs[0]
    split = _head_split(reshape, projection, packed=True)
    if split is None:
        return None
    parts, num_heads, head_size = split
    if not -parts <= index < parts or (taken[0].op_type == "Split" and len(taken[0].outputs) != parts):
        return None
    return _Heads(projection, num_heads, head_size, [reshape, transpose, *taken], (index % parts, parts))


def _unbound_part(value: ir.Value) -> tuple[ir.Value, int, ir.Node] | None:
    """(t, i, node) when ``value`` is ``t[i:i + 1]`` along axis 0: a Split into ones or a step-1 Slice."""
    node = value.producer()
    if node is None or any(v is None for v in node.inputs[:1]):
        return None
    if _is_op(node, "Split") and node.attributes.get_int("axis", 0) == 0:
        sizes = constant_ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None \
            else node.attributes.get_ints("split", None)
        # No sizes: equal parts, ones once the caller checks there are as many outputs as rows.
        if sizes is not None and list(sizes) != [1] * len(node.outputs):
            return None
        return node.inputs[0], list(node.outputs).index(value), node
    if _is_op(node, "Slice") and len(node.inputs) >= 4:
        starts, ends, axes = (constant_ints(v) for v in node.inputs[1:4])
        steps = constant_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
        if starts is None or len(starts) != 1 or ends != [starts[0] + 1] or axes != [0] or steps != [1] or starts[0] < 0:
            return None
        return node.inputs[0], starts[0], node
    return None


def _squeezed_axes(node: ir.Node) -> list[int] | None:
    axes = node.attributes.get_ints("axes", None)
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = constant_ints(node.inputs[1])
    return None if axes is None else list(axes)


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
        return None if heads is None else replace(heads, nodes=[*heads.nodes, node])
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
    return replace(heads, nodes=[*heads.nodes, flatten, swap, node])


def _head_split(reshape: ir.Node, projection: ir.Value, packed: bool = False) -> tuple[int, ...] | None:
    """(N, H) when ``reshape`` turns ``projection`` [B, S, D] into [B, S, N, H]; with ``packed``,
    (n, N, H) when it turns it into [B, S, n, N, H] (n·N·H = D, n constant)."""
    if not is_float32(projection) or projection.shape is None or len(projection.shape) != 3:
        return None
    hidden = projection.shape[2]
    target = shape_entries(reshape.inputs[1])
    if not isinstance(hidden, int) or target is None or len(target) != 4 + packed:
        return None
    copies = reshape.attributes.get_int("allowzero", 0) == 0
    in_place = [same_dim(target[axis], projection, axis) or (copies and target[axis] == 0) for axis in (0, 1)]
    parts = target[2] if packed else 1
    if not isinstance(parts, int) or parts < 1 or hidden % parts:
        return None
    hidden //= parts
    heads, size = target[-2], target[-1]
    if not all(in_place):
        # One -1 for B or S (dynamo's view(-1, S, ...)): the other entries proven, it can only be that one.
        given = isinstance(heads, int) and isinstance(size, int) and heads > 0 and size > 0 and heads * size == hidden
        if not given or target.count(-1) != 1 or not all(ok or target[axis] == -1 for axis, ok in enumerate(in_place)):
            return None
    if isinstance(size, int) and size > 0 and hidden % size == 0 and heads in (-1, hidden // size):
        found = hidden // size, size
    elif isinstance(heads, int) and heads > 0 and hidden % heads == 0 and size in (-1, hidden // heads):
        found = heads, hidden // heads
    else:
        return None
    return (parts, *found) if packed else found


def _merged_heads(
    context: ir.Value, projection: ir.Value, q_heads: ir.Value, v_heads: ir.Value, width: int
) -> tuple[ir.Value, list[ir.Node]] | None:
    """(y, nodes) for ``y = Reshape(Transpose(context, (0, 2, 1, 3)), [B, S, -1])``, B and S those of ``projection``.

    The target may also be ``[-1, S, N·Hv]`` or ``[B, -1, N·Hv]`` (``width`` = N·Hv).

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
    ] if target is not None and len(target) == 3 else [False, False]
    # One -1 for B or S: the others proven, it can only be that one.
    inferred = (target is not None and len(target) == 3 and target[2] == width and target.count(-1) == 1
                and all(ok or target[axis] == -1 for axis, ok in enumerate(in_place)))
    if not (all(in_place) or inferred):
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


def _usable_condition(condition: ir.Value, num_heads: int) -> bool:
    """A bool mask that, as an additive bias lifted to rank 4, is onnxruntime's [B or 1, N or 1, S, T]."""
    shape = condition.shape
    if not isinstance(condition.type, ir.TensorType) or condition.type.dtype != ir.DataType.BOOL or shape is None:
        return False
    if not 2 <= len(shape) <= 4:
        return False
    dims = [1] * (4 - len(shape)) + list(shape)
    heads_fit = not isinstance(dims[1], int) or dims[1] in (1, num_heads)
    return heads_fit and dims[2] != 1 and dims[3] != 1


def _usable_bias(bias: ir.Value, num_heads: int) -> bool:
    """onnxruntime's attention_bias: [B or 1, N or 1, S, T], float32, by inferred rank and sizes.

    A bias broadcast over the query rows (S 1) is expanded (:func:`_rows_expanded`); one
    broadcast over the keys is not taken.
    """
    if not is_float32(bias) or bias.shape is None or len(bias.shape) != 4:
        return False
    heads, columns = bias.shape[1], bias.shape[3]
    if isinstance(heads, int) and heads not in (1, num_heads):
        return False
    return columns != 1


# --------------------------------------------------------------------------- rewriting


@dataclass
class _Rewrite:
    """What one run of the pass shares between its rewrites: the graph, fresh names, the biases made
    (row-expanded ones by the bias's id, masked_fill ones by the mask's)."""

    graph: ir.Graph
    context: OptimizationContext
    names: UniqueNames
    expanded: dict[object, ir.Value] = field(default_factory=dict)


def _fuse(rewrite: _Rewrite, match: _Match) -> bool:
    packed = _packed_projections(match)
    # Packed into Attention when the projections can go with the pattern, else MultiHeadAttention on them.
    # MultiHeadAttention takes neither a causal mask nor q, k, v as column blocks of one value.
    unpackable = match.causal or any(h.part is not None for h in (match.q, match.k, match.v))
    for projection_nodes in ([packed[3]] if packed is not None else []) + ([] if unpackable else [[]]):
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
    if match.causal:  # only packed: q and k project one x, so S = T and "key j > query i" is exactly the mask
        attributes.append(ir.AttrInt64("unidirectional", 1))
    if not is_close(match.scale, 1.0 / math.sqrt(match.q.head_size), 1e-6):
        attributes.append(ir.AttrFloat32("scale", match.scale))
    new_nodes: list[ir.Node] = []
    bias = match.bias
    if bias is not None and _broadcast_rows(bias):
        bias = _rows_expanded(rewrite, bias, new_nodes)
    if match.fill_mask is not None:
        bias = _fill_bias(rewrite, match.fill_mask, new_nodes)
    if packed is not None:
        x, weight, projection_bias, _ = packed
        sizes = [h.num_heads * h.head_size for h in (match.q, match.k, match.v)]
        if sizes[2] != sizes[0]:
            attributes.append(ir.AttrInt64s("qkv_hidden_sizes", sizes))
        inputs = [x, new_initializer(graph, names, f"{label}_qkv_weight", weight),
                  new_initializer(graph, names, f"{label}_qkv_bias", projection_bias), None, None, bias]
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


def _fill_bias(rewrite: _Rewrite, fill_mask: tuple[ir.Value, bool, ir.Value], new_nodes: list[ir.Node]) -> ir.Value:
    """``Where(masked, fill, 0)`` lifted to rank 4: the additive bias of a masked_fill, made once per mask."""
    condition, keeps, fill = fill_mask
    key = (id(condition), keeps, id(fill))
    if key in rewrite.expanded:
        return rewrite.expanded[key]
    base = condition.name or "attention_mask"
    zero = new_initializer(rewrite.graph, rewrite.names, f"{base}_zero", np.array(0.0, np.float32))
    where = ir.Node("", "Where", [condition, zero, fill] if keeps else [condition, fill, zero], name=f"{base}_bias")
    new_nodes.append(where)
    result = where.outputs[0]
    rank = len(condition.shape)
    if rank < 4:
        leading = np.arange(4 - rank, dtype=np.int64)
        if rewrite.context.opset_imports.get("", 1) >= 13:
            lift = ir.Node("", "Unsqueeze", [result, new_initializer(rewrite.graph, rewrite.names, f"{base}_axes", leading)],
                           name=f"{base}_bias4")
        else:
            lift = ir.Node("", "Unsqueeze", [result], attributes=[ir.AttrInt64s("axes", leading.tolist())], name=f"{base}_bias4")
        new_nodes.append(lift)
        result = lift.outputs[0]
    result.name = rewrite.names.fresh(f"{base}_bias")
    result.type, result.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([1] * (4 - rank) + list(condition.shape))
    rewrite.expanded[key] = result
    return result


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
        three = new_initializer(rewrite.graph, rewrite.names, f"{base}_key_axis", np.array([3], np.int64))
        length = ir.Node("", "Gather", [shape.outputs[0], three])
        new_nodes += [shape, length]
    one = new_initializer(rewrite.graph, rewrite.names, f"{base}_one", np.array([1], np.int64))
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
    weights, biases = [], []
    for heads, (_, weight, bias, _) in zip((match.q, match.k, match.v), parts):
        bias = bias if bias is not None else np.zeros(weight.shape[1], np.float32)
        if heads.part is not None:  # its block of the packed projection's columns
            index, count = heads.part
            width = weight.shape[1] // count
            weight, bias = weight[:, index * width:(index + 1) * width], bias[index * width:(index + 1) * width]
        weights.append(weight)
        biases.append(bias)
    return x, np.concatenate(weights, axis=1), np.concatenate(biases), [n for p in parts for n in p[3]]


def _projection(value: ir.Value) -> tuple[ir.Value, np.ndarray, np.ndarray | None, list[ir.Node]] | None:
    """(x, W, b, nodes) when ``value`` is ``MatMul(x, W) [+ b]``, W and b constant, or a Split of one along its columns."""
    node = value.producer()
    if node is not None and _is_op(node, "Split"):
        return _split_projection(node, value)
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


def _split_projection(split: ir.Node, value: ir.Value) -> tuple[ir.Value, np.ndarray, np.ndarray | None, list[ir.Node]] | None:
    """``value``'s columns of the projection that ``split`` splits along its last axis (GPT-2's c_attn)."""
    packed = split.inputs[0]
    if packed is None or packed.shape is None or len(packed.shape) != 3:
        return None
    if split.attributes.get_int("axis", 0) not in (2, -1):
        return None
    whole = _projection(packed)
    if whole is None:
        return None
    x, weight, bias, nodes = whole
    columns = weight.shape[1]
    sizes = constant_ints(split.inputs[1]) if len(split.inputs) > 1 and split.inputs[1] is not None \
        else split.attributes.get_ints("split", None)
    count = len(split.outputs)
    if sizes is None:  # equal parts (the last smaller with num_outputs, which then must divide evenly here)
        sizes = [columns // count] * count if columns % count == 0 else None
    if sizes is None or len(sizes) != count or sum(sizes) != columns or any(size <= 0 for size in sizes):
        return None
    index = list(split.outputs).index(value)
    start = sum(sizes[:index])
    end = start + sizes[index]
    return x, weight[:, start:end], (bias[start:end] if bias is not None else None), [*nodes, split]


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
    bias = match.fill_mask[0] if match.fill_mask is not None else match.bias
    reads = [bias, x] if x is not None else [bias, match.q.projection, match.k.projection, match.v.projection]
    return any(v is not None and v.producer() is not None and id(v.producer()) in gone for v in reads)


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


def _is_op(node: ir.Node, op_type: str) -> bool:
    return node.op_type == op_type and node.domain == ""


def _perm(transpose: ir.Node) -> tuple[int, ...] | None:
    perm = transpose.attributes.get_ints("perm", None)
    return tuple(perm) if perm is not None else None
