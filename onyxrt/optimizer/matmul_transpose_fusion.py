"""MatMul transpose fusion: a Transpose feeding a float MatMul becomes com.microsoft FusedMatMul's flags.

``MatMul(Transpose(a, p), b)`` (either input, or an existing FusedMatMul's) reads ``a`` with:

* ``transA``/``transB`` toggled when ``p`` swaps the last two axes and keeps the others (rank ≥ 2);
* ``transBatchA``/``transBatchB`` set when ``p`` is ``[1, ..., r-2, 0, r-1]`` (the first axis moved
  in front of the last, FusedMatMul's batch transpose), with ``transA``/``transB`` toggled too for
  ``[1, ..., r-2, r-1, 0]``; both inputs must then have one known rank ≥ 3 and that input no
  batch transpose yet.

The Transpose must have this node as its only reader (else nothing is saved); float32 only (the
type of onnxruntime's CPU FusedMatMul kernel); an existing alpha is kept. K's transpose before
QKᵀ in attention is the usual case. onnxruntime: MatmulTransposeFusion.
"""

from __future__ import annotations

import onnx_ir as ir

from .matching import is_float32, only_reader, replace_with
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel
from .transpose_optimizer import transposed_input

_MICROSOFT = "com.microsoft"
_FLAGS = (("transA", "transBatchA"), ("transB", "transBatchB"))


class MatMulTransposeFusion(GraphPass):
    """Folds Transposes of a float MatMul's inputs into one FusedMatMul."""

    name = "matmul_transpose_fusion"
    ort_names = ("MatmulTransposeFusion",)
    level = OptimizationLevel.EXTENDED
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        fused = 0
        for matmul in [node for node in graph if _is_matmul(node)]:
            if not is_float32(matmul.outputs[0]) or len(matmul.inputs) != 2 or None in matmul.inputs:
                continue
            attributes = {name: matmul.attributes.get_int(name, 0) for pair in _FLAGS for name in pair}
            inputs, folded = list(matmul.inputs), []
            for index, (trans, trans_batch) in enumerate(_FLAGS):
                transposed = transposed_input(inputs[index])
                if transposed is None or only_reader(inputs[index]) is not matmul or transposed[0].graph is not graph:
                    continue
                flags = _flags_of(transposed[1], matmul.inputs)
                if flags is None or attributes[trans_batch]:  # a batch transpose already: not composable
                    continue
                attributes[trans] ^= flags[0]
                attributes[trans_batch] = flags[1]
                inputs[index] = transposed[0].inputs[0]
                folded.append(transposed[0])
            if not folded:
                continue
            context.require_opset(_MICROSOFT, 1)
            alpha = matmul.attributes.get_float("alpha", 1.0)
            fused_matmul = ir.Node(
                _MICROSOFT, "FusedMatMul", inputs, num_outputs=1, name=f"{matmul.name or 'matmul'}_transposed",
                attributes=[ir.AttrFloat32("alpha", alpha), *(ir.AttrInt64(k, v) for k, v in attributes.items())],
            )
            replace_with(graph, [*folded, matmul], matmul.outputs[0], fused_matmul, anchor=matmul)
            fused += 1
        return fused


def _is_matmul(node: ir.Node) -> bool:
    return (node.op_type == "MatMul" and node.domain == "") or (node.op_type == "FusedMatMul" and node.domain == _MICROSOFT)


def _flags_of(perm: list[int], inputs) -> tuple[int, int] | None:
    """(trans, transBatch) doing what ``perm`` does to a MatMul input, else None."""
    rank = len(perm)
    if rank < 2:
        return None
    kept = list(range(rank - 2))
    if perm == [*kept, rank - 1, rank - 2]:
        return 1, 0
    batch_first = list(range(1, rank - 1))
    if rank < 3 or not _same_rank(inputs, rank):
        return None
    if perm == [*batch_first, 0, rank - 1]:
        return 0, 1
    if perm == [*batch_first, rank - 1, 0]:
        return 1, 1
    return None


def _same_rank(inputs, rank: int) -> bool:
    return all(value.shape is not None and len(value.shape) == rank for value in inputs)
