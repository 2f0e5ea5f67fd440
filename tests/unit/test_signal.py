"""Unit tests for onyxrt.providers.cpu.math.signal (DFT, STFT, windows, MelWeightMatrix)."""

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onyxrt.providers.cpu.kernel_modules  # noqa: F401  (registers every kernel)
from onyxrt.graph.types import onnx_elem_type
from onyxrt.providers.cpu.math.signal import (
    blackman_window,
    dft_17,
    dft_20,
    hamming_window,
    hann_window,
    mel_weight_matrix,
    stft_17,
)
from onyxrt.providers.cpu.kernel_table import CPU_KERNELS


def _complex(y):
    return y[..., 0] + 1j * y[..., 1]


def test_registered():
    assert CPU_KERNELS.lookup("", "DFT", 17).fn is dft_17
    assert CPU_KERNELS.lookup("", "DFT", 28).fn is dft_20
    for name in ("STFT", "HannWindow", "HammingWindow", "BlackmanWindow", "MelWeightMatrix"):
        assert CPU_KERNELS.lookup("", name, 17) is not None


# --------------------------------------------------------------------------- DFT


@pytest.mark.parametrize("axis", [1, 2, -2, -3])
def test_dft_real_and_complex_input(axis):
    rng = np.random.default_rng(0)
    xr = rng.standard_normal((2, 6, 5, 1)).astype(np.float32)
    xc = rng.standard_normal((2, 6, 5, 2)).astype(np.float32)
    xr.flags.writeable = False
    pos = axis % 4
    y = dft_20(xr, None, np.array(axis, np.int64))
    assert y.dtype == np.float32 and y.shape == (2, 6, 5, 2)
    np.testing.assert_allclose(_complex(y), np.fft.fft(xr[..., 0], axis=pos), rtol=1e-5, atol=1e-5)
    y = dft_17(xc, axis=axis)
    np.testing.assert_allclose(_complex(y), np.fft.fft(_complex(xc), axis=pos), rtol=1e-5, atol=1e-5)


def test_dft_length_pads_and_truncates():
    x = np.arange(1, 7, dtype=np.float64).reshape(1, 6, 1)
    y = dft_17(x, np.array(8, np.int64))
    assert y.dtype == np.float64 and y.shape == (1, 8, 2)
    np.testing.assert_allclose(_complex(y)[0], np.fft.fft(x[0, :, 0], n=8))
    y = dft_20(x, np.array(4, np.int32), np.array(1, np.int64))
    np.testing.assert_allclose(_complex(y)[0], np.fft.fft(x[0, :4, 0]))


def test_dft_onesided_and_inverse():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 10, 1)).astype(np.float32)
    y = dft_20(x, onesided=1)  # default axis -2
    assert y.shape == (3, 6, 2)
    np.testing.assert_allclose(_complex(y), np.fft.rfft(x[..., 0], axis=1), rtol=1e-5, atol=1e-5)
    # IRFFT: one-sided complex spectrum -> real signal of length 2 * (6 - 1)
    back = dft_20(y, inverse=1, onesided=1)
    assert back.shape == (3, 10, 1) and back.dtype == np.float32
    np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-5)
    # full complex inverse
    full = dft_17(x, axis=1)
    inv = dft_17(full, axis=1, inverse=1)
    np.testing.assert_allclose(inv[..., 0], x[..., 0], atol=1e-5)
    np.testing.assert_allclose(inv[..., 1], 0, atol=1e-5)


def test_dft_half_types_and_errors():
    x = np.arange(8, dtype=np.float32).reshape(1, 8, 1)
    for dt in (np.float16, ml_dtypes.bfloat16):
        y = dft_20(x.astype(dt))
        assert y.dtype == np.dtype(dt)
        np.testing.assert_allclose(_complex(y.astype(np.float32))[0], np.fft.fft(np.arange(8)), rtol=2e-2, atol=0.1)
    with pytest.raises(ValueError):
        dft_20(x, None, np.array(-1, np.int64))  # the complex dimension is not a valid axis
    with pytest.raises(ValueError):
        dft_20(np.zeros((2, 3, 3), np.float32))  # last dim must be 1 or 2


# --------------------------------------------------------------------------- STFT


def _stft_reference(signal, step, window, n, onesided):
    x = signal[..., 0] if signal.shape[-1] == 1 else _complex(signal)
    frames = 1 + (x.shape[1] - n) // step
    out = np.stack([np.fft.fft(x[:, f * step: f * step + n] * window, axis=-1) for f in range(frames)], axis=1)
    return out[..., : n // 2 + 1] if onesided else out


@pytest.mark.parametrize("onesided", [0, 1])
def test_stft(onesided):
    rng = np.random.default_rng(2)
    sig = rng.standard_normal((2, 50, 1)).astype(np.float32)
    win = np.hanning(16).astype(np.float32)
    y = stft_17(sig, np.array(6, np.int64), win, None, onesided=onesided)
    expected = _stft_reference(sig, 6, win, 16, onesided)
    assert y.dtype == np.float32 and y.shape == expected.shape + (2,)
    np.testing.assert_allclose(_complex(y), expected, rtol=1e-4, atol=1e-5)
    # no window: rectangular frames of frame_length
    y = stft_17(sig, np.array(7, np.int64), None, np.array(15, np.int64), onesided=onesided)
    np.testing.assert_allclose(_complex(y), _stft_reference(sig, 7, np.ones(15), 15, onesided), rtol=1e-4, atol=1e-4)
    # complex signal, full spectrum
    sigc = rng.standard_normal((1, 40, 2))
    y = stft_17(sigc, np.array(8, np.int64), win.astype(np.float64), np.array(16, np.int64), onesided=0)
    assert y.dtype == np.float64
    np.testing.assert_allclose(_complex(y), _stft_reference(sigc, 8, win, 16, 0), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError):
        stft_17(sig, np.array(6, np.int64), win, np.array(10, np.int64))  # window length != frame_length


# --------------------------------------------------------------------------- windows


@pytest.mark.parametrize("size", [1, 2, 8, 15])
def test_windows(size):
    n = np.arange(size)
    for periodic in (0, 1):
        denom = size if periodic else size - 1
        if denom == 0:
            continue
        hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / denom)
        hamming = 25 / 46 - 21 / 46 * np.cos(2 * np.pi * n / denom)
        blackman = 0.42 - 0.5 * np.cos(2 * np.pi * n / denom) + 0.08 * np.cos(4 * np.pi * n / denom)
        for fn, expected in ((hann_window, hann), (hamming_window, hamming), (blackman_window, blackman)):
            y = fn(np.array(size, np.int64), periodic=periodic)
            assert y.dtype == np.float32 and y.shape == (size,)
            np.testing.assert_allclose(y, expected, atol=1e-6)
    assert hann_window(np.array(4, np.int32), output_datatype=TensorProto.DOUBLE).dtype == np.float64
    np.testing.assert_array_equal(hann_window(np.array(4, np.int64), output_datatype=TensorProto.INT64), [0, 0, 1, 0])
    assert hann_window(np.array(0, np.int64)).shape == (0,)


# --------------------------------------------------------------------------- MelWeightMatrix


def test_mel_weight_matrix_triangles():
    y = mel_weight_matrix(np.array(8), np.array(256), np.array(16000), np.array(0.0, np.float32),
                          np.array(8000.0, np.float32))
    assert y.shape == (129, 8) and y.dtype == np.float32
    assert (y >= 0).all() and (y <= 1).all()
    # every filter peaks at exactly 1 and is unimodal
    assert np.allclose(y.max(axis=0), 1.0)
    for col in y.T:
        peak = int(np.argmax(col))
        assert (np.diff(col[: peak + 1]) >= 0).all() and (np.diff(col[peak:]) <= 0).all()
    y64 = mel_weight_matrix(np.array(8), np.array(256), np.array(16000), np.array(0.0), np.array(8000.0),
                            output_datatype=TensorProto.DOUBLE)
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64, y, atol=1e-7)


# --------------------------------------------------------------------------- against onnxruntime


def _run_pair(op, inputs, attrs, opset):
    ort = pytest.importorskip("onnxruntime")
    import onyxrt

    names = [f"i{k}" if v is not None else "" for k, v in enumerate(inputs)]
    node = helper.make_node(op, names, ["o"], **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, onnx_elem_type(v.dtype), v.shape) for n, v in zip(names, inputs) if n],
        [onnx.ValueInfoProto(name="o")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    data = model.SerializeToString()
    feeds = {n: v for n, v in zip(names, inputs) if n}
    expected = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = onyxrt.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.dtype == expected.dtype and got.shape == expected.shape
    return expected, got


@pytest.mark.parametrize(
    "op, attrs, opset, make",
    [
        ("DFT", {"onesided": 1}, 20, lambda r: [r.standard_normal((3, 16, 1)).astype(np.float32), None,
                                               np.array(1, np.int64)]),
        ("DFT", {"inverse": 1, "axis": 2}, 17, lambda r: [r.standard_normal((2, 3, 12, 2)).astype(np.float32),
                                                         np.array(9, np.int64)]),
        ("DFT", {"inverse": 1, "onesided": 1}, 20, lambda r: [r.standard_normal((2, 9, 2)).astype(np.float32)]),
        ("STFT", {}, 17, lambda r: [r.standard_normal((2, 100, 1)).astype(np.float32), np.array(10, np.int64),
                                   np.hanning(32).astype(np.float32)]),
        ("HammingWindow", {"periodic": 0}, 17, lambda r: [np.array(11, np.int64)]),
        ("BlackmanWindow", {"output_datatype": TensorProto.DOUBLE}, 17, lambda r: [np.array(9, np.int64)]),
        ("MelWeightMatrix", {}, 17, lambda r: [np.array(20, np.int64), np.array(512, np.int64),
                                              np.array(22050, np.int64), np.array(50.0, np.float32),
                                              np.array(8000.0, np.float32)]),
    ],
)
def test_matches_onnxruntime(op, attrs, opset, make):
    expected, got = _run_pair(op, make(np.random.default_rng(3)), attrs, opset)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
