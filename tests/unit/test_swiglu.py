"""com.microsoft SwiGLU (onnxruntime's CPU provider has no kernel for it: checked against its schema's formula):
packed and separate halves, clamps, beta, float16 rounding, and the compiled float32 rows against the numpy
path."""

import numpy as np
import pytest
from onnx import TensorProto, helper

import onyxrt
from onyxrt.providers.cpu.contrib import activations



def _reference(gate, up, activation_alpha=1.0, activation_beta=0.0, limit=0.0, round_activation=0):
    """The schema's formula in float64 (float16: the gated half rounded first where asked, the result once)."""
    if up is None:
        gate, up = np.split(gate, 2, axis=-1)
    g, u = gate.astype(np.float64), up.astype(np.float64)
    if limit > 0:
        g, u = np.minimum(g, limit), np.clip(u, -limit, limit)
    gated = g / (1 + np.exp(-activation_alpha * g))
    if round_activation:
        gated = gated.astype(gate.dtype).astype(np.float64)
    return (gated * (u + activation_beta)).astype(gate.dtype)


def _model(packed: bool, dtype: int, **attributes):
    inputs = ["gate"] if packed else ["gate", "up"]
    node = helper.make_node("SwiGLU", inputs, ["y"], domain="com.microsoft", **attributes)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(name, dtype, None) for name in inputs],
                              [helper.make_tensor_value_info("y", dtype, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("attributes", [{}, {"activation_alpha": 1.702}, {"activation_alpha": 1.5,
                                        "activation_beta": 1.0, "limit": 2.5}])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_swiglu_matches_its_formula(packed, attributes, dtype):
    rng = np.random.default_rng(0)
    width = 2 * 37 if packed else 37
    feeds = {"gate": (rng.standard_normal((3, 5, width)) * 4).astype(dtype)}
    if not packed:
        feeds["up"] = (rng.standard_normal((3, 5, width)) * 4).astype(dtype)
    if dtype == np.float16:
        attributes = dict(attributes, round_activation=1)
    model = _model(packed, TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16, **attributes)
    got = onyxrt.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    want = _reference(feeds["gate"], feeds.get("up"), **attributes)
    assert got.dtype == want.dtype and got.shape == want.shape == (3, 5, 37)
    tolerance = 1e-5 if dtype == np.float32 else 2e-3
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tolerance, atol=tolerance)


def test_compiled_rows_equal_the_numpy_path(monkeypatch):
    rng = np.random.default_rng(1)
    gate = (rng.standard_normal((4, 2 * 300)) * 6).astype(np.float32)
    gate[0, :3] = [np.nan, 200.0, -200.0]
    fast = activations.swiglu(gate, None, activation_alpha=1.702, activation_beta=0.5, limit=7.0)
    monkeypatch.setattr(activations.row_kernels, "swiglu", lambda *args: None)
    slow = activations.swiglu(gate, None, activation_alpha=1.702, activation_beta=0.5, limit=7.0)
    # the compiled logistic is within 2e-7 absolute (``math.rational_fits``), times |G (L + beta)| <= 7 * 7.5 here
    np.testing.assert_allclose(fast, slow, rtol=2e-6, atol=7 * 7.5 * 2e-7)
    assert np.isnan(fast[0, 0])


def test_mismatched_halves_are_refused():
    with pytest.raises(Exception, match="SwiGLU"):
        activations.swiglu(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(Exception, match="even"):
        activations.swiglu(np.zeros((2, 3), np.float32))
