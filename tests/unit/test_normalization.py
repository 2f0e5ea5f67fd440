"""Unit tests for onyxrt.providers.cpu.nn.normalization and nn.dropout."""

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onyxrt.providers.cpu.nn import dropout as dr
from onyxrt.providers.cpu.nn import normalization as nz

rng = np.random.default_rng(0)

_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
          np.dtype(np.float64): TensorProto.DOUBLE}


def run_ort(op_type, inputs, n_out=1, opset=17, **attrs):
    ort = pytest.importorskip("onnxruntime")
    names = [f"i{j}" if v is not None else "" for j, v in enumerate(inputs)]
    outs = [f"o{j}" for j in range(n_out)]
    node = helper.make_node(op_type, names, outs, **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, _TYPES[v.dtype], v.shape) for n, v in zip(names, inputs) if v is not None],
        [onnx.ValueInfoProto(name=o) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {n: v for n, v in zip(names, inputs) if v is not None})


def randn(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------- BatchNormalization


def _bn_inputs(shape):
    C = shape[1]
    return (randn(*shape), randn(C), randn(C), randn(C), rng.uniform(0.5, 2.0, C).astype(np.float32))


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 5), (2, 3, 4, 5), (1, 3, 2, 3, 4)])
def test_batch_norm_inference(shape):
    x, s, b, m, v = _bn_inputs(shape)
    ref = run_ort("BatchNormalization", [x, s, b, m, v], epsilon=1e-3)[0]
    (y,) = nz.batch_norm(x, s, b, m, v, epsilon=1e-3)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    for fn in (nz.batch_norm_7, nz.batch_norm_9):
        np.testing.assert_allclose(fn(x, s, b, m, v, epsilon=1e-3)[0], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(nz.batch_norm_1(x, s, b, m, v, consumed_inputs=[0, 0, 0, 1, 1], epsilon=1e-3, is_test=1)[0],
                               ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(nz.batch_norm_6(x, s, b, m, v, epsilon=1e-3)[0], ref, rtol=1e-5, atol=1e-5)


def test_batch_norm_non_spatial_and_fp16():
    x = randn(2, 3, 4)
    s, b, m = randn(3, 4), randn(3, 4), randn(3, 4)
    v = rng.uniform(0.5, 2, (3, 4)).astype(np.float32)
    (y,) = nz.batch_norm_7(x, s, b, m, v, spatial=0)
    np.testing.assert_allclose(y, (x - m) / np.sqrt(v + 1e-5) * s + b, rtol=1e-5, atol=1e-5)
    x, s, b, m, v = _bn_inputs((2, 3, 4))
    (y16,) = nz.batch_norm(x.astype(np.float16), s, b, m, v)
    assert y16.dtype == np.float16


def test_batch_norm_training_mode():
    x, s, b, m, v = _bn_inputs((4, 3, 5, 2))
    y, rm, rv = nz.batch_norm(x, s, b, m, v, training_mode=1, momentum=0.8, _num_outputs=3)
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    ref = (x - mean.reshape(1, 3, 1, 1)) / np.sqrt(var.reshape(1, 3, 1, 1) + 1e-5) * s.reshape(1, 3, 1, 1) + b.reshape(1, 3, 1, 1)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rm, m * 0.8 + mean * 0.2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, v * 0.8 + var * 0.2, rtol=1e-5, atol=1e-6)
    assert rm.shape == (3,) and rm.dtype == np.float32
    with pytest.raises(ValueError):
        nz.batch_norm(x, s, b, m, v, _num_outputs=3)


# --------------------------------------------------------------------------- Instance / Group / Layer / RMS


def test_instance_norm_matches_onnxruntime():
    x = randn(2, 3, 4, 5)
    s, b = randn(3), randn(3)
    ref = run_ort("InstanceNormalization", [x, s, b], epsilon=1e-4)[0]
    np.testing.assert_allclose(nz.instance_norm(x, s, b, epsilon=1e-4), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(nz.instance_norm_1(x, s, b, epsilon=1e-4), ref, rtol=1e-4, atol=1e-5)
    assert nz.instance_norm(x.astype(np.float16), s.astype(np.float16), b.astype(np.float16)).dtype == np.float16


def _group_norm_ref(x, scale_c, bias_c, g, eps):
    N, C = x.shape[:2]
    xg = x.reshape(N, g, -1).astype(np.float64)
    y = (xg - xg.mean(axis=2, keepdims=True)) / np.sqrt(xg.var(axis=2, keepdims=True) + eps)
    shape = (1, C) + (1,) * (x.ndim - 2)
    return y.reshape(x.shape) * scale_c.reshape(shape) + bias_c.reshape(shape)


def test_group_norm_versions():
    x = randn(2, 6, 3, 4)
    sc, bc = randn(6), randn(6)
    np.testing.assert_allclose(nz.group_norm(x, sc, bc, num_groups=3, epsilon=1e-3), _group_norm_ref(x, sc, bc, 3, 1e-3),
                               rtol=1e-4, atol=1e-5)
    sg, bg = randn(3), randn(3)
    np.testing.assert_allclose(nz.group_norm_18(x, sg, bg, num_groups=3),
                               _group_norm_ref(x, np.repeat(sg, 2), np.repeat(bg, 2), 3, 1e-5), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        nz.group_norm(x, sc, bc, num_groups=4)


@pytest.mark.parametrize("axis", [-1, -2, 1, 0])
def test_layer_norm_matches_onnxruntime(axis):
    x = randn(2, 3, 8)
    norm_shape = x.shape[axis:]
    s, b = randn(*norm_shape), randn(*norm_shape)
    ref = run_ort("LayerNormalization", [x, s, b], 3, axis=axis, epsilon=1e-5)
    got = nz.layer_norm(x, s, b, axis=axis, _num_outputs=3)
    assert len(got) == 3 and got[0].dtype == np.float32 and got[1].dtype == np.float32
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    (y_nob,) = nz.layer_norm(x, s, None, axis=axis)
    np.testing.assert_allclose(y_nob, ref[0] - b, rtol=1e-4, atol=1e-5)


def test_layer_norm_dtypes():
    x = randn(3, 16)
    s, b = randn(16), randn(16)
    for dt in (np.float16, ml_dtypes.bfloat16, np.float64):
        (y,) = nz.layer_norm(x.astype(dt), s.astype(dt), b.astype(dt))
        assert y.dtype == dt
        ref = nz.layer_norm(x, s, b)[0]
        np.testing.assert_allclose(y.astype(np.float32), ref, rtol=5e-2, atol=5e-2)


def test_rms_norm():
    x = randn(2, 3, 8)
    s = randn(8)
    y = nz.rms_norm(x, s, epsilon=1e-6)
    ref = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + 1e-6) * s
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    y2 = nz.rms_norm(x, randn(3, 8), axis=1)
    assert y2.shape == x.shape
    assert nz.rms_norm(x.astype(np.float16), s.astype(np.float16)).dtype == np.float16


# --------------------------------------------------------------------------- LRN / MVN / Lp


def _lrn_ref(x, alpha, beta, bias, size):
    C = x.shape[1]
    sq = np.zeros_like(x, dtype=np.float64)
    for c in range(C):
        lo, hi = max(0, c - (size - 1) // 2), min(C - 1, c + (size - 1) - (size - 1) // 2)
        sq[:, c] = (x[:, lo : hi + 1].astype(np.float64) ** 2).sum(axis=1)
    return x / (bias + alpha / size * sq) ** beta


def test_lrn_even_size():
    x = randn(2, 6, 3, 3)
    np.testing.assert_allclose(nz.lrn(x, alpha=2e-1, beta=0.75, bias=1.5, size=2), _lrn_ref(x, 2e-1, 0.75, 1.5, 2),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nz.lrn(x, alpha=2e-1, beta=0.6, size=4), _lrn_ref(x, 2e-1, 0.6, 1.0, 4), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn_matches_onnxruntime(size):
    x = randn(2, 6, 3, 3)
    ref = run_ort("LRN", [x], alpha=2e-3, beta=0.75, bias=1.5, size=size)[0]
    np.testing.assert_allclose(nz.lrn(x, alpha=2e-3, beta=0.75, bias=1.5, size=size), ref, rtol=1e-5, atol=1e-6)
    ref = run_ort("LRN", [x], alpha=1e-1, beta=0.5, size=size)[0]
    np.testing.assert_allclose(nz.lrn(x, alpha=1e-1, beta=0.5, size=size), ref, rtol=1e-5, atol=1e-6)


def test_mean_variance_normalization():
    x = randn(2, 3, 4, 5)
    ref = run_ort("MeanVarianceNormalization", [x])[0]
    np.testing.assert_allclose(nz.mean_variance_norm(x), ref, rtol=1e-4, atol=1e-5)
    ref = run_ort("MeanVarianceNormalization", [x], axes=[1, 2])[0]
    np.testing.assert_allclose(nz.mean_variance_norm(x, axes=[1, 2]), ref, rtol=1e-4, atol=1e-5)


def test_lp_normalization():
    x = randn(3, 4)
    x[1] = 0
    for p in (1, 2):
        for axis in (0, -1):
            y = nz.lp_norm(x, axis=axis, p=p)
            norm = np.linalg.norm(x, ord=p, axis=axis, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                ref = np.where(norm == 0, 0, x / norm)
            np.testing.assert_allclose(y, ref, rtol=1e-6)
    with pytest.raises(ValueError):
        nz.lp_norm(x, p=3)


# --------------------------------------------------------------------------- Dropout


def test_dropout_inference_is_identity():
    x = randn(3, 4)
    for fn in (dr.dropout_1, dr.dropout_6, dr.dropout_7):
        y, mask = fn(x, _num_outputs=2)
        np.testing.assert_array_equal(y, x)
        assert mask.dtype == x.dtype and not mask.any()  # like onnxruntime's legacy Dropout
    y, mask = dr.dropout_10(x, ratio=0.3, _num_outputs=2)
    assert mask.dtype == np.bool_ and not mask.any()
    (y,) = dr.dropout(x, np.array(0.5, np.float32), np.array(False))
    np.testing.assert_array_equal(y, x)
    y, mask = dr.dropout(x, None, None, _num_outputs=2)
    assert mask.dtype == np.bool_ and mask.shape == x.shape and mask.all()


def test_dropout_training_mode():
    x = np.ones((200, 100), np.float32)
    y, mask = dr.dropout(x, np.array(0.25, np.float32), np.array(True), seed=3, _num_outputs=2)
    assert y.dtype == np.float32 and mask.dtype == np.bool_
    np.testing.assert_allclose(y[mask], 1 / 0.75)
    assert np.all(y[~mask] == 0)
    assert 0.2 < 1 - mask.mean() < 0.3
    y2, mask2 = dr.dropout(x, np.array(0.25, np.float32), np.array(True), seed=3, _num_outputs=2)
    np.testing.assert_array_equal(mask, mask2)  # same seed, same mask
    (y0,) = dr.dropout(x, np.array(0.0, np.float32), np.array(True))
    np.testing.assert_array_equal(y0, x)
