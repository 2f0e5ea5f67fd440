"""MatMul column scale fusion: a constant per-column scale after a MatMul by constant weights goes into the weights.

``Mul(MatMul(x, W), g)`` becomes ``MatMul(x, W * g)`` and ``Mul(Add(MatMul(x, W), b), g)`` becomes
``Add(MatMul(x, W * g), b * g)`` (either operand order of the Add and the Mul) when:

* ``W`` is a 2-D float32 or float64 constant (K, N) read by this MatMul alone, ``b`` a constant of N values or
  one (rank 0 or 1) read by this Add alone, and ``g`` a 1-D constant of N > 1 values (so the broadcasts keep the
  output's shape; a scalar scale is ``matmul_scale_fusion``'s, and attention's patterns expect it there);
* the MatMul's and the Add's outputs are read by the next node alone and are no graph outputs.

A transformer's or ConvNeXt's layer scale (``gamma * (x @ W + b)``, CaiT, DeiT-III, ConvNeXt) then costs no pass
over the activation. The products differ from the scaled ones by float rounding (``W * g`` rounds once per weight).
float16 and bfloat16 are left alone: their products round per operation, which one folded weight would not
reproduce. onnxruntime has no such pass (its MatMulScaleFusion takes scalar scales only; see
``matmul_scale_fusion``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..graph.builder import UniqueNames
from ..graph.tensors import constant_array
from .matching import drop_unused_initializers, is_constant, new_initializer, only_reader, partner
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel

_FLOATS = (ir.DataType.FLOAT, ir.DataType.DOUBLE)


class MatMulColumnScaleFusion(GraphPass):
    """Folds a constant per-column scale after a MatMul (and its constant bias Add) into the MatMul's weights."""

    name = "matmul_column_scale_fusion"
    level = OptimizationLevel.EXTENDED

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        names = UniqueNames(graph)
        fused = 0
        for matmul in [node for node in graph if node.op_type == "MatMul" and node.domain == ""]:
            if matmul.graph is not graph or len(matmul.inputs) != 2:
                continue
            weights = matmul.inputs[1]
            if not _single_read_constant(weights) or weights.const_value.dtype not in _FLOATS:
                continue
            w = constant_array(weights)
            if w.ndim != 2:
                continue
            columns = w.shape[1]
            after = only_reader(matmul.outputs[0])
            add = bias = None
            if after is not None and after.domain == "" and after.op_type == "Add" and len(after.inputs) == 2:
                bias = partner(after, matmul.outputs[0])
                if not (_single_read_constant(bias) and _per_column(constant_array(bias), columns, w.dtype)):
                    continue
                add, after = after, only_reader(after.outputs[0])
            scaled = (add or matmul).outputs[0]
            if after is None or after.domain != "" or after.op_type != "Mul" or len(after.inputs) != 2:
                continue
            scale = partner(after, scaled)
            if not is_constant(scale) or columns < 2:
                continue
            g = constant_array(scale)
            if g.ndim != 1 or g.size != columns or g.dtype != w.dtype:
                continue
            matmul.replace_input_with(1, new_initializer(graph, names, f"{weights.name}_scaled", w * g[None, :]))
            if add is not None:
                b = constant_array(bias)
                folded = b.reshape(-1) * g  # (N,): b of one value or N, rank 0 or 1
                add.replace_input_with(list(add.inputs).index(bias),
                                       new_initializer(graph, names, f"{bias.name}_scaled", folded))
            drop_unused_initializers(graph, [weights] if add is None else [weights, bias])
            product = after.outputs[0]
            name = product.name
            product.replace_all_uses_with(scaled, replace_graph_outputs=True)
            graph.remove(after, safe=True)
            scaled.name = name
            fused += 1
        return fused


def _single_read_constant(value: ir.Value | None) -> bool:
    return is_constant(value) and len(value.uses()) == 1


def _per_column(array: np.ndarray, columns: int, dtype: np.dtype) -> bool:
    """A float array of rank 0 or 1 holding one value or one per column, of ``dtype``."""
    return array.ndim <= 1 and array.size in (1, columns) and array.dtype == dtype

