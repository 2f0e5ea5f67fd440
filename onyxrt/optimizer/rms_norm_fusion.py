"""RMSNorm fusion: ``x / sqrt(mean(x**2) + eps) * weight`` becomes one SimplifiedLayerNormalization.

The exported spellings: ``Pow(x, 2)`` → ``ReduceMean`` over the last axis (axes as attribute
or constant input, keepdims=1) → ``Add eps`` → ``Sqrt`` → then either ``Div(x, ·)``, or
``Div(1, ·)``/``Reciprocal`` and ``Mul(x, ·)`` → ``Mul(·, weight)`` with a constant 1-D weight.
The replacement is onnxruntime's SimplifiedLayerNormalization (ONNX domain, its contrib
schema; axis -1, the epsilon found). onnxruntime: SimplifiedLayerNormFusion.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..graph.tensors import constant_array
from .matching import constant_vector, is_constant, only_reader, partner, replace_with, scalar, self_contained
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel


class RmsNormFusion(GraphPass):
    """Replaces the 7-node RMSNorm subgraph (6 with a direct Div) by SimplifiedLayerNormalization."""

    name = "rms_norm_fusion"
    ort_names = ("SimplifiedLayerNormFusion",)
    level = OptimizationLevel.EXTENDED
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        fused = 0
        for power in [node for node in graph if node.op_type == "Pow" and node.domain == ""]:
            match = _match(power, context)
            if match is not None:
                _replace(graph, *match)
                fused += 1
        return fused


def _match(power: ir.Node, context: OptimizationContext):
    """(x, weight, epsilon, pattern nodes, output) when ``power`` starts an RMSNorm, else None."""
    x = power.inputs[0]
    if x is None or len(power.inputs) != 2 or scalar(power.inputs[1]) != 2.0:
        return None
    mean = only_reader(power.outputs[0])
    if mean is None or mean.op_type != "ReduceMean" or not _over_last_axis(mean, x, context):
        return None
    add = only_reader(mean.outputs[0])
    epsilon = scalar(partner(add, mean.outputs[0])) if add is not None and add.op_type == "Add" else None
    sqrt = only_reader(add.outputs[0]) if epsilon is not None else None
    if sqrt is None or sqrt.op_type != "Sqrt":
        return None
    nodes = [power, mean, add, sqrt]
    step = only_reader(sqrt.outputs[0])
    if step is None:
        return None
    if step.op_type == "Div" and step.inputs[0] is x:  # x / sqrt(...)
        normalized = step
    else:
        if step.op_type == "Reciprocal" or (step.op_type == "Div" and scalar(step.inputs[0]) == 1.0):
            nodes.append(step)
            normalized = only_reader(step.outputs[0])
        else:
            return None
        if normalized is None or normalized.op_type != "Mul" or partner(normalized, step.outputs[0]) is not x:
            return None
    nodes.append(normalized)
    scale = only_reader(normalized.outputs[0])
    weight = partner(scale, normalized.outputs[0]) if scale is not None and scale.op_type == "Mul" else None
    if constant_vector(weight):
        nodes.append(scale)
        output = scale.outputs[0]
    else:  # no weight (or one of ones that no-op elimination removed): a weight of ones
        output, weight = normalized.outputs[0], None
        if _last_dim(x) is None:
            return None
    if any(node.domain != "" for node in nodes) or not self_contained(nodes, output):
        return None
    return x, weight or _ones_weight(power.graph, x, output), float(epsilon), nodes, output


def _replace(graph: ir.Graph, x: ir.Value, weight: ir.Value, epsilon: float, nodes: list[ir.Node], output: ir.Value) -> None:
    fused = ir.Node(
        "", "SimplifiedLayerNormalization", [x, weight], num_outputs=1,
        attributes=[ir.AttrInt64("axis", -1), ir.AttrFloat32("epsilon", epsilon)],
        name=f"{nodes[-1].name or 'rms_norm'}_fused",
    )
    replace_with(graph, nodes, output, fused)


def _last_dim(x: ir.Value) -> int | None:
    """``x``'s last dim when it is static and ``x`` a float tensor, else None."""
    if x.shape is None or not x.shape.dims or not isinstance(x.shape.dims[-1], int):
        return None
    if not isinstance(x.type, ir.TensorType) or x.type.dtype not in (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16):
        return None
    return x.shape.dims[-1]


def _ones_weight(graph: ir.Graph, x: ir.Value, output: ir.Value) -> ir.Value:
    """A new initializer of ones as long as ``x``'s last dim, in its type."""
    ones = np.ones(_last_dim(x), dtype=x.type.dtype.numpy())
    value = ir.Value(name=f"{output.name}_rms_weight", const_value=ir.Tensor(ones), type=x.type, shape=ir.Shape([len(ones)]))
    graph.register_initializer(value)
    return value


def _over_last_axis(mean: ir.Node, x: ir.Value, context: OptimizationContext) -> bool:
    keepdims = mean.attributes.get_int("keepdims", 1)
    axes = mean.attributes.get_ints("axes")
    if axes is None and len(mean.inputs) > 1 and mean.inputs[1] is not None:
        value = mean.inputs[1]
        if not is_constant(value):
            return False
        axes = [int(a) for a in constant_array(value).reshape(-1)]
    if keepdims != 1 or axes is None or len(axes) != 1:
        return False
    rank = len(x.shape) if x.shape is not None else None
    return axes[0] == -1 or (rank is not None and axes[0] == rank - 1)

