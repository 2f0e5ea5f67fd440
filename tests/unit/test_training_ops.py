"""Unit tests for the ai.onnx.preview.training optimizers and the private autodiff kernels."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

import onyxrt.providers.cpu.kernel_modules  # noqa: F401  (registers every kernel)
from onyxrt.graph.autodiff import AUTODIFF_DOMAIN, TRAINING_DOMAIN
from onyxrt.providers.cpu.kernel_table import CPU_KERNELS
from onyxrt.providers.cpu.training import gradient as gk
from onyxrt.providers.cpu.training import optimizers as opt

RNG = np.random.default_rng(7)


def _ro(*arrays):
    for a in arrays:
        a.flags.writeable = False
    return arrays


def _reference(op_type, inputs, n_outputs, **attrs):
    names = [f"i{k}" for k in range(len(inputs))]
    outs = [f"o{k}" for k in range(n_outputs)]
    node = helper.make_node(op_type, names, outs, domain=TRAINING_DOMAIN, **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in zip(names, inputs)],
        [helper.make_empty_tensor_value_info(o) for o in outs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(TRAINING_DOMAIN, 1), helper.make_opsetid("", 17)])
    return ReferenceEvaluator(model).run(None, dict(zip(names, inputs)))


def test_registered_versions():
    for op_type in ("Adagrad", "Adam", "Momentum"):
        kernel = CPU_KERNELS.lookup(TRAINING_DOMAIN, op_type, 1)
        assert kernel is not None and kernel.multi_output
    # Gradient is expanded before partitioning, never run as a kernel.
    assert CPU_KERNELS.lookup(TRAINING_DOMAIN, "Gradient", 1) is None
    for op_type in ("ConstLike", "SumToShape", "BroadcastLike", "Unreduce", "ReduceLike", "SoftmaxGrad", "MatMulGrad"):
        assert CPU_KERNELS.lookup(AUTODIFF_DOMAIN, op_type, 1) is not None


# --------------------------------------------------------------------------- Adagrad


def _adagrad(r, t, x, g, h, norm_coefficient, epsilon, decay_factor):
    rate = r / (1 + t * decay_factor)
    g_reg = norm_coefficient * x + g
    h_new = h + g_reg * g_reg
    return x - rate * g_reg / (np.sqrt(h_new) + epsilon), h_new


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adagrad_single_and_multiple(dtype):
    r, t = np.array(0.1, np.float32), np.array(3, np.int64)
    x1, g1, h1 = (RNG.uniform(-1, 1, (2, 3)).astype(dtype) for _ in range(3))
    x2, g2, h2 = (RNG.uniform(0.1, 1, (4,)).astype(dtype) for _ in range(3))
    h1 = np.abs(h1)
    _ro(x1, g1, h1, x2, g2, h2)
    attrs = dict(norm_coefficient=0.01, epsilon=1e-5, decay_factor=0.1)
    out = opt.adagrad(r, t, x1, x2, g1, g2, h1, h2, **attrs, _num_outputs=4)
    assert len(out) == 4
    for i, (x, g, h) in enumerate(((x1, g1, h1), (x2, g2, h2))):
        xe, he = _adagrad(0.1, 3, x.astype(np.float64), g, h, **attrs)
        assert out[i].dtype == dtype and out[i + 2].dtype == dtype
        np.testing.assert_allclose(out[i], xe, rtol=1e-5)
        np.testing.assert_allclose(out[i + 2], he, rtol=1e-5)
    ref = _reference("Adagrad", [r, t, x1, x2, g1, g2, h1, h2], 4, **attrs)
    for got, exp in zip(out, ref):
        np.testing.assert_allclose(got, exp, rtol=1e-5)


def test_adagrad_defaults():
    r, t = np.array(1.0), np.array(0, np.int64)
    x, g, h = np.array([1.0]), np.array([2.0]), np.array([0.0])
    x_new, h_new = opt.adagrad(r, t, x, g, h)
    np.testing.assert_allclose(h_new, [4.0])
    np.testing.assert_allclose(x_new, [1.0 - 2.0 / (2.0 + 1e-6)])


# --------------------------------------------------------------------------- Adam


def _adam(r, t, x, g, v, h, norm_coefficient, norm_coefficient_post, alpha, beta, epsilon):
    g_reg = norm_coefficient * x + g
    v_new = alpha * v + (1 - alpha) * g_reg
    h_new = beta * h + (1 - beta) * g_reg * g_reg
    rate = r * math.sqrt(1 - beta**t) / (1 - alpha**t) if t > 0 else r
    x_new = x - rate * v_new / (np.sqrt(h_new) + epsilon)
    return (1 - norm_coefficient_post) * x_new, v_new, h_new


@pytest.mark.parametrize("step", [0, 1, 5])
def test_adam_multiple_with_bias_correction(step):
    r, t = np.array(0.05, np.float32), np.array(step, np.int64)
    tensors = {}
    for k, shape in (("1", (3,)), ("2", (2, 2))):
        tensors["x" + k], tensors["g" + k], tensors["v" + k] = (RNG.uniform(-1, 1, shape).astype(np.float32) for _ in range(3))
        tensors["h" + k] = RNG.uniform(0, 1, shape).astype(np.float32)
    _ro(*tensors.values())
    attrs = dict(norm_coefficient=0.02, norm_coefficient_post=0.01, alpha=0.85, beta=0.95, epsilon=1e-4)
    order = ["x1", "x2", "g1", "g2", "v1", "v2", "h1", "h2"]
    out = opt.adam(r, t, *[tensors[n] for n in order], **attrs, _num_outputs=6)
    for i, k in enumerate("12"):
        expected = _adam(0.05, step, *(tensors[n + k].astype(np.float64) for n in "xgvh"), **attrs)
        for j, e in enumerate(expected):
            assert out[2 * j + i].dtype == np.float32
            np.testing.assert_allclose(out[2 * j + i], e, rtol=1e-5, atol=1e-7)
    ref = _reference("Adam", [r, t] + [tensors[n] for n in order], 6, **attrs)
    for got, exp in zip(out, ref):
        np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-7)


def test_adam_defaults_float64():
    x, g, v, h = np.array([1.0, -2.0]), np.array([0.5, 0.5]), np.zeros(2), np.zeros(2)
    out = opt.adam(np.array(0.1), np.array(1, np.int64), x, g, v, h)
    expected = _adam(0.1, 1, x, g, v, h, 0.0, 0.0, 0.9, 0.999, 1e-6)
    for got, exp in zip(out, expected):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, exp, rtol=1e-12)


# --------------------------------------------------------------------------- Momentum


@pytest.mark.parametrize("mode", ["standard", "nesterov"])
@pytest.mark.parametrize("step", [0, 2])
def test_momentum(mode, step):
    r, t = np.array(0.1, np.float32), np.array(step, np.int64)
    x1, g1, v1 = (RNG.uniform(-1, 1, (3,)).astype(np.float32) for _ in range(3))
    x2, g2, v2 = (RNG.uniform(-1, 1, (2, 2)).astype(np.float32) for _ in range(3))
    _ro(x1, g1, v1, x2, g2, v2)
    attrs = dict(alpha=0.9, beta=0.5, mode=mode, norm_coefficient=0.01)
    out = opt.momentum(r, t, x1, x2, g1, g2, v1, v2, **attrs, _num_outputs=4)
    for i, (x, g, v) in enumerate(((x1, g1, v1), (x2, g2, v2))):
        g_reg = 0.01 * x + g
        v_new = 0.9 * v + (0.5 if step > 0 else 1.0) * g_reg
        x_new = x - 0.1 * v_new if mode == "standard" else x - 0.1 * (g_reg + 0.9 * v_new)
        assert out[i].dtype == np.float32
        np.testing.assert_allclose(out[i], x_new, rtol=1e-5)
        np.testing.assert_allclose(out[i + 2], v_new, rtol=1e-5)
    ref = _reference("Momentum", [r, t, x1, x2, g1, g2, v1, v2], 4, **attrs)
    for got, exp in zip(out, ref):
        np.testing.assert_allclose(got, exp, rtol=1e-5)


def test_optimizer_errors():
    r, t = np.array(0.1, np.float32), np.array(0, np.int64)
    x = np.ones(2, np.float32)
    with pytest.raises(ValueError, match="mode"):
        opt.momentum(r, t, x, x, x, alpha=0.9, beta=0.1, mode="heavy-ball", norm_coefficient=0.0)
    with pytest.raises(ValueError, match="required"):
        opt.momentum(r, t, x, x, x, alpha=0.9, beta=0.1, mode="standard")
    with pytest.raises(ValueError, match="groups"):
        opt.adagrad(r, t, x, x)
    with pytest.raises(TypeError, match="int64"):
        opt.adam(r, np.array(0.0, np.float32), x, x, x, x)
    with pytest.raises(TypeError, match="float or double"):
        opt.adagrad(r, t, np.ones(2, np.int32), np.ones(2, np.int32), np.ones(2, np.int32))
    with pytest.raises(ValueError, match="scalar"):
        opt.adagrad(np.ones(2, np.float32), t, x, x, x)
    with pytest.raises(ValueError, match="outputs"):
        opt.adagrad(r, t, x, x, x, _num_outputs=1)


# --------------------------------------------------------------------------- private autodiff kernels


def test_sum_to_shape_and_broadcast_like():
    x = RNG.normal(size=(2, 3, 4))
    np.testing.assert_allclose(gk.sum_to_shape_kernel(x, np.zeros((3, 1))), x.sum(axis=(0, 2)).reshape(3, 1))
    np.testing.assert_allclose(gk.sum_to_shape_kernel(x, np.zeros(())), x.sum())
    assert gk.sum_to_shape_kernel(x, np.zeros((2, 3, 4))) is x
    assert gk.sum_to_shape_kernel(x.astype(np.float32), np.zeros(4, np.float32)).dtype == np.float32
    with pytest.raises(ValueError):
        gk.sum_to_shape_kernel(x, np.zeros((5,)))
    b = gk.broadcast_like(np.arange(3.0).reshape(3, 1), x[0])
    assert b.shape == (3, 4)


def test_const_like():
    ref = np.zeros((2, 2), np.float32)
    c = gk.const_like(ref, value=2.5)
    assert c.shape == () and c.dtype == np.float32 and c == 2.5
    ones = gk.const_like(ref, value=1.0, scalar=0)
    assert ones.shape == (2, 2) and ones.dtype == np.float32 and (ones == 1).all()


@pytest.mark.parametrize("keepdims", [0, 1])
def test_unreduce_and_reduce_like_are_adjoint(keepdims):
    x = RNG.normal(size=(2, 3, 4))
    y = x.mean(axis=(0, 2), keepdims=bool(keepdims))
    dy = RNG.normal(size=y.shape)
    up = gk.unreduce(dy, x, np.array([0, -1], np.int64), keepdims=keepdims, mean=1)
    assert up.shape == x.shape
    g = RNG.normal(size=x.shape)
    down = gk.reduce_like(g, dy, None, axes=[0, 2], keepdims=keepdims, mean=1)
    assert down.shape == dy.shape
    np.testing.assert_allclose(np.sum(up * g), np.sum(dy * down))
    # no axes: everything, unless noop_with_empty_axes
    assert gk.unreduce(np.array(2.0), x, keepdims=0).shape == x.shape
    np.testing.assert_array_equal(gk.unreduce(g, x, None, noop_with_empty_axes=1), g)


@pytest.mark.parametrize("log", [0, 1])
@pytest.mark.parametrize("legacy,axis", [(0, 1), (0, -1), (1, 1)])
def test_softmax_grad_matches_jacobian(log, legacy, axis):
    x = RNG.normal(size=(2, 3, 2))

    def forward(v):
        if legacy:
            flat = v.reshape(2, -1)
            e = np.exp(flat - flat.max(axis=1, keepdims=True))
            s = (e / e.sum(axis=1, keepdims=True)).reshape(v.shape)
        else:
            e = np.exp(v - v.max(axis=axis, keepdims=True))
            s = e / e.sum(axis=axis, keepdims=True)
        return np.log(s) if log else s

    y = forward(x)
    dy = RNG.normal(size=x.shape)
    got = gk.softmax_grad(dy, y, axis=axis, legacy=legacy, log=log)
    eps = 1e-6
    expected = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        expected[idx] = np.sum(dy * (forward(xp) - forward(xm))) / (2 * eps)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)


def test_slice_index_matches_onnx_slice():
    x = np.arange(5 * 6).reshape(5, 6)
    cases = [
        ([0, 1], [100, -1], [0, 1], [1, 2]),
        ([-1], [-100], [0], [-1]),
        ([4], [0], [1], [-2]),
        ([-2], [10], [-1], [1]),
        ([10], [20], [0], [1]),
        ([2], [-9223372036854775807], [1], [-1]),
    ]
    for starts, ends, axes, steps in cases:
        node = helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.INT64, x.shape)]
            + [helper.make_tensor_value_info(n, onnx.TensorProto.INT64, [len(starts)]) for n in ("s", "e", "a", "st")],
            [helper.make_tensor_value_info("y", onnx.TensorProto.INT64, None)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        feeds = {"x": x, "s": np.array(starts), "e": np.array(ends), "a": np.array(axes), "st": np.array(steps)}
        (expected,) = ReferenceEvaluator(model).run(None, feeds)
        np.testing.assert_array_equal(x[gk.slice_index(x.shape, starts, ends, axes, steps)], expected)


def test_slice_concat_gather_tile_grads():
    x = np.zeros((4, 5))
    dy = np.ones((2, 2))
    out = gk.slice_grad(dy, x, np.array([1, 0]), np.array([3, 4]), np.array([0, 1]), np.array([1, 2]))
    expected = np.zeros((4, 5))
    expected[1:3, 0:4:2] = 1
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(gk.slice_grad(dy, x, starts=[1, 0], ends=[3, 2]), np.pad(dy, ((1, 1), (0, 3))))

    a, b = np.zeros((2, 1)), np.zeros((2, 3))
    parts = gk.concat_grad(np.arange(8.0).reshape(2, 4), a, b, axis=-1)
    assert [p.shape for p in parts] == [(2, 1), (2, 3)]

    data = np.zeros((3, 2))
    g = gk.gather_grad(np.ones((2, 2, 2)), data, np.array([[0, 0], [-1, 1]]), axis=0)
    np.testing.assert_array_equal(g, [[2, 2], [1, 1], [1, 1]])

    idx = np.array([[0, 0, 2]])
    g = gk.gather_elements_grad(np.ones((1, 3)), np.zeros((1, 3)), idx, axis=1)
    np.testing.assert_array_equal(g, [[2, 0, 1]])

    t = gk.tile_grad(np.arange(12.0).reshape(4, 3), np.zeros((2, 3)))
    np.testing.assert_array_equal(t, np.arange(12.0).reshape(2, 2, 3).sum(axis=0))


@pytest.mark.parametrize("shape_a,shape_b", [((2, 3), (3, 4)), ((3,), (3, 4)), ((2, 3), (3,)), ((3,), (3,)), ((2, 1, 2, 3), (4, 3, 2))])
def test_matmul_grad_is_the_adjoint_of_matmul(shape_a, shape_b):
    a, b = RNG.normal(size=shape_a), RNG.normal(size=shape_b)
    dy = RNG.normal(size=np.matmul(a, b).shape)
    da = gk.matmul_grad(dy, a, b, which=0)
    db = gk.matmul_grad(dy, a, b, which=1)
    assert da.shape == a.shape and db.shape == b.shape
    # <dy, d(a@b)> = <da, delta_a> + <db, delta_b> for random perturbations
    pa, pb = RNG.normal(size=shape_a), RNG.normal(size=shape_b)
    lhs = np.sum(dy * (np.matmul(pa, b) + np.matmul(a, pb)))
    np.testing.assert_allclose(lhs, np.sum(da * pa) + np.sum(db * pb))
