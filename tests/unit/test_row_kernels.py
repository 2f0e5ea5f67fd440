"""The numba row kernels (GELU family, LayerNorm family) against the numpy paths they replace."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("numba")

from onyxrt.providers.cpu import jit, row_kernels  # noqa: E402
from onyxrt.providers.cpu.contrib import activations, normalization  # noqa: E402
from onyxrt.providers.cpu.math import activations as onnx_activations  # noqa: E402
from onyxrt.providers.cpu.nn import normalization as nn_normalization  # noqa: E402


def numpy_path(monkeypatch, fn, *args, **kwargs):
    with monkeypatch.context() as patched, np.errstate(all="ignore"):  # inf * 0 in the special values
        patched.setenv(jit.DISABLE_ENV, "1")
        return fn(*args, **kwargs)


def activations_input(rng, shape=(3, 37, 96)):
    """Wide values (both erf branches, saturated sigmoid/tanh) and the special values."""
    x = (rng.standard_normal(shape) * 6).astype(np.float32)
    x.reshape(-1)[:6] = [np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-30]
    return x


@pytest.mark.parametrize("fn, bias", [(activations.gelu, False), (activations.bias_gelu, True),
                                      (activations.fast_gelu, False), (activations.fast_gelu, True),
                                      (activations.quick_gelu, False), (onnx_activations.sigmoid, False),
                                      (onnx_activations.hard_swish, False)])
def test_activation_rows_match_the_numpy_path(monkeypatch, fn, bias) -> None:
    rng = np.random.default_rng(0)
    x = activations_input(rng)
    args = (x, rng.standard_normal(96).astype(np.float32)) if bias else (x,)
    fused = fn(*args)
    assert row_kernels.activation(x, None, row_kernels.GELU_ERF) is not None  # the kernel did run
    expected = numpy_path(monkeypatch, fn, *args)
    assert_within_activation_error(fused, expected, x + args[1] if bias else x)


@pytest.mark.parametrize("kind", [row_kernels.GELU_ERF, row_kernels.GELU_TANH, row_kernels.X_SIGMOID,
                                  row_kernels.SIGMOID, row_kernels.HARD_SWISH])
@pytest.mark.parametrize("bias", [False, True])
def test_activation_rows_split_over_a_pool_equal_one_thread(monkeypatch, kind, bias) -> None:
    """Where the pool owns the cores, the rows split over it as a native task (``row_tasks``): the same bits."""
    from onyxrt.framework.thread_pool import ThreadPool

    rng = np.random.default_rng(1)
    x = activations_input(rng, (4, 37, 1024))
    b = rng.standard_normal(1024).astype(np.float32) if bias else None
    alone = row_kernels.activation(x, b, kind, 1.3)
    pool = ThreadPool(2).splitting_gemms()
    monkeypatch.setattr(row_kernels, "_over_rows", None)  # (the Python-task split must not run)
    with pool.activate():
        split = row_kernels.activation(x, b, kind, 1.3)
        in_place = x.copy()
        row_kernels.activation(in_place, b, kind, 1.3, out=in_place)
    pool.shutdown()
    np.testing.assert_array_equal(split, alone)
    np.testing.assert_array_equal(in_place, alone)


def assert_within_activation_error(fused, expected, v) -> None:
    """The kernels' tanh, erf and logistic are rational fits within 4e-7 (``math.rational_fits``); an
    activation v * g(v) inherits that times |v|, as onnxruntime's MLAS kernels do."""
    np.testing.assert_array_equal(np.isnan(fused), np.isnan(expected))
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(fused[~finite], expected[~finite])
    bound = 2e-6 * np.abs(expected) + 2.5e-7 * np.maximum(1, np.abs(v))
    excess = np.abs(fused[finite] - expected[finite]) - bound[finite]
    assert excess.max() <= 0, f"off by {excess.max()} beyond the bound"


def test_exact_gelu_is_within_the_erf_fit_of_the_double_precision_formula() -> None:
    """Absolute error within |x| times erf's (4e-7); relative error 1e-5 where 1 + erf(x) does not
    cancel (beyond, the absolute bound: onnxruntime's MLAS erf keeps more relative accuracy there)."""
    x = np.linspace(-12, 12, 100_001, dtype=np.float32)
    y = row_kernels.activation(x, None, row_kernels.GELU_ERF).astype(np.float64)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    assert np.max(np.abs(y - exact) / np.maximum(1, np.abs(x))) < 2e-7
    big = (np.abs(exact) > 1e-2) & (x > -1)
    assert np.max(np.abs(y - exact)[big] / np.abs(exact[big])) < 1e-5


def test_silu_saturates_like_numpy(monkeypatch) -> None:
    x = np.array([[-200.0, -88.0, -20.0, 0.0, 20.0, 88.0, 200.0]], dtype=np.float32)
    fused = activations.quick_gelu(x, alpha=1.0)
    np.testing.assert_array_equal(fused[0, 3:], x[0, 3:])
    assert_within_activation_error(fused, numpy_path(monkeypatch, activations.quick_gelu, x, alpha=1.0), x)


def test_activation_may_write_over_its_input() -> None:
    x = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    expected = row_kernels.activation(x, None, row_kernels.GELU_TANH)
    out = row_kernels.activation(x, None, row_kernels.GELU_TANH, alloc=lambda shape, dtype: x)  # x dies here
    assert out is x
    np.testing.assert_array_equal(x, expected)


def test_kernels_decline_what_they_do_not_cover() -> None:
    x64 = np.ones((2, 3))
    assert row_kernels.activation(x64, None, row_kernels.GELU_ERF) is None
    x = np.ones((2, 3), np.float32)
    assert row_kernels.layer_norm(x, None, None, np.ones(4, np.float32), None, 1e-5, False, False) is None


def test_strided_inputs_are_packed_not_declined() -> None:
    """A strided float32 view (a Transpose's result) is copied once and run by the kernel, not left to numpy."""
    x = np.random.default_rng(4).standard_normal((16, 8)).astype(np.float32)
    gamma = np.linspace(0.5, 1.5, 16).astype(np.float32)
    np.testing.assert_array_equal(row_kernels.activation(x.T, None, row_kernels.GELU_ERF),
                                  row_kernels.activation(np.ascontiguousarray(x.T), None, row_kernels.GELU_ERF))
    strided = row_kernels.layer_norm(x.T, None, None, gamma, None, 1e-5, False, False)
    packed = row_kernels.layer_norm(np.ascontiguousarray(x.T), None, None, gamma, None, 1e-5, False, False)
    assert strided is not None
    for got, want in zip(strided[:3], packed[:3]):
        np.testing.assert_array_equal(got, want)


def test_disabled_numba_runs_numpy(monkeypatch) -> None:
    monkeypatch.setenv(jit.DISABLE_ENV, "1")
    assert row_kernels.activation(np.ones((2, 3), np.float32), None, row_kernels.GELU_ERF) is None


@pytest.mark.parametrize("simplified", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_skip_layer_norm_matches_the_numpy_path(monkeypatch, simplified, with_bias) -> None:
    rng = np.random.default_rng(2)
    x, skip = (rng.standard_normal((2, 9, 384)).astype(np.float32) * 3 for _ in range(2))
    gamma, beta, bias = (rng.standard_normal(384).astype(np.float32) for _ in range(3))
    if simplified:
        fn = normalization.skip_simplified_layer_normalization
        args = (x, skip, gamma, bias if with_bias else None)
    else:
        fn = normalization.skip_layer_normalization
        args = (x, skip, gamma, beta, bias if with_bias else None)
    fused = fn(*args, epsilon=1e-6)
    expected = numpy_path(monkeypatch, fn, *args, epsilon=1e-6)
    for got, want in zip(fused, expected):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("fn, kwargs", [
    (nn_normalization.layer_norm, {"_num_outputs": 3}),
    (normalization.layer_normalization_1, {}),
    (normalization.simplified_layer_normalization, {}),
])
def test_layer_norms_match_the_numpy_path(monkeypatch, fn, kwargs) -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 5, 200)) * 2 + 1).astype(np.float32)
    scale = rng.standard_normal(200).astype(np.float32)
    args = (x, scale) if fn is normalization.simplified_layer_normalization else (x, scale, scale[::-1].copy())
    fused = fn(*args, **kwargs)
    expected = numpy_path(monkeypatch, fn, *args, **kwargs)
    for got, want in zip(fused, expected):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("with_beta", [False, True])
@pytest.mark.parametrize("strided", [False, True])
def test_one_output_layer_norm_equals_the_three_output_kernel(monkeypatch, with_beta, strided) -> None:
    """LayerNormalization's one-output path (``layer_norm_last_axis``: less set-up) gives the full kernel's Y bit for
    bit, for strided inputs too, and declines parameters that do not fit the last axis."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 48, 7) if strided else (3, 7, 48)).astype(np.float32)
    x = x.transpose(0, 2, 1) if strided else x
    scale, bias = rng.standard_normal((2, 48)).astype(np.float32)
    beta = bias if with_beta else None
    (y,) = nn_normalization.layer_norm(x, scale, beta, epsilon=1e-6)
    full = nn_normalization.layer_norm(x, scale, beta, epsilon=1e-6, _num_outputs=3)[0]
    np.testing.assert_array_equal(y, full)
    np.testing.assert_allclose(y, numpy_path(monkeypatch, nn_normalization.layer_norm, x, scale, beta,
                                             epsilon=1e-6)[0], rtol=1e-5, atol=2e-6)
    assert row_kernels.layer_norm_last_axis(x, scale[:5], beta, 1e-6) is None
    assert row_kernels.layer_norm_last_axis(x, scale.astype(np.float64), beta, 1e-6) is None


@pytest.mark.parametrize("activation, params", [("", None), ("Relu", None), ("LeakyRelu", [0.1]), ("Tanh", None),
                                                ("Sigmoid", None), ("Clip", [0.0, 6.0]), ("HardSigmoid", [0.2, 0.5])])
@pytest.mark.parametrize("with_z", [False, True])
def test_fused_conv_epilogue_matches_the_numpy_path(monkeypatch, activation, params, with_z) -> None:
    """FusedConv's bias, Z and activation in the compiled epilogue (1x1 and 3x3 GEMM convolutions)."""
    from onyxrt.providers.cpu.contrib.fused import fused_conv

    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 8, 9, 10)).astype(np.float32)
    for kernel, pads in ((1, [0, 0, 0, 0]), (3, [1, 1, 1, 1])):
        w = rng.standard_normal((16, 8, kernel, kernel)).astype(np.float32)
        b = rng.standard_normal(16).astype(np.float32)
        z = rng.standard_normal((2, 16, 9, 10)).astype(np.float32) * 3 if with_z else None
        kwargs = dict(activation=activation, activation_params=params, pads=pads)
        fused = fused_conv(x, w, b, z, **kwargs)
        expected = numpy_path(monkeypatch, fused_conv, x, w, b, z, **kwargs)
        np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-5)
    y = np.ones((1, 2, 3, 3), np.float32)
    epilogue = row_kernels.prepared_channel_epilogue(2, None, None)
    assert epilogue(y, None) and (y == 1).all()
    assert not epilogue(y.astype(np.float64), None)


def test_activation_nodes_in_a_session_write_into_the_plan_buffers(monkeypatch) -> None:
    """Large enough for the plan's _alloc (and in-place donation between the nodes)."""
    from onnx import TensorProto, helper

    import onyxrt as ort

    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("HardSwish", ["s"], ["h"]),
             helper.make_node("Gelu", ["h"], ["y"], domain="com.microsoft")]
    graph = helper.make_graph(nodes, "acts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 1024])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    x = np.random.default_rng(5).standard_normal((64, 1024)).astype(np.float32) * 4
    fused = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    monkeypatch.setenv(jit.DISABLE_ENV, "1")
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-6)


def test_softmax_rows_match_numpy_and_sum_to_one(monkeypatch) -> None:
    from onyxrt.providers.cpu.contrib.attention import _softmax_rows

    scores = (np.random.default_rng(6).standard_normal((3, 4, 33, 70)) * 30).astype(np.float32)
    fused = scores.copy()
    _softmax_rows(fused)
    expected = scores.copy()
    numpy_path(monkeypatch, _softmax_rows, expected)
    np.testing.assert_allclose(fused, expected, rtol=2e-6, atol=1e-9)
    np.testing.assert_allclose(fused.sum(axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("rotary_dim", [0, 32])
def test_rotary_embedding_matches_the_numpy_path(monkeypatch, interleaved, rotary_dim) -> None:
    from onyxrt.providers.cpu.contrib.attention import rotary_embedding

    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 5, 4 * 64)).astype(np.float32)  # (B, S, N*H), 4 heads of 64
    half = (rotary_dim or 64) // 2
    cos, sin = (rng.standard_normal((16, half)).astype(np.float32) for _ in range(2))
    positions = rng.integers(0, 16, (2, 5)).astype(np.int64)
    kwargs = dict(interleaved=interleaved, num_heads=4, rotary_embedding_dim=rotary_dim)
    fused = rotary_embedding(x, positions, cos, sin, **kwargs)
    expected = numpy_path(monkeypatch, rotary_embedding, x, positions, cos, sin, **kwargs)
    np.testing.assert_array_equal(fused, expected)
    with pytest.raises(Exception, match="out of range"):
        rotary_embedding(x, positions + 16, cos, sin, **kwargs)


def test_an_empty_tensor_with_a_bias_keeps_its_shape() -> None:
    y = activations.bias_gelu(np.ones((2, 0), np.float32), np.ones(0, np.float32))
    assert y.shape == (2, 0) and y.dtype == np.float32


def test_prepared_norm_equals_the_general_call_and_constant_parameters_are_kept_by_identity():
    """``prepared_norm_last_axis`` (a node's parameters checked once) computes what ``norm_last_axis`` does, declines
    inputs of another width or dtype, and ``ConstantParameters`` prepares again only for other arrays."""
    from onyxrt.providers.cpu import row_kernels

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 24)).astype(np.float32)
    skip = rng.standard_normal((2, 5, 24)).astype(np.float32)
    gamma, beta, bias = (rng.standard_normal(24).astype(np.float32) for _ in range(3))
    norm = row_kernels.prepared_norm_last_axis(24, gamma, beta, bias, 1e-5, False, True)
    if norm is None:
        pytest.skip("the row kernels need numba")
    got = norm(x, skip)
    want = row_kernels.norm_last_axis(x, skip, gamma, beta, bias, 1e-5, False, True)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(got[3], x + skip + bias, rtol=1e-6)
    assert norm(x[..., :12], None) is None and norm(x.astype(np.float64), None) is None
    assert row_kernels.prepared_norm_last_axis(24, gamma[:12], None, None, 1e-5, False, False) is None
    calls = []
    kept = row_kernels.ConstantParameters(lambda *parameters: calls.append(parameters) or len(calls))
    assert kept(gamma, beta) == 1 and kept(gamma, beta) == 1 and kept(gamma, bias) == 2 and kept(gamma.copy()) == 3
