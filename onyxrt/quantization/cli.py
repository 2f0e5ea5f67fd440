"""``onyxrt quantize MODEL OUT --mode dynamic|static|weight-only``: quantize, then summarize what changed."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..graph.model_size import human_bytes, model_file_bytes
from .calibration import ArrayDataReader, progress_bar
from .dynamic import quantize_dynamic
from .quant_types import CalibrationMethod, QuantFormat, QuantType
from .report import QuantizationReport
from .static import quantize_static
from .weight_only import check_block_options, quantize_weight_only

_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
_FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``onyxrt quantize``'s options."""
    parser.add_argument("model", help="path of the float .onnx model")
    parser.add_argument("output", help="path to write the quantized model to")
    parser.add_argument("--mode", choices=("dynamic", "static", "weight-only"), default="dynamic",
                        help="dynamic: int8 weights, activations quantized at run time (default); static: activations "
                             "calibrated on --calib; weight-only: MatMul weights in int4/int8 blocks (MatMulNBits)")
    parser.add_argument("--calib", metavar="DIR", help="calibration samples: one .npz per sample (arrays named as the inputs), "
                                                       "or one .npy per sample for a single-input model; static mode needs it")
    parser.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=None,
                        help="one scale per output channel (default: on for dynamic, off for static as in onnxruntime)")
    parser.add_argument("--format", choices=tuple(_FORMATS), default="qdq", help="static mode: QDQ pairs or QLinear operators")
    parser.add_argument("--calibrate-method", choices=tuple(_METHODS), default="minmax", help="static mode: how ranges are chosen")
    parser.add_argument("--activation-type", choices=tuple(_TYPES), default="int8", help="static mode: activation type (default int8)")
    parser.add_argument("--weight-type", choices=tuple(_TYPES), default="int8", help="dynamic/static: weight type (default int8)")
    parser.add_argument("--bits", type=int, choices=(4, 8), default=4, help="weight-only: bits per weight (default 4)")
    parser.add_argument("--block", type=int, default=32, help="weight-only: block size along K, a power of two 16..256 (default 32)")
    parser.add_argument("--asymmetric", action="store_true", help="weight-only: store a zero point per block")
    parser.add_argument("--exclude", action="append", default=[], metavar="NODE", help="leave this node in float; repeatable")
    parser.add_argument("--samples", type=int, default=4, help="samples the output error is measured on (default 4; 0: skip)")
    parser.add_argument("--seq", type=int, default=16, help="sequence-like dims of made-up samples (default 16)")


def _load_samples(folder: str, model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    from ..cli import UsageError

    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"--calib {folder}: not a folder")
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    samples = []
    for file in sorted(path.iterdir()):
        if file.suffix == ".npz":
            with np.load(file) as archive:
                sample = {name: archive[name] for name in archive.files}
            missing = [name for name in inputs if name not in sample]
            if missing:
                raise UsageError(f"--calib {file}: no array for input(s) {missing} (it has {sorted(sample)})")
            samples.append({name: sample[name] for name in inputs})
        elif file.suffix == ".npy":
            if len(inputs) != 1:
                raise UsageError(f"--calib {file}: a .npy sample needs a single-input model; this one has {inputs}: use .npz")
            samples.append({inputs[0]: np.load(file)})
    if not samples:
        raise UsageError(f"--calib {folder}: no .npz or .npy samples in it")
    return samples


def _made_up_samples(model: onnx.ModelProto, count: int, seq: int) -> list[dict[str, Any]]:
    from .. import feeds as feeds_module

    return [feeds_module.make_feeds(model, feeds_module.Shapes({}, 1, seq, 0), seed) for seed in range(count)]


def _output_errors(reference_path: Path, quantized_path: Path, samples: list[dict[str, Any]]) -> list[str]:
    from ..session.inference_session import InferenceSession

    reference = InferenceSession(str(reference_path), providers=["CPUExecutionProvider"])
    quantized = InferenceSession(str(quantized_path), providers=["CPUExecutionProvider"])
    names = [output.name for output in reference.get_outputs()]
    worst: dict[str, list[float]] = {name: [0.0, 0.0, 1.0] for name in names}
    for feeds in samples:
        for name, want, got in zip(names, reference.run(names, feeds), quantized.run(names, feeds)):
            want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
            if want.dtype.kind != "f" or want.shape != got.shape:
                continue
            difference = float(np.abs(want - got).max()) if want.size else 0.0
            scale = float(np.abs(want).max()) if want.size else 0.0
            norm = float(np.linalg.norm(want) * np.linalg.norm(got))
            cosine = float((want * got).sum() / norm) if norm else 1.0
            entry = worst[name]
            entry[0], entry[1], entry[2] = max(entry[0], difference), max(entry[1], difference / scale if scale else 0.0), min(entry[2], cosine)
    return [f"  {name}: max abs error {e[0]:.4g}, relative to max |fp32| {e[1]:.4g}, min cosine {e[2]:.6f}" for name, e in worst.items()]


def run(args: argparse.Namespace) -> int:
    """Quantize ``args.model`` into ``args.output``; print nodes quantized, sizes and the output error on samples."""
    from ..cli import UsageError

    source, target = Path(args.model), Path(args.output)
    if not source.is_file():
        raise UsageError(f"{args.model}: no such file")
    model = onnx.load(source, load_external_data=False)
    samples = _load_samples(args.calib, model) if args.calib else None
    started = time.perf_counter()
    report: QuantizationReport
    if args.mode == "dynamic":
        report = quantize_dynamic(source, target, per_channel=True if args.per_channel is None else args.per_channel,
                                  weight_type=_TYPES[args.weight_type], nodes_to_exclude=args.exclude)
    elif args.mode == "static":
        if samples is None:
            raise UsageError("--mode static needs --calib DIR (calibration samples)")
        report = quantize_static(source, target, ArrayDataReader(samples), quant_format=_FORMATS[args.format],
                                 per_channel=bool(args.per_channel), activation_type=_TYPES[args.activation_type],
                                 weight_type=_TYPES[args.weight_type], nodes_to_exclude=args.exclude,
                                 calibrate_method=_METHODS[args.calibrate_method],
                                 extra_options={"CalibProgress": progress_bar})
    else:
        try:
            check_block_options(args.bits, args.block)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        report = quantize_weight_only(source, target, bits=args.bits, block_size=args.block, symmetric=not args.asymmetric,
                                      nodes_to_exclude=args.exclude)
    elapsed = time.perf_counter() - started
    before, after = model_file_bytes(source), model_file_bytes(target)
    print(f"{report.summary()} in {elapsed:.1f}s")
    for how, count in sorted(report.counts.items()):
        print(f"  {count:5d}  {how}")
    for why, count in sorted(report.skip_reasons.items()):
        print(f"  {count:5d}  stay float: {why}")
    print(f"size: {human_bytes(before)} -> {human_bytes(after)} ({100 * after / before:.1f}%)")
    if args.samples > 0:
        error_samples = (samples or [])[: args.samples] or _made_up_samples(model, args.samples, args.seq)
        origin = "calibration" if samples else "made-up"
        print(f"output error on {len(error_samples)} {origin} sample(s), onyxrt fp32 vs quantized:")
        for line in _output_errors(source, target, error_samples):
            print(line)
    return 0
