"""Calibration: run the model in onyxrt with chosen intermediate values exposed and turn what they held into ranges.

``CalibrationDataReader`` is onnxruntime's interface (``get_next`` returns one feed dict, then None).
MinMax keeps the extremes seen; Entropy picks the symmetric window whose 8-bit histogram loses the least
information (KL divergence); Percentile cuts the tails beyond a percentile of a histogram.
"""

from __future__ import annotations

import abc
import sys
import time
from typing import Any, Callable, Iterable

import numpy as np
import onnx
from onnx import helper

from .quant_types import CalibrationMethod


class CalibrationDataReader(metaclass=abc.ABCMeta):
    """Feeds for calibration, one dict per ``get_next()`` call, None when done (onnxruntime's interface).

    Any object with a callable ``get_next`` counts as one (``isinstance`` says so), as in onnxruntime.
    ``rewind()`` is not part of onnxruntime's base class; readers commonly add it to be read again.
    """

    @classmethod
    def __subclasshook__(cls, subclass):
        return (hasattr(subclass, "get_next") and callable(subclass.get_next)) or NotImplemented

    @abc.abstractmethod
    def get_next(self) -> dict:
        """The next feed dict (input name -> array), or None when there is no more data."""
        raise NotImplementedError

    def __iter__(self):
        return self

    def __next__(self):
        feeds = self.get_next()
        if feeds is None:
            raise StopIteration
        return feeds

    def __len__(self):
        raise NotImplementedError

    def set_range(self, start_index: int, end_index: int):
        raise NotImplementedError


class ArrayDataReader(CalibrationDataReader):
    """A reader over a list of feed dicts (the CLI's ``--calib`` folder becomes one); ``rewind()`` starts over."""

    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self.samples = list(samples)
        self.position = 0

    def get_next(self) -> dict | None:
        if self.position >= len(self.samples):
            return None
        self.position += 1
        return self.samples[self.position - 1]

    def __len__(self) -> int:
        return len(self.samples)

    def rewind(self) -> None:
        self.position = 0


class _Histogram:
    """Counts over [-bound, bound]; the bound grows (old counts re-binned) when larger values arrive."""

    def __init__(self, bins: int) -> None:
        self.bins = bins
        self.bound = 0.0
        self.counts = np.zeros(bins, dtype=np.float64)
        self.minimum, self.maximum = np.inf, -np.inf

    def add(self, values: np.ndarray) -> None:
        values = values[np.isfinite(values)].ravel()
        if not values.size:
            return
        self.minimum, self.maximum = min(self.minimum, float(values.min())), max(self.maximum, float(values.max()))
        bound = float(np.abs(values).max())
        if bound > self.bound:
            if self.counts.sum():  # move each old bin's count to the new bin holding its centre
                old_edges = np.linspace(-self.bound, self.bound, self.bins + 1)
                centres = (old_edges[:-1] + old_edges[1:]) / 2
                new_index = np.clip(((centres + bound) / (2 * bound) * self.bins).astype(np.int64), 0, self.bins - 1)
                self.counts = np.bincount(new_index, weights=self.counts, minlength=self.bins)
            self.bound = bound
        if self.bound == 0.0:
            self.counts[self.bins // 2] += values.size
            return
        counts, _ = np.histogram(values, bins=self.bins, range=(-self.bound, self.bound))
        self.counts += counts

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.bound, self.bound, self.bins + 1)


def _percentile_range(histogram: _Histogram, percentile: float, symmetric: bool) -> tuple[float, float]:
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {percentile}")
    counts, edges = histogram.counts, histogram.edges
    total = counts.sum()
    if total == 0 or histogram.bound == 0:
        return 0.0, 0.0
    if symmetric:  # fold the histogram onto |x|
        half = histogram.bins // 2
        folded = counts[half:] + counts[:half][::-1] if histogram.bins % 2 == 0 else counts[half:]
        cdf = np.cumsum(folded) / total
        index = min(int(np.searchsorted(cdf, percentile / 100.0)), folded.size - 1)
        threshold = float(edges[half + index + 1])
        # a tensor never below zero (after Relu, a pooling of one) keeps 0 as its low end, as in onnxruntime
        return (0.0 if histogram.minimum >= 0 else -threshold), threshold
    cdf = np.cumsum(counts) / total
    cut = (100.0 - percentile) / 200.0
    left = float(edges[min(int(np.searchsorted(cdf, cut)), histogram.bins - 1)])
    right = float(edges[min(int(np.searchsorted(cdf, 1.0 - cut)) + 1, histogram.bins)])
    return max(left, histogram.minimum), min(right, histogram.maximum)


def _entropy_range(histogram: _Histogram, quantized_bins: int) -> tuple[float, float]:
    """The symmetric window [-t, t] around zero minimizing KL(P || Q), Q being P in ``quantized_bins`` levels."""
    counts, edges = histogram.counts, histogram.edges
    bins = counts.size
    zero_bin, half_quantized = bins // 2, quantized_bins // 2
    if counts.sum() == 0 or histogram.bound == 0:
        return 0.0, 0.0
    if half_quantized >= zero_bin:  # the histogram is no finer than the quantization: keep the full range
        return histogram.minimum, histogram.maximum
    best, best_window = np.inf, zero_bin
    for window in range(half_quantized, zero_bin + 1):
        start, stop = zero_bin - window, min(zero_bin + window + 1, bins)
        reference = counts[start:stop].copy()
        reference[0] += counts[:start].sum()  # outliers clipped into the edge bins
        reference[-1] += counts[stop:].sum()
        # Quantize the window's counts into quantized_bins groups, spreading each group's total evenly over
        # the bins of the group that were non-empty.
        group = np.minimum((np.arange(stop - start) * quantized_bins) // (stop - start), quantized_bins - 1)
        original = counts[start:stop]
        nonzero = (original != 0).astype(np.float64)
        totals = np.bincount(group, weights=original, minlength=quantized_bins)
        filled = np.bincount(group, weights=nonzero, minlength=quantized_bins)
        candidate = np.where(nonzero > 0, totals[group] / np.maximum(filled[group], 1), 0.0)
        p = reference / reference.sum()
        q_total = candidate.sum()
        if q_total == 0:
            continue
        q = candidate / q_total
        mask = p > 0
        with np.errstate(divide="ignore"):
            divergence = np.sum(p[mask] * np.log(p[mask] / np.where(q[mask] > 0, q[mask], 1e-12)))
        if divergence < best:
            best, best_window = divergence, window
    start, stop = zero_bin - best_window, min(zero_bin + best_window + 1, bins)
    low, high = float(edges[start]), float(edges[stop])
    return max(low, histogram.minimum), min(high, histogram.maximum)


def _exposed_model(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``names`` (values it computes)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {output.name for output in exposed.graph.output}
    for name in names:
        if name not in present:
            exposed.graph.output.append(helper.make_empty_tensor_value_info(name))
            present.add(name)
    return exposed


def progress_bar(done: int, total: int | None, started: float) -> None:
    """Calibration progress on stderr: a bar when the sample count is known, a counter otherwise."""
    stream = sys.stderr  # looked up per call: callers and tests may replace sys.stderr
    elapsed = time.perf_counter() - started
    if total:
        filled = int(30 * done / total)
        stream.write(f"\rcalibrating [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} samples, {elapsed:.1f}s")
        if done == total:
            stream.write("\n")
    else:
        stream.write(f"\rcalibrating: {done} samples, {elapsed:.1f}s")
    stream.flush()


def calibrate_ranges(model: onnx.ModelProto, tensor_names: list[str], reader: Any,
                     method: CalibrationMethod = CalibrationMethod.MinMax, options: dict[str, Any] | None = None,
                     progress: Callable[[int, int | None, float], None] | None = None) -> dict[str, tuple[float, float]]:
    """Ranges (rmin, rmax) of ``tensor_names`` over every feed the reader gives, computed by onyxrt.

    ``options`` reads onnxruntime's calibration keys: ``CalibTensorRangeSymmetric``, ``CalibMovingAverage``,
    ``CalibMovingAverageConstant``, ``CalibPercentile`` (99.999), ``CalibNumBins``/``num_bins``,
    ``num_quantized_bins`` (128).
    """
    from ..session.inference_session import InferenceSession  # lazy: the quantizer imports without a session

    options = options or {}
    if method == CalibrationMethod.Distribution:
        raise ValueError("CalibrationMethod.Distribution is not supported by onyxrt (float8 calibration); "
                         "use MinMax, Entropy or Percentile")
    if not hasattr(reader, "get_next") or not callable(reader.get_next):
        raise TypeError(f"calibration_data_reader must have a get_next() method, got {type(reader).__name__}")
    symmetric = bool(options.get("CalibTensorRangeSymmetric", options.get("symmetric", method == CalibrationMethod.Percentile)))
    moving_average = bool(options.get("CalibMovingAverage", False))
    averaging = float(options.get("CalibMovingAverageConstant", 0.01))
    default_bins = 2048 if method == CalibrationMethod.Percentile else 128
    bins = int(options.get("CalibNumBins", options.get("num_bins", default_bins)))
    quantized_bins = int(options.get("CalibNumQuantizedBins", options.get("num_quantized_bins", 128)))
    percentile = float(options.get("CalibPercentile", options.get("percentile", 99.999)))

    graph_inputs = [name for name in tensor_names if name in {i.name for i in model.graph.input}]
    session = InferenceSession(_exposed_model(model, [n for n in tensor_names if n not in graph_inputs]).SerializeToString(), providers=["CPUExecutionProvider"])
    output_names = [output.name for output in session.get_outputs()]
    wanted = [(index, name) for index, name in enumerate(output_names) if name in set(tensor_names)]
    try:
        total = len(reader)
    except (TypeError, NotImplementedError):
        total = None
    minima: dict[str, float] = {}
    maxima: dict[str, float] = {}
    histograms: dict[str, _Histogram] = {}
    started, count = time.perf_counter(), 0
    quiet = progress is None and not sys.stderr.isatty()
    report = progress or ((lambda *_: None) if quiet else progress_bar)
    while True:
        feeds = reader.get_next()
        if feeds is None:
            break
        outputs = session.run(None, feeds)
        values = [(name, feeds[name]) for name in graph_inputs if name in feeds]
        values += [(name, outputs[index]) for index, name in wanted]
        for name, value in values:
            value = np.asarray(value)
            if value.dtype.kind != "f" or not value.size:
                continue
            finite = value[np.isfinite(value)] if not np.isfinite(value).all() else value
            if not finite.size:
                continue
            low, high = float(finite.min()), float(finite.max())
            if method == CalibrationMethod.MinMax:
                if name not in minima:
                    minima[name], maxima[name] = low, high
                elif moving_average:
                    minima[name] += averaging * (low - minima[name])
                    maxima[name] += averaging * (high - maxima[name])
                else:
                    minima[name], maxima[name] = min(minima[name], low), max(maxima[name], high)
            else:
                histograms.setdefault(name, _Histogram(bins)).add(finite.astype(np.float64))
        count += 1
        report(count, total, started)
    if progress is None and not quiet and total is None:
        sys.stderr.write("\n")
    if count == 0:
        raise ValueError("the calibration data reader gave no data (get_next() returned None at once)")
    ranges: dict[str, tuple[float, float]] = {}
    if method == CalibrationMethod.MinMax:
        for name in minima:
            low, high = minima[name], maxima[name]
            if symmetric:
                bound = max(abs(low), abs(high))
                low, high = -bound, bound
            ranges[name] = (low, high)
    elif method == CalibrationMethod.Percentile:
        for name, histogram in histograms.items():
            ranges[name] = _percentile_range(histogram, percentile, symmetric)
    else:
        for name, histogram in histograms.items():
            ranges[name] = _entropy_range(histogram, quantized_bins)
    return ranges
