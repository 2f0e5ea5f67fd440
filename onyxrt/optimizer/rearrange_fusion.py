"""A Transpose between Reshapes -> one ai.onyxrt Rearrange, for onyxrt's CPU kernels only.

``Reshape(Transpose(Reshape(X, s1), perm), s2)`` -- a ShuffleNet's channel shuffle, a Swin window partition or
reverse, attention heads split or merged where no attention fusion took them -- runs three kernels whose work is a
view or one copy; ``Rearrange(X, s1, s2, perm=perm)`` (``providers/cpu/tensor/rearrange.py``) is one. A Reshape
before the Transpose or one after it alone fuses as well (the other shape input absent).

Preconditions: ONNX-domain Reshapes of the shape-input form (opset 5 on) and a Transpose with its ``perm``, all on
the CPU provider's kernels, in one graph; each value between them read by the next node alone and no graph output.
The shapes may be computed (the kernel checks them as the Reshapes would). Like ``channel_gate_fusion`` it runs after
the optimized model was saved and after partitioning (``session/placement.py``), at the EXTENDED level and above,
unless ``disabled_optimizers`` names ``RearrangeFusion``.
"""

from __future__ import annotations

import onnx_ir as ir

from ..framework.partitioner import PROVIDER_KEY, on_cpu_kernels
from ..graph.opsets import ONYXRT_DOMAIN
from .matching import only_reader, replace_with

NAME = "RearrangeFusion"


def fuse_rearranges(graph: ir.Graph, opsets: dict[str, int]) -> int:
    """Rewrite each Transpose with a Reshape before or after it in ``graph`` (see the module docstring); returns how
    many."""
    fused = 0
    for transpose in [node for node in graph if _is_op(node, "Transpose") and "perm" in node.attributes]:
        if transpose.graph is not graph or not transpose.inputs or transpose.inputs[0] is None:
            continue  # (removed by an earlier rewrite)
        before = transpose.inputs[0].producer()
        if not (_is_reshape(before) and only_reader(before.outputs[0]) is transpose and before.graph is graph):
            before = None
        after = only_reader(transpose.outputs[0])
        if not (_is_reshape(after) and after.inputs[0] is transpose.outputs[0]):
            after = None
        if before is None and after is None:
            continue
        nodes = [node for node in (before, transpose, after) if node is not None]
        inputs = [before.inputs[0] if before else transpose.inputs[0],
                  before.inputs[1] if before else None, after.inputs[1] if after else None]
        while inputs[-1] is None:
            inputs.pop()
        attributes = [ir.AttrInt64s("perm", list(transpose.attributes.get_ints("perm"))),
                      ir.AttrInt64("allowzero_before", before.attributes.get_int("allowzero", 0) if before else 0),
                      ir.AttrInt64("allowzero_after", after.attributes.get_int("allowzero", 0) if after else 0)]
        node = ir.Node(ONYXRT_DOMAIN, "Rearrange", inputs, attributes=attributes, num_outputs=1,
                       name=f"{transpose.name or 'transpose'}_rearrange")
        node.meta[PROVIDER_KEY] = transpose.meta[PROVIDER_KEY]
        # (at the last node: the second shape may be computed after the first Reshape)
        replace_with(graph, nodes, nodes[-1].outputs[0], node, anchor=nodes[-1])
        opsets.setdefault(ONYXRT_DOMAIN, 1)
        fused += 1
    return fused


def _is_op(node: ir.Node | None, op_type: str) -> bool:
    return node is not None and node.domain == "" and node.op_type == op_type and on_cpu_kernels(node)


def _is_reshape(node: ir.Node | None) -> bool:
    """An ONNX Reshape with its shape as an input (opset 5 on), on the CPU provider's kernels."""
    return _is_op(node, "Reshape") and len(node.inputs) == 2 and node.inputs[0] is not None \
        and node.inputs[1] is not None
