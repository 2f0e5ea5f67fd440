"""Signal processing: DFT, STFT, the Hann/Hamming/Blackman windows and MelWeightMatrix."""

from __future__ import annotations

import numpy as np

from ....graph.types import np_dtype
from ..kernel_table import op
from ....errors import NodeInputError

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


def _scalar_int(value, what: str) -> int:
    arr = np.asarray(value)
    if arr.size != 1:
        raise NodeInputError(f"{what} must be a scalar, got shape {arr.shape}")
    return int(arr.reshape(-1)[0])


def _work_dtype(dt: np.dtype) -> np.dtype:
    """numpy.fft computes in float32/float64; float16 and bfloat16 go through float32."""
    return _F64 if dt == _F64 else _F32


def _as_complex(x: np.ndarray, what: str) -> tuple[np.ndarray, bool]:
    """``x[..., 0] + 1j * x[..., 1]`` (or the real part when the last dim is 1); is-real flag."""
    if x.ndim < 2:
        raise NodeInputError(f"{what}: input must have rank >= 2 (signal dims plus a last dim of 1 or 2), got {x.shape}")
    last = x.shape[-1]
    work = _work_dtype(x.dtype)
    x = x.astype(work, copy=False)
    if last == 1:
        return x[..., 0], True
    if last == 2:  # (real, imag) pairs are exactly numpy's complex layout
        cdt = np.complex128 if work == _F64 else np.complex64
        return np.ascontiguousarray(x).view(cdt)[..., 0], False
    raise NodeInputError(f"{what}: the last input dimension must be 1 (real) or 2 (complex), got {last}")


def _complex_out(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A complex array as real/imag pairs in a trailing dimension of 2, in ``dtype``."""
    work = _F64 if y.dtype == np.complex128 else _F32
    y = np.ascontiguousarray(y)
    out = y.view(work).reshape(y.shape + (2,))
    return out if dtype == work else out.astype(dtype)


def _dft(x, dft_length, axis: int, inverse: int, onesided: int) -> np.ndarray:
    """DFT along ``axis`` of a real ([..., 1]) or complex ([..., 2]) input.

    The IRFFT case (``inverse=1, onesided=1``) follows numpy.fft.irfft (and the ONNX
    reference): the first ``dft_length // 2 + 1`` bins are taken as the one-sided spectrum.
    """
    x = np.asarray(x)
    rank = x.ndim
    if not (-rank <= axis <= -2 or 0 <= axis <= rank - 2):
        raise NodeInputError(f"DFT: axis {axis} is out of the accepted range for an input of rank {rank}")
    if axis < 0:
        axis += rank
    signal, is_real = _as_complex(x, "DFT")
    dim = signal.shape[axis]
    if dft_length is not None:
        n = _scalar_int(dft_length, "DFT: dft_length")
    elif inverse and onesided:
        n = 2 * (dim - 1)
    else:
        n = dim
    if n < 1:
        raise NodeInputError(f"DFT: dft_length must be positive, got {n}")
    if inverse and onesided:
        # IRFFT: one-sided complex spectrum -> full real signal of length n
        y = np.fft.irfft(signal, n=n, axis=axis)
        y = y.astype(_work_dtype(x.dtype), copy=False)[..., None]
        return y if y.dtype == x.dtype else y.astype(x.dtype)
    if inverse:
        y = np.fft.ifft(signal, n=n, axis=axis)
    elif is_real and onesided:
        y = np.fft.rfft(signal, n=n, axis=axis)
    else:
        y = np.fft.fft(signal, n=n, axis=axis)
        if onesided:
            y = y[(slice(None),) * axis + (slice(0, n // 2 + 1),)]
    if x.dtype == _F32 and y.dtype != np.complex64:
        y = y.astype(np.complex64)
    return _complex_out(y, x.dtype)


@op("DFT", versions=17)
def dft_17(input, dft_length=None, *, axis=1, inverse=0, onesided=0):
    return _dft(input, dft_length, axis, inverse, onesided)


@op("DFT", versions=20)
def dft_20(input, dft_length=None, axis=None, *, inverse=0, onesided=0):
    ax = -2 if axis is None else _scalar_int(axis, "DFT: axis")
    return _dft(input, dft_length, ax, inverse, onesided)


@op("STFT", versions=17)
def stft_17(signal, frame_step, window=None, frame_length=None, *, onesided=1):
    signal = np.asarray(signal)
    if signal.ndim != 3:
        raise NodeInputError(f"STFT: signal must have rank 3 [batch, length, 1 or 2], got shape {signal.shape}")
    x, is_real = _as_complex(signal, "STFT")
    length = x.shape[1]
    step = _scalar_int(frame_step, "STFT: frame_step")
    if step < 1:
        raise NodeInputError(f"STFT: frame_step must be positive, got {step}")
    if window is not None:
        window = np.asarray(window)
        if window.ndim != 1:
            raise NodeInputError(f"STFT: window must be 1-D, got shape {window.shape}")
    if frame_length is not None:
        n = _scalar_int(frame_length, "STFT: frame_length")
        if window is not None and window.shape[0] != n:
            raise NodeInputError(f"STFT: window length {window.shape[0]} differs from frame_length {n}")
    else:
        n = window.shape[0] if window is not None else length
    if not 1 <= n <= length:
        raise NodeInputError(f"STFT: frame_length {n} must be in [1, signal_length={length}]")
    frames = np.lib.stride_tricks.sliding_window_view(x, n, axis=1)[:, ::step]  # [batch, frames, n]
    if window is not None:
        frames = frames * window.astype(x.real.dtype, copy=False)
    if onesided and is_real:
        y = np.fft.rfft(frames, axis=-1)
    else:
        y = np.fft.fft(frames, axis=-1)
        if onesided:
            y = y[..., : n // 2 + 1]
    if signal.dtype == _F32 and y.dtype != np.complex64:
        y = y.astype(np.complex64)
    return _complex_out(y, signal.dtype)


# --------------------------------------------------------------------------- windows


def _cosine_window(size, periodic: int, output_datatype: int, coefficients: tuple[float, ...]) -> np.ndarray:
    n_points = _scalar_int(size, "window size")
    if n_points < 0:
        raise NodeInputError(f"window size must be non-negative, got {n_points}")
    denom = n_points if periodic else n_points - 1
    k = np.arange(n_points, dtype=_F64)
    with np.errstate(divide="ignore", invalid="ignore"):
        phase = (2.0 * np.pi / denom) * k if denom else k * np.nan
    w = np.full(n_points, coefficients[0], dtype=_F64)
    sign = -1.0
    for i, a in enumerate(coefficients[1:], start=1):
        w += sign * a * np.cos(i * phase)
        sign = -sign
    out_dt = np_dtype(output_datatype)
    return w.astype(_F32).astype(out_dt)


@op("HannWindow", versions=17)
def hann_window(size, *, periodic=1, output_datatype=1):
    return _cosine_window(size, periodic, output_datatype, (0.5, 0.5))


@op("HammingWindow", versions=17)
def hamming_window(size, *, periodic=1, output_datatype=1):
    return _cosine_window(size, periodic, output_datatype, (25.0 / 46.0, 21.0 / 46.0))


@op("BlackmanWindow", versions=17)
def blackman_window(size, *, periodic=1, output_datatype=1):
    return _cosine_window(size, periodic, output_datatype, (0.42, 0.5, 0.08))


# --------------------------------------------------------------------------- MelWeightMatrix


@op("MelWeightMatrix", versions=17)
def mel_weight_matrix(num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz, *,
                      output_datatype=1):
    n_mel = _scalar_int(num_mel_bins, "MelWeightMatrix: num_mel_bins")
    n_dft = _scalar_int(dft_length, "MelWeightMatrix: dft_length")
    rate = _scalar_int(sample_rate, "MelWeightMatrix: sample_rate")
    lower = float(np.asarray(lower_edge_hertz, dtype=_F64).reshape(-1)[0])
    upper = float(np.asarray(upper_edge_hertz, dtype=_F64).reshape(-1)[0])
    if n_mel < 1 or n_dft < 1 or rate < 1:
        raise NodeInputError("MelWeightMatrix: num_mel_bins, dft_length and sample_rate must be positive")
    n_bins = n_dft // 2 + 1

    def hz_to_mel(hz: float) -> float:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    low_mel, high_mel = hz_to_mel(lower), hz_to_mel(upper)
    mel_step = (high_mel - low_mel) / (n_mel + 2)
    mels = np.arange(n_mel + 2, dtype=_F64) * mel_step + low_mel
    hz = 700.0 * (np.power(10.0, mels / 2595.0) - 1.0)
    edges = np.floor((n_dft + 1) * hz / rate).astype(np.int64)
    left, center, right = edges[:-2], edges[1:-1], edges[2:]
    j = np.arange(n_bins, dtype=np.int64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        rising = (j - left) / (center - left).astype(_F64)
        falling = (right - j) / (right - center).astype(_F64)
    out = np.where((j >= left) & (j <= center) & (center > left), rising, 0.0)
    out = np.where((j >= center) & (j < right), falling, out)
    out = np.where(j == center, 1.0, out)
    return out.astype(_F32).astype(np_dtype(output_datatype))
