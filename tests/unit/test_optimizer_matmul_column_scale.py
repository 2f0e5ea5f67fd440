"""A constant per-column scale after a MatMul by constant weights (and its bias Add) is folded into the weights
(optimizer/matmul_column_scale_fusion.py): a layer scale, gamma * (x @ W + b), costs no pass of its own."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort

RNG = np.random.default_rng(5)


def _model(bias: str | None = "vector", scale: str = "vector", weight_readers: int = 1, scale_first: bool = True):
    """x (2, 3, 4, 6) @ W (6, 5) [+ b] * g, with g's and b's forms as named."""
    elem = TensorProto.FLOAT
    inits = {"W": RNG.standard_normal((6, 5)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["p"])]
    last = "p"
    if bias is not None:
        inits["b"] = RNG.standard_normal(5 if bias == "vector" else ()).astype(np.float32)
        nodes.append(helper.make_node("Add", ["b", "p"], ["q"]))
        last = "q"
    inits["g"] = RNG.standard_normal({"vector": (5,), "scalar": (), "row": (1, 5)}[scale]).astype(np.float32)
    nodes.append(helper.make_node("Mul", ["g", last] if scale_first else [last, "g"], ["y"]))
    outputs = [helper.make_tensor_value_info("y", elem, None)]
    if weight_readers > 1:
        nodes.append(helper.make_node("MatMul", ["x", "W"], ["other"]))
        outputs.append(helper.make_tensor_value_info("other", elem, None))
    graph = helper.make_graph(nodes, "layer_scale", [helper.make_tensor_value_info("x", elem, [2, 3, 4, 6])], outputs,
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), inits


def _run(model, x, disabled=()):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"],
                                   disabled_optimizers=list(disabled))
    return session, session.run(None, {"x": x})


@pytest.mark.parametrize("bias", [None, "vector", "scalar"])
@pytest.mark.parametrize("scale_first", [True, False])
def test_layer_scale_is_folded_into_the_weights(bias, scale_first):
    model, inits = _model(bias, scale_first=scale_first)
    x = RNG.standard_normal((2, 3, 4, 6)).astype(np.float32)
    session, (y,) = _run(model, x)
    ops = [n.op_type for n in session._plan.nodes]
    assert "Mul" not in ops, ops
    want = x @ inits["W"]
    if bias is not None:
        want = want + inits["b"]
    want = want * inits["g"]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    session, _ = _run(model, x, disabled=["matmul_column_scale_fusion"])
    assert "Mul" in [n.op_type for n in session._plan.nodes]


@pytest.mark.parametrize("case", ["scalar_scale", "row_scale", "shared_weights"])
def test_other_scales_are_left_alone(case):
    """A scalar scale (``matmul_scale_fusion``'s), a 2-D scale (its broadcast could grow the rank), weights another
    node reads: the Mul stays, the results as without the pass."""
    model, _ = _model(scale={"scalar_scale": "scalar", "row_scale": "row"}.get(case, "vector"),
                      weight_readers=2 if case == "shared_weights" else 1)
    x = RNG.standard_normal((2, 3, 4, 6)).astype(np.float32)
    session, got = _run(model, x, disabled=["MatMulScaleFusion"])
    assert "Mul" in [n.op_type for n in session._plan.nodes]
    _, want = _run(model, x, disabled=["MatMulScaleFusion", "matmul_column_scale_fusion"])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
