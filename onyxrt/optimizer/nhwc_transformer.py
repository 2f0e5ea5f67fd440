"""NHWC layout for 8-bit convolution chains: QLinearConv and the quantized ops between such convolutions
run channels-last, so activations are transposed where a chain begins and ends, not around every node.

The integer convolution computes channels-last (its im2col rows and GEMM output are N x H x W x C);
in NCHW it transposes its input and its output on every call (on resnet50's QDQ form, about a
sixth of the run). Here every 2-D ONNX QLinearConv becomes com.microsoft QLinearConv with
``channels_last = 1``; then, in graph order, ops whose 8-bit data inputs all come out of such
nodes follow them: com.microsoft QLinearAdd / QLinearMul (elementwise: both operands permuted
alike broadcast alike), QLinearSigmoid / QLinearLeakyRelu (tables applied per byte), QLinearConcat
(its axis moved with the layout), MaxPool on 8-bit data (com.microsoft NhwcMaxPool) and
QLinearGlobalAveragePool / QLinearAveragePool (their ``channels_last``). A Transpose to NHWC is inserted once per value
entering a chain, one back to NCHW once per value leaving it (read by another op, or a graph
output, which keeps its name). A convolution whose input and readers all stay NCHW is left as it
is: converting it alone would only move its transposes into nodes.

Results are the same bytes: each kernel computes the same values in the other layout.
onnxruntime: NhwcTransformer (level LAYOUT, CPU provider).
"""

from __future__ import annotations

import onnx_ir as ir

from ..graph.builder import UniqueNames
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel
from .qdq_matching import is_eight_bit

_MICROSOFT = "com.microsoft"
_TO_NHWC = [0, 2, 3, 1]
_TO_NCHW = [0, 3, 1, 2]
# com.microsoft ops that follow a chain: their 8-bit data inputs (positions)
_FOLLOWERS = {"QLinearAdd": (0, 3), "QLinearMul": (0, 3), "QLinearSigmoid": (0,), "QLinearLeakyRelu": (0,),
              "QLinearGlobalAveragePool": (0,), "QLinearAveragePool": (0,)}
_LAYOUT_ATTRIBUTE = ("QLinearConv", "QLinearGlobalAveragePool", "QLinearAveragePool")  # the others: elementwise


class NhwcTransformer(GraphPass):
    """Runs chains of 8-bit convolutions and the quantized ops between them channels-last."""

    name = "nhwc_transformer"
    ort_names = ("NhwcTransformer",)
    level = OptimizationLevel.LAYOUT
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        chosen = _choose(graph)
        if not chosen:
            return 0
        context.require_opset(_MICROSOFT, 1)
        _Rewrite(graph, UniqueNames(graph)).apply(chosen)
        return len(chosen)


def _rank(value: ir.Value | None) -> int | None:
    return len(value.shape) if value is not None and value.shape is not None else None


def _anchor(node: ir.Node) -> bool:
    """A 2-D ONNX QLinearConv (4-D filter)."""
    if node.op_type != "QLinearConv" or node.domain != "" or len(node.inputs) < 8:
        return False
    w = node.inputs[3]
    return (w is not None and w.shape is not None and len(w.shape) == 4) or _rank(node.inputs[0]) == 4


def _data_positions(node: ir.Node) -> tuple[int, ...] | None:
    """The data inputs through which ``node`` can follow a channels-last chain, else None."""
    if node.domain == _MICROSOFT and node.op_type == "QLinearConcat":
        axis = node.attributes.get_int("axis", None)
        if axis is None or not -4 <= axis < 4 or len(node.inputs) < 5 or (len(node.inputs) - 2) % 3:
            return None
        return tuple(range(2, len(node.inputs), 3))
    if node.domain == _MICROSOFT and node.op_type in _FOLLOWERS:
        if node.op_type in _LAYOUT_ATTRIBUTE and node.attributes.get_int("channels_last", 0):
            return None
        return _FOLLOWERS[node.op_type]
    if node.op_type == "MaxPool" and node.domain == "" and len(node.outputs) == 1 and is_eight_bit(node.inputs[0]):
        return (0,)
    return None


def _choose(graph: ir.Graph) -> dict[ir.Node, tuple[int, ...]]:
    """The nodes to run channels-last, each with its data input positions, in graph order."""
    chosen: dict[ir.Node, tuple[int, ...]] = {}
    for node in graph:
        if _anchor(node):
            chosen[node] = (0,)
            continue
        positions = _data_positions(node)
        if positions and all(len(node.inputs) > i and node.inputs[i] is not None
                             and node.inputs[i].producer() in chosen for i in positions):
            chosen[node] = positions
    # a convolution alone (fed and read in NCHW) gains nothing
    for node in [n for n in chosen if _anchor(n)]:
        fed = node.inputs[0].producer() in chosen
        read = any(use.node in chosen for use in node.outputs[0].uses())
        if not fed and not read:
            del chosen[node]
    return chosen


class _Rewrite:
    def __init__(self, graph: ir.Graph, names: UniqueNames) -> None:
        self.graph = graph
        self.names = names
        self.nhwc: dict[ir.Value, ir.Value] = {}  # an NCHW value -> its NHWC form

    def apply(self, chosen: dict[ir.Node, tuple[int, ...]]) -> None:
        replacements = []
        for node, positions in chosen.items():
            inputs = list(node.inputs)
            for i in positions:
                inputs[i] = self._as_nhwc(inputs[i], node)
            replacement = self._channels_last_node(node, inputs)
            self.graph.insert_before(node, replacement)
            self.nhwc[node.outputs[0]] = replacement.outputs[0]
            replacements.append((node, replacement))
        for node, replacement in replacements:
            self._back_to_nchw(node.outputs[0], replacement, chosen)
        self.graph.remove(list(chosen), safe=True)

    def _as_nhwc(self, value: ir.Value, reader: ir.Node) -> ir.Value:
        if value not in self.nhwc:
            transpose = ir.Node("", "Transpose", [value], attributes=[ir.AttrInt64s("perm", _TO_NHWC)],
                                num_outputs=1, name=self.names.fresh(f"{value.name or 'x'}_to_nhwc"))
            output = transpose.outputs[0]
            output.name = self.names.fresh(f"{value.name or 'x'}_nhwc")
            output.type, output.shape = value.type, _permuted(value.shape, _TO_NHWC)
            self.graph.insert_before(reader, transpose)
            self.nhwc[value] = output
        return self.nhwc[value]

    def _channels_last_node(self, node: ir.Node, inputs: list[ir.Value | None]) -> ir.Node:
        attributes = [attr for attr in node.attributes.values() if attr.name not in ("channels_last", "storage_order")]
        if node.op_type == "MaxPool":
            op_type = "NhwcMaxPool"
        elif node.op_type == "QLinearConcat":  # the same axis, where it now lies
            op_type = node.op_type
            axis = node.attributes.get_int("axis") % 4
            attributes = [ir.AttrInt64("axis", _TO_NHWC.index(axis))]
        else:
            op_type = node.op_type
            if op_type in _LAYOUT_ATTRIBUTE:
                attributes.append(ir.AttrInt64("channels_last", 1))
        replacement = ir.Node(_MICROSOFT, op_type, inputs, attributes=attributes, num_outputs=1,
                              name=self.names.fresh(f"{node.name or node.op_type}_nhwc"))
        output, result = replacement.outputs[0], node.outputs[0]
        output.name = self.names.fresh(f"{result.name or 'y'}_nhwc")
        output.type, output.shape = result.type, _permuted(result.shape, _TO_NHWC)
        return replacement

    def _back_to_nchw(self, result: ir.Value, replacement: ir.Node, chosen) -> None:
        """Readers of ``result`` outside the chain (and a graph output) read a transpose of the NHWC form."""
        if all(use.node in chosen for use in result.uses()) and not result.is_graph_output():
            return
        transpose = ir.Node("", "Transpose", [replacement.outputs[0]], attributes=[ir.AttrInt64s("perm", _TO_NCHW)],
                            num_outputs=1, name=self.names.fresh(f"{result.name or 'y'}_to_nchw"))
        self.graph.insert_after(replacement, transpose)
        output = transpose.outputs[0]
        output.type, output.shape = result.type, result.shape
        name = result.name
        # (the chain's own readers of ``result`` read it too now; they are removed with it)
        result.replace_all_uses_with(output, replace_graph_outputs=True)
        if name is not None:
            result.name = self.names.fresh(f"{name}_replaced")
            output.name = name


def _permuted(shape: ir.Shape | None, perm: list[int]) -> ir.Shape | None:
    if shape is None or len(shape) != len(perm):
        return None
    return ir.Shape([shape[axis] for axis in perm])
