"""LayerNorm fusion: the reduce spelling of layer normalization becomes one LayerNormalization.

``d = x - ReduceMean(x)`` → ``Pow(d, 2)`` or ``Mul(d, d)`` → ``ReduceMean`` → ``Add eps`` →
``Sqrt`` → ``Div(d, ·)`` (or ``Reciprocal``/``Div(1, ·)`` and ``Mul(d, ·)``) → optional
``Mul γ`` → optional ``Add β`` becomes ``LayerNormalization(x, γ, β, axis, epsilon)``.
The TorchScript fp16 spelling — ``Cast`` to float32 before the first ReduceMean and ``Cast``
back after the division — fuses too, the LayerNormalization reading the fp16 input (it
computes in float32 anyway, stash_type 1).

Preconditions: both ReduceMeans reduce the same trailing axes (attribute, or constant input at
opset 18+) with keepdims 1; ``eps`` a one-element float constant; γ and β constants whose
shape (leading 1s aside) is the normalized dims, these dims known where they are not
symbolic (a missing γ needs them all known, for a weight of ones); every intermediate value
read only inside the pattern and no graph output; float32/float16 data. The result is the
ONNX op (opset 17+) or, below 17, onnxruntime's own LayerNormalization-1 registered in the
ONNX domain — what onnxruntime's LayerNormFusion writes in both cases.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..graph.builder import UniqueNames
from ..graph.tensors import constant_array
from .matching import is_constant, new_initializer, only_reader, partner, replace_with, scalar, self_contained
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel

_NORMALIZED_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


class LayerNormFusion(GraphPass):
    """Replaces the reduce-mean spelling of LayerNorm (7 to 12 nodes) by one LayerNormalization."""

    name = "layer_norm_fusion"
    ort_names = ("LayerNormFusion",)
    level = OptimizationLevel.EXTENDED
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        fused = 0
        names = UniqueNames(graph)
        for mean in [node for node in graph if node.op_type == "ReduceMean" and node.domain == ""]:
            if mean.graph is not graph:  # removed by an earlier match of this run
                continue
            match = _match(mean)
            if match is not None:
                _replace(graph, match, names)
                fused += 1
        return fused


class _Match:
    def __init__(self, x: ir.Value, axes: list[int], epsilon: float, nodes: list[ir.Node], output: ir.Value,
                 gamma: ir.Value | None, beta: ir.Value | None) -> None:
        self.x, self.axes, self.epsilon, self.nodes, self.output = x, axes, epsilon, nodes, output
        self.gamma, self.beta = gamma, beta


def _match(mean: ir.Node) -> _Match | None:
    x = mean.inputs[0]
    axes = _reduced_axes(mean)
    if x is None or axes is None:
        return None
    sub = _reader(mean.outputs[0], "Sub")
    if sub is None or list(sub.inputs) != [x, mean.outputs[0]]:
        return None
    centered = sub.outputs[0]
    readers = {id(use.node): use.node for use in centered.uses()}
    if centered.is_graph_output() or len(readers) != 2:
        return None
    square = next((n for n in readers.values() if _squares(n, centered)), None)
    if square is None:
        return None
    variance = _reader(square.outputs[0], "ReduceMean")
    if variance is None or _reduced_axes(variance) != axes:
        return None
    add = _reader(variance.outputs[0], "Add")
    epsilon = scalar(partner(add, variance.outputs[0])) if add is not None else None
    sqrt = _reader(add.outputs[0], "Sqrt") if epsilon is not None else None
    if sqrt is None:
        return None
    nodes = [mean, sub, square, variance, add, sqrt]
    normalized = _divided(sqrt, centered, nodes)
    if normalized is None or not any(n is normalized.producer() for n in readers.values()):
        return None
    source, normalized = _without_casts(x, normalized, nodes)
    dims = _normalized_shape(source, axes)
    if dims is None:
        return None
    gamma, beta, output = _affine(normalized, nodes, source, dims)
    if gamma is None and not all(isinstance(d, int) for d in dims):
        return None
    if any(node.domain != "" for node in nodes) or not self_contained(nodes, output):
        return None
    return _Match(source, axes, epsilon, nodes, output, gamma, beta)


def _reader(value: ir.Value, op_type: str) -> ir.Node | None:
    node = only_reader(value)
    return node if node is not None and node.op_type == op_type else None


def _squares(node: ir.Node, value: ir.Value) -> bool:
    """``node`` is ``value ** 2`` or ``value * value``."""
    if node.op_type == "Mul":
        return list(node.inputs) == [value, value]
    if node.op_type != "Pow" or len(node.inputs) != 2 or node.inputs[0] is not value or not is_constant(node.inputs[1]):
        return False
    exponent = constant_array(node.inputs[1])
    return exponent.size == 1 and float(exponent.reshape(-1)[0]) == 2.0


def _divided(sqrt: ir.Node, centered: ir.Value, nodes: list[ir.Node]) -> ir.Value | None:
    """``centered / sqrt`` (Div, or Mul by Reciprocal/Div(1, ·)), appending its nodes; else None."""
    step = only_reader(sqrt.outputs[0])
    if step is None:
        return None
    if step.op_type == "Div" and list(step.inputs) == [centered, sqrt.outputs[0]]:
        nodes.append(step)
        return step.outputs[0]
    if not (step.op_type == "Reciprocal" or (step.op_type == "Div" and scalar(step.inputs[0]) == 1.0
                                             and step.inputs[1] is sqrt.outputs[0])):
        return None
    product = _reader(step.outputs[0], "Mul")
    if product is None or partner(product, step.outputs[0]) is not centered:
        return None
    nodes += [step, product]
    return product.outputs[0]


def _without_casts(x: ir.Value, normalized: ir.Value, nodes: list[ir.Node]) -> tuple[ir.Value, ir.Value]:
    """(the LayerNormalization's input, the normalized value) once a Cast pair around the pattern joins it.

    ``x = Cast(x16, FLOAT)`` from float16 with the normalized value cast back to float16: the
    fused node reads ``x16`` and the back Cast joins; the first Cast joins when only the pattern reads it.
    """
    cast_in = x.producer()
    cast_back = only_reader(normalized)
    if cast_in is None or cast_in.op_type != "Cast" or cast_in.domain != "" or cast_back is None:
        return x, normalized
    source = cast_in.inputs[0]
    if cast_back.op_type != "Cast" or cast_back.domain != "" or _dtype(source) != ir.DataType.FLOAT16:
        return x, normalized
    if cast_back.attributes.get_int("to", 0) != ir.DataType.FLOAT16.value or _dtype(x) != ir.DataType.FLOAT:
        return x, normalized
    nodes.append(cast_back)
    only_the_pattern_reads_x = all(any(use.node is node for node in nodes) for use in x.uses()) and not x.is_graph_output()
    if only_the_pattern_reads_x and cast_in.graph is nodes[0].graph:
        nodes.insert(0, cast_in)
    return source, cast_back.outputs[0]


def _affine(normalized: ir.Value, nodes: list[ir.Node], x: ir.Value,
            dims: list) -> tuple[ir.Value | None, ir.Value | None, ir.Value]:
    """(γ, β, the pattern's output): ``Mul γ`` then ``Add β`` after the normalization, each optional.

    Each joins when its other operand is a constant of ``x``'s type spanning the normalized ``dims``.
    """
    gamma = beta = None
    output = normalized
    for op_type in ("Mul", "Add"):
        node = _reader(output, op_type)
        param = partner(node, output) if node is not None else None
        if param is None or node.domain != "" or not _spans(param, x, dims):
            continue
        if op_type == "Mul":
            gamma = param
        else:
            beta = param
        nodes.append(node)
        output = node.outputs[0]
    return gamma, beta, output


def _spans(param: ir.Value, x: ir.Value, dims: list) -> bool:
    """A constant of ``x``'s type whose shape, leading 1s aside, is ``dims`` (a symbolic dim matches any size)."""
    if not is_constant(param) or _dtype(param) != _dtype(x) or len(param.const_value.shape) > len(x.shape):
        return False
    shape = _trimmed(param.const_value.shape)
    return len(shape) == len(dims) and all(not isinstance(d, int) or d == s for d, s in zip(dims, shape))


def _normalized_shape(x: ir.Value, axes: list[int]) -> list | None:
    """The dims of ``x`` that ``axes`` normalize (ints where known), when ``x`` is a float32/float16 of known rank."""
    if _dtype(x) not in _NORMALIZED_TYPES or x.shape is None or len(x.shape) < len(axes):
        return None
    return list(x.shape.dims)[len(x.shape) - len(axes):]


def _replace(graph: ir.Graph, match: _Match, names: UniqueNames) -> None:
    x, axis = match.x, match.axes[0]
    gamma = match.gamma
    if gamma is None:
        ones = np.ones(_normalized_shape(x, match.axes), dtype=x.type.dtype.numpy())
        gamma = new_initializer(graph, names, f"{match.output.name}_scale", ones)
    inputs = [x, _untrimmed(graph, names, gamma, len(match.axes))]
    if match.beta is not None:
        inputs.append(_untrimmed(graph, names, match.beta, len(match.axes)))
    fused = ir.Node(
        "", "LayerNormalization", inputs, num_outputs=1,
        attributes=[ir.AttrInt64("axis", axis), ir.AttrFloat32("epsilon", match.epsilon)],
        name=f"{match.nodes[-1].name or 'layer_norm'}_fused",
    )
    replace_with(graph, match.nodes, match.output, fused)


def _reduced_axes(mean: ir.Node) -> list[int] | None:
    """The axes ``mean`` reduces as negative numbers (trailing and contiguous), when it keeps dims; else None."""
    if mean.attributes.get_int("keepdims", 1) != 1 or not mean.inputs or mean.inputs[0] is None:
        return None
    axes = mean.attributes.get_ints("axes")
    if axes is None and len(mean.inputs) > 1 and mean.inputs[1] is not None:
        if not is_constant(mean.inputs[1]):
            return None
        axes = [int(a) for a in constant_array(mean.inputs[1]).reshape(-1)]
    if not axes:  # none (or empty): every axis, not a LayerNorm over trailing ones we can name
        return None
    x = mean.inputs[0]
    rank = len(x.shape) if x.shape is not None else None
    if any(a >= 0 for a in axes) and rank is None:
        return None
    negative = sorted(a - rank if a >= 0 else a for a in axes)
    if negative != list(range(-len(negative), 0)):
        return None
    return negative


def _trimmed(shape) -> list[int]:
    """``shape`` without its leading 1s (they broadcast away over x's leading dims)."""
    dims = list(shape)
    while dims and dims[0] == 1:
        dims.pop(0)
    return dims


def _untrimmed(graph: ir.Graph, names: UniqueNames, param: ir.Value, rank: int) -> ir.Value:
    """``param`` itself when it has the normalized rank, else a copy reshaped to it (leading 1s dropped)."""
    shape = list(param.const_value.shape)
    if len(shape) == rank:
        return param
    array = constant_array(param)
    return new_initializer(graph, names, f"{param.name}_normalized", array.reshape(array.shape[len(shape) - rank:]))


def _dtype(value: ir.Value | None) -> ir.DataType | None:
    if value is None or not isinstance(value.type, ir.TensorType):
        return None
    return value.type.dtype
