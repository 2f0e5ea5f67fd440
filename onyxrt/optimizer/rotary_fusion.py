"""Rotary embedding fusion: ``x·cos + rotate_half(x)·sin`` over tables gathered by position becomes com.microsoft RotaryEmbedding.

Pattern, x of shape (batch, heads, seq, head_size) with head_size static and even, h = head_size / 2:
``rotate_half(x) = Concat(Neg(x[..., h:]), x[..., :h], axis=-1)``, the halves from one Split
(two equal parts of the last axis) or two Slices (bounds constant or computed from x's shape);
``cos = Unsqueeze(Gather(cos_table, position_ids), axes=[1])`` (dynamo:
``GatherND(cos_table, Unsqueeze(position_ids, -1))``), ``sin`` likewise;
``y = Add(Mul(x, cos), Mul(rotate_half(x), sin))``, operands in either order.

Preconditions: the tables are constants of shape (max_position, head_size) in x's float type whose
two halves are equal (``cat(freqs, freqs)``, as rotary tables are built; other tables are left
alone); position_ids is a 2-D int64 tensor; the rotation's inner values are read nowhere else.
Replacement: ``RotaryEmbedding(x, position_ids, cos_table[:, :h], sin_table[:, :h])``,
non-interleaved, on the 4-D input; RotaryEmbedding rejects position_ids of another shape than
(batch, seq) where the original would have broadcast. onnxruntime: no runtime transformer; its
offline transformers optimizer calls the same rewrite FusionRotaryEmbeddings.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..graph.builder import UniqueNames
from ..graph.tensors import constant_array
from .matching import is_constant, replace_with, self_contained
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel
from .shape_values import constant_ints, shape_entries

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE)


class RotaryEmbeddingFusion(GraphPass):
    """Replaces the rotate-half rotary subgraph (x·cos + rotate_half(x)·sin) by RotaryEmbedding."""

    name = "rotary_embedding_fusion"
    level = OptimizationLevel.EXTENDED
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        fused = 0
        half_tables: dict[int, ir.Value] = {}  # one half-width copy per table and run
        names = UniqueNames(graph)
        for add in [node for node in graph if node.op_type == "Add" and node.domain == ""]:
            match = _match(add)
            if match is None:
                continue
            x, position_ids, tables, nodes = match
            context.require_opset("com.microsoft", 1)
            caches = [_half_table(graph, table, half_tables, names) for table in tables]
            rotary = ir.Node("com.microsoft", "RotaryEmbedding", [x, position_ids, *caches], num_outputs=1,
                             attributes=[ir.AttrInt64("interleaved", 0)], name=names.fresh(f"{add.name or 'rotary'}_rotary"))
            replace_with(graph, nodes, add.outputs[0], rotary, anchor=add)
            fused += 1
        return fused


def _match(add: ir.Node):
    """(x, position_ids, (cos_table, sin_table), pattern nodes) when ``add`` ends a rotary embedding, else None."""
    if len(add.inputs) != 2 or any(value is None for value in add.inputs):
        return None
    for straight, rotated in (add.inputs, reversed(add.inputs)):
        mul_x, mul_rotated = straight.producer(), rotated.producer()
        if not (_is_binary(mul_x, "Mul") and _is_binary(mul_rotated, "Mul")):
            continue
        for rotate_half, sin in (mul_rotated.inputs, reversed(mul_rotated.inputs)):
            halves = _rotate_half(rotate_half.producer())
            if halves is None:
                continue
            x, half, rotation_nodes = halves
            if x not in mul_x.inputs:
                continue
            cos = mul_x.inputs[1] if mul_x.inputs[0] is x else mul_x.inputs[0]
            cos_source, sin_source = _gathered_table(cos), _gathered_table(sin)
            if cos_source is None or sin_source is None or cos_source[1] is not sin_source[1]:
                continue
            tables = (cos_source[0], sin_source[0])
            if not _rotary_input(x, half) or not all(_rotary_table(table, x, half) for table in tables):
                continue
            nodes = [*rotation_nodes, mul_rotated, mul_x, add]
            if self_contained(nodes, add.outputs[0]):
                return x, cos_source[1], tables, nodes
    return None


def _is_binary(node: ir.Node | None, op_type: str) -> bool:
    return (node is not None and node.op_type == op_type and node.domain == "" and len(node.inputs) == 2
            and all(value is not None for value in node.inputs))


def _last_axis(axis: int | None, rank: int) -> bool:
    return axis is not None and axis in (-1, rank - 1)


def _rotate_half(concat: ir.Node | None):
    """(x, h, nodes) when ``concat`` is ``Concat(Neg(x[..., h:]), x[..., :h])`` on the last axis."""
    if concat is None or concat.op_type != "Concat" or concat.domain != "" or len(concat.inputs) != 2:
        return None
    negated, low = concat.inputs
    neg = negated.producer() if negated is not None else None
    if neg is None or neg.op_type != "Neg" or neg.domain != "" or low is None:
        return None
    high = neg.inputs[0]
    split = low.producer()
    if split is not None and split is high.producer() and split.op_type == "Split":
        found = _split_halves(split, low, high)
        nodes = [split]
    else:
        found = _sliced_halves(low.producer(), high.producer())
        nodes = [low.producer(), high.producer()]
    if found is None:
        return None
    x, half = found
    if x.shape is None or not _last_axis(concat.attributes.get_int("axis", None), len(x.shape)):
        return None
    return x, half, [*nodes, neg, concat]


def _split_halves(split: ir.Node, low: ir.Value, high: ir.Value):
    """(x, h) when ``split`` cuts x's last axis into two equal halves, ``low`` then ``high``."""
    x = split.inputs[0]
    if split.domain != "" or x is None or x.shape is None or list(split.outputs) != [low, high]:
        return None
    width = x.shape.dims[-1]
    if not isinstance(width, int) or width % 2 or not _last_axis(split.attributes.get_int("axis", 0), len(x.shape)):
        return None
    sizes = constant_ints(split.inputs[1]) if len(split.inputs) > 1 and split.inputs[1] is not None else split.attributes.get_ints("split")
    if sizes is not None and list(sizes) != [width // 2] * 2:
        return None
    return x, width // 2


def _sliced_halves(low: ir.Node | None, high: ir.Node | None):
    """(x, h) when ``low`` is x[..., 0:h] and ``high`` x[..., h:] over the last axis, h half of it."""
    bounds = [_slice_bounds(node) for node in (low, high)]
    if bounds[0] is None or bounds[1] is None or bounds[0][0] is not bounds[1][0]:
        return None
    x, (low_start, low_end), (high_start, high_end) = bounds[0][0], bounds[0][1], bounds[1][1]
    width = x.shape.dims[-1]
    if not isinstance(width, int) or width % 2:
        return None
    half = width // 2
    if low_start != 0 or low_end != half or high_start != half or high_end < width:
        return None
    return x, half


def _slice_bounds(node: ir.Node | None):
    """(x, (start, end)) of a step-1 Slice over x's last axis with known bounds."""
    if node is None or node.op_type != "Slice" or node.domain != "" or len(node.inputs) < 4:
        return None
    x = node.inputs[0]
    starts, ends = shape_entries(node.inputs[1]), shape_entries(node.inputs[2])
    axes = constant_ints(node.inputs[3])
    steps = constant_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
    if x is None or x.shape is None or None in (starts, ends, axes, steps):
        return None
    if len(axes) != 1 or not _last_axis(axes[0], len(x.shape)) or steps != [1]:
        return None
    if len(starts) != 1 or len(ends) != 1 or not isinstance(starts[0], int) or not isinstance(ends[0], int):
        return None
    return x, (starts[0], ends[0])


def _gathered_table(value: ir.Value):
    """(table, position_ids) when ``value`` is the table's rows at position_ids with a head axis: (batch, 1, seq, width)."""
    unsqueeze = value.producer()
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or unsqueeze.domain != "" or _unsqueeze_axes(unsqueeze) != [1]:
        return None
    gather = unsqueeze.inputs[0].producer() if unsqueeze.inputs[0] is not None else None
    if gather is None or gather.domain != "" or len(gather.inputs) != 2:
        return None
    table, indices = gather.inputs
    if gather.op_type == "Gather" and gather.attributes.get_int("axis", 0) == 0:
        position_ids = indices
    elif gather.op_type == "GatherND" and gather.attributes.get_int("batch_dims", 0) == 0:
        index_node = indices.producer() if indices is not None else None
        if index_node is None or index_node.op_type != "Unsqueeze" or index_node.domain != "":
            return None
        position_ids = index_node.inputs[0]
        if position_ids is None or position_ids.shape is None or _unsqueeze_axes(index_node) not in ([-1], [len(position_ids.shape)]):
            return None
    else:
        return None
    if (position_ids is None or position_ids.shape is None or len(position_ids.shape) != 2
            or not isinstance(position_ids.type, ir.TensorType) or position_ids.type.dtype != ir.DataType.INT64):
        return None
    return table, position_ids


def _unsqueeze_axes(node: ir.Node) -> list[int] | None:
    axes = node.attributes.get_ints("axes")
    if axes is None and len(node.inputs) > 1:
        axes = constant_ints(node.inputs[1])
    return None if axes is None else list(axes)


def _rotary_input(x: ir.Value, half: int) -> bool:
    return (x.shape is not None and len(x.shape) == 4 and x.shape.dims[3] == 2 * half
            and isinstance(x.type, ir.TensorType) and x.type.dtype in _FLOATS)


def _rotary_table(table: ir.Value, x: ir.Value, half: int) -> bool:
    """A constant (max_position, 2h) table in x's type whose halves are equal."""
    if not is_constant(table) or table.const_value.dtype != x.type.dtype:
        return False
    array = constant_array(table)
    return array.ndim == 2 and array.shape[1] == 2 * half and np.array_equal(array[:, :half], array[:, half:])


def _half_table(graph: ir.Graph, table: ir.Value, made: dict[int, ir.Value], names: UniqueNames) -> ir.Value:
    """``table[:, :h]`` as an initializer of ``graph`` (one per table)."""
    if id(table) not in made:
        array = constant_array(table)
        half = np.ascontiguousarray(array[:, : array.shape[1] // 2])
        value = ir.Value(name=names.fresh(f"{table.name}_rotary_half"), const_value=ir.Tensor(half), type=table.type,
                         shape=ir.Shape(list(half.shape)))
        graph.register_initializer(value)
        made[id(table)] = value
    return made[id(table)]
