"""Stand-ins that let onnx's shape inference see through com.microsoft ops it has no schema for.

onnx knows no com.microsoft op, so a value a contrib op computes has no inferred type or shape,
and neither has anything computed from it: in a model whose MatMuls onnxruntime's
``MatMulNBitsQuantizer`` replaced by ``MatMulNBits``, the whole decoder downstream of the first
projection loses its shapes, and the fusions that need them (rotary embedding, grouped-query
attention, skip layer norm) no longer fire.

:func:`with_stand_ins` returns a copy of the (light, initializer-free) inference model in which
each such node is replaced by a standard op computing a value of the same type and shape: the
copy is only ever inferred, never run or checked strictly (onnxruntime's own inference of these
ops does not check their inputs the way the stand-in would).
"""

from __future__ import annotations

import onnx

_MICROSOFT = "com.microsoft"


def _int_attribute(node: onnx.NodeProto, name: str) -> int | None:
    for attribute in node.attribute:
        if attribute.name == name and attribute.type == onnx.AttributeProto.INT:
            return attribute.i
    return None


def _elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {tensor.name: tensor.data_type for tensor in graph.initializer}
    for info in graph.input:
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    return types


def _matmul_nbits_stand_in(node: onnx.NodeProto, elem_types: dict[str, int], graph: onnx.GraphProto) -> onnx.NodeProto | None:
    """MatMul(A, W) with W a typed (K, N) graph input: A's shape with its last dim N, A's type (= the scales' type)."""
    k, n = _int_attribute(node, "K"), _int_attribute(node, "N")
    if k is None or n is None or len(node.input) < 3 or len(node.output) != 1 or not node.input[0]:
        return None
    weight = f"{node.output[0]}__onyxrt_nbits_weight_shape"
    elem_type = elem_types.get(node.input[2], onnx.TensorProto.FLOAT)
    graph.input.append(onnx.helper.make_tensor_value_info(weight, elem_type, [k, n]))
    return onnx.helper.make_node("MatMul", [node.input[0], weight], list(node.output), name=node.name)


_STAND_INS = {"MatMulNBits": _matmul_nbits_stand_in}


def with_stand_ins(light: onnx.ModelProto) -> onnx.ModelProto:
    """``light`` itself when its main graph has no contrib op with a stand-in, else a copy with them replaced."""
    graph = light.graph
    if not any(node.domain == _MICROSOFT and node.op_type in _STAND_INS for node in graph.node):
        return light
    copy = onnx.ModelProto()
    copy.CopyFrom(light)
    elem_types = _elem_types(copy.graph)
    for index, node in enumerate(copy.graph.node):
        if node.domain == _MICROSOFT and node.op_type in _STAND_INS:
            stand_in = _STAND_INS[node.op_type](node, elem_types, copy.graph)
            if stand_in is not None:
                copy.graph.node[index].CopyFrom(stand_in)
    return copy
