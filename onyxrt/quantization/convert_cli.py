"""``onyxrt convert MODEL OUT --to fp16|bf16|mixed``: float16/bfloat16/mixed-precision conversion with a summary.

The summary lists the nodes converted and kept float32, the Casts added, the file size before and
after, and each output's error against the float32 model on sample inputs (given with ``--input``
or made up as ``onyxrt run`` makes them), run through onyxrt. Relative error is
``max|converted - fp32| / max|fp32|`` over each output.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .float16 import DEFAULT_OP_BLOCK_LIST, convert_with_report
from .mixed_precision import MixedPrecisionResult, auto_convert_mixed_precision

_TWO_GB = 2**31 - 1
LISTED_NODES = 12


def relative_error(actual: Any, expected: Any) -> float:
    """``max|actual - expected| / max|expected|`` (the absolute error when ``expected`` is all zeros)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.size == 0:
        return 0.0
    scale = float(np.max(np.abs(expected)))
    error = float(np.max(np.abs(actual - expected)))
    return error / scale if scale > 0 else error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .. import cli

    parser.add_argument("model", help="path of the float32 .onnx model")
    parser.add_argument("output", help="path to write the converted model to")
    parser.add_argument("--to", choices=("fp16", "bf16", "mixed"), required=True,
                        help="float16, bfloat16, or float16 with the nodes that exceed --rtol/--atol kept float32")
    parser.add_argument("--keep-io-types", action="store_true",
                        help="keep float inputs and outputs float32 (Casts inside the model); always on for mixed")
    parser.add_argument("--op-block-list", nargs="+", metavar="OP",
                        help=f"op types kept float32 (default: onnxruntime's list of {len(DEFAULT_OP_BLOCK_LIST)} ops)")
    parser.add_argument("--node-block-list", nargs="+", default=[], metavar="NAME", help="node names kept float32 (fp16/bf16; mixed finds its own)")
    parser.add_argument("--input", action="append", default=[], type=cli._input_pair, metavar="NAME=FILE.npy",
                        help="sample value of input NAME (.npy); inputs not given are made up; repeatable")
    parser.add_argument("--samples", type=cli._count(1), default=2,
                        help="made-up samples to measure the output error on (mixed searches on the first; default 2)")
    parser.add_argument("--dim", action="append", default=[], type=cli._dim_pair, metavar="NAME=VALUE",
                        help="value of the symbolic dimension NAME of the made-up inputs; repeatable")
    parser.add_argument("--batch", type=cli._count(0), default=1, help="value of batch-like symbolic dims (default 1)")
    parser.add_argument("--seq", type=cli._count(0), default=8, help="value of sequence-like symbolic dims (default 8)")
    parser.add_argument("--past", type=cli._count(0), default=0, help="value of past-length dims (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first made-up sample (the next ones count up)")
    parser.add_argument("--rtol", type=cli._tolerance, default=1e-2,
                        help="mixed: relative tolerance of every output element (np.allclose; default 0.01)")
    parser.add_argument("--atol", type=cli._tolerance, default=1e-3,
                        help="mixed: absolute tolerance of every output element (default 0.001)")


def run(args: argparse.Namespace) -> int:
    from .. import cli

    source = cli._resolve_model(args.model)
    graph_only = cli._load_graph(source)
    given = {name: cli._load_input(name, file) for name, file in args.input}
    samples = []
    for index in range(args.samples if len(given) < len(cli.feeds_module.graph_inputs(graph_only)) else 1):
        sample_args = argparse.Namespace(**{**vars(args), "seed": args.seed + index})
        samples.append(cli._model_feeds(graph_only, sample_args, given))

    started = time.perf_counter()
    if args.to == "mixed":
        try:
            result = auto_convert_mixed_precision(str(source), samples[0], rtol=args.rtol, atol=args.atol,
                                                  keep_io_types=True, op_block_list=args.op_block_list,
                                                  return_details=True)
        except ValueError as exc:  # no mixed model meets the tolerance
            raise cli.RunFailure(f"--to mixed: {exc}") from None
        assert isinstance(result, MixedPrecisionResult)
        model = result.model
        converted_count = result.candidates - len(result.kept_float32)
        kept = result.kept_float32
        casts = sum(1 for node in model.graph.node if node.op_type == "Cast") - _cast_count(graph_only)
        how = f"float16 except nodes exceeding rtol={args.rtol:g} atol={args.atol:g} ({result.attempts} trial conversions)"
    else:
        report = convert_with_report(str(source), args.to, keep_io_types=args.keep_io_types,
                                     op_block_list=args.op_block_list, node_block_list=args.node_block_list)
        model, converted_count, kept, casts = report.model, len(report.converted_nodes), report.kept_nodes, report.casts_added
        how = ("float16" if args.to == "fp16" else "bfloat16") + (", inputs/outputs kept float32" if args.keep_io_types else "")
    elapsed = time.perf_counter() - started
    output = Path(args.output)
    _save(model, output)

    print(f"model: {source} -> {output} ({how}; {elapsed:.1f} s)")
    print(f"nodes: {converted_count} converted, {len(kept)} kept float32, {casts} Cast nodes added")
    if kept:
        shown = ", ".join(kept[:LISTED_NODES]) + (f", ... ({len(kept) - LISTED_NODES} more)" if len(kept) > LISTED_NODES else "")
        print(f"kept float32: {shown}")
    before, after = _file_bytes(source), _file_bytes(output)
    print(f"size: {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB ({after / before:.1%})")
    _print_errors(source, output, samples, given)
    return 0


def _cast_count(model: onnx.ModelProto) -> int:
    return sum(1 for node in model.graph.node if node.op_type == "Cast")


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() > _TWO_GB:
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(model, str(path))


def _file_bytes(path: Path) -> int:
    """The model file plus the external data files next to it that it names."""
    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    locations = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data if entry.key == "location"}
    return total + sum((path.parent / location).stat().st_size for location in locations if (path.parent / location).is_file())


def _print_errors(source: Path, output: Path, samples: list[dict[str, Any]], given: dict[str, Any]) -> None:
    from ..session.inference_session import InferenceSession

    fp32 = InferenceSession(str(source), providers=["CPUExecutionProvider"])
    low = InferenceSession(str(output), providers=["CPUExecutionProvider"])
    low_inputs = {i.name: i.type for i in low.get_inputs()}
    names = [o.name for o in fp32.get_outputs()]
    worst_abs = dict.fromkeys(names, 0.0)
    worst_rel = dict.fromkeys(names, 0.0)
    for feeds in samples:
        expected = fp32.run(names, feeds)
        low_feeds = {name: value.astype(np.float16 if low_inputs[name] == "tensor(float16)" else _bf16())
                     if isinstance(value, np.ndarray) and value.dtype == np.float32 and low_inputs[name] != "tensor(float)"
                     else value for name, value in feeds.items()}
        actual = low.run(names, low_feeds)
        for name, a, e in zip(names, actual, expected):
            if not isinstance(e, np.ndarray) or e.dtype.kind != "f":
                continue
            worst_abs[name] = max(worst_abs[name], float(np.max(np.abs(np.asarray(a, np.float64) - e), initial=0.0)))
            worst_rel[name] = max(worst_rel[name], relative_error(a, e))
    origin = "given" if len(samples) == 1 and given else "made-up"
    print(f"output error vs float32 on {len(samples)} {origin} sample(s), both run by onyxrt "
          "(relative: max|a-b| / max|fp32|):")
    width = max((len(name) for name in names), default=6)
    print(f"  {'output':{width}s}  {'max abs':>10s}  {'max rel':>10s}")
    for name in names:
        print(f"  {name:{width}s}  {worst_abs[name]:10.3g}  {worst_rel[name]:10.3g}")


def _bf16():
    import ml_dtypes

    return ml_dtypes.bfloat16
