"""NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss kernels."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from onyxrt.providers.cpu.nn.loss import negative_log_likelihood_loss, softmax_cross_entropy_loss
from onyxrt.providers.cpu.kernel_table import CPU_KERNELS

# the specification's examples: N, C, d1 = 2, 3, 2
_INPUT = np.array([[[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]], [[0.0, 1.0], [2.0, 2.0], [1.0, 2.0]]], dtype=np.float32)
_TARGET = np.array([[2, 1], [0, 2]], dtype=np.int64)
_WEIGHT = np.array([0.2, 0.3, 0.1], dtype=np.float32)


def test_registered_versions():
    for opset in (12, 13, 21, 22):
        assert CPU_KERNELS.lookup("", "NegativeLogLikelihoodLoss", opset).fn is negative_log_likelihood_loss
    for opset in (12, 13, 22):
        kernel = CPU_KERNELS.lookup("", "SoftmaxCrossEntropyLoss", opset)
        assert kernel.fn is softmax_cross_entropy_loss and kernel.multi_output


def test_nll_spec_examples():
    none = negative_log_likelihood_loss(_INPUT, _TARGET, reduction="none")
    assert none.dtype == np.float32 and none.shape == (2, 2)
    np.testing.assert_allclose(none, [[-3.0, -2.0], [-0.0, -2.0]])
    total = negative_log_likelihood_loss(_INPUT, _TARGET, _WEIGHT, reduction="sum")
    assert total.shape == () and isinstance(total, np.ndarray)
    assert float(total) == pytest.approx(-1.1)
    mean = negative_log_likelihood_loss(_INPUT, _TARGET, _WEIGHT)
    assert float(mean) == pytest.approx(-1.1 / 0.7, rel=1e-6)
    assert float(negative_log_likelihood_loss(_INPUT, _TARGET)) == pytest.approx(-7.0 / 4)


def test_nll_ignore_index():
    target = np.array([[2, -1], [-1, 2]], dtype=np.int32)  # -1 is out of [0, C): only valid when ignored
    none = negative_log_likelihood_loss(_INPUT, target, _WEIGHT, ignore_index=-1, reduction="none")
    np.testing.assert_allclose(none, [[-0.3, 0.0], [0.0, -0.2]], rtol=1e-6)
    mean = negative_log_likelihood_loss(_INPUT, target, _WEIGHT, ignore_index=-1)
    assert float(mean) == pytest.approx(-0.5 / 0.2, rel=1e-6)
    unweighted = negative_log_likelihood_loss(_INPUT, target, ignore_index=-1)
    assert float(unweighted) == pytest.approx(-5.0 / 2)
    # every sample ignored: 0 / 0, as onnxruntime
    assert np.isnan(negative_log_likelihood_loss(_INPUT, np.full((2, 2), 1), ignore_index=1))
    with pytest.raises(ValueError, match="target values"):
        negative_log_likelihood_loss(_INPUT, target)


def test_nll_errors():
    with pytest.raises(ValueError, match="reduction"):
        negative_log_likelihood_loss(_INPUT, _TARGET, reduction="max")
    with pytest.raises(ValueError, match="shape"):
        negative_log_likelihood_loss(_INPUT, _TARGET[:, :1])
    with pytest.raises(ValueError, match="weight"):
        negative_log_likelihood_loss(_INPUT, _TARGET, _WEIGHT[:2])


def _log_softmax(x):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return np.log(e / e.sum(axis=1, keepdims=True))


@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 2), (2, 3, 2, 2)])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [None, 1])
def test_sce_matches_log_softmax_then_nll(shape, reduction, weighted, ignore_index):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32) * 3
    labels = rng.integers(0, shape[1], (shape[0], *shape[2:]))
    weights = rng.uniform(0.1, 1.0, shape[1]).astype(np.float32) if weighted else None
    loss, log_prob = softmax_cross_entropy_loss(
        x, labels, weights, reduction=reduction, ignore_index=ignore_index, _num_outputs=2
    )
    expected_lp = _log_softmax(x)
    assert log_prob.dtype == np.float32 and log_prob.shape == x.shape
    np.testing.assert_allclose(log_prob, expected_lp, rtol=1e-5, atol=1e-6)
    expected = negative_log_likelihood_loss(
        expected_lp, labels, None if weights is None else weights.astype(np.float64), ignore_index=ignore_index,
        reduction=reduction,
    )  # fmt: skip
    assert loss.dtype == np.float32 and loss.shape == expected.shape
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    (only,) = softmax_cross_entropy_loss(x, labels, weights, reduction=reduction, ignore_index=ignore_index)
    np.testing.assert_array_equal(only, loss)


def test_sce_low_precision_and_large_logits():
    x = np.array([[1000.0, 0.0], [0.0, 1000.0]], dtype=np.float32)
    loss = softmax_cross_entropy_loss(x, np.array([0, 0]), reduction="none")[0]
    np.testing.assert_allclose(loss, [0.0, 1000.0])
    for dtype in (np.float16, ml_dtypes.bfloat16):
        xs = np.array([[1.0, 2.0, 3.0]], dtype=dtype)
        loss, log_prob = softmax_cross_entropy_loss(xs, np.array([2]), _num_outputs=2)
        assert loss.dtype == dtype and log_prob.dtype == dtype
        assert float(loss) == pytest.approx(0.4076, abs=2e-2)
    x64 = np.random.default_rng(1).standard_normal((3, 4))
    assert softmax_cross_entropy_loss(x64, np.array([0, 1, 3]))[0].dtype == np.float64
