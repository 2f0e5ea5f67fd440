"""QDQ MatMul/Gemm fusion: dequantize -> MatMul/Gemm [-> quantize] becomes one integer matmul.

What ``quantize_static`` (QDQ format) writes around MatMul and Gemm: the 8-bit activation and the
constant 8-bit weight are dequantized, multiplied in float, and the result often quantized again.
The fused nodes multiply the 8-bit values on the int8 GEMM (int32 accumulation, exact) instead:

* ``Q(MatMul(DQ(x), DQ(w)))`` -> ``QLinearMatMul(x, sx, zx, w, sw, zw, sy, zy)``: the int32
  product scaled by ``sx * sw / sy`` (float32), rounded half to even, plus ``zy``, saturated;
* ``MatMul(DQ(x), DQ(w))`` read by anything else -> com.microsoft ``MatMulIntegerToFloat``
  (``(x - zx)(w - zw) * sx * sw``), absorbing a following ``Add`` of a constant float32
  bias of N values when the MatMul's only reader is that Add;
* ``Gemm(DQ(x), DQ(w), [DQ(c)]) [-> Q]`` (transA = 0; alpha = beta = 1 with C) -> com.microsoft ``QGemm``,
  with C the int32 bias the quantizer writes (``DQ(c, sx * sw, 0)``, checked to float32 rounding).

Tolerance against the unfused graph: the float path sums float products, the fused one sums
exact integers and scales once, so float outputs agree to float32 rounding of the sum (about
1e-6 relative to the largest term), and requantized outputs are identical except where the
exact value lies within that rounding of a .5 boundary: there they differ by one quantization
step (onnxruntime's own QDQ fusion behaves the same). The requantized semantics are exactly those of
QLinearMatMul / QGemm.

A second pass, ``DynamicQuantizeMatMulFusion``, folds what ``quantize_dynamic`` writes,
``DynamicQuantizeLinear(x) -> MatMulInteger(xq, w, xz, wz) -> Cast(float) -> Mul(xs * ws)
[-> Add(bias)]``, into one com.microsoft ``DynamicQuantizeMatMul(x, w, ws, wz, bias)`` (onnxruntime's
DynamicQuantizeMatMulFusion): the same integer product and scaling, computed in one kernel, with
the float result no longer split over three elementwise passes (and the residual Add after it free
for SkipLayerNormalization fusion). The results are identical.

Preconditions (QDQ): x per tensor (uint8/int8, constant float32 scale, zero point given), its
dequantized value float32; w a constant 2-D 8-bit matrix dequantized per tensor or per output
column (axis 1 of (K, N); axis 0 for Gemm with transB = 1) with zero points given; y quantized per
tensor to 8 bits with a zero point; no ``block_size``. The DequantizeLinear nodes stay for other
readers and are removed by dead-code elimination otherwise. onnxruntime: QDQSelectorActionTransformer
(its MatMul and Gemm rules).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..graph.builder import UniqueNames
from .matching import is_float32, only_reader, replace_with, self_contained
from .qdq_matching import EIGHT_BIT as _EIGHT_BIT
from .qdq_matching import QdqFusion
from .qdq_matching import activation as _activation
from .qdq_matching import constant as _constant
from .qdq_matching import dequantize_producer as _dequantize
from .qdq_matching import quantize_reader as _quantize_reader
from .pass_manager import GraphPass, OptimizationContext, OptimizationLevel

_MICROSOFT = "com.microsoft"
_QLINEAR_MATMUL_OPSET = 10


class QdqMatMulFusion(QdqFusion):
    """Replaces quantize-dequantize MatMul and Gemm units by integer matmuls (see the module docstring)."""

    name = "qdq_matmul_fusion"

    def fuse(self, graph: ir.Graph, context: OptimizationContext) -> int:
        names = UniqueNames(graph)
        fused = 0
        for node in list(graph):
            if node.domain != "" or node.graph is not graph:
                continue
            if node.op_type == "MatMul" and _fuse_matmul(node, graph, context, names):
                fused += 1
            elif node.op_type == "Gemm" and _fuse_gemm(node, graph, context, names):
                fused += 1
        return fused


# --------------------------------------------------------------------------- matching


def _weight(value: ir.Value | None, column_axis: int) -> tuple[ir.Value, ir.Value, ir.Value, int] | None:
    """(w, scale, zero point, N): a constant 2-D 8-bit matrix dequantized per tensor or per column
    (``column_axis``: the axis of w holding the output columns)."""
    dequantize = _dequantize(value)
    if dequantize is None:
        return None
    data, scale, zero = dequantize.inputs
    w, scale_array, zero_array = _constant(data), _constant(scale), _constant(zero)
    if w is None or scale_array is None or zero_array is None:
        return None
    if w.dtype not in _EIGHT_BIT or w.ndim != 2 or zero_array.dtype != w.dtype or scale_array.dtype != np.float32:
        return None
    n = w.shape[column_axis]
    if scale_array.size != 1 or zero_array.size != 1:  # per column: both vectors of N
        axis = dequantize.attributes.get_int("axis", 1)
        if axis % 2 != column_axis or scale_array.shape != (n,) or zero_array.shape != (n,):
            return None
    return data, scale, zero, n


def _bias_reader(value: ir.Value, n: int) -> tuple[ir.Node, ir.Value] | None:
    """(Add, bias) when ``value``'s only reader adds a constant float32 vector of ``n`` values to it."""
    add = only_reader(value)
    if add is None or add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2:
        return None
    bias = add.inputs[1] if add.inputs[0] is value else add.inputs[0]
    array = _constant(bias)
    if array is None or array.dtype != np.float32 or array.shape != (n,) or bias is value:
        return None
    return add, bias


# --------------------------------------------------------------------------- rewrites


def _fuse_matmul(matmul: ir.Node, graph: ir.Graph, context: OptimizationContext, names: UniqueNames) -> bool:
    if len(matmul.inputs) != 2:
        return False
    x = _activation(matmul.inputs[0])
    w = _weight(matmul.inputs[1], column_axis=1)
    if x is None or w is None:
        return False
    product = matmul.outputs[0]
    base = matmul.name or "MatMul"
    quantized = _quantize_reader(product)
    if quantized is not None and context.opset(matmul) >= _QLINEAR_MATMUL_OPSET:
        quantize, y_scale, y_zero = quantized
        nodes = [matmul, quantize]
        if not self_contained(nodes, quantize.outputs[0]):
            return False
        fused = ir.Node("", "QLinearMatMul", [*x, w[0], w[1], w[2], y_scale, y_zero], num_outputs=1,
                        name=names.fresh(f"{base}_quant"))
        replace_with(graph, nodes, quantize.outputs[0], fused)
        return True
    inputs = [x[0], w[0], x[1], w[1], x[2], w[2]]
    nodes, output = [matmul], product
    with_bias = _bias_reader(product, w[3])
    if with_bias is not None:
        add, bias = with_bias
        inputs.append(bias)
        nodes, output = [matmul, add], add.outputs[0]
    if not self_contained(nodes, output):
        return False
    context.require_opset(_MICROSOFT, 1)
    fused = ir.Node(_MICROSOFT, "MatMulIntegerToFloat", inputs, num_outputs=1, name=names.fresh(f"{base}_integer"))
    replace_with(graph, nodes, output, fused)
    return True


def _fuse_gemm(gemm: ir.Node, graph: ir.Graph, context: OptimizationContext, names: UniqueNames) -> bool:
    attributes = gemm.attributes
    if attributes.get_int("transA", 0) or len(gemm.inputs) not in (2, 3):
        return False
    trans_b = attributes.get_int("transB", 0)
    x = _activation(gemm.inputs[0])
    w = _weight(gemm.inputs[1], column_axis=0 if trans_b else 1)
    if x is None or w is None:
        return False
    c = gemm.inputs[2] if len(gemm.inputs) == 3 else None
    bias = None
    if c is not None:
        # QGemm's C is at scale alpha / beta * sx * sw: take the quantizer's alpha = beta = 1
        if attributes.get_float("beta", 1.0) != 1.0 or attributes.get_float("alpha", 1.0) != 1.0:
            return False
        bias = _int32_bias(c, _constant(x[1]), _constant(w[1]), w[3])
        if bias is None:
            return False
    inputs = [x[0], x[1], x[2], w[0], w[1], w[2], bias]
    nodes, output = [gemm], gemm.outputs[0]
    quantized = _quantize_reader(gemm.outputs[0])
    if quantized is not None:
        quantize, y_scale, y_zero = quantized
        inputs += [y_scale, y_zero]
        nodes, output = [gemm, quantize], quantize.outputs[0]
    while inputs[-1] is None:
        inputs.pop()
    if not self_contained(nodes, output):
        return False
    context.require_opset(_MICROSOFT, 1)
    new_attributes = [ir.AttrFloat32("alpha", attributes.get_float("alpha", 1.0)), ir.AttrInt64("transA", 0),
                      ir.AttrInt64("transB", trans_b)]
    fused = ir.Node(_MICROSOFT, "QGemm", inputs, attributes=new_attributes, num_outputs=1,
                    name=names.fresh(f"{gemm.name or 'Gemm'}_quant"))
    replace_with(graph, nodes, output, fused)
    return True


def _int32_bias(c: ir.Value, x_scale: np.ndarray, w_scale: np.ndarray, n: int) -> ir.Value | None:
    """The int32 vector b when ``c`` is DQ(b, x_scale * w_scale, 0), as the quantizer writes a bias."""
    node = c.producer()
    if node is None or node.op_type != "DequantizeLinear" or node.domain != "" or len(node.inputs) < 2:
        return None
    values = _constant(node.inputs[0])
    scale = _constant(node.inputs[1])
    zero = _constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if values is None or values.dtype != np.int32 or values.shape != (n,) or scale is None or scale.dtype != np.float32:
        return None
    if zero is not None and np.any(zero):
        return None
    expected = (x_scale.reshape(()) * w_scale.reshape(-1)).astype(np.float32)
    if scale.size not in (1, n):
        return None
    if not np.allclose(np.broadcast_to(scale.reshape(-1), (n,)), np.broadcast_to(expected, (n,)), rtol=2e-7, atol=0):
        return None
    return node.inputs[0]


# --------------------------------------------------------------------------- dynamic quantization


class DynamicQuantizeMatMulFusion(GraphPass):
    """``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(scales) [-> Add(bias)]`` becomes one
    com.microsoft DynamicQuantizeMatMul (see the module docstring)."""

    name = "dynamic_quantize_matmul_fusion"
    ort_names = ("DynamicQuantizeMatMulFusion",)
    level = OptimizationLevel.EXTENDED
    providers = ("CPUExecutionProvider",)

    def run(self, graph: ir.Graph, context: OptimizationContext) -> int:
        names = UniqueNames(graph)
        fused = 0
        for node in list(graph):
            if node.op_type == "MatMulInteger" and node.domain == "" and node.graph is graph:
                if _fuse_dynamic(node, graph, context, names):
                    fused += 1
        return fused


def _fuse_dynamic(matmul: ir.Node, graph: ir.Graph, context: OptimizationContext, names: UniqueNames) -> bool:
    if len(matmul.inputs) < 3 or matmul.inputs[2] is None:
        return False
    quantize = matmul.inputs[0].producer() if matmul.inputs[0] is not None else None
    if quantize is None or quantize.op_type != "DynamicQuantizeLinear" or quantize.domain != "":
        return False
    x = quantize.inputs[0]
    if not is_float32(x) or matmul.inputs[0] is not quantize.outputs[0] or matmul.inputs[2] is not quantize.outputs[2]:
        return False
    w = _constant(matmul.inputs[1])
    if w is None or w.dtype not in _EIGHT_BIT or w.ndim != 2:
        return False
    n = w.shape[1]
    w_zero = matmul.inputs[3] if len(matmul.inputs) > 3 else None
    if w_zero is not None:
        zero = _constant(w_zero)
        if zero is None or zero.dtype != w.dtype or zero.size not in (1, n) or zero.ndim > 1:
            return False
    cast = only_reader(matmul.outputs[0])
    if cast is None or cast.op_type != "Cast" or cast.domain != "" or cast.attributes.get_int("to", 0) != 1:
        return False
    scale_mul = only_reader(cast.outputs[0])
    if scale_mul is None or scale_mul.op_type != "Mul" or scale_mul.domain != "" or len(scale_mul.inputs) != 2:
        return False
    scales = scale_mul.inputs[1] if scale_mul.inputs[0] is cast.outputs[0] else scale_mul.inputs[0]
    w_scale = _weight_scale(scales, quantize.outputs[1], n)
    if w_scale is None:
        return False
    nodes, output = [matmul, cast, scale_mul], scale_mul.outputs[0]
    inputs = [x, matmul.inputs[1], w_scale, w_zero]
    with_bias = _bias_reader(output, n)
    if with_bias is not None:
        add, bias = with_bias
        nodes, output = nodes + [add], add.outputs[0]
        inputs.append(bias)
    while inputs[-1] is None:
        inputs.pop()
    if not self_contained(nodes, output):
        return False
    context.require_opset(_MICROSOFT, 1)
    fused = ir.Node(_MICROSOFT, "DynamicQuantizeMatMul", inputs, num_outputs=1,
                    name=names.fresh(f"{matmul.name or 'MatMulInteger'}_dynamic"))
    # at the MatMulInteger: x, w and its constants are all defined by then
    replace_with(graph, nodes, output, fused, anchor=matmul)
    return True


def _weight_scale(scales: ir.Value | None, x_scale: ir.Value, n: int) -> ir.Value | None:
    """The constant float32 weight scale w_scale (scalar or N) when ``scales`` is ``Mul(x_scale, w_scale)``."""
    node = scales.producer() if scales is not None else None
    if node is None or node.op_type != "Mul" or node.domain != "" or len(node.inputs) != 2:
        return None
    if x_scale not in node.inputs:
        return None
    w_scale = node.inputs[1] if node.inputs[0] is x_scale else node.inputs[0]
    array = _constant(w_scale)
    if array is None or array.dtype != np.float32 or array.size not in (1, n) or array.ndim > 1:
        return None
    return w_scale
