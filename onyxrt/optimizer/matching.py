"""What fusion passes ask of a graph while matching a pattern (single readers, partners, constants),
and the new initializers they add."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir

from ..framework.partitioner import PROVIDER_KEY
from ..graph.builder import UniqueNames
from ..graph.tensors import constant_array, from_array


def only_reader(value: ir.Value) -> ir.Node | None:
    """The node reading ``value`` when it is its single reader and no graph output, else None."""
    uses = value.uses()
    if len(uses) != 1 or value.is_graph_output():
        return None
    return next(iter(uses)).node


def partner(node: ir.Node | None, value: ir.Value) -> ir.Value | None:
    """The other input of a binary ``node`` one of whose inputs is ``value`` (None otherwise)."""
    if node is None or len(node.inputs) != 2:
        return None
    first, second = node.inputs
    return second if first is value else first if second is value else None


def is_constant(value: ir.Value | None) -> bool:
    """An initializer (of this graph or an outer one) that no caller can override."""
    return value is not None and value.is_initializer() and value.const_value is not None and not value.is_graph_input()


def is_float32(value: ir.Value | None) -> bool:
    """A tensor value known to hold float32 (what onnxruntime's CPU fused kernels take)."""
    return value is not None and isinstance(value.type, ir.TensorType) and value.type.dtype == ir.DataType.FLOAT


def is_weight_matrix(value: ir.Value | None) -> bool:
    """A 2-D float32 constant (:func:`is_constant`): a MatMul's weights."""
    return is_constant(value) and value.const_value.dtype == ir.DataType.FLOAT and len(value.const_value.shape) == 2


def pointwise_filter(node: ir.Node) -> tuple[int, ...] | None:
    """The filter's shape of an ONNX Conv or com.microsoft FusedConv that is pointwise: a constant float32 filter of a
    single tap (any rank), group 1, unit strides and dilations, no padding; None for any other node."""
    if (node.domain, node.op_type) not in (("", "Conv"), ("com.microsoft", "FusedConv")) or len(node.inputs) < 2:
        return None
    w = node.inputs[1]
    if not is_constant(w) or not is_float32(w):
        return None
    shape = constant_array(w).shape
    attributes = node.attributes
    if (len(shape) < 3 or any(k != 1 for k in shape[2:]) or attributes.get_int("group", 1) != 1
            or any(v != 1 for v in attributes.get_ints("strides", [1]))
            or any(v != 1 for v in attributes.get_ints("dilations", [1])) or any(attributes.get_ints("pads", [0]))
            or attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID")):
        return None
    return tuple(shape)


def constant_vector(value: ir.Value | None) -> bool:
    """A 1-D constant (:func:`is_constant`): a per-channel weight, bias or scale."""
    return is_constant(value) and len(value.const_value.shape) == 1


def scalar(value: ir.Value | None) -> float | None:
    """The value of a one-element float constant no caller can override, else None."""
    if not is_constant(value):
        return None
    array = constant_array(value)
    if array.size != 1 or array.dtype.kind != "f":
        return None
    return float(np.asarray(array).reshape(-1)[0])


def is_close(value: float | None, expected: float, tolerance: float = 1e-4, *, rounded: bool = False) -> bool:
    """``value`` within ``tolerance`` (relative) of ``expected``; with ``rounded``, also ``expected`` rounded
    to float16 or bfloat16 (a float16 model's constants, which ``Float16ToFloat32`` makes float32 as they
    are), for fused ops that have no parameter to carry the rounded value."""
    if value is None:
        return False
    if abs(value - expected) <= tolerance * abs(expected):
        return True
    return rounded and value in (float(np.float16(expected)), float(ml_dtypes.bfloat16(expected)))


def self_contained(nodes: list[ir.Node], output: ir.Value) -> bool:
    """Whether ``nodes`` (one graph) can be replaced by one node producing ``output``.

    Every other value they produce must be read only inside them and be no graph output.
    """
    graph = nodes[0].graph
    if any(node.graph is not graph for node in nodes):
        return False
    inside = set(map(id, nodes))
    for node in nodes:
        for value in node.outputs:
            if value is output:
                continue
            if value.is_graph_output() or any(id(use.node) not in inside for use in value.uses()):
                return False
    return True


def replace_with(
    graph: ir.Graph, nodes: list[ir.Node], output: ir.Value, fused: ir.Node, anchor: ir.Node | None = None
) -> None:
    """Put ``fused`` in place of ``nodes``: its output takes over ``output``'s readers and name.

    ``fused`` goes where ``anchor`` (default: the first of ``nodes``) was; every input it reads
    must be defined before that point.
    """
    fused.outputs[0].type, fused.outputs[0].shape = output.type, output.shape
    graph.insert_before(anchor or nodes[0], fused)
    name = output.name
    output.replace_all_uses_with(fused.outputs[0], replace_graph_outputs=True)
    graph.remove(nodes, safe=True)  # as one set: the nodes may come in any order
    fused.outputs[0].name = name


def bypass(node: ir.Node, source: ir.Value, graph: ir.Graph) -> bool:
    """Readers of ``node``'s first output read ``source`` instead and ``node`` goes; False when that cannot be done.

    Its other outputs must be unread (Dropout's mask). A graph output's name moves to ``source`` when that is
    a node output of ``graph`` and no graph output itself; otherwise the bypass is refused. ``source`` takes
    the result's type and shape where it has none.
    """
    result = node.outputs[0]
    if any(output.uses() or output.is_graph_output() for output in node.outputs[1:]):
        return False
    keeps_output_name = result.is_graph_output()
    if keeps_output_name:
        producer = source.producer()
        if producer is None or producer.graph is not graph or source.is_graph_output():
            return False
    if source.type is None:
        source.type = result.type
    if source.shape is None and result.shape is not None:
        source.shape = result.shape.copy()
    name = result.name
    result.replace_all_uses_with(source, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    if keeps_output_name:
        source.name = name
    return True


def new_initializer(graph: ir.Graph, names: UniqueNames, base: str, array: np.ndarray) -> ir.Value:
    """``array`` registered as a new initializer of ``graph``, named after ``base`` (made unique)."""
    name = names.fresh(base)
    array = np.ascontiguousarray(array)
    value = ir.Value(name=name, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), shape=ir.Shape(array.shape),
                     const_value=from_array(array, name))
    graph.register_initializer(value)
    return value


_NBITS_ATTRIBUTES = ("K", "bits", "block_size", "accuracy_level", "weight_prepacked")
_NBITS_DEFAULTS = {"bits": 4, "accuracy_level": 0}


def packable(products: list[ir.Node], x: ir.Value) -> bool:
    """Whether ``products`` all read ``x`` and can become one product of their weights side by side
    (:func:`packed_product`): float32 MatMuls by constant matrices of one K, or com.microsoft MatMulNBits of
    constant weights with the same K, bits, block size and accuracy level, zero points alike (all absent or
    all constant of one type), no g_idx and no bias."""
    if not is_float32(x) or any(p.inputs[0] is not x for p in products):
        return False
    if all(p.domain == "" and p.op_type == "MatMul" and len(p.inputs) == 2 for p in products):
        return all(is_weight_matrix(p.inputs[1]) for p in products) and len(
            {constant_array(p.inputs[1]).shape[0] for p in products}) == 1
    if not all(p.domain == "com.microsoft" and p.op_type == "MatMulNBits" for p in products):
        return False
    inputs = [list(p.inputs) + [None] * (6 - len(p.inputs)) for p in products]
    if any(i[4] is not None or i[5] is not None or not (is_constant(i[1]) and is_constant(i[2])) for i in inputs):
        return False  # g_idx or bias
    zero_points = [i[3] for i in inputs]
    if any(z is not None for z in zero_points):
        if not all(is_constant(z) for z in zero_points) or len({constant_array(z).dtype for z in zero_points}) != 1:
            return False
    attributes = [tuple(p.attributes.get_int(name, _NBITS_DEFAULTS.get(name, 0)) for name in _NBITS_ATTRIBUTES)
                  for p in products]
    return len(set(attributes)) == 1 and not attributes[0][-1]


def product_width(product: ir.Node) -> int:
    """N of a MatMul by a constant matrix or of a MatMulNBits."""
    if product.op_type == "MatMulNBits":
        return product.attributes.get_int("N", 0)
    return constant_array(product.inputs[1]).shape[1]


def packed_product(graph: ir.Graph, names: UniqueNames, products: list[ir.Node], base: str) -> ir.Node:
    """One product of ``products``' shared input by their constant weights side by side (in their order;
    :func:`packable` ones), placed before the first of them and assigned to their provider; named after
    ``base``. The caller removes them, then their weights with :func:`drop_unused_initializers`."""
    x = products[0].inputs[0]
    if products[0].op_type == "MatMulNBits":
        product = _packed_nbits(graph, names, products, base)
    else:
        weight = new_initializer(graph, names, f"{base}_weight",
                                 np.concatenate([constant_array(p.inputs[1]) for p in products], axis=1))
        product = ir.Node("", "MatMul", [x, weight], num_outputs=1, name=names.fresh(base))
    product.outputs[0].name = names.fresh(f"{base}_output")
    product.outputs[0].type = x.type
    product.meta[PROVIDER_KEY] = products[0].meta[PROVIDER_KEY]
    order = {id(node): index for index, node in enumerate(graph)}
    graph.insert_before(min(products, key=lambda node: order[id(node)]), product)
    return product


def _packed_nbits(graph: ir.Graph, names: UniqueNames, products: list[ir.Node], base: str) -> ir.Node:
    """MatMulNBits' B, scales and zero points are laid out per output column (row n of B, then n's blocks):
    each concatenates along N."""
    widths = [product_width(p) for p in products]

    def joined(index: int, suffix: str) -> ir.Value:
        parts = [np.asarray(constant_array(p.inputs[index])) for p in products]
        by_column = [part.reshape(width, -1) for part, width in zip(parts, widths)]
        array = np.concatenate(by_column, axis=0)
        shape = (-1,) + parts[0].shape[1:] if index == 1 else (-1,)  # B keeps its (N, blocks, blob) layout
        return new_initializer(graph, names, f"{base}_{suffix}", array.reshape(shape))

    inputs = [products[0].inputs[0], joined(1, "B"), joined(2, "scales")]
    if len(products[0].inputs) > 3 and products[0].inputs[3] is not None:
        inputs.append(joined(3, "zero_points"))
    attributes = [attr for name, attr in products[0].attributes.items() if name != "N"]
    attributes.append(ir.AttrInt64("N", sum(widths)))
    return ir.Node("com.microsoft", "MatMulNBits", inputs, attributes=attributes, num_outputs=1, name=names.fresh(base))


def drop_unused_initializers(graph: ir.Graph, values: list[ir.Value]) -> None:
    """Remove the initializers among ``values`` that nothing reads any more (weights a rewrite replaced)."""
    for value in values:
        if not value.uses() and not value.is_graph_output() and value.name in graph.initializers:
            del graph.initializers[value.name]
