"""Float16 and bfloat16 computation moved to float32, as onnxruntime's CPU provider runs it.

onnxruntime's CPU kernels have float32 implementations only (a few exceptions aside), so its
``InsertCastTransformer`` casts a float16 node's inputs to float32 and its outputs back, and
``RemoveDuplicateCastTransformer`` then drops each back-and-forth Cast pair between two such
nodes (it treats every float type as one group): a float16 model runs in float32 between its
float16 inputs, outputs and initializers, and its values are not rounded to float16 in between.
This pass does the same in one step, for float16 and bfloat16 alike: every node of a known
type-generic op (:data:`_GENERIC`) that reads or writes such values computes in float32 instead;
low-precision constants it reads become float32 initializers; a ``Cast`` to a low-precision
type whose readers all compute in float32 casts to float32 instead (the model's own
``keep_io_types`` Casts: the float32 inputs then reach the first nodes unrounded, as in
onnxruntime), and ``Constant`` / ``ConstantOfShape`` values become float32. A Cast back to the
original type is inserted before every reader that stays low-precision — graph outputs (which
keep their names and types), ops outside the list, nodes of other graphs; a ``Cast``, ``Shape`` or
``Size`` reading a converted value reads its float32 form — and a Cast to
float32 after every low-precision value such a node, a graph input or an overridable
initializer gives the converted nodes.

Why: numpy computes float16 element by element through float32 conversions (minilm_l6 in
float16 took 207 ms against 30 ms in float32 on 2 cores), and the float32 fusions (attention,
LayerNorm, GELU) only match float32 graphs. Results are those of the float32 computation,
rounded once where a low-precision value leaves the region: closer to float32 than strict
per-node float16 rounding, and what onnxruntime computes. Ops whose results depend on the type
beyond its precision (quantization, random generators, ``EyeLike``...) and ops with discrete
results (comparisons, rounding, indices) stay as they are, reading float16.
onnxruntime: InsertCastTransformer, RemoveDuplicateCastTransformer.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..graph.builder import UniqueNames, has_subgraphs
from ..graph.tensors import constant_array, from_array
from .matching import is_constant, new_initializer
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel

_LOW = frozenset({ir.DataType.FLOAT16, ir.DataType.BFLOAT16})
_MICROSOFT = "com.microsoft"

# Ops whose float16/bfloat16 results are their float32 results rounded: elementwise arithmetic,
# activations, products, normalizations, reductions, pooling and data movement. Left out: comparisons,
# rounding and index-valued ops (Equal, Floor, ArgMax, TopK, IsInf...), whose discrete results could
# change where a value rounds differently (70000 is finite in float32, inf in float16): they keep
# reading float16 values.
_GENERIC = {
    "": frozenset({
        "Abs", "Acos", "Acosh", "Add", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "BatchNormalization",
        "CastLike", "Celu", "Clip", "Concat", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace",
        "Div", "Dropout", "Einsum", "Elu", "Erf", "Exp", "Expand", "Flatten", "Gather", "GatherElements", "GatherND",
        "Gelu", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "GroupNormalization", "HardSigmoid", "HardSwish",
        "Identity", "InstanceNormalization", "IsNaN", "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax",
        "LpNormalization", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mish", "Mul", "Neg", "Pad", "Pow", "PRelu",
        "RMSNormalization", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
        "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Selu",
        "Sigmoid", "SimplifiedLayerNormalization", "Sin", "Sinh", "Slice", "Softmax", "Softplus", "Softsign",
        "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile",
        "Transpose", "Trilu", "Unsqueeze", "Where",
    }),
    _MICROSOFT: frozenset({
        "BiasGelu", "FastGelu", "FusedMatMul", "Gelu", "QuickGelu", "SimplifiedLayerNormalization",
        "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
    }),
}
# Ops creating values of a type their attribute names: converted by rewriting the attribute
_CREATORS = frozenset({"Cast", "Constant", "ConstantOfShape"})
# Ops reading any type alike: they read a converted value's float32 form (never converted for a value
# entering from outside: a Cast there would be all they gained)
_ANY_TYPE_READERS = frozenset({"Cast", "Shape", "Size"})


class Float16ToFloat32(GraphPass):
    """Float16/bfloat16 nodes compute in float32; casts only where low-precision values enter or leave."""

    name = "Float16ToFloat32"
    ort_names = ("InsertCastTransformer", "RemoveDuplicateCastTransformer")
    level = OptimizationLevel.BASIC

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        converted = [node for node in graph if _generic(node) and _touches_low(node)]
        region = set(map(id, converted))  # nodes whose low-precision outputs become float32
        creators = [node for node in graph if node.domain == "" and node.op_type in _CREATORS
                    and _creates_low(node) and _all_readers_in(node.outputs[0], region)]
        if not converted and not creators:
            return 0
        region.update(map(id, creators))
        # readers taking the float32 form as it is: a Cast (no round trip through low precision), Shape, Size
        readers = set(region)
        readers.update(id(node) for node in graph if node.domain == "" and node.op_type in _ANY_TYPE_READERS
                       and node.inputs and _is_low(node.inputs[0]) and _produced_in(node.inputs[0], region))
        names = UniqueNames(graph)
        entries: dict[int, ir.Value] = {}  # a low-precision value entering the region -> its float32 form
        for node in converted:
            for index, value in enumerate(node.inputs):
                if _is_low(value) and not _produced_in(value, region):
                    node.replace_input_with(index, _entering(graph, names, value, entries))
        for node in creators:
            _retype_creator(node)
        for node in converted + creators:
            for value in node.outputs:
                if _is_low(value):
                    _leave_as_float32(graph, names, value, readers)
        return len(converted) + len(creators)


def _generic(node: ir.Node) -> bool:
    ops = _GENERIC.get(node.domain)
    return ops is not None and node.op_type in ops and not has_subgraphs(node)


def _is_low(value: ir.Value | None) -> bool:
    return value is not None and isinstance(value.type, ir.TensorType) and value.type.dtype in _LOW


def _touches_low(node: ir.Node) -> bool:
    """Whether ``node`` reads or writes a low-precision value, every value it touches being of a known type (a
    value of unknown type could be low-precision too, and the node would then mix types)."""
    values = [v for v in node.inputs if v is not None] + list(node.outputs)
    if any(not isinstance(v.type, ir.TensorType) for v in values):
        return False
    return any(v.type.dtype in _LOW for v in values)


def _creates_low(node: ir.Node) -> bool:
    return len(node.outputs) == 1 and _is_low(node.outputs[0])


def _produced_in(value: ir.Value, members: set[int]) -> bool:
    producer = value.producer()
    return producer is not None and id(producer) in members


def _all_readers_in(value: ir.Value, members: set[int]) -> bool:
    uses = value.uses()
    return bool(uses) and not value.is_graph_output() and all(id(use.node) in members for use in uses)


def _entering(graph: ir.Graph, names: UniqueNames, value: ir.Value, entries: dict[int, ir.Value]) -> ir.Value:
    """``value``'s float32 form for the converted nodes: a float32 initializer for a constant, else a
    Cast after its producer (or at the graph's start), made once."""
    known = entries.get(id(value))
    if known is not None:
        return known
    base = value.name or "value"
    if is_constant(value) and value.graph is graph:
        result = new_initializer(graph, names, f"{base}_float32", np.asarray(constant_array(value), np.float32))
    else:
        cast = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", ir.DataType.FLOAT)],
                       num_outputs=1, name=names.fresh(f"{base}_to_float32"))
        result = cast.outputs[0]
        result.name = names.fresh(f"{base}_float32")
        result.type, result.shape = ir.TensorType(ir.DataType.FLOAT), value.shape
        producer = value.producer()
        if producer is not None and producer.graph is graph:
            graph.insert_after(producer, cast)
        elif len(graph):
            graph.insert_before(next(iter(graph)), cast)
        else:
            graph.append(cast)
    entries[id(value)] = result
    return result


def _leave_as_float32(graph: ir.Graph, names: UniqueNames, value: ir.Value, readers: set[int]) -> None:
    """Make ``value`` (a converted node's output) float32; nodes other than ``readers`` and graph outputs get
    the low-precision value back through a Cast, which takes over the name of a graph output."""
    low = value.type.dtype
    value.type = ir.TensorType(ir.DataType.FLOAT)
    outside = [use for use in value.uses() if id(use.node) not in readers]
    if not outside and not value.is_graph_output():
        return
    name = value.name
    cast = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", low)], num_outputs=1,
                   name=names.fresh(f"{name or 'value'}_to_{low.name.lower()}"))
    back = cast.outputs[0]
    back.type, back.shape = ir.TensorType(low), value.shape
    graph.insert_after(value.producer(), cast)
    for use in outside:
        use.node.replace_input_with(use.idx, back)
    if value.is_graph_output():
        outputs = graph.outputs
        for index, output in enumerate(outputs):
            if output is value:
                outputs[index] = back
        value.name = names.fresh(f"{name}_float32")
        back.name = name
    else:
        back.name = names.fresh(f"{name}_{low.name.lower()}")


def _retype_creator(node: ir.Node) -> None:
    """A Cast to a low-precision type casts to float32; a Constant's or ConstantOfShape's low-precision value
    becomes float32."""
    if node.op_type == "Cast":
        node.attributes["to"] = ir.AttrInt64("to", ir.DataType.FLOAT)
        return
    attr = node.attributes.get("value")
    if attr is None or attr.type != ir.AttributeType.TENSOR:
        return
    array = np.asarray(attr.as_tensor().numpy(), np.float32)
    node.attributes["value"] = ir.AttrTensor("value", from_array(array, attr.as_tensor().name))
