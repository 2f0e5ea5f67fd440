"""Unit tests for the com.microsoft / com.microsoft.nchwc kernels onnxruntime's optimizers write
(onyxrt/providers/cpu/contrib/{fused,activations,normalization,attention,nchwc}.py).

Each op is checked against a numpy reference and, where onnxruntime is installed, against
onnxruntime running the same one-node model (through onyxrt.InferenceSession too, so the
registration and attribute binding are covered).
"""

from __future__ import annotations

import math
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onyxrt
from onyxrt.providers.cpu.contrib import activations as act
from onyxrt.providers.cpu.contrib import attention as att
from onyxrt.providers.cpu.contrib import fused
from onyxrt.providers.cpu.contrib import nchwc
from onyxrt.providers.cpu.contrib import normalization as nrm

MS = "com.microsoft"
rng = np.random.default_rng(0)


def randn(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def _model(op_type, inputs, n_out, attrs, domain, opset, out_names=None):
    names = [f"i{j}" if v is not None else "" for j, v in enumerate(inputs)]
    outs = out_names or [f"o{j}" for j in range(n_out)]
    node = helper.make_node(op_type, names, outs, domain=domain, **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for n, v in zip(names, inputs)
            if v is not None
        ],
        [onnx.ValueInfoProto(name=o) for o in outs if o],
    )
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)]
    if domain not in ("", MS):
        imports.append(helper.make_opsetid(domain, 1))
    return helper.make_model(graph, opset_imports=imports), {n: v for n, v in zip(names, inputs) if v is not None}


def both(op_type, inputs, n_out=1, domain=MS, opset=17, out_names=None, **attrs):
    """(onyxrt outputs, onnxruntime outputs) of a one-node model."""
    ort = pytest.importorskip("onnxruntime")
    model, feeds = _model(op_type, inputs, n_out, attrs, domain, opset, out_names)
    data = model.SerializeToString()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]).run(None, feeds)
    got = onyxrt.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    return got, want


def assert_close(got, want, rtol=1e-4, atol=1e-5):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol)


# =========================================================================== fused.py


def _conv_ref(x, w, b, pads, strides=(1, 1), group=1):
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - kh) // strides[0] + 1
    ow = (xp.shape[3] - kw) // strides[1] + 1
    y = np.zeros((n, m, oh, ow), np.float64)
    mg = m // group
    for o in range(m):
        gi = o // mg
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, gi * cg : (gi + 1) * cg, i : i + strides[0] * oh : strides[0], j : j + strides[1] * ow : strides[1]]
                y[:, o] += np.einsum("nchw,c->nhw", patch, w[o, :, i, j])
    if b is not None:
        y += b[None, :, None, None]
    return y.astype(np.float32)


@pytest.mark.parametrize(
    "activation,params,fn",
    [
        ("", None, lambda y: y),
        ("Relu", None, lambda y: np.maximum(y, 0)),
        ("LeakyRelu", [0.2], lambda y: np.where(y < 0, 0.2 * y, y)),
        ("Tanh", None, np.tanh),
        ("Sigmoid", None, lambda y: 1 / (1 + np.exp(-y))),
        ("Clip", [-0.5, 0.7], lambda y: np.clip(y, -0.5, 0.7)),
        ("HardSigmoid", [0.3, 0.4], lambda y: np.clip(0.3 * y + 0.4, 0, 1)),
    ],
)
def test_fused_conv_activations(activation, params, fn):
    x, w, b, z = randn(2, 4, 6, 6), randn(6, 4, 3, 3), randn(6), randn(2, 6, 6, 6)
    kw = {"activation": activation} if activation else {}
    if params:
        kw["activation_params"] = params
    y = fused.fused_conv(x, w, b, z, pads=[1, 1, 1, 1], **kw)
    np.testing.assert_allclose(y, fn(_conv_ref(x, w, b, [1, 1, 1, 1]) + z), rtol=1e-4, atol=1e-4)
    if activation:
        got, want = both("FusedConv", [x, w, b, z], pads=[1, 1, 1, 1], **kw)
        assert_close(got, want, atol=1e-4)


def test_fused_conv_group_stride_no_sum():
    x, w = randn(1, 4, 7, 7), randn(8, 2, 3, 3)
    y = fused.fused_conv(x, w, None, group=2, strides=[2, 2], activation="Relu")
    np.testing.assert_allclose(y, np.maximum(_conv_ref(x, w, None, [0, 0, 0, 0], (2, 2), 2), 0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["depthwise", "depthwise_s2", "3x3", "1x1_expand"])
@pytest.mark.parametrize("activation,params", [("Clip", [0.0, 6.0]), ("Relu", None), ("", None), ("HardSigmoid", [0.2, 0.5])])
def test_fused_conv_with_constant_weights_matches_onnxruntime(case, activation, params):
    """W and B as initializers: prepacked weights, and the activation applied inside the conv."""
    ort = pytest.importorskip("onnxruntime")
    x = randn(1, 8, 13, 12)
    group, k, s, m = 1, 3, 1, 8
    if case.startswith("depthwise"):
        group, s = 8, (2 if case.endswith("s2") else 1)
    elif case == "1x1_expand":
        k, m = 1, 32
    w, b = randn(m, 8 // group, k, k), randn(m)
    attrs = dict(group=group, strides=[s, s], pads=[k // 2] * 4)
    if activation:
        attrs["activation"] = activation
    if params:
        attrs["activation_params"] = params
    node = helper.make_node("FusedConv", ["x", "w", "b"], ["y"], domain=MS, **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)], [onnx.ValueInfoProto(name="y")],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")],
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]).SerializeToString()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = onyxrt.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert_close(got, want, atol=1e-4)


def test_fused_conv_rejects_bad_activation():
    x, w = randn(1, 2, 4, 4), randn(2, 2, 1, 1)
    with pytest.raises(NotImplementedError):
        fused.fused_conv(x, w, activation="Softmax")
    with pytest.raises(ValueError):
        fused.fused_conv(x, w, activation="Clip", activation_params=[0.0])


@pytest.mark.parametrize(
    "activation,extra",
    [("Relu", {}), ("LeakyRelu", {"activation_alpha": 0.3}), ("Sigmoid", {}), ("Tanh", {}),
     ("HardSigmoid", {"activation_alpha": 0.25, "activation_beta": 0.4}), ("Elu", {"activation_alpha": 0.7}),
     ("Selu", {"activation_alpha": 1.5, "activation_gamma": 1.1}), ("ThresholdedRelu", {"activation_alpha": 0.5}),
     ("Celu", {"activation_alpha": 0.8}), ("Softplus", {}), ("Softsign", {}),
     ("ScaledTanh", {"activation_alpha": 0.5, "activation_beta": 2.0}),
     ("ParametricSoftplus", {"activation_alpha": 0.5, "activation_beta": 2.0})],
)
def test_fused_gemm_matches_onnxruntime(activation, extra):
    a, b, c = randn(3, 5) * 2, randn(4, 5), randn(4)
    got, want = both("FusedGemm", [a, b, c], transB=1, alpha=0.5, beta=2.0, activation=activation, **extra)
    assert_close(got, want)


def test_fused_gemm_reference():
    a, b, c = randn(3, 5), randn(5, 4), randn(3, 4)
    y = fused.fused_gemm(a, b, c, alpha=2.0, beta=0.5, activation="LeakyRelu", activation_alpha=0.1)
    ref = 2.0 * a @ b + 0.5 * c
    np.testing.assert_allclose(y, np.where(ref < 0, 0.1 * ref, ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "attrs,ashape,bshape",
    [
        ({}, (2, 3, 5), (5, 4)),
        ({"transA": 1, "alpha": 0.5}, (2, 5, 3), (2, 5, 4)),
        ({"transB": 1}, (3, 5), (2, 4, 5)),
        ({"transBatchA": 1}, (3, 2, 5), (2, 5, 6)),
        ({"transBatchB": 1}, (2, 3, 5), (5, 2, 6)),
        ({"transBatchA": 1, "transA": 1}, (5, 2, 3), (2, 5, 6)),
        ({"transBatchA": 1, "transBatchB": 1, "transB": 1}, (3, 4, 2, 5), (6, 4, 2, 5)),
        ({"transA": 1}, (5,), (5, 6)),
        ({"transB": 1}, (3, 5), (5,)),
    ],
)
def test_fused_matmul(attrs, ashape, bshape):
    a, b = randn(*ashape), randn(*bshape)

    def prep(t, tb, tr):
        if t.ndim == 1:
            return t
        if tb:
            t = np.moveaxis(t, 0, -2)
        return np.swapaxes(t, -1, -2) if tr else t

    ref = np.matmul(prep(a, attrs.get("transBatchA"), attrs.get("transA")), prep(b, attrs.get("transBatchB"), attrs.get("transB")))
    ref = ref * attrs.get("alpha", 1.0)
    y = fused.fused_matmul(a, b, **attrs)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    got, want = both("FusedMatMul", [a, b], **attrs)
    assert_close(got, want)


def test_transpose_matmul_matches_onnxruntime():
    a, b = randn(2, 5, 3), randn(2, 4, 5)
    np.testing.assert_allclose(fused.transpose_matmul(a, b, transA=1, transB=1, alpha=0.5),
                               0.5 * np.swapaxes(a, -1, -2) @ np.swapaxes(b, -1, -2), rtol=1e-5, atol=1e-6)
    got, want = both("TransposeMatMul", [a, b], transA=1, transB=1, alpha=0.5)
    assert_close(got, want)


def test_fused_matmul_float16_and_rank_check():
    a, b = randn(2, 3, dtype=np.float16), randn(3, 4, dtype=np.float16)
    y = fused.fused_matmul(a, b, alpha=2.0)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float32), 2 * a.astype(np.float32) @ b.astype(np.float32), rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError):
        fused.fused_matmul(randn(3, 5), randn(5, 2), transBatchA=1)


def test_fused_matmul_activation():
    a, b = randn(2, 3), randn(3, 4)
    y = fused.fused_matmul_activation(a, b, activation="Relu", alpha=2.0)
    np.testing.assert_allclose(y, np.maximum(2 * a @ b, 0), rtol=1e-5, atol=1e-6)


def test_bias_add():
    x, bias, skip = randn(2, 3, 4), randn(4), randn(2, 3, 4)
    np.testing.assert_allclose(fused.bias_add(x, bias, skip), x + bias + skip, rtol=1e-6)


def test_nhwc_max_pool_int8():
    x = rng.integers(-128, 127, size=(1, 5, 5, 3), dtype=np.int8)
    y = fused.nhwc_max_pool(x, kernel_shape=[2, 2], strides=[2, 2])
    ref = x[:, :4, :4].reshape(1, 2, 2, 2, 2, 3).max(axis=(2, 4))
    assert y.dtype == np.int8
    np.testing.assert_array_equal(y, ref)
    got, want = both("NhwcMaxPool", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    np.testing.assert_array_equal(got[0], want[0])


def test_trilu_contrib():
    x = randn(2, 4, 5)
    np.testing.assert_array_equal(fused.trilu_ms(x, np.array(1, np.int64), upper=0), np.tril(x, 1))
    got, want = both("Trilu", [x], upper=1)
    np.testing.assert_array_equal(got[0], want[0])


# =========================================================================== activations.py


def _gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def test_gelu_family_reference():
    x, b = randn(3, 8), randn(8)
    np.testing.assert_allclose(act.gelu(x), _gelu(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(act.bias_gelu(x, b), _gelu((x + b).astype(np.float64)), rtol=1e-5, atol=1e-6)
    t = (x + b).astype(np.float64)
    fast = 0.5 * t * (1 + np.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3)))
    np.testing.assert_allclose(act.fast_gelu(x, b), fast, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(act.quick_gelu(x, alpha=1.5), x / (1 + np.exp(-1.5 * x)), rtol=1e-5, atol=1e-6)
    h = act.gelu(x.astype(np.float16))
    assert h.dtype == np.float16


@pytest.mark.parametrize(
    "op_type,n_inputs,attrs",
    [("Gelu", 1, {}), ("BiasGelu", 2, {}), ("FastGelu", 2, {}), ("FastGelu", 1, {}), ("QuickGelu", 1, {"alpha": 1.0}),
     ("QuickGelu", 1, {})],
)
def test_gelu_family_matches_onnxruntime(op_type, n_inputs, attrs):
    inputs = [randn(2, 5, 16) * 3, randn(16)][:n_inputs]
    got, want = both(op_type, inputs, **attrs)
    assert_close(got, want)


def test_bias_split_gelu_and_gemm_fast_gelu():
    x, b = randn(2, 3, 8), randn(8)
    t = (x + b).astype(np.float64)
    np.testing.assert_allclose(act.bias_split_gelu(x, b), t[..., :4] * _gelu(t[..., 4:]), rtol=1e-5, atol=1e-6)
    a, w, bias = randn(2, 3, 5), randn(5, 4), randn(4)
    t = a.astype(np.float64) @ w + bias
    fast = 0.5 * t * (1 + np.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3)))
    np.testing.assert_allclose(act.gemm_fast_gelu(a, w, bias), fast, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "dshape,bshape,axis,inner",
    [((2, 3, 4, 5), (2, 1, 4, 5), 2, 1), ((2, 3, 4, 5), (3, 4, 5), 3, 0), ((2, 3, 4, 5), (1, 1, 4, 5), 3, 0), ((2, 3, 4, 5), (2, 4, 5), 2, 1),
     ((2, 3, 4, 5), (4, 5), 2, 0)],
)
def test_bias_softmax(dshape, bshape, axis, inner):
    # (onnxruntime has BiasSoftmax on CUDA/ROCm only): compare with Add + Softmax-11
    d, b = randn(*dshape), randn(*bshape)
    if inner and len(bshape) < len(dshape):
        b_full = b.reshape(bshape[:1] + (1,) * (len(dshape) - len(bshape)) + bshape[1:])
    else:
        b_full = b
    t = (d + b_full).reshape(int(np.prod(dshape[:axis])), -1)
    np.testing.assert_allclose(act.bias_softmax(d, b, axis=axis, is_inner_broadcast=inner),
                               _softmax(t.astype(np.float64)).reshape(dshape), rtol=1e-5, atol=1e-6)


# =========================================================================== normalization.py


def _ln(t, g=None, b=None, eps=1e-12, simplified=False):
    t = t.astype(np.float64)
    if simplified:
        y = t / np.sqrt((t * t).mean(-1, keepdims=True) + eps)
    else:
        m = t.mean(-1, keepdims=True)
        y = (t - m) / np.sqrt(((t - m) ** 2).mean(-1, keepdims=True) + eps)
    if g is not None:
        y = y * g
    if b is not None:
        y = y + b
    return y


def test_skip_layer_norm_reference():
    x, s, g, b, bias = randn(2, 3, 16), randn(2, 3, 16), randn(16), randn(16), randn(16)
    y, mean, inv, total = nrm.skip_layer_normalization(x, s, g, b, bias, epsilon=1e-5)
    t = x + s + bias
    np.testing.assert_allclose(y, _ln(t, g, b, 1e-5), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(total, t, rtol=1e-6)
    np.testing.assert_allclose(mean[..., 0], t.mean(-1), rtol=1e-4, atol=1e-6)
    assert mean.shape == inv.shape == (2, 3, 1) and y.dtype == np.float32
    # skip broadcast over the batch, 2-D input
    y2 = nrm.skip_layer_normalization(x, s[0], g)[0]
    np.testing.assert_allclose(y2, _ln(x + s[0], g), rtol=1e-4, atol=1e-5)
    y3 = nrm.skip_layer_normalization(x[0], s[0], g, b)[0]
    np.testing.assert_allclose(y3, _ln(x[0] + s[0], g, b), rtol=1e-4, atol=1e-5)


def test_skip_layer_norms_match_onnxruntime():
    x, s, g, b, bias = randn(2, 3, 16), randn(2, 3, 16), randn(16), randn(16), randn(16)
    got, want = both("SkipLayerNormalization", [x, s, g, b, bias], n_out=4, epsilon=1e-5)
    assert_close(got, want)
    got, want = both("SkipSimplifiedLayerNormalization", [x, s, g, bias], n_out=4)
    assert_close(got, want)
    got, want = both("SkipLayerNormalization", [x.astype(np.float16), s.astype(np.float16), g.astype(np.float16)])
    assert_close(got, want, rtol=1e-2, atol=1e-2)


def test_simplified_and_legacy_layer_norm():
    x, g, b = randn(2, 3, 8), randn(8), randn(8)
    y, inv = nrm.simplified_layer_normalization(x, g)
    np.testing.assert_allclose(y, _ln(x, g, None, 1e-5, True), rtol=1e-4, atol=1e-5)
    assert inv.shape == (2, 3, 1)
    got, want = both("SimplifiedLayerNormalization", [x, g], n_out=2, domain="")
    assert_close(got, want)
    got, want = both("SimplifiedLayerNormalization", [x, randn(3, 8)], n_out=2, domain="", axis=1, epsilon=1e-3)
    assert_close(got, want)
    got, want = both("SimplifiedLayerNormalization", [x, g.astype(np.float16)], n_out=2, domain="")
    assert_close(got, want, rtol=1e-2, atol=1e-2)
    # onnxruntime's LayerNormalization-1, used by models of opset < 17
    got, want = both("LayerNormalization", [x, g, b], n_out=3, domain="", opset=16, epsilon=1e-4)
    assert_close(got, want)


def test_embed_layer_norm():
    B, S, D = 2, 5, 8
    ids = rng.integers(0, 20, (B, S)).astype(np.int32)
    seg = rng.integers(0, 2, (B, S)).astype(np.int32)
    we, pe, se = randn(20, D), randn(10, D), randn(2, D)
    g, b = randn(D), randn(D)
    mask = np.array([[1, 1, 1, 0, 0], [1, 0, 1, 1, 2]], np.int32)
    y, mask_index, emb = nrm.embed_layer_normalization(ids, seg, we, pe, se, g, b, mask)
    t = we[ids] + pe[:S][None] + se[seg]
    np.testing.assert_allclose(y, _ln(t, g, b), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(mask_index, [3, 3])
    np.testing.assert_allclose(emb, t, rtol=1e-6)
    got, want = both("EmbedLayerNormalization", [ids, seg, we, pe, se, g, b, mask], n_out=3)
    assert_close(got, want)
    pid = np.array([[3, 1, 2, 0, 4]], np.int32)
    got, want = both("EmbedLayerNormalization", [ids, None, we, pe, None, g, b, None, pid], n_out=2)
    assert_close(got, want)
    with pytest.raises(ValueError):
        nrm.embed_layer_normalization(ids + 100, None, we, pe, None, g, b)


# =========================================================================== attention.py


def _softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def _split(t, n):
    b, s, d = t.shape
    return t.reshape(b, s, n, d // n).transpose(0, 2, 1, 3)


def _mha_ref(q, k, v, scale, add=None, causal_past=None, bias=None):
    sc = q @ np.swapaxes(k, -1, -2) * scale
    if add is not None:
        sc = sc + add
    if causal_past is not None:
        S, T = sc.shape[-2:]
        sc = np.where(np.arange(T)[None] > np.arange(S)[:, None] + causal_past, np.finfo(np.float32).min, sc)
    if bias is not None:
        sc = sc + bias
    o = _softmax(sc) @ v
    b, n, s, h = o.shape
    return o.transpose(0, 2, 1, 3).reshape(b, s, n * h)


B, S, N, H = 2, 4, 2, 8
D = N * H


def _attention_inputs():
    x, w, bias = randn(B, S, 12), randn(12, 3 * D) * 0.3, randn(3 * D)
    qkv = x @ w + bias
    q, k, v = (_split(t, N) for t in np.split(qkv, 3, -1))
    return x, w, bias, q, k, v


def test_attention_reference_and_masks():
    x, w, bias, q, k, v = _attention_inputs()
    (y,) = att.attention(x, w, bias, num_heads=N)
    np.testing.assert_allclose(y, _mha_ref(q, k, v, 1 / math.sqrt(H)), rtol=1e-4, atol=1e-5)
    lengths = np.array([3, 2], np.int32)
    (y,) = att.attention(x, w, bias, lengths, num_heads=N, unidirectional=1)
    add = np.where(np.arange(S)[None] >= lengths[:, None], -10000.0, 0.0)[:, None, None]
    np.testing.assert_allclose(y, _mha_ref(q, k, v, 1 / math.sqrt(H), add, 0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "mask",
    [None, np.array([3, 2], np.int32), np.array([3, 4, 1, 0], np.int32), np.array([3, 2, 0, 1, 2, 3, 4, 5], np.int32), np.array([[1, 1, 0, 1], [1, 0, 1, 1]], np.int32),
     (rng.random((B, S, S)) > 0.3).astype(np.int32)],
)
@pytest.mark.parametrize("unidirectional", [0, 1])
def test_attention_masks_match_onnxruntime(mask, unidirectional):
    x, w, bias, *_ = _attention_inputs()
    got, want = both("Attention", [x, w, bias, mask], num_heads=N, unidirectional=unidirectional, mask_filter_value=-1000.0)
    assert_close(got, want)


def test_attention_past_bias_and_sizes_match_onnxruntime():
    x, w, bias, *_ = _attention_inputs()
    past = randn(2, B, N, 3, H)
    mask = np.ones((B, 3 + S), np.int32)
    mask[1, 1] = 0
    got, want = both("Attention", [x, w, bias, mask, past], n_out=2, num_heads=N, unidirectional=1)
    assert_close(got, want)
    ab = randn(1, N, S, S)
    got, want = both("Attention", [x, w, bias, None, None, ab], num_heads=N, scale=0.3)
    assert_close(got, want)
    w2, b2 = randn(12, 4 * D), randn(4 * D)
    got, want = both("Attention", [x, w2, b2], num_heads=N, qkv_hidden_sizes=[D, D, 2 * D])
    assert_close(got, want)
    got, want = both("Attention", [x, w], num_heads=N)
    assert_close(got, want)


def test_attention_shared_buffer_and_4d_mask():
    x, w, bias, q, k, v = _attention_inputs()
    buf = np.zeros((2, B, N, 8, H), np.float32)
    past_k, past_v = randn(B, N, 3, H), randn(B, N, 3, H)
    buf[0, :, :, :3], buf[1, :, :, :3] = past_k, past_v
    y, present = att.attention(
        x, w, bias, None, buf, None, np.array(3, np.int32), num_heads=N, past_present_share_buffer=1, _num_outputs=2
    )
    assert present.shape == buf.shape
    kk, vv = np.concatenate([past_k, k], 2), np.concatenate([past_v, v], 2)
    np.testing.assert_allclose(present[0, :, :, :7], kk, rtol=1e-6)
    np.testing.assert_allclose(y, _mha_ref(q, kk, vv, 1 / math.sqrt(H)), rtol=1e-4, atol=1e-5)
    m4 = np.ones((B, 1, 6, 6), np.int32)
    m4[0, 0, :, 1] = 0
    (y,) = att.attention(x, w, bias, m4, num_heads=N)
    add = np.zeros((B, 1, S, S))
    add[0, :, :, 1] = -10000.0
    np.testing.assert_allclose(y, _mha_ref(q, k, v, 1 / math.sqrt(H), add), rtol=1e-4, atol=1e-5)
    with pytest.raises(NotImplementedError):
        att.attention(x, w, bias, num_heads=N, do_rotary=1)


def test_multi_head_attention_variants_match_onnxruntime():
    L = 5
    q, k, v, bias = randn(B, S, D), randn(B, L, D), randn(B, L, D), randn(3 * D)
    got, want = both("MultiHeadAttention", [q, k, v, bias], n_out=3, num_heads=N)
    assert_close(got, want)
    for kpm in (np.array([3, 5], np.int32), np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32),
                (rng.random((B, S, L)) > 0.3).astype(np.int32)):
        got, want = both("MultiHeadAttention", [q, k, v, None, kpm], num_heads=N, mask_filter_value=-50.0)
        assert_close(got, want)
    kb, vb = randn(B, N, L, H), randn(B, N, L, H)
    got, want = both("MultiHeadAttention", [q, kb, vb, bias], n_out=3, num_heads=N)
    assert_close(got, want)
    pk, pv, ks, vs = randn(B, N, 3, H), randn(B, N, 3, H), randn(B, S, D), randn(B, S, D)
    kpm = np.ones((B, 3 + S), np.int32)
    kpm[0, 1] = 0
    got, want = both("MultiHeadAttention", [q, ks, vs, None, kpm, None, pk, pv], n_out=3, num_heads=N, unidirectional=1)
    assert_close(got, want)
    ab = randn(B, 1, S, L)
    got, want = both("MultiHeadAttention", [q, k, v, None, None, ab], num_heads=N, scale=0.2)
    assert_close(got, want)


def test_multi_head_attention_packed_layouts():
    qkv = randn(B, S, N, 3, H)
    (y,) = att.multi_head_attention(qkv, num_heads=N)
    q, k, v = (qkv[:, :, :, i].transpose(0, 2, 1, 3) for i in range(3))
    np.testing.assert_allclose(y, _mha_ref(q, k, v, 1 / math.sqrt(H)), rtol=1e-4, atol=1e-5)
    query, kv = randn(B, S, D), randn(B, 5, N, 2, H)
    (y,) = att.multi_head_attention(query, kv, num_heads=N)
    ref = _mha_ref(_split(query, N), kv[:, :, :, 0].transpose(0, 2, 1, 3), kv[:, :, :, 1].transpose(0, 2, 1, 3), 1 / math.sqrt(H))
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def _rope(x, pos, cos, sin, interleaved):
    """x (B, n, S, H); pos (B, S)."""
    rd = cos.shape[1] * 2
    c, s = cos[pos][:, None], sin[pos][:, None]
    out = x.copy()
    if interleaved:
        x1, x2 = x[..., 0:rd:2], x[..., 1:rd:2]
        out[..., 0:rd:2], out[..., 1:rd:2] = x1 * c - x2 * s, x2 * c + x1 * s
    else:
        h = rd // 2
        x1, x2 = x[..., :h], x[..., h:rd]
        out[..., :h], out[..., h:rd] = x1 * c - x2 * s, x2 * c + x1 * s
    return out


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding(interleaved):
    Hh = 16
    cos, sin = randn(16, Hh // 2), randn(16, Hh // 2)
    x = randn(B, S, N * Hh)
    pid = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.int64)
    y = att.rotary_embedding(x, pid, cos, sin, interleaved=interleaved)
    ref = _rope(_split(x, N), pid, cos, sin, interleaved).transpose(0, 2, 1, 3).reshape(x.shape)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    got, want = both("RotaryEmbedding", [x, pid, cos, sin], interleaved=interleaved)
    assert_close(got, want)
    got, want = both("RotaryEmbedding", [_split(x, N).copy(), np.array([3], np.int64), cos, sin])
    assert_close(got, want)
    got, want = both("RotaryEmbedding", [x, pid, cos[:, :4].copy(), sin[:, :4].copy()], rotary_embedding_dim=8, num_heads=N)
    assert_close(got, want)
    with pytest.raises(ValueError):
        att.rotary_embedding(x, pid + 20, cos, sin)


def _gqa_inputs(batch, seq, nh=4, nkv=2, hs=16):
    return randn(batch, seq, nh * hs), randn(batch, seq, nkv * hs), randn(batch, seq, nkv * hs)


def assert_gqa_close(got, want, valid_lengths):
    """Outputs close, the present caches (outputs 1, 2) in each sequence's valid rows only: with a
    max-length past buffer the rows after them are whatever that buffer held (onnxruntime leaves
    them unwritten too)."""
    assert_close(got[:1] + got[3:], want[:1] + want[3:])
    for g, w in zip(got[1:3], want[1:3]):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        for b, n in enumerate(valid_lengths):
            np.testing.assert_allclose(g[b, :, :n], w[b, :, :n], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "attrs",
    [{}, {"local_window_size": 2}, {"softcap": 2.0}, {"scale": 0.5}, {"smooth_softmax": 1}, {"causal": 0}],
)
def test_gqa_subsequent_prompt_matches_onnxruntime(attrs):
    q, k, v = _gqa_inputs(1, 3)
    pk, pv = randn(1, 2, 6, 16), randn(1, 2, 6, 16)
    sk, tot = np.array([8], np.int32), np.array(9, np.int32)
    got, want = both("GroupQueryAttention", [q, k, v, pk, pv, sk, tot], n_out=3, num_heads=4, kv_num_heads=2, **attrs)
    assert_close(got, want)


def test_gqa_prompt_and_decode_match_onnxruntime():
    # first prompt, right padded batch entry: only its valid rows are compared
    q, k, v = _gqa_inputs(2, 5)
    sk, tot = np.array([4, 2], np.int32), np.array(5, np.int32)
    got, want = both("GroupQueryAttention", [q, k, v, None, None, sk, tot], n_out=3, num_heads=4, kv_num_heads=2)
    assert_close(got[1:], want[1:])
    np.testing.assert_allclose(got[0][0], want[0][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[0][1, :3], want[0][1, :3], rtol=1e-4, atol=1e-5)
    # token generation with different past lengths, past buffer longer than the total
    q, k, v = _gqa_inputs(2, 1)
    pk, pv = randn(2, 2, 8, 16), randn(2, 2, 8, 16)
    sk, tot = np.array([6, 4], np.int32), np.array(7, np.int32)
    got, want = both("GroupQueryAttention", [q, k, v, pk, pv, sk, tot], n_out=3, num_heads=4, kv_num_heads=2)
    assert_gqa_close(got, want, sk + 1)


def test_gqa_rotary_sink_bias_packed_match_onnxruntime():
    q, k, v = _gqa_inputs(1, 3)
    pk, pv = randn(1, 2, 6, 16), randn(1, 2, 6, 16)
    sk, tot = np.array([8], np.int32), np.array(9, np.int32)
    cos, sin = randn(16, 8), randn(16, 8)
    common = {"n_out": 3, "num_heads": 4, "kv_num_heads": 2}
    for inter in (0, 1):
        got, want = both("GroupQueryAttention", [q, k, v, pk, pv, sk, tot, cos, sin], do_rotary=1, rotary_interleaved=inter, **common)
        assert_close(got, want)
    pid = np.array([[2, 3, 4]], np.int64)
    got, want = both("GroupQueryAttention", [q, k, v, pk, pv, sk, tot, cos, sin, pid], do_rotary=1, **common)
    assert_close(got, want)
    sink = randn(4)
    got, want = both("GroupQueryAttention", [q, k, v, pk, pv, sk, tot, None, None, None, None, sink], **common)
    assert_close(got, want)
    ab = randn(1, 1, 3, 9)
    got, want = both("GroupQueryAttention", [q, k, v, pk, pv, sk, tot, None, None, None, ab], softcap=3.0, **common)
    assert_close(got, want)
    got, want = both("GroupQueryAttention", [np.concatenate([q, k, v], -1), None, None, pk, pv, sk, tot], **common)
    assert_close(got, want)


def test_gqa_position_ids_qk_output_and_window_match_onnxruntime():
    common = {"num_heads": 4, "kv_num_heads": 2}
    cos, sin = randn(16, 8), randn(16, 8)
    # a first prompt reads only the first position id (for every batch entry)
    q, k, v = _gqa_inputs(2, 5)
    pid = np.array([[3, 1, 2, 0, 4], [2, 2, 2, 2, 2]], np.int64)
    sk, tot = np.array([4, 4], np.int32), np.array(5, np.int32)
    got, want = both("GroupQueryAttention", [q, k, v, None, None, sk, tot, cos, sin, pid], n_out=3, do_rotary=1, **common)
    assert_close(got, want)
    # output_qk before / after the softmax, with a past buffer longer than the total length
    q, k, v = _gqa_inputs(1, 3)
    pk, pv = randn(1, 2, 12, 16), randn(1, 2, 12, 16)
    sk, tot = np.array([8], np.int32), np.array(9, np.int32)
    for stage in (1, 2):
        got, want = both("GroupQueryAttention", [q, k, v, pk, pv, sk, tot], n_out=4, qk_output=stage, softcap=2.0, **common)
        assert_gqa_close(got, want, sk + 1)
    # decoding a batch with different past lengths, a local window and rotary embedding
    q, k, v = _gqa_inputs(2, 1)
    pk, pv = randn(2, 2, 12, 16), randn(2, 2, 12, 16)
    sk = np.array([6, 3], np.int32)
    got, want = both("GroupQueryAttention", [q, k, v, pk, pv, sk, np.array(7, np.int32), cos, sin],
                     n_out=3, local_window_size=3, do_rotary=1, **common)
    assert_gqa_close(got, want, sk + 1)


def test_mha_qk_output_reference():
    q, k, v, ab = randn(B, S, D), randn(B, S, D), randn(B, S, D), randn(B, 1, S, S)
    lengths = np.array([3, 4], np.int32)
    y, pk, pv, qk = att.multi_head_attention(q, k, v, None, lengths, ab, num_heads=N, unidirectional=1, _num_outputs=4)
    add = np.where(np.arange(S)[None] >= lengths[:, None], -10000.0, 0.0)[:, None, None]
    scores = _split(q, N) @ np.swapaxes(_split(k, N), -1, -2) / math.sqrt(H) + add
    future = np.arange(S)[None] > np.arange(S)[:, None]
    scores = np.where(future, np.finfo(np.float32).min, scores) + ab
    np.testing.assert_allclose(qk, scores, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(pk, _split(k, N), rtol=1e-6)
    np.testing.assert_allclose(y, _mha_ref(_split(q, N), _split(k, N), _split(v, N), 1 / math.sqrt(H), add, 0, ab), rtol=1e-4, atol=1e-5)


def _gqa_decode(new_qkv, past_key, past_value, lengths):
    """One GroupQueryAttention call adding the new rows after each batch entry's ``lengths`` past rows."""
    q, k, v = new_qkv
    sk = np.asarray(lengths, np.int32) + q.shape[1] - 1
    tot = np.array(int(sk.max()) + 1, np.int32)
    return att.group_query_attention(q, k, v, past_key, past_value, sk, tot, num_heads=4, kv_num_heads=2, _num_outputs=3)


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _gqa_model(batch: int, max_length: int, nh: int = 4, nkv: int = 2, hs: int = 16) -> bytes:
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("query", f, [batch, "s", nh * hs]),
              helper.make_tensor_value_info("key", f, [batch, "s", nkv * hs]),
              helper.make_tensor_value_info("value", f, [batch, "s", nkv * hs]),
              helper.make_tensor_value_info("past_key", f, [batch, nkv, max_length, hs]),
              helper.make_tensor_value_info("past_value", f, [batch, nkv, max_length, hs]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [batch]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])]
    outputs = [helper.make_tensor_value_info("output", f, None),
               helper.make_tensor_value_info("present_key", f, None),
               helper.make_tensor_value_info("present_value", f, None)]
    node = helper.make_node("GroupQueryAttention", [i.name for i in inputs], [o.name for o in outputs],
                            domain="com.microsoft", num_heads=nh, kv_num_heads=nkv)
    graph = helper.make_graph([node], "gqa", inputs, outputs)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def _gqa_feeds(new_qkv, pk, pv, lengths):
    q, k, v = new_qkv
    sk = np.asarray(lengths, np.int32) + q.shape[1] - 1
    return {"query": q, "key": k, "value": v, "past_key": pk, "past_value": pv, "seqlens_k": sk,
            "total_sequence_length": np.array(int(sk.max()) + 1, np.int32)}


@pytest.mark.parametrize("lengths,new", [([5], 1), ([6, 2], 1), ([3, 3], 2)])
def test_gqa_shared_buffer_writes_the_new_rows_in_place(lengths, new):
    """onnxruntime's shared-buffer mode: with the presents bound to the max-length past buffers,
    only the new rows are written there; a plain run never writes into the caller's pasts."""
    pk, pv = randn(len(lengths), 2, 12, 16), randn(len(lengths), 2, 12, 16)
    before_k, before_v = pk.copy(), pv.copy()
    new_qkv = _gqa_inputs(len(lengths), new)
    session = onyxrt.InferenceSession(_gqa_model(len(lengths), 12))
    feeds = _gqa_feeds(new_qkv, pk, pv, lengths)
    y_copy, copy_k, copy_v = session.run(None, feeds)
    np.testing.assert_array_equal(pk, before_k)  # a plain run leaves the feeds alone
    np.testing.assert_array_equal(pv, before_v)
    assert not np.shares_memory(copy_k, pk)

    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, array)
    binding.bind_output("output")
    for name, buffer in (("present_key", pk), ("present_value", pv)):
        binding.bind_output(name, "cpu", 0, np.float32, list(buffer.shape), buffer.ctypes.data)
    session.run_with_iobinding(binding)
    y, present_k, present_v = binding.copy_outputs_to_cpu()
    np.testing.assert_array_equal(y, y_copy)
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(pk[b, :, : n + new], copy_k[b, :, : n + new])
        np.testing.assert_array_equal(pv[b, :, : n + new], copy_v[b, :, : n + new])
        # the rows after the new ones are left as they were: nothing but the new rows was written
        np.testing.assert_array_equal(pk[b, :, n + new :], before_k[b, :, n + new :])


def test_gqa_growing_cache_is_the_past_followed_by_the_new_rows():
    # a past of exactly the valid rows has no room: the present is a new, longer buffer
    pk, pv = randn(1, 2, 7, 16), randn(1, 2, 7, 16)
    q, k, v = _gqa_inputs(1, 2)
    _, present_k, present_v = att.group_query_attention(
        q, k, v, pk, pv, np.array([8], np.int32), np.array(9, np.int32), num_heads=4, kv_num_heads=2, _num_outputs=3
    )
    assert present_k.shape == (1, 2, 9, 16) and not np.shares_memory(present_k, pk)
    np.testing.assert_array_equal(present_k, np.concatenate([pk, _split(k, 2)], axis=2))
    np.testing.assert_array_equal(present_v, np.concatenate([pv, _split(v, 2)], axis=2))


def test_gqa_decode_time_does_not_grow_with_the_buffer_length():
    # with a shared buffer only the valid rows are touched (before: a zeroed max-length copy per call)
    new_qkv = _gqa_inputs(1, 1)

    def best_time(max_length):
        pk, pv = np.zeros((1, 2, max_length, 16), np.float32), np.zeros((1, 2, max_length, 16), np.float32)

        def shared(shape, dtype, output=0):  # the plan handing the past buffers over as the presents
            return pk if output == 1 else pv

        q, k, v = new_qkv
        best = math.inf
        for _ in range(30):
            start = time.perf_counter()
            att.group_query_attention(q, k, v, pk, pv, np.array([16], np.int32), np.array(17, np.int32),
                                      num_heads=4, kv_num_heads=2, _num_outputs=3, _alloc=shared)
            best = min(best, time.perf_counter() - start)
        return best

    assert best_time(32768) < 3 * best_time(64)


def test_gqa_rejects_quantized_cache():
    q, k, v = _gqa_inputs(1, 1)
    with pytest.raises(NotImplementedError):
        att.group_query_attention(
            q, k, v, None, None, np.array([0], np.int32), np.array(1, np.int32), num_heads=4, kv_num_heads=2, k_quant_type="PER_TENSOR"
        )


# =========================================================================== nchwc.py


@pytest.fixture(params=[8, 16])
def block_size(request, monkeypatch):
    monkeypatch.setenv("ONYXRT_NCHWC_BLOCK_SIZE", str(request.param))
    nchwc.nchwc_block_size.cache_clear()
    yield request.param
    nchwc.nchwc_block_size.cache_clear()


def _block_filter(w, bs, inner):
    """OIHW -> MLAS's OIHWBiBo (inner) / OIHWBo layout, with the dims onnxruntime records."""
    o, i, kh, kw = w.shape
    op_ = -(-o // bs) * bs
    ip = -(-i // bs) * bs if inner else i
    wp = np.zeros((op_, ip, kh, kw), np.float32)
    wp[:o, :i] = w
    if inner:
        d = wp.reshape(op_ // bs, bs, ip // bs, bs, kh, kw).transpose(0, 2, 4, 5, 3, 1)
    else:
        d = wp.reshape(op_ // bs, bs, ip, kh, kw).transpose(0, 2, 3, 4, 1)
    return np.ascontiguousarray(d).reshape(op_, ip, kh, kw)


def test_nchwc_reorders_roundtrip(block_size):
    x = randn(2, 20, 3, 4)
    b = nchwc.reorder_input(x)
    cp = -(-20 // block_size) * block_size
    assert b.shape == (2, cp, 3, 4)
    raw = b.reshape(2, cp // block_size, 3, 4, block_size)
    assert raw[1, 1, 2, 3, 20 - block_size - 1] == x[1, 19, 2, 3] if block_size == 16 else raw[1, 2, 2, 3, 3] == x[1, 19, 2, 3]
    np.testing.assert_array_equal(nchwc.reorder_output(b, channels=20), x)
    np.testing.assert_array_equal(nchwc.reorder_output(b, channels=20, channels_last=1), x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(nchwc.reorder_input(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), channels_last=1), b)


@pytest.mark.parametrize("case", ["nchw_input", "blocked", "depthwise", "grouped"])
def test_nchwc_conv(block_size, case):
    bs = block_size
    if case == "nchw_input":
        x, w, group = randn(1, 3, 9, 9), randn(20, 3, 3, 3), 1
        xin = x
    elif case == "blocked":
        x, w, group = randn(1, 2 * bs, 7, 7), randn(24, 2 * bs, 3, 3), 1
        xin = nchwc.reorder_input(x)
    elif case == "depthwise":
        x, w, group = randn(1, 2 * bs, 7, 7), randn(2 * bs, 1, 3, 3), 2 * bs
        xin = nchwc.reorder_input(x)
    else:
        x, w, group = randn(1, 2 * bs, 6, 6), randn(2 * bs, bs, 1, 1), 2
        xin = nchwc.reorder_input(x)
    o = w.shape[0]
    b = randn(o)
    inner = case in ("blocked", "grouped")
    wb = _block_filter(w, bs, inner)
    bp = np.zeros(wb.shape[0], np.float32)
    bp[:o] = b
    ref = _conv_ref(x, w, b, [1, 1, 1, 1] if w.shape[2] == 3 else [0, 0, 0, 0], (2, 2) if case == "blocked" else (1, 1), group)
    pads = [1, 1, 1, 1] if w.shape[2] == 3 else [0, 0, 0, 0]
    strides = [2, 2] if case == "blocked" else [1, 1]
    s = randn(*ref.shape[:1], wb.shape[0], *ref.shape[2:])
    y = nchwc.nchwc_conv(xin, wb, bp, nchwc.reorder_input(s), pads=pads, strides=strides, group=group,
                         activation="Relu")
    expected = np.maximum(ref + s[:, :o], 0)
    np.testing.assert_allclose(nchwc.reorder_output(y, channels=o), expected, rtol=1e-4, atol=1e-4)
    # a constant filter is unblocked once, at session creation (prepack)
    attrs = dict(pads=pads, strides=strides, group=group)
    packed = nchwc._nchwc_conv_prepack([None, wb, bp], attrs)
    assert packed is not None
    y2 = nchwc.nchwc_conv(xin, wb, bp, _packed=packed, **attrs)
    y3 = nchwc.nchwc_conv(xin, wb, bp, **attrs)
    # the same products, but BLAS may block a prepacked (contiguous) filter differently: last-bit differences
    np.testing.assert_allclose(y2, y3, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(nchwc.reorder_output(y2, channels=o), ref, rtol=1e-4, atol=1e-4)
    y4 = nchwc.nchwc_conv(xin, wb, bp, _packed=packed, activation="Clip", activation_params=[-0.5, 0.5], **attrs)
    np.testing.assert_allclose(nchwc.reorder_output(y4, channels=o), np.clip(ref, -0.5, 0.5), rtol=1e-4, atol=1e-4)


def test_nchwc_pools_and_upsample(block_size):
    x = randn(1, 2 * block_size, 6, 6)
    xb = nchwc.reorder_input(x)
    y = nchwc.reorder_output(nchwc.nchwc_max_pool(xb, kernel_shape=[2, 2], strides=[2, 2]))
    np.testing.assert_array_equal(y, x.reshape(1, -1, 3, 2, 3, 2).max(axis=(3, 5)))
    y = nchwc.reorder_output(nchwc.nchwc_average_pool(xb, kernel_shape=[2, 2], strides=[2, 2]))
    np.testing.assert_allclose(y, x.reshape(1, -1, 3, 2, 3, 2).mean(axis=(3, 5)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nchwc.reorder_output(nchwc.nchwc_global_average_pool(xb)), x.mean(axis=(2, 3), keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(nchwc.reorder_output(nchwc.nchwc_global_max_pool(xb)), x.max(axis=(2, 3), keepdims=True))
    y = nchwc.reorder_output(nchwc.nchwc_upsample(xb, scales=[1, 1, 2, 3]))
    np.testing.assert_array_equal(y, np.repeat(np.repeat(x, 2, axis=2), 3, axis=3))
    y = nchwc.reorder_output(nchwc.nchwc_upsample(xb, mode="linear", scales=[1, 1, 2, 2], coordinate_transformation_mode="align_corners"))
    np.testing.assert_allclose(y[..., 0, 0], x[..., 0, 0], rtol=1e-6)
    np.testing.assert_allclose(y[..., -1, -1], x[..., -1, -1], rtol=1e-6)
    np.testing.assert_allclose(y[..., 0, 1], x[..., 0, 0] + (x[..., 0, 1] - x[..., 0, 0]) * 5 / 11, rtol=1e-4, atol=1e-6)


def test_nchwc_rejects_unblocked_channels(block_size):
    with pytest.raises(ValueError):
        nchwc.nchwc_max_pool(randn(1, block_size + 4, 4, 4), kernel_shape=[2, 2])
