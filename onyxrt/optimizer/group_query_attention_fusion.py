"""Grouped-query attention fusion: a decoder layer's attention over past/present KV becomes one com.microsoft GroupQueryAttention.

Pattern, BNSH meaning (batch, heads, seq, head_size), N query heads, Nkv key/value heads, H static:
``present_k = Concat(past_k, k_new, axis=2)`` and likewise for V (the present outputs);
``K = Reshape(Tile|Expand(Unsqueeze(present_k, 2), [1, 1, g, 1, 1]), [B, N, T, H])`` with
``N = g·Nkv`` (or ``present_k`` itself when g = 1), likewise V;
``scores = FusedMatMul(q, Transpose(K, [0, 1, 3, 2]), alpha)`` (or MatMul, scaled by a scalar
Mul/Div, or transB=1 on K); ``probs = Softmax(scores + bias)`` over the last axis (bias optional);
``out = Transpose(MatMul(probs, V), [0, 2, 1, 3])``, usually then Reshape to (B, S, N·H).

Replacement: ``GroupQueryAttention(query, key, value, past_k, past_v, seqlens_k,
total_sequence_length, attention_bias=bias)`` with causal=0 and scale=alpha. query/key/value are
(B, S, heads·H): the projection itself when q/k/v is its head split (Reshape + Transpose), a 3-D
RotaryEmbedding of it when a rotary node (see rotary_fusion) sat between, else a Transpose and
Reshape of the BNSH tensor. ``total = past length + S`` and ``seqlens_k = total - 1`` for every
batch row, from shapes, not from a mask: GroupQueryAttention then appends the new K/V at the past
length as Concat does, and with causal=0 the bias is the only mask, so the softmax runs over all
total keys as in the original -- rows whose keys are all masked (left padding) included, where
GroupQueryAttention's own causal mask would differ.

Preconditions: one float type throughout; q, k_new, v_new, past K/V of rank 4 with static head
counts and H; the Reshape targets proven (constants or the graph's own shape arithmetic) or the
bias of shape (B|1, N|1, S, T) with B, S the query's own dims; scores, probs and their repeats
read only inside the pattern. onnxruntime's CPU kernel rejects S > 1 with a non-empty past at
batch > 1 (chunked prefill of a batch), which the original graph and onyxrt's kernel run; its
query_seqlens input, which lifts that, requires causal=1, wrong on fully masked rows -- an error
there beats a silent difference.
onnxruntime: no runtime transformer; its offline optimizer builds GroupQueryAttention only when
converting models (FusionRotaryAttention, replace_mha_with_gqa).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..graph.builder import GraphBuilder, UniqueNames
from .matching import only_reader, scalar
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel
from .shape_values import Dim, constant_ints, shape_entries

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


class GroupQueryAttentionFusion(GraphPass):
    """Replaces a layer's attention over concatenated past/present K/V by GroupQueryAttention."""

    name = "group_query_attention_fusion"
    level = OptimizationLevel.EXTENDED
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        fused = 0
        names = UniqueNames(graph)
        lengths: dict[tuple, tuple[ir.Value, ir.Value]] = {}
        for softmax in [node for node in graph if node.op_type == "Softmax" and node.domain == ""]:
            if softmax.graph is not graph:
                continue  # removed by an earlier fusion of this run
            match = _match(softmax, context)
            if match is not None:
                _fuse(graph, match, context, names, lengths)
                fused += 1
        return fused


@dataclass
class _Attention:
    """One matched layer: what the fused node reads, the values it takes over, the nodes it replaces."""

    query: ir.Value  # BNSH
    key: ir.Value  # the new keys, BNSH
    value: ir.Value
    past_key: ir.Value
    past_value: ir.Value
    present_key: ir.Value
    present_value: ir.Value
    bias: ir.Value | None
    scale: float
    num_heads: int
    kv_num_heads: int
    head_size: int
    output: ir.Value  # (B, S, N, H), the Transpose after probs·V
    merged: ir.Value | None  # its Reshape to (B, S, N·H) when proven
    anchor: ir.Node  # the fused node goes before it
    nodes: list[ir.Node]


def _match(softmax: ir.Node, context: OptimizationContext) -> _Attention | None:
    """The attention around ``softmax`` when it has the pattern and preconditions of the module docstring."""
    default_axis = -1 if context.opset(softmax) >= 13 else 1
    if softmax.attributes.get_int("axis", default_axis) not in (-1, 3) or softmax.inputs[0] is None:
        return None
    probs = softmax.outputs[0]
    weighted = only_reader(probs)
    if weighted is None or weighted.op_type != "MatMul" or weighted.domain != "" or weighted.inputs[0] is not probs:
        return None
    logits = softmax.inputs[0]
    add, bias, scores = logits.producer(), None, logits
    if add is not None and add.op_type == "Add" and add.domain == "" and len(add.inputs) == 2 and only_reader(logits) is softmax:
        for candidate, other in (add.inputs, reversed(add.inputs)):
            if candidate is not None and _scores(candidate, add) is not None:
                scores, bias = candidate, other
                break
    else:
        add = None
    found = _scores(scores, add or softmax)
    if found is None:
        return None
    query, repeated_key, scale, nodes = found
    key_side, value_side = _repeated(repeated_key), _repeated(weighted.inputs[1])
    if key_side is None or value_side is None or key_side[1] != value_side[1]:
        return None
    (present_key, group, key_nodes), (present_value, _, value_nodes) = key_side, value_side
    key_concat, value_concat = present_key.producer(), present_value.producer()
    past_key, new_key = key_concat.inputs
    past_value, new_value = value_concat.inputs
    output = _transposed(weighted.outputs[0], [0, 2, 1, 3])
    if output is None:
        return None
    # The counts come from whichever shape records them; q·Kᵀ and probs·V fail on any other query.
    kv_num_heads = _first_static(1, new_key, past_key, present_key, new_value, past_value, present_value)
    head_size = _first_static(3, new_key, past_key, present_key, query)
    if None in (kv_num_heads, head_size) or scale == 0.0:
        return None
    num_heads = group * kv_num_heads
    if _static_dim(query, 1) not in (None, num_heads) or _static_dim(query, 3) not in (None, head_size):
        return None
    for value in (new_key, new_value, past_key, past_value):
        if value.shape is None or len(value.shape) != 4 or _static_dim(value, 1) not in (None, kv_num_heads):
            return None
        if _static_dim(value, 3) not in (None, head_size):
            return None
    if not _same_float_type(query, new_key, new_value, past_key, past_value, *([bias] if bias is not None else [])):
        return None
    nodes += [*key_nodes, *value_nodes, key_concat, value_concat, softmax, weighted, output.producer()]
    if add is not None:
        nodes.append(add)
    attention = _Attention(query, new_key, new_value, past_key, past_value, present_key, present_value, bias, scale,
                           num_heads, kv_num_heads, head_size, output, None, add or softmax, nodes)
    attention.merged = _merged(attention)
    if bias is not None and not _bias_fits(bias, attention):
        return None
    return attention


def _scores(value: ir.Value, reader: ir.Node):
    """(q, K, alpha, nodes) when ``value``, read by ``reader`` alone, is (a scalar scale of) q·Kᵀ."""
    node = value.producer()
    if node is None or only_reader(value) is not reader:
        return None
    factor, nodes = 1.0, []
    if node.op_type in ("Mul", "Div") and node.domain == "" and len(node.inputs) == 2:
        constant = scalar(node.inputs[1])
        if constant is None and node.op_type == "Mul":
            constant, inner = scalar(node.inputs[0]), node.inputs[1]
        else:
            inner = node.inputs[0]
        if constant is None or constant == 0.0 or inner is None or only_reader(inner) is not node:
            return None
        factor = constant if node.op_type == "Mul" else 1.0 / constant
        nodes.append(node)
        node = inner.producer()
        if node is None:
            return None
    if node.op_type == "MatMul" and node.domain == "":
        alpha, transposed_key = 1.0, False
    elif node.op_type == "FusedMatMul" and node.domain == "com.microsoft":
        if any(node.attributes.get_int(name, 0) for name in ("transA", "transBatchA", "transBatchB")):
            return None
        alpha, transposed_key = node.attributes.get_float("alpha", 1.0), bool(node.attributes.get_int("transB", 0))
    else:
        return None
    query, key = node.inputs
    if query is None or key is None:
        return None
    nodes.append(node)
    if not transposed_key:
        transpose = key.producer()
        if not _is_transpose(transpose, [0, 1, 3, 2]) or only_reader(key) is not node:
            return None
        nodes.append(transpose)
        key = transpose.inputs[0]
    return query, key, alpha * factor, nodes


def _is_transpose(node: ir.Node | None, perm: list[int]) -> bool:
    return (node is not None and node.op_type == "Transpose" and node.domain == "" and node.inputs[0] is not None
            and list(node.attributes.get_ints("perm", [])) == perm)


def _transposed(value: ir.Value, perm: list[int]) -> ir.Value | None:
    """The output of the Transpose by ``perm`` that is ``value``'s single reader."""
    transpose = only_reader(value)
    return transpose.outputs[0] if _is_transpose(transpose, perm) else None


def _repeated(value: ir.Value | None):
    """(present, g, nodes) when ``value`` is ``present`` (a Concat of past and new on axis 2) with each head repeated g times."""
    if value is None:
        return None
    if _is_kv_concat(value.producer()):
        return value, 1, []
    reshape = value.producer()
    if reshape is None or reshape.op_type != "Reshape" or reshape.domain != "" or only_reader(value) is None:
        return None
    expanded = reshape.inputs[0]
    repeat = expanded.producer() if expanded is not None else None
    if repeat is None or repeat.op_type not in ("Tile", "Expand") or repeat.domain != "":
        return None
    counts = constant_ints(repeat.inputs[1])
    unsqueeze = repeat.inputs[0].producer() if repeat.inputs[0] is not None else None
    if counts is None or len(counts) != 5 or counts[:2] + counts[3:] != [1, 1, 1, 1] or counts[2] < 1:
        return None
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or unsqueeze.domain != "" or _unsqueeze_axes(unsqueeze) != [2]:
        return None
    present = unsqueeze.inputs[0]
    kv_heads = _static_dim(present, 1) if present is not None else None
    if not _is_kv_concat(present.producer() if present is not None else None) or kv_heads is None:
        return None
    # The Reshape must merge the kv-head and repeat axes: (B, Nkv, g, T, H) -> (B, Nkv·g, T, H).
    dims = [_static_dim(present, axis) or Dim(present, axis) for axis in range(4)]
    known = {unsqueeze.outputs[0]: [*dims[:2], 1, *dims[2:]], expanded: [*dims[:2], counts[2], *dims[2:]]}
    same = {(present, 0): 0, (present, 2): 2, (present, 3): 3}
    wanted = [(present, 0), kv_heads * counts[2], (present, 2), (present, 3)]
    if not _reshape_target_is(reshape, wanted, same, copies={0}, known=known):
        return None
    return present, counts[2], [reshape, repeat, unsqueeze]


def _is_kv_concat(node: ir.Node | None) -> bool:
    return (node is not None and node.op_type == "Concat" and node.domain == "" and len(node.inputs) == 2
            and all(value is not None for value in node.inputs) and node.attributes.get_int("axis", 0) in (2, -2))


def _unsqueeze_axes(node: ir.Node) -> list[int] | None:
    axes = node.attributes.get_ints("axes")
    if axes is None and len(node.inputs) > 1:
        axes = constant_ints(node.inputs[1])
    return None if axes is None else list(axes)


def _reshape_target_is(reshape: ir.Node, wanted: list, same: dict, copies: set[int], known: dict | None = None) -> bool:
    """Whether ``reshape``'s target gives, entry by entry, ``wanted``: ints, or (value, axis) for that dim of value.

    ``same`` maps (value, axis) pairs to the index in ``wanted`` they stand for; ``copies`` holds the
    indices where a 0 entry (allowzero=0) copies the wanted dim; one -1 may stand for any entry
    when every other is proven. ``known``: see :func:`shape_entries`.
    """
    entries = shape_entries(reshape.inputs[1], known) if len(reshape.inputs) > 1 else None
    if entries is None or len(entries) != len(wanted):
        return False
    allow_zero = reshape.attributes.get_int("allowzero", 0)
    unproven = 0
    for index, (entry, want) in enumerate(zip(entries, wanted)):
        if entry == -1:
            unproven += 1
        elif not _entry_is(entry, index, want, same, allow_zero == 0 and index in copies):
            return False
    return unproven <= 1


def _entry_is(entry, index: int, want, same: dict, zero_copies: bool) -> bool:
    if isinstance(entry, Dim):
        return same.get((entry.value, entry.axis)) == index
    if not isinstance(entry, int):
        return False
    if entry == 0:
        return zero_copies
    if isinstance(want, int):
        return entry == want
    value, axis = want
    return _static_dim(value, axis) == entry


def _dim(value: ir.Value, axis: int):
    """``value``'s dim ``axis`` (an int or a symbol), None when its shape is not known."""
    return value.shape.dims[axis] if value.shape is not None and -len(value.shape) <= axis < len(value.shape) else None


def _first_static(axis: int, *values: ir.Value) -> int | None:
    return next((dim for dim in (_static_dim(value, axis) for value in values) if dim is not None), None)


def _static_dim(value: ir.Value | None, axis: int) -> int | None:
    if value is None or value.shape is None or not -len(value.shape) <= axis < len(value.shape):
        return None
    dim = value.shape.dims[axis]
    return dim if isinstance(dim, int) else None


def _same_float_type(*values: ir.Value) -> bool:
    first = values[0].type
    return isinstance(first, ir.TensorType) and first.dtype in _FLOATS and all(v.type == first for v in values)


def _same_dim(first, second) -> bool:
    """Whether two dims are provably equal: equal ints or one named symbol."""
    if isinstance(first, int) or isinstance(second, int):
        return first == second
    return (isinstance(first, ir.SymbolicDim) and isinstance(second, ir.SymbolicDim)
            and first.value is not None and first.value == second.value)


def _head_split(value: ir.Value, heads: int, head_size: int) -> ir.Value | None:
    """The (B, S, heads·H) projection ``value`` (B, heads, S, H) is the head split of, when proven."""
    transpose = value.producer()
    if not _is_transpose(transpose, [0, 2, 1, 3]):
        return None
    reshape = transpose.inputs[0].producer()
    if reshape is None or reshape.op_type != "Reshape" or reshape.domain != "":
        return None
    projection, split = reshape.inputs[0], reshape.outputs[0]
    if projection is None or projection.shape is None or len(projection.shape) != 3 or _static_dim(projection, 2) != heads * head_size:
        return None
    if split.shape is not None and len(split.shape) == 4 and all(
        _same_dim(split.shape.dims[axis], projection.shape.dims[axis]) for axis in (0, 1)
    ) and [_static_dim(split, 2), _static_dim(split, 3)] == [heads, head_size]:
        return projection
    same = {(projection, 0): 0, (projection, 1): 1}
    wanted = [(projection, 0), (projection, 1), heads, head_size]
    return projection if _reshape_target_is(reshape, wanted, same, copies={0, 1}) else None


def _merged(attention: _Attention) -> ir.Value | None:
    """The output's Reshape to (B, S, N·H) when it provably merges the last two axes."""
    output = attention.output
    reshape = only_reader(output)
    if reshape is None or reshape.op_type != "Reshape" or reshape.domain != "":
        return None
    merged, width = reshape.outputs[0], attention.num_heads * attention.head_size
    sources = [output]
    projection = _head_split(_rotary_input(attention.query) or attention.query, attention.num_heads, attention.head_size)
    if projection is not None:
        sources.append(projection)  # (B, S) of the query are the output's
    if merged.shape is not None and len(merged.shape) == 3 and _static_dim(merged, 2) == width and all(
        any(source.shape is not None and _same_dim(merged.shape.dims[axis], source.shape.dims[axis]) for source in sources)
        for axis in (0, 1)
    ):
        return merged
    same = {(source, axis): axis for source in sources for axis in (0, 1)}
    return merged if _reshape_target_is(reshape, [(output, 0), (output, 1), width], same, copies={0, 1}) else None


def _rotary_input(value: ir.Value) -> ir.Value | None:
    """The input of the RotaryEmbedding (no num_heads: the BNSH form) producing ``value``, read once, else None."""
    rotary = value.producer()
    if rotary is None or rotary.op_type != "RotaryEmbedding" or rotary.domain != "com.microsoft" or len(rotary.inputs) != 4:
        return None
    if rotary.attributes.get_int("is_packed_batching", 0) or rotary.attributes.get_int("num_heads", 0):
        return None
    if only_reader(value) is None:
        return None
    return rotary.inputs[0]


def _bias_fits(bias: ir.Value, attention: _Attention) -> bool:
    """A bias GroupQueryAttention takes as it is: (B|1, N|1, S, T) with B and S the query's own dims."""
    if bias.shape is None or len(bias.shape) != 4:
        return False
    # GroupQueryAttention checks that query, key and value agree on B and S: any of them names them
    batch_dims, seq_dims = [], []
    for value, heads in ((attention.query, attention.num_heads), (attention.key, attention.kv_num_heads),
                         (attention.value, attention.kv_num_heads)):
        batch_dims.append(_dim(value, 0))
        seq_dims.append(_dim(value, 2))
        projection = _head_split(_rotary_input(value) or value, heads, attention.head_size)
        if projection is not None:
            batch_dims.append(_dim(projection, 0))
            seq_dims.append(_dim(projection, 1))
    batch, heads, seq, total = bias.shape.dims
    return ((batch == 1 or any(_same_dim(batch, dim) for dim in batch_dims))
            and heads in (1, attention.num_heads)
            and any(_same_dim(seq, dim) for dim in seq_dims)
            and total != 1)


# --------------------------------------------------------------------------- the rewrite


class _Builder(GraphBuilder):
    """A GraphBuilder that also adds initializers to its graph."""

    def __init__(self, graph: ir.Graph, names: UniqueNames, prefix: str) -> None:
        super().__init__(names, prefix)
        self.graph = graph

    def constant(self, array: np.ndarray) -> ir.Value:
        value = ir.Value(name=self.fresh("constant"), const_value=ir.Tensor(array),
                         type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), shape=ir.Shape(list(array.shape)))
        self.graph.register_initializer(value)
        return value


def _fuse(graph: ir.Graph, attention: _Attention, context: OptimizationContext, names: UniqueNames,
          lengths: dict[tuple, tuple[ir.Value, ir.Value]]) -> None:
    """Insert the GroupQueryAttention of ``attention``; ``lengths``: (seqlens_k, total) already built, by :func:`_lengths_key`."""
    context.require_opset("com.microsoft", 1)
    build = _Builder(graph, names, f"{attention.anchor.name or 'attention'}_gqa_")
    query = _as_projection(build, attention.query, attention.num_heads, attention.head_size)
    key = _as_projection(build, attention.key, attention.kv_num_heads, attention.head_size)
    value = _as_projection(build, attention.value, attention.kv_num_heads, attention.head_size)
    shared = _lengths_key(attention, query)
    if shared not in lengths:
        lengths[shared] = _lengths(build, query, attention.past_key, context.opset_imports.get("", 1))
    seqlens_k, total = lengths[shared]
    inputs = [query, key, value, attention.past_key, attention.past_value, seqlens_k, total]
    if attention.bias is not None:
        inputs += [None, None, None, attention.bias]
    gqa = build.node("GroupQueryAttention", inputs, {
        "num_heads": attention.num_heads, "kv_num_heads": attention.kv_num_heads,
        "scale": np.float32(attention.scale), "causal": 0,
    }, domain="com.microsoft", num_outputs=3)
    width = attention.num_heads * attention.head_size
    fused_output = gqa.outputs[0]
    fused_output.type = query.type
    fused_output.shape = ir.Shape([_dim(query, 0), _dim(query, 1), width])
    if attention.merged is not None:
        exits = [(attention.merged, fused_output)]
    else:
        heads = build.op("Reshape", [fused_output, build.constant(np.array([0, 0, attention.num_heads, attention.head_size], np.int64))],
                         type=attention.output.type, shape=attention.output.shape)
        exits = [(attention.output, heads)]
    exits += [(attention.present_key, gqa.outputs[1]), (attention.present_value, gqa.outputs[2])]
    build.insert_before(attention.anchor)
    renames = []
    for old, new in exits:
        if new.type is None:
            new.type, new.shape = old.type, old.shape
        renames.append((new, old.name))
        old.replace_all_uses_with(new, replace_graph_outputs=True)
    _remove_dead(graph, attention.nodes + ([attention.merged.producer()] if attention.merged is not None else []))
    for new, name in renames:
        if name:
            new.name = name
    context.mark_reordered(graph)  # a value the fused node reads may have been computed after the anchor


def _as_projection(build: _Builder, value: ir.Value, heads: int, head_size: int) -> ir.Value:
    """``value`` (B, heads, S, H) as (B, S, heads·H): its projection, a 3-D rotary of it, or a Transpose + Reshape."""
    rotary_input = _rotary_input(value)
    projection = _head_split(rotary_input, heads, head_size) if rotary_input is not None else _head_split(value, heads, head_size)
    if projection is not None and rotary_input is not None:
        rotary = value.producer()
        attributes = {"interleaved": rotary.attributes.get_int("interleaved", 0), "num_heads": heads}
        if rotary.attributes.get_int("rotary_embedding_dim", 0):
            attributes["rotary_embedding_dim"] = rotary.attributes.get_int("rotary_embedding_dim")
        if "scale" in rotary.attributes:
            attributes["scale"] = np.float32(rotary.attributes.get_float("scale"))
        return build.op("RotaryEmbedding", [projection, *rotary.inputs[1:]], attributes, domain="com.microsoft",
                        type=projection.type, shape=projection.shape)
    if projection is not None:
        return projection
    batch, seq = _dim(value, 0), _dim(value, 2)
    transposed = build.op("Transpose", [value], {"perm": [0, 2, 1, 3]}, type=value.type,
                          shape=ir.Shape([batch, seq, heads, head_size]))
    return build.op("Reshape", [transposed, build.constant(np.array([0, 0, heads * head_size], np.int64))],
                    type=value.type, shape=ir.Shape([batch, seq, heads * head_size]))


def _lengths_key(attention: _Attention, query: ir.Value) -> tuple:
    """What decides the lengths: layers reading one bias, with pasts and queries of the same named dims, share them.

    The shared bias pins one total length for all of them (the original's Add fails otherwise),
    and GroupQueryAttention checks the batch and sequence length against seqlens_k and the bias.
    """
    dims = [_dim(query, 0), _dim(query, 1), _dim(attention.past_key, 0), _dim(attention.past_key, 2)]
    if attention.bias is None or not all(isinstance(d, ir.SymbolicDim) and d.value is not None for d in dims):
        return (id(attention.past_key), id(query))
    return (id(attention.bias), *(d.value for d in dims))


def _lengths(build: _Builder, query: ir.Value, past_key: ir.Value, opset: int) -> tuple[ir.Value, ir.Value]:
    """(seqlens_k, total_sequence_length): total = past length + S, seqlens_k = total - 1 for each of the B rows."""
    int64 = ir.TensorType(ir.DataType.INT64)
    one_dim = ir.Shape([1])

    def dim(value: ir.Value, axis: int) -> ir.Value:
        if opset >= 15:
            return build.op("Shape", [value], {"start": axis, "end": axis + 1}, type=int64, shape=one_dim)
        shape = build.op("Shape", [value], type=int64, shape=None)
        return build.op("Gather", [shape, build.constant(np.array([axis], np.int64))], {"axis": 0}, type=int64, shape=one_dim)

    int32 = ir.TensorType(ir.DataType.INT32)
    total64 = build.op("Add", [dim(past_key, 2), dim(query, 1)], type=int64, shape=one_dim)
    total32 = build.op("Cast", [total64], {"to": int(ir.DataType.INT32)}, type=int32, shape=one_dim)
    last = build.op("Sub", [total32, build.constant(np.array([1], np.int32))], type=int32, shape=one_dim)
    seqlens_k = build.op("Expand", [last, dim(query, 0)], type=int32, shape=ir.Shape([_dim(query, 0)]))
    total = build.op("Reshape", [total32, build.constant(np.array([], np.int64))], type=int32, shape=ir.Shape([]))
    return seqlens_k, total


def _remove_dead(graph: ir.Graph, nodes: list[ir.Node]) -> None:
    """Remove ``nodes`` and, transitively, the producers feeding them, as far as nothing reads their outputs any more."""
    pending = list(nodes)
    while pending:
        node = pending.pop()
        if node.graph is not graph or any(v.uses() or v.is_graph_output() for v in node.outputs):
            continue
        producers = [v.producer() for v in node.inputs if v is not None and v.producer() is not None]
        graph.remove(node, safe=True)
        pending.extend(producers)
