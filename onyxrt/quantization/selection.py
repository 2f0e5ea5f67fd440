"""Which nodes a quantizer touches: op types, ``nodes_to_quantize`` and ``nodes_to_exclude`` as onnxruntime reads them."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import onnx


class NodeSelection:
    """Node filter: an op type among ``op_types`` (default: every supported one), in ``include`` when given, not in ``exclude``.

    As in onnxruntime, op types the mode cannot quantize and node names the graph lacks are not errors;
    they are reported with a ``UserWarning`` so a misspelling does not pass silently.
    """

    def __init__(self, supported: Iterable[str], op_types: Iterable[str] | None, include: Iterable[str] | None,
                 exclude: Iterable[str] | None, graph: onnx.GraphProto, mode: str,
                 microsoft_op_types: Iterable[str] = ()) -> None:
        supported = list(supported)
        self.microsoft_op_types = set(microsoft_op_types)  # these are com.microsoft ops, the rest ONNX ops
        requested = list(op_types or [])
        unknown = [op for op in requested if op not in supported]
        if unknown:
            warnings.warn(f"{mode} quantization does not quantize op types {unknown}; supported: {supported}", stacklevel=3)
        self.op_types = set(requested or supported) & set(supported)
        self.include = set(include or [])
        self.exclude = set(exclude or [])
        names = {node.name for node in graph.node}
        missing = sorted((self.include | self.exclude) - names)
        if missing:
            warnings.warn(f"nodes_to_quantize/nodes_to_exclude name nodes the graph lacks: {missing[:10]}", stacklevel=3)

    def selected(self, node: onnx.NodeProto) -> bool:
        domains = ("com.microsoft",) if node.op_type in self.microsoft_op_types else ("", "ai.onnx")
        if node.op_type not in self.op_types or node.domain not in domains:
            return False
        if self.include and node.name not in self.include:
            return False
        return node.name not in self.exclude
