"""onnx.reference's result for one node: the spec's executable reading, for kernel unit tests."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from onyxrt.providers.cpu.contrib.fused import mlas_activation_fn


def reference_output(op_type: str, inputs: list[np.ndarray], opset: int, **attrs) -> np.ndarray:
    """The first output of a one-node ``op_type`` model at ``opset``, computed by onnx.reference."""
    names = [f"x{i}" for i in range(len(inputs))]
    node = helper.make_node(op_type, names, ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in zip(names, inputs)],
        [helper.make_empty_tensor_value_info("y")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return ReferenceEvaluator(model).run(None, dict(zip(names, inputs)))[0]

# The activations a convolution route's epilogue applies (FusedConv's, as ``mlas_activation_fn`` takes them): those the
# kernels apply in their registers and one they leave to the epilogue pass.
CONV_ACTIVATIONS = [None, ("Relu", []), ("Clip", [0.0, 6.0]), ("LeakyRelu", [0.1]), ("HardSigmoid", [0.2, 0.5]),
                    ("Sigmoid", []), ("HardSwish", []), ("QuickGelu", [1.702])]


def conv_epilogue(want, summed: bool, activation, rng):
    """A convolution's float64 reference ``want`` through FusedConv's epilogue: plus a random residual where
    ``summed``, rounded to float32, through ``activation`` (a (name, params) pair of ``mlas_activation_fn``, or None).
    Returns (expected, residual or None, the activation function or None)."""
    z = rng.standard_normal(want.shape).astype(np.float32) if summed else None
    if z is not None:
        want = want + z
    fn = None if activation is None else mlas_activation_fn(*activation)
    want = want.astype(np.float32)
    if fn is not None:
        fn(want)
    return want, z, fn
