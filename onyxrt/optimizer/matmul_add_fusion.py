"""MatMul followed by an Add becomes one Gemm (onnxruntime's ``MatMulAddFusion``).

``y = MatMul(A, B); z = Add(y, C)`` (or ``Add(C, y)``) becomes ``z = Gemm(A, B, C)``
(alpha = beta = 1, no transposes) when:

* both nodes are of the ONNX domain, in the same graph, and the opset has Gemm with
  unidirectional broadcasting of C (7 and later);
* ``A`` and ``B`` have static rank 2 (declared shapes, or the constant's); an ``A`` of
  higher rank is left alone (batched MatMul), as is one of unknown rank;
* ``C``'s shape is known and broadcasts to ``[M, N]`` without growing it: rank at most 2,
  each dim 1 or the same (number or symbol) as the matching dim of ``[M, N]``;
* the element type, known from A, B or C, is float16, float32 or float64;
* ``y`` is read by the Add alone (reads inside subgraphs count) and is no graph output.

``z`` keeps its name.
"""

from __future__ import annotations

import onnx_ir as ir

from ..graph.builder import UniqueNames
from .pass_manager import GraphPass, OptimizationContext

_GEMM_TYPES = frozenset({ir.DataType.FLOAT16, ir.DataType.FLOAT, ir.DataType.DOUBLE})
# Gemm-7 is the first whose C broadcasts unidirectionally without the ``broadcast`` attribute.
_MIN_GEMM_OPSET = 7


class MatMulAddFusion(GraphPass):
    """Fuses ``Add(MatMul(A, B), C)`` into ``Gemm(A, B, C)`` (see the module docstring)."""

    name = "matmul_add_fusion"
    ort_names = ("MatMulAddFusion",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        names = UniqueNames(graph)
        fused = 0
        for add in list(graph):
            if add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2:
                continue
            if context.opset(add) < _MIN_GEMM_OPSET:
                continue
            for matmul_index in (0, 1):
                matmul = _fusable_matmul(add, matmul_index, graph)
                if matmul is None:
                    continue
                bias = add.inputs[1 - matmul_index]
                if not _broadcasts_to_product(bias, matmul) or _element_type(matmul, bias) not in _GEMM_TYPES:
                    continue
                _replace_by_gemm(matmul, add, bias, graph, names)
                fused += 1
                break
        return fused


def _fusable_matmul(add: ir.Node, input_index: int, graph: ir.Graph) -> ir.Node | None:
    """The MatMul of 2-D operands producing ``add``'s input ``input_index``, read by ``add`` alone, else None."""
    product = add.inputs[input_index]
    if product is None:
        return None
    matmul = product.producer()
    if matmul is None or matmul.op_type != "MatMul" or matmul.domain != "" or matmul.graph is not graph:
        return None
    if len(product.uses()) != 1 or product.is_graph_output():
        return None
    if len(matmul.inputs) != 2 or any(_rank(value) != 2 for value in matmul.inputs):
        return None
    return matmul


def _broadcasts_to_product(bias: ir.Value | None, matmul: ir.Node) -> bool:
    """Whether ``bias`` broadcasts to the MatMul's ``[M, N]`` without growing it (Gemm's rule for C)."""
    bias_shape = _shape(bias)
    if bias_shape is None or len(bias_shape) > 2:
        return False
    a_shape, b_shape = _shape(matmul.inputs[0]), _shape(matmul.inputs[1])
    product_shape = (a_shape[0], b_shape[1])
    for bias_dim, product_dim in zip(reversed(tuple(bias_shape)), reversed(product_shape)):
        if bias_dim == 1:
            continue
        # Symbolic dims count as equal only by name; an anonymous one could be anything.
        if isinstance(bias_dim, ir.SymbolicDim) and bias_dim.value is None:
            return False
        if bias_dim != product_dim:
            return False
    return True


def _element_type(matmul: ir.Node, bias: ir.Value) -> ir.DataType | None:
    """The element type of the fused values, read from whichever of A, B and C declares it."""
    for value in (*matmul.inputs, bias):
        tensor_type = value.const_value.dtype if value.const_value is not None else getattr(value.type, "dtype", None)
        if tensor_type is not None and tensor_type != ir.DataType.UNDEFINED:
            return tensor_type
    return None


def _replace_by_gemm(matmul: ir.Node, add: ir.Node, bias: ir.Value, graph: ir.Graph, names: UniqueNames) -> None:
    add_output = add.outputs[0]
    gemm_output = ir.Value(name=names.fresh(f"{add_output.name}_gemm"), type=add_output.type, shape=add_output.shape)
    gemm = ir.Node(
        "", "Gemm", [matmul.inputs[0], matmul.inputs[1], bias], outputs=[gemm_output],
        name=names.fresh(f"{matmul.name or 'MatMul'}_gemm"),
    )
    # At the Add: every input of the Gemm is computed by then (C may come after the MatMul).
    graph.insert_before(add, gemm)
    name = add_output.name
    add_output.replace_all_uses_with(gemm_output, replace_graph_outputs=True)
    graph.remove([add, matmul], safe=True)
    gemm_output.name = name


def _shape(value: ir.Value | None) -> ir.Shape | tuple[int, ...] | None:
    if value is None:
        return None
    if value.const_value is not None and not value.is_graph_input():
        return tuple(value.const_value.shape)
    return value.shape


def _rank(value: ir.Value | None) -> int | None:
    shape = _shape(value)
    return None if shape is None else len(shape)
