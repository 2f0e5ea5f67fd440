"""A per-row dynamically quantized MatMul in standard ops -> one ai.onyxrt RowQuantizeMatMul, for onyxrt's CPU
kernels only.

``onyxrt.quantization.quantize_dynamic`` quantizes the activation after a GELU per row (one symmetric int8
scale per token, ``GeluOutputActivations="per_row"``) in ops onnxruntime runs too::

    s = Div(Max(ReduceMax(Abs(x), last axis, keepdims), floor), 127)
    y = Mul(Mul(Cast<float>(MatMulInteger(Cast<int8>(Clip(Round(Div(x, s)), -127, 127)), w)), w_scale), s)

Twelve kernels, eight of them passes over the activation; ``RowQuantizeMatMul(x, w, w_scale, floor)``
(``providers/cpu/math/row_quantize_matmul.py``) quantizes each row while it is in cache and multiplies on the
int8 GEMM, with the same float32 operations, so its result equals the ops' bit for bit.

Preconditions: x float32 of known rank, the reduction over its last axis only, 127 and -127 and a positive
float32 floor as constants, w a constant int8 matrix (K, N) without zero points, w_scale a constant float32
scalar or N values, and no intermediate value read outside the pattern. It runs after partitioning
(``session/placement.py``), on nodes the CPU provider took, at the EXTENDED level and above, unless
``disabled_optimizers`` names ``RowQuantizeMatMulFusion``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..framework.partitioner import PROVIDER_KEY, on_cpu_kernels
from ..graph.builder import UniqueNames
from ..graph.opsets import ONYXRT_DOMAIN
from ..graph.tensors import constant_array
from .matching import is_constant, is_float32, only_reader, partner, replace_with, scalar, self_contained

NAME = "RowQuantizeMatMulFusion"
_LIMIT = 127.0
_INT8, _FLOAT = 3, 1  # TensorProto element types


def fuse_row_quantize_matmuls(graph: ir.Graph, opsets: dict[str, int]) -> int:
    """Rewrite each matching pattern of ``graph`` (see the module docstring); returns how many."""
    names = UniqueNames(graph)
    fused = 0
    for matmul in [node for node in graph if _op(node, "MatMulInteger")]:
        match = _match(matmul, opsets.get("", 1))
        if match is None:
            continue
        nodes, x, floor, w_scale = match
        output = nodes[-1].outputs[0]
        node = ir.Node(ONYXRT_DOMAIN, "RowQuantizeMatMul", [x, matmul.inputs[1], w_scale], num_outputs=1,
                       name=names.fresh(matmul.name or "RowQuantizeMatMul"), attributes=[ir.AttrFloat32("floor", floor)])
        node.meta[PROVIDER_KEY] = matmul.meta[PROVIDER_KEY]
        replace_with(graph, nodes, output, node, anchor=matmul)
        opsets.setdefault(ONYXRT_DOMAIN, 1)
        fused += 1
    return fused


def _op(node: ir.Node | None, op_type: str) -> bool:
    return node is not None and node.domain == "" and node.op_type == op_type and on_cpu_kernels(node)


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if _op(node, op_type) else None


def _is(value: ir.Value | None, expected: float) -> bool:
    return scalar(value) == expected and constant_array(value).dtype == np.float32


def _match(matmul: ir.Node, opset: int):
    """(the pattern's nodes, its last Mul last; x; floor; w_scale) around ``matmul``, or None."""
    if len(matmul.inputs) > 2 and any(value is not None for value in matmul.inputs[2:]):
        return None  # zero points
    w = matmul.inputs[1]
    if not is_constant(w) or constant_array(w).dtype != np.int8 or constant_array(w).ndim != 2:
        return None
    n = constant_array(w).shape[1]
    to_int8 = _producer(matmul.inputs[0], "Cast")
    clip = _producer(to_int8.inputs[0], "Clip") if to_int8 is not None else None
    if clip is None or to_int8.attributes.get_int("to", 0) != _INT8 or len(clip.inputs) != 3:
        return None
    if not (_is(clip.inputs[1], -_LIMIT) and _is(clip.inputs[2], _LIMIT)):
        return None
    rounding = _producer(clip.inputs[0], "Round")
    divide = _producer(rounding.inputs[0], "Div") if rounding is not None else None
    if divide is None:
        return None
    x, row_scale = divide.inputs
    scaling = _row_scale(row_scale, x, opset)
    if scaling is None:
        return None
    scale_nodes, floor = scaling
    to_float = only_reader(matmul.outputs[0])
    if not _op(to_float, "Cast") or to_float.attributes.get_int("to", 0) != _FLOAT:
        return None
    weight_mul = only_reader(to_float.outputs[0])
    if not _op(weight_mul, "Mul") or to_float.outputs[0] not in weight_mul.inputs:
        return None
    w_scale = partner(weight_mul, to_float.outputs[0])
    if not is_constant(w_scale) or constant_array(w_scale).dtype != np.float32:
        return None
    if constant_array(w_scale).size not in (1, n) or constant_array(w_scale).ndim > 1:
        return None
    row_mul = only_reader(weight_mul.outputs[0])
    if not _op(row_mul, "Mul") or partner(row_mul, weight_mul.outputs[0]) is not row_scale:
        return None
    nodes = scale_nodes + [divide, rounding, clip, to_int8, matmul, to_float, weight_mul, row_mul]
    if not is_float32(x) or not self_contained(nodes, row_mul.outputs[0]):
        return None
    return nodes, x, floor, w_scale


def _row_scale(row_scale: ir.Value, x: ir.Value, opset: int):
    """([Abs, ReduceMax, Max, Div], floor) when ``row_scale`` is ``Div(Max(ReduceMax(Abs(x)), floor), 127)`` over
    x's last axis, else None."""
    divide = _producer(row_scale, "Div")
    if divide is None or not _is(divide.inputs[1], _LIMIT):
        return None
    floor_max = _producer(divide.inputs[0], "Max")
    if floor_max is None or len(floor_max.inputs) != 2:
        return None
    floor = scalar(floor_max.inputs[1])
    if floor is None or not floor > 0 or constant_array(floor_max.inputs[1]).dtype != np.float32:
        return None
    reduce = _producer(floor_max.inputs[0], "ReduceMax")
    magnitude = _producer(reduce.inputs[0], "Abs") if reduce is not None else None
    if magnitude is None or magnitude.inputs[0] is not x or not _over_last_axis(reduce, x, opset):
        return None
    return [magnitude, reduce, floor_max, divide], floor


def _over_last_axis(reduce: ir.Node, x: ir.Value, opset: int) -> bool:
    if reduce.attributes.get_int("keepdims", 1) != 1 or x.shape is None:
        return False
    if opset >= 18:
        if len(reduce.inputs) < 2 or not is_constant(reduce.inputs[1]):
            return False
        axes = constant_array(reduce.inputs[1]).reshape(-1).tolist()
    else:
        axes = list(reduce.attributes.get_ints("axes", []))
    rank = len(x.shape)
    return rank >= 1 and [axis % rank for axis in axes] == [rank - 1]
