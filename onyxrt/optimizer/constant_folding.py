"""Constant folding: evaluate nodes whose inputs are all constants, once, at load time.

Follows onnxruntime's ``ConstantFolding`` transformer: deterministic ops of the ONNX
domain (and com.microsoft's QuantizeLinear/DequantizeLinear) whose inputs are all
constant initializers are evaluated with the session's constant evaluator and replaced
by initializers; a ``Shape`` node whose input has a static shape becomes its shape, and a
``Gather`` or ``Slice`` of a ``Shape`` that picks only static dims of a partly dynamic shape
becomes those dims (the shape arithmetic exporters emit for head sizes and hidden widths).
Not folded:

* nodes with subgraphs (the manager folds inside the subgraphs instead);
* initializers that are also graph inputs: a caller may override them;
* ``DequantizeLinear``, unless the context says ``fold_dequantize_linear`` or the whole
  QDQ node unit ``DQ -> X -> Q`` folds (as onnxruntime, which keeps QDQ patterns for
  the kernels and providers that fuse them into quantized ops);
* nodes whose outputs exceed ``context.max_folded_bytes`` *and* are larger than their
  inputs (see :data:`~.pass_manager.DEFAULT_MAX_FOLDED_BYTES`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import onnx_ir as ir

from ..graph.tensors import constant_array, from_array
from ..graph.builder import has_subgraphs
from .matching import is_constant, only_reader
from .pass_manager import GraphPass, OptimizationContext
from .shape_values import shape_entries

# onnxruntime's list (optimizer/utils.cc), plus Bernoulli, which is random as well.
_NON_DETERMINISTIC = frozenset(
    {"RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike", "Multinomial", "Bernoulli", "Dropout"}
)
_MICROSOFT_DETERMINISTIC = frozenset({"QuantizeLinear", "DequantizeLinear"})


class ConstantFolding(GraphPass):
    """Replaces constant-input nodes by initializers holding their outputs (see the module docstring)."""

    name = "constant_folding"
    ort_names = ("ConstantFolding",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        folded = 0
        for node in list(graph):
            arrays = _static_shape(node) if _is_shape(node) else _evaluate(node, context) or _static_dims_picked(node)
            if arrays is None:
                continue
            tensors = [from_array(array, output.name) for output, array in zip(node.outputs, arrays)]
            if not _matches_declared_types(node, tensors):
                continue  # a kernel that disagrees with the model's types: leave it to run time
            _replace_by_initializers(graph, node, tensors)
            folded += 1
        return folded


def _is_shape(node: ir.Node) -> bool:
    return node.op_type == "Shape" and node.domain == ""


def _static_shape(node: ir.Node) -> list[np.ndarray] | None:
    """A Shape node's output when its input's shape is static, else None."""
    value = node.inputs[0] if node.inputs else None
    if value is None or value.shape is None or not value.shape.is_static():
        return None
    dims = [int(dim) for dim in value.shape]
    # Shape-15's start/end slice as Python slices do (negative from the end, clamped).
    start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", len(dims))
    return [np.array(dims[start:end], dtype=np.int64)]


def _static_dims_picked(node: ir.Node) -> list[np.ndarray] | None:
    """A Gather (axis 0) or Slice of a Shape node's output that selects only static dims: those dims, else None."""
    if node.domain != "" or node.op_type not in ("Gather", "Slice") or not node.inputs or node.inputs[0] is None:
        return None
    shape_node = node.inputs[0].producer()
    if shape_node is None or not _is_shape(shape_node):
        return None
    dims = shape_entries(node.outputs[0])
    if dims is None or not all(isinstance(dim, int) for dim in dims):
        return None
    shape = np.shape(constant_array(node.inputs[1])) if node.op_type == "Gather" else (len(dims),)
    return [np.array(dims, dtype=np.int64).reshape(shape)]


def _evaluate(node: ir.Node, context: OptimizationContext) -> list[np.ndarray] | None:
    """The node's output arrays when it may be folded and the evaluator computes them, else None."""
    if not _deterministic(node) or not all(value is None or is_constant(value) for value in node.inputs):
        return None
    if has_subgraphs(node):
        return None
    if _is_dequantize(node) and not context.fold_dequantize_linear and not _qdq_unit_folds(node):
        return None
    input_bytes = sum(value.const_value.nbytes for value in node.inputs if value is not None)
    limit = max(context.max_folded_bytes, input_bytes)
    if _declared_output_bytes(node) > limit:
        return None
    inputs = [None if value is None else constant_array(value) for value in node.inputs]
    outputs = context.evaluator(node, context.opset(node), inputs)
    if outputs is None or len(outputs) != len(node.outputs):
        return None
    if not all(isinstance(array, (np.ndarray, np.generic)) for array in outputs):
        return None  # a sequence or an optional: not an initializer
    arrays = [np.asarray(array) for array in outputs]
    if sum(array.nbytes for array in arrays) > limit:
        return None
    return arrays


def _deterministic(node: ir.Node) -> bool:
    if node.domain == "":
        return node.op_type not in _NON_DETERMINISTIC
    if node.domain == "com.microsoft":
        return node.op_type in _MICROSOFT_DETERMINISTIC
    return False  # unknown domains: their ops may be anything (as onnxruntime assumes)


def _is_dequantize(node: ir.Node) -> bool:
    return node.op_type == "DequantizeLinear" and node.domain in ("", "com.microsoft")


def _qdq_unit_folds(dequantize: ir.Node) -> bool:
    """Whether ``DQ -> X -> Q`` folds whole: DQ's only reader X (one input, one output) feeds only a Q whose other inputs are constant."""
    middle = only_reader(dequantize.outputs[0])
    if middle is None or len(middle.inputs) != 1 or len(middle.outputs) != 1:
        return False
    if not _deterministic(middle) or has_subgraphs(middle):
        return False
    quantize = only_reader(middle.outputs[0])
    return (
        quantize is not None
        and quantize.op_type == "QuantizeLinear"
        and _deterministic(quantize)
        and all(value is None or is_constant(value) for value in quantize.inputs[1:])
    )


def _declared_output_bytes(node: ir.Node) -> int:
    """Bytes of the outputs whose type and static shape are declared (0 for the others)."""
    total = 0
    for value in node.outputs:
        if (
            isinstance(value.type, ir.TensorType)
            and value.type.dtype not in (ir.DataType.UNDEFINED, ir.DataType.STRING)  # strings: no fixed width
            and value.shape is not None
            and value.shape.is_static()
        ):
            total += math.ceil(math.prod(int(dim) for dim in value.shape) * value.type.dtype.itemsize)
    return total


def _matches_declared_types(node: ir.Node, tensors: Sequence[ir.TensorProtocol]) -> bool:
    """Whether each tensor fits its output's declared type (a tensor of that element type), where declared."""
    for value, tensor in zip(node.outputs, tensors):
        if value.type is None:
            continue
        if not isinstance(value.type, ir.TensorType) or value.type.dtype != tensor.dtype:
            return False
    return True


def _replace_by_initializers(graph: ir.Graph, node: ir.Node, tensors: Sequence[ir.TensorProtocol]) -> None:
    """Every reader of ``node``'s outputs (graph outputs included) reads a new initializer of the same name."""
    for output, tensor in zip(node.outputs, tensors):
        if not output.uses() and not output.is_graph_output():
            continue
        constant = ir.Value(
            name=output.name, type=ir.TensorType(tensor.dtype), shape=ir.Shape(tensor.shape), const_value=tensor
        )
        output.replace_all_uses_with(constant, replace_graph_outputs=True)
        graph.register_initializer(constant)
    graph.remove(node, safe=True)
