"""Which nodes OpenVINO runs: asked of OpenVINO's ONNX frontend and the device, not from a list of ops.

The free nodes are exported as one ONNX model (:mod:`.onnx_export`), converted with the
frontend's ``convert_partially`` (ops it cannot convert stay as framework nodes) and
queried with ``Core.query_model`` for the device. Each OpenVINO op's output tensors carry
the ONNX value names, so a node is taken when every output it produces comes from ops
the frontend converted and the device supports (including the unnamed ops a node
decomposes into). Before asking, nodes OpenVINO cannot be handed are left out: nodes
with graph attributes (If, Loop, Scan: their bodies are partitioned on their own),
nodes reading or writing strings, sequences or optionals, and the few nodes OpenVINO
is known to compute wrongly (:func:`_miscomputed_by_openvino`); after asking, nodes reading an
untyped value from outside the taken nodes (a region's inputs need types). Where
OpenVINO cannot read the graph at all, it takes nothing and says so in a warning.

Taken nodes are grouped into connected regions (the partitioner splits a region a path
leaves and re-enters). A region doing no arithmetic on data, only shape and constant
bookkeeping (:data:`BOOKKEEPING_OPS`), is left to the CPU provider: as onnxruntime's
OpenVINO provider avoids tiny subgraphs, handing such a region over costs a call into
OpenVINO and copies for no work.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import onnx_ir as ir

from ...framework.logging import default_logger
from ...graph.builder import has_subgraphs
from ..base import connected_groups, is_assigned
from .onnx_export import EMBEDDED_BYTES, ValueNames, border_inputs, export_nodes

# Ops that only move or describe data: a region made of these alone stays on the CPU.
BOOKKEEPING_OPS = frozenset({
    "Constant", "ConstantOfShape", "Shape", "Size", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten",
    "Cast", "Range", "Concat", "Gather", "Slice", "Expand",
})


def supported_regions(graph: ir.Graph, opset_imports: Mapping[str, int], core: Any, device: str) -> list[list[ir.Node]]:
    """Connected groups of ``graph``'s free nodes OpenVINO runs on ``device``, each in graph order."""
    candidates = [node for node in graph if not is_assigned(node) and _can_hand_over(node)]
    if not candidates:
        return []
    try:
        taken = _converted_and_supported(candidates, opset_imports, core, device)
    except Exception as exc:  # OpenVINO's own exception types: the CPU provider runs the graph
        default_logger().warning(f"OpenVINOExecutionProvider takes no nodes of graph '{graph.name}': "
                                 f"OpenVINO could not read them ({exc})")
        return []
    regions = connected_groups(graph, [node for node in candidates if node in taken])
    return [region for region in regions if not all(node.op_type in BOOKKEEPING_OPS and node.domain in ("", "ai.onnx")
                                                    for node in region)]


def _can_hand_over(node: ir.Node) -> bool:
    if has_subgraphs(node) or _miscomputed_by_openvino(node):
        return False
    return all(_is_plain_tensor(value) for value in (*node.inputs, *node.outputs) if value is not None)


def _miscomputed_by_openvino(node: ir.Node) -> bool:
    """Nodes OpenVINO converts but computes wrongly (its own ``compile_model`` on the ONNX backend cases).

    Measured with OpenVINO 2026.4 against the cases' expected outputs: ONNX ``Attention``
    (opset 23; with causal masks, bias masks, local windows: max abs error 0.07-0.16),
    ``LSTM``/``GRU``/``RNN`` with ``layout=1`` (batch-first: its outputs come out in the other
    layout), ``Resize`` with ``antialias``, ``exclude_outside`` or a ``keep_aspect_ratio_policy``
    (errors 0.09-0.5, a wrong output shape), ``BitShift`` (negative numbers, shifts past the
    width), ``DFT`` (an extra axis in a real-input case), ``TopK`` (equal values not in index
    order), and arithmetic on bfloat16 tensors (error 0.5 where the CPU provider's is 0.004).
    """
    if node.domain in ("", "ai.onnx"):
        if node.op_type in ("Attention", "BitShift", "DFT", "TopK"):
            return True
        if node.op_type in ("LSTM", "GRU", "RNN") and _attribute(node, "layout", 0) == 1:
            return True
        if node.op_type == "Resize" and (_attribute(node, "antialias", 0) or _attribute(node, "exclude_outside", 0)
                                         or _attribute(node, "keep_aspect_ratio_policy", "stretch") != "stretch"):
            return True
    return any(isinstance(value.type, ir.TensorType) and value.type.dtype == ir.DataType.BFLOAT16
               for value in (*node.inputs, *node.outputs) if value is not None)


def _attribute(node: ir.Node, name: str, default: Any) -> Any:
    return node.attributes[name].value if name in node.attributes else default


def _is_plain_tensor(value: ir.Value) -> bool:
    """A tensor of a type OpenVINO has, or a value of unknown type (inside a region OpenVINO infers it)."""
    if value.type is None:
        return True
    return isinstance(value.type, ir.TensorType) and value.type.dtype != ir.DataType.STRING


def _typed_borders(taken: set[ir.Node]) -> set[ir.Node]:
    """``taken`` less the nodes reading, from outside it, a value of unknown type (a region input needs one)."""
    changed = True
    while changed:
        changed = False
        for node in list(taken):
            if any(value is not None and value.type is None and value.producer() not in taken for value in node.inputs):
                taken.discard(node)
                changed = True
    return taken


def _converted_and_supported(nodes: Sequence[ir.Node], opset_imports: Mapping[str, int], core: Any,
                             device: str) -> set[ir.Node]:
    """The nodes OpenVINO's frontend converts and ``device`` supports.

    The device cannot be asked about ops after an unconverted one (their types are not
    known there), so nodes the frontend cannot convert are removed and the rest asked again:
    their outputs become typed inputs of the next export.
    """
    taken = _typed_borders(set(nodes))
    while taken:
        ordered = [node for node in nodes if node in taken]
        names = ValueNames()
        converted = _convert_partially(ordered, opset_imports, names)
        unconverted = {name for op in converted.get_ordered_ops() if op.get_type_name() in _FRAMEWORK_OPS
                       for output in op.outputs() for name in output.get_names()}
        if unconverted:
            taken = _typed_borders({node for node in ordered if not _produces(node, unconverted, names)})
            continue
        on_device = set(core.query_model(converted, device))
        unsupported: set[str] = set()  # ONNX value names an op the device lacks produces
        for op in converted.get_ordered_ops():
            if op.get_type_name() in ("Parameter", "Result", "Constant"):
                continue
            tensor_names = {name for output in op.outputs() for name in output.get_names()}
            if tensor_names and not all(part.get_friendly_name() in on_device for part in _decomposition(op)):
                unsupported.update(tensor_names)
        return _typed_borders({node for node in ordered if not _produces(node, unsupported, names)})
    return set()


_FRAMEWORK_OPS = frozenset({"FrameworkNode", "NotSupportedONNXNode"})


def _convert_partially(nodes: Sequence[ir.Node], opset_imports: Mapping[str, int], names: ValueNames) -> Any:
    """``nodes`` as an OpenVINO model, ops the frontend cannot convert left as framework nodes."""
    from openvino.frontend import FrontEndManager

    inputs = border_inputs(nodes)
    constants = {value: value.const_value for value in inputs
                 if value.is_initializer() and not value.is_graph_input() and value.const_value is not None
                 and value.const_value.nbytes <= EMBEDDED_BYTES}
    outputs = [value for node in nodes for value in node.outputs if value is not None and (value.name or value.uses())]
    model = export_nodes(nodes, inputs, outputs, opset_imports, names, constants)
    frontend = FrontEndManager().load_by_framework("onnx")
    return frontend.convert_partially(frontend.load(io.BytesIO(model.SerializeToString())))


def _produces(node: ir.Node, value_names: set[str], names: ValueNames) -> bool:
    return any(names(value) in value_names for value in node.outputs if value is not None)


def _decomposition(op: Any) -> list[Any]:
    """``op`` and the unnamed ops before it: the ops one ONNX node became."""
    found, pending, seen = [op], [op], {op.get_friendly_name()}
    while pending:
        for source in pending.pop().inputs():
            producer = source.get_source_output().get_node()
            if (producer.get_friendly_name() in seen or producer.get_type_name() in ("Parameter", "Constant")
                    or any(output.get_names() for output in producer.outputs())):
                continue
            seen.add(producer.get_friendly_name())
            found.append(producer)
            pending.append(producer)
    return found
