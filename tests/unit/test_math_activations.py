"""Unit tests for onyxrt.providers.cpu.math.activations."""

import math

import ml_dtypes
import numpy as np
import onnx.defs
import pytest

import onyxrt.providers.cpu.kernel_modules  # noqa: F401  (registers every kernel)
from onyxrt.providers.cpu.math import activations as act
from onyxrt.providers.cpu.kernel_table import CPU_KERNELS

OPS = """Relu LeakyRelu PRelu Elu Selu Celu Sigmoid HardSigmoid HardSwish Tanh Softplus Softsign
ThresholdedRelu Shrink Gelu Mish Swish Clip Softmax LogSoftmax Hardmax""".split()

X = np.array([-100.0, -3.0, -1.0, -0.5, 0.0, 0.3, 1.0, 2.5, 100.0])


@pytest.mark.parametrize("op_type", OPS)
def test_every_schema_version_registered(op_type):
    schemas = onnx.defs.get_all_schemas_with_history()
    versions = {s.since_version for s in schemas if s.name == op_type and s.domain == ""}
    for version in versions:
        kernel = CPU_KERNELS.lookup("", op_type, version)
        assert kernel is not None and kernel.since_version == version, (op_type, version)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


_erf = np.vectorize(math.erf)

CASES = [
    (act.relu, {}, lambda x: np.maximum(x, 0)),
    (act.leaky_relu, {"alpha": 0.1}, lambda x: np.where(x >= 0, x, 0.1 * x)),
    (act.leaky_relu, {"alpha": 3.0}, lambda x: np.where(x >= 0, x, 3.0 * x)),
    (act.leaky_relu, {"alpha": -0.5}, lambda x: np.where(x >= 0, x, -0.5 * x)),
    (act.elu, {"alpha": 0.7}, lambda x: np.where(x > 0, x, 0.7 * (np.exp(x) - 1))),
    (act.selu, {}, lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * (np.exp(x) - 1))),
    (act.celu, {"alpha": 2.0}, lambda x: np.maximum(0, x) + np.minimum(0, 2.0 * (np.exp(x / 2.0) - 1))),
    (act.sigmoid, {}, _sigmoid),
    (act.hard_sigmoid, {"alpha": 0.3, "beta": 0.4}, lambda x: np.clip(0.3 * x + 0.4, 0, 1)),
    (act.hard_swish, {}, lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    (act.tanh, {}, np.tanh),
    (act.softplus, {}, _softplus),
    (act.softsign, {}, lambda x: x / (1 + np.abs(x))),
    (act.thresholded_relu, {"alpha": 0.5}, lambda x: np.where(x > 0.5, x, 0)),
    (act.shrink, {"lambd": 0.7, "bias": 0.2}, lambda x: np.where(x < -0.7, x + 0.2, np.where(x > 0.7, x - 0.2, 0))),
    (act.gelu, {}, lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2)))),
    (
        act.gelu,
        {"approximate": "tanh"},
        lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    ),
    (act.mish, {}, lambda x: x * np.tanh(_softplus(x))),
    (act.swish, {"alpha": 0.8}, lambda x: x * _sigmoid(0.8 * x)),
]


@pytest.mark.parametrize("fn, attrs, ref", CASES, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_activation_values(fn, attrs, ref, dtype):
    x = X.astype(dtype)
    x.flags.writeable = False
    with np.errstate(all="ignore"):
        expected = ref(x.astype(np.float64))
    out = fn(x, **attrs)
    assert type(out) is np.ndarray and out.dtype == np.dtype(dtype) and out.shape == x.shape
    tol = 2e-3 if dtype == np.float16 else 1e-6
    np.testing.assert_allclose(out.astype(np.float64), expected, rtol=tol, atol=tol)


def test_activation_bfloat16_and_scalar():
    out = act.sigmoid(np.array([0.0, 2.0], ml_dtypes.bfloat16))
    assert out.dtype == ml_dtypes.bfloat16
    np.testing.assert_allclose(out.astype(np.float32), [0.5, 0.8808], atol=5e-3)
    scalar = act.gelu(np.array(1.0, np.float32))
    assert type(scalar) is np.ndarray and scalar.shape == ()


def test_activation_nan_propagates():
    x = np.array([np.nan], np.float32)
    for fn in (act.relu, act.sigmoid, act.elu, act.gelu, act.softplus, act.tanh):
        assert np.isnan(fn(x)[0]), fn.__name__


def test_integer_activations():
    x = np.array([-3, 0, 4], np.int32)
    assert act.relu(x).dtype == np.int32 and act.relu(x).tolist() == [0, 0, 4]
    out = act.shrink(np.array([-5, -1, 0, 2, 9], np.int64), lambd=1.5, bias=1.0)
    assert out.dtype == np.int64 and out.tolist() == [-4, 0, 0, 1, 8]
    out = act.prelu(np.array([-4, 2], np.int64), np.array([3], np.int64))
    assert out.dtype == np.int64 and out.tolist() == [-12, 2]
    with pytest.raises(TypeError):
        act.sigmoid(np.array([1, 2], np.int32))


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError):
        act.gelu(np.zeros(2, np.float32), approximate="fast")


def test_prelu_broadcast_and_legacy_channels():
    x = -np.ones((2, 3, 2), np.float32)
    slope = np.array([[1.0], [2.0], [3.0]], np.float32)
    np.testing.assert_array_equal(act.prelu(x, slope)[0, :, 0], [-1, -2, -3])
    # PRelu-1/6: a 1-D slope holds one value per channel
    legacy = act.prelu_legacy(x, np.array([1.0, 2.0, 3.0], np.float32))
    np.testing.assert_array_equal(legacy[1, :, 1], [-1, -2, -3])
    np.testing.assert_array_equal(act.prelu_legacy(x, np.array([0.5], np.float32)), np.full((2, 3, 2), -0.5))


# --------------------------------------------------------------------------- Clip


def test_clip_attribute_versions():
    x = np.array([-5.0, 0.5, 5.0], np.float32)
    for fn in (act.clip_1, act.clip_6):
        np.testing.assert_array_equal(fn(x, min=-1.0, max=1.0), [-1, 0.5, 1])
        np.testing.assert_array_equal(fn(x, min=0.0), [0, 0.5, 5])
        np.testing.assert_array_equal(fn(x), x)
    # Clip-6 defaults (float lowest/max) must not overflow float16
    h = act.clip_6(x.astype(np.float16))
    assert h.dtype == np.float16 and h.tolist() == [-5, 0.5, 5]


def test_clip_inputs():
    x = np.array([-5.0, 0.5, 5.0], np.float32)
    x.flags.writeable = False
    lo, hi = np.array(-1.0, np.float32), np.array(1.0, np.float32)
    np.testing.assert_array_equal(act.clip(x, lo, hi), [-1, 0.5, 1])
    np.testing.assert_array_equal(act.clip(x, None, hi), [-5, 0.5, 1])
    np.testing.assert_array_equal(act.clip(x, lo), [-1, 0.5, 5])
    np.testing.assert_array_equal(act.clip(x, np.array([], np.float32), hi), [-5, 0.5, 1])
    out = act.clip(x)
    assert out is not x and np.array_equal(out, x)
    # min > max: everything becomes max
    np.testing.assert_array_equal(act.clip(x, np.array(2.0, np.float32), hi), [1, 1, 1])
    i = act.clip(np.array([-300, 7, 300], np.int16), np.array(-10, np.int16), np.array(10, np.int16))
    assert i.dtype == np.int16 and i.tolist() == [-10, 7, 10]
    assert act.clip(np.array(3.0, np.float32), lo, hi).shape == ()


# --------------------------------------------------------------------------- Softmax family


def _softmax_ref(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("axis", [-1, 0, 1, 2])
def test_softmax_13_single_axis(axis):
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    out = act.softmax(x, axis=axis)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _softmax_ref(x.astype(np.float64), axis), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        act.log_softmax(x, axis=axis), np.log(_softmax_ref(x.astype(np.float64), axis)), rtol=1e-5, atol=1e-6
    )



@pytest.mark.parametrize("buffer", ["fresh", "input_reused", "planner_buffer"])
def test_softmax_13_last_axis_float32_compiled_path(buffer):
    """The last-axis float32 path (one compiled pass a row) equals numpy's softmax, -inf rows giving NaN."""
    x = (np.random.default_rng(1).standard_normal((2, 3, 130 * 24)) * 6).astype(np.float32)  # above ALLOC_MIN_BYTES
    x[0, 0, :] = -np.inf
    x[1, 2, 7:] = np.finfo(np.float32).min  # a padding mask's fill value
    expected = act.softmax_values(x.copy(), 2)
    feed = x.copy()
    alloc = {"fresh": None, "input_reused": lambda shape, dtype: feed,
             "planner_buffer": lambda shape, dtype: np.empty(shape, dtype)}[buffer]
    out = act.softmax(feed, axis=-1, _alloc=alloc)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert (out is feed) == (buffer == "input_reused")
    if buffer != "input_reused":
        np.testing.assert_array_equal(feed, x)  # the input is left alone
    assert np.isnan(out[0, 0]).all()
    np.testing.assert_allclose(out[~np.isnan(out)], expected[~np.isnan(expected)], rtol=2e-6, atol=1e-8)

def test_softmax_legacy_coerces_to_2d():
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    out = act.softmax_legacy(x, axis=1)  # normalized over the 12 trailing values of each batch row
    expected = _softmax_ref(x.reshape(2, 12).astype(np.float64), 1).reshape(2, 3, 4)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert not np.allclose(out, act.softmax(x, axis=1))
    np.testing.assert_allclose(act.softmax_legacy(x, axis=-1), act.softmax(x, axis=-1), rtol=1e-6)
    np.testing.assert_allclose(act.log_softmax_legacy(x), np.log(expected), rtol=1e-5, atol=1e-6)
    whole = _softmax_ref(x.reshape(1, 24), 1).reshape(2, 3, 4)
    np.testing.assert_allclose(act.softmax_legacy(x, axis=0), whole, rtol=1e-5)


def test_softmax_extremes_and_types():
    x = np.array([[1000.0, 0.0], [-np.inf, 0.0]], np.float32)
    np.testing.assert_array_equal(act.softmax(x), [[1, 0], [0, 1]])
    h = act.softmax(np.array([1.0, 2.0], np.float16))
    assert h.dtype == np.float16
    b = act.softmax(np.array([1.0, 2.0], ml_dtypes.bfloat16))
    assert b.dtype == ml_dtypes.bfloat16


def test_hardmax_first_max():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]], np.float32)
    np.testing.assert_array_equal(act.hardmax(x), [[0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(act.hardmax(x, axis=0), [[0, 1, 1], [1, 0, 0]])
    y = np.array([[[1.0, 2.0], [5.0, 0.0]]], np.float32)  # legacy: argmax over the flattened row
    np.testing.assert_array_equal(act.hardmax_legacy(y, axis=1), [[[0, 0], [1, 0]]])
    assert act.hardmax(np.zeros((0, 3), np.float32)).shape == (0, 3)


@pytest.mark.parametrize("kernel, reference", [
    ("sigmoid_rows", lambda x: 1 / (1 + np.exp(-x))),
    ("x_sigmoid_rows", lambda x: x / (1 + np.exp(-x))),
    ("gelu_tanh_rows", lambda x: x / (1 + np.exp(-2 * 0.7978845608028654 * (x + 0.044715 * x ** 3)))),
])
def test_compiled_logistic_rows(kernel, reference):
    """The compiled logistic rows (one division by 1 + 2^t, ``jit_rows.exp2_limited``): relative accuracy over the
    range where the results are normal floats, and the IEEE edges as x * sigmoid(x) has them (-inf gives NaN)."""
    jit_rows = pytest.importorskip("onyxrt.providers.cpu.jit_rows")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(20000) * 6, np.linspace(-80, 80, 4001)]).astype(np.float32)[None]
    out = np.empty_like(x)
    getattr(jit_rows, kernel)(x, np.zeros(0, np.float32), out, np.float32(1.0), 0, 1)
    with np.errstate(all="ignore"):
        expected = reference(x.astype(np.float64))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-30)
    edges = np.array([[0.0, -0.0, np.inf, -np.inf, np.nan, 200.0, -200.0, 1e-30]], np.float32)
    getattr(jit_rows, kernel)(edges, np.zeros(0, np.float32), out[:, :8], np.float32(1.0), 0, 1)
    if kernel == "sigmoid_rows":
        np.testing.assert_array_equal(out[0, :8], [0.5, 0.5, 1.0, 0.0, np.nan, 1.0, 0.0, 0.5])
    else:
        np.testing.assert_array_equal(out[0, :8], np.array([0.0, -0.0, np.inf, np.nan, np.nan, 200.0, -0.0, 5e-31], np.float32))
