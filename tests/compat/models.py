"""Small models the compatibility idioms run (built in memory; ``save`` writes one to a path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "compat", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def linear() -> onnx.ModelProto:
    """y = relu(x @ W + b); x is float [batch, 4], y float [batch, 3]."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "W")
    b = numpy_helper.from_array(np.array([-1.0, 0.0, 1.0], dtype=np.float32), "b")
    return make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"], name="matmul"),
            helper.make_node("Add", ["xw", "b"], ["pre"], name="add"),
            helper.make_node("Relu", ["pre"], ["y"], name="relu"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [w, b],
    )


def gather() -> onnx.ModelProto:
    """y = table[indices]; table is a 5x3 float initializer, indices int64 [n]."""
    table = numpy_helper.from_array(np.arange(15, dtype=np.float32).reshape(5, 3), "table")
    return make_model(
        [helper.make_node("Gather", ["table", "indices"], ["y"], name="gather", axis=0)],
        [helper.make_tensor_value_info("indices", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [table],
    )


def two_outputs() -> onnx.ModelProto:
    """sum = a + b and product = a * b over float [2, 3] inputs."""
    return make_model(
        [
            helper.make_node("Add", ["a", "b"], ["sum"], name="add"),
            helper.make_node("Mul", ["a", "b"], ["product"], name="mul"),
        ],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3]) for name in ("a", "b")],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3]) for name in ("sum", "product")],
    )


def save(model: onnx.ModelProto, directory: Path, name: str = "model.onnx") -> str:
    path = Path(directory) / name
    onnx.save(model, path)
    return str(path)
