"""Skip-LayerNorm fusion: a residual Add feeding a LayerNormalization becomes com.microsoft SkipLayerNormalization.

``LayerNormalization(Add(a, b), gamma, beta)`` over the last axis, with constant 1-D gamma/beta,
``a`` and ``b`` of one 2-D or 3-D shape and only the normalized output read, becomes
``SkipLayerNormalization(a, b, gamma, beta)``; the same after an RMSNorm
(SimplifiedLayerNormalization) becomes SkipSimplifiedLayerNormalization. When the sum is read
elsewhere too (the residual stream), the fused node's fourth output hands it over. When ``a``
(or ``b``) is itself ``Add(t, bias)`` with a constant 1-D ``bias`` of the hidden size read only
there (a dense layer's bias), that bias becomes the fused node's bias input and ``t`` its input.
onnxruntime: SkipLayerNormFusion.
"""

from __future__ import annotations

import onnx_ir as ir

from .matching import constant_vector, only_reader
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel

_FUSED = {"LayerNormalization": "SkipLayerNormalization", "SimplifiedLayerNormalization": "SkipSimplifiedLayerNormalization"}


class SkipLayerNormFusion(GraphPass):
    """Folds the residual Add before a (simplified) LayerNormalization into its Skip form."""

    name = "skip_layer_norm_fusion"
    ort_names = ("SkipLayerNormFusion",)
    level = OptimizationLevel.EXTENDED
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        fused = 0
        for norm in [node for node in graph if node.op_type in _FUSED and node.domain == ""]:
            add = norm.inputs[0].producer() if norm.inputs and norm.inputs[0] is not None else None
            if add is None or add.graph is not graph or not _fusable(add, norm):
                continue
            _fuse(graph, add, norm, context)
            fused += 1
        return fused


def _fusable(add: ir.Node, norm: ir.Node) -> bool:
    if add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2 or any(v is None for v in add.inputs):
        return False
    first, second = add.inputs
    if first.shape is None or second.shape is None or len(first.shape) not in (2, 3):
        return False
    if list(first.shape.dims) != list(second.shape.dims) or not _same_float_type(first, second):
        return False
    axis = norm.attributes.get_int("axis", -1)
    if axis not in (-1, len(first.shape) - 1):
        return False
    params = norm.inputs[1:]
    if not params or not all(constant_vector(value) for value in params):
        return False
    return all(not output.uses() and not output.is_graph_output() for output in norm.outputs[1:])


def _dense_bias(value: ir.Value, other: ir.Value) -> tuple[ir.Node, ir.Value, ir.Value] | None:
    """(the Add, t, bias) when ``value`` is ``Add(t, bias)`` read only by the residual Add, with a
    constant 1-D bias of the hidden size and ``t`` shaped as the residual's ``other`` operand."""
    node = value.producer()
    if node is None or node.op_type != "Add" or node.domain != "" or len(node.inputs) != 2 or only_reader(value) is None:
        return None
    hidden = value.shape.dims[-1] if value.shape is not None else None
    for t, bias in (node.inputs, node.inputs[::-1]):
        if (t is not None and constant_vector(bias) and isinstance(hidden, int) and bias.const_value.shape[0] == hidden
                and t.shape is not None and list(t.shape.dims) == list(other.shape.dims) and _same_float_type(t, bias)):
            return node, t, bias
    return None


def _fuse(graph: ir.Graph, add: ir.Node, norm: ir.Node, context: OptimizationContext) -> None:
    context.require_opset("com.microsoft", 1)
    epsilon = norm.attributes.get_float("epsilon", 1e-5)
    first, second = add.inputs
    dense = _dense_bias(first, second) or _dense_bias(second, first)
    inputs, bias = [first, second], []
    if dense is not None:
        bias_add, t, bias_value = dense
        inputs[0 if bias_add.outputs[0] is first else 1] = t
        bias = [bias_value]
    params = list(norm.inputs[1:])
    if bias and norm.op_type == "LayerNormalization" and len(params) == 1:
        params.append(None)  # SkipLayerNormalization's beta slot, before its bias
    fused = ir.Node(
        "com.microsoft", _FUSED[norm.op_type], [*inputs, *params, *bias], num_outputs=4,
        attributes=[ir.AttrFloat32("epsilon", epsilon)], name=f"{norm.name or 'norm'}_skip",
    )
    # Where the Add was: readers of the sum may sit between the Add and the norm (pre-norm blocks
    # take the residual's Shape there); the norm's other inputs are constants, defined anywhere.
    graph.insert_before(add, fused)
    for old, new in ((norm.outputs[0], fused.outputs[0]), (add.outputs[0], fused.outputs[3])):
        new.type, new.shape, name = old.type, old.shape, old.name
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        if name:
            old.name = None  # frees the name for the fused output
            new.name = name
    graph.remove(norm, safe=True)
    graph.remove(add, safe=True)
    if dense is not None:
        graph.remove(dense[0], safe=True)


def _same_float_type(first: ir.Value, second: ir.Value) -> bool:
    return (
        isinstance(first.type, ir.TensorType)
        and first.type == second.type
        and first.type.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16)
    )

