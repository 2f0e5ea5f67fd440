"""Whether onnxruntime's u8s8 integer products are exact on this CPU, probed once per process.

Without VNNI (AVX2 only), onnxruntime's MLAS u8s8 GEMM uses vpmaddubsw, which saturates each
pairwise int16 sum of uint8 x int8 products; onyxrt accumulates exactly in int32. Tests that
compare onyxrt with onnxruntime bit-exactly on u8s8 data ask here first.
"""

from __future__ import annotations

import functools

import numpy as np
from onnx import TensorProto, helper


@functools.cache
def onnxruntime_u8s8_is_exact() -> bool:
    """True when onnxruntime's MatMulInteger gives 255 * 127 * 64 for a 1x64 row of 255 times 127s."""
    import onnxruntime

    depth, columns = 64, 16
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "u8s8_probe",
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, [1, depth]),
            helper.make_tensor_value_info("b", TensorProto.INT8, [depth, columns]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, columns])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = np.full((1, depth), 255, np.uint8)
    b = np.full((depth, columns), 127, np.int8)
    (y,) = session.run(None, {"a": a, "b": b})
    return bool(np.all(y == 255 * 127 * depth))


def non_saturating_int8(weights: np.ndarray) -> np.ndarray:
    """``weights`` halved (floor) into [-64, 63]: u8s8 pair sums that cannot saturate (onnxruntime's reduce_range idea)."""
    return np.right_shift(weights.astype(np.int8), 1)


def onnxruntime_unfused_session(model: bytes | str):
    """onnxruntime with its graph optimizations off: a QDQ graph then runs as float math on dequantized values.

    Without exact u8s8 products this is the onnxruntime reference for QDQ graphs, whose fused
    integer form (onnxruntime's QDQ fusions) would saturate.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
