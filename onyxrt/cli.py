"""The ``onyxrt`` command line: ``run [MODEL]``, ``info MODEL``, ``optimize IN OUT`` and ``bench MODEL``."""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from . import benchmark
from .errors import OnyxRuntimeError
from .graph.model_loader import read_model_proto
from .graph.types import np_dtype, tensor_shape, type_string
from .session.inference_session import InferenceSession
from .session.session_options import SessionOptions

DEFAULT_MODEL = "light_squeezenet"


def _light_model_dir() -> Path:
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def _dummy_input(shape: Sequence[int]) -> np.ndarray:
    """onnx's backend-runner dummy data (arange / n), which the light models' stored outputs were made from."""
    n = int(np.prod(shape))
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


def _random_input(arg, dims: dict[str, int], rng: np.random.Generator) -> np.ndarray:
    type_proto = arg._type_proto
    if type_proto is None or not type_proto.HasField("tensor_type"):
        raise SystemExit(f"onyxrt: cannot make a random value for input '{arg.name}' of type {arg.type}; pass --input")
    shape = [d if isinstance(d, int) else dims.get(d, 1) if isinstance(d, str) else 1 for d in (arg.shape or [])]
    dtype = np_dtype(type_proto.tensor_type.elem_type)
    if dtype == object:
        return np.array([f"s{i}" for i in range(int(np.prod(shape)))], dtype=object).reshape(shape)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 10, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _summary(value: Any) -> str:
    if not isinstance(value, np.ndarray):
        return f"{type(value).__name__} of {len(value)}" if hasattr(value, "__len__") else repr(value)
    head = f"shape={list(value.shape)} dtype={value.dtype}"
    if value.size and value.dtype.kind in "fiub":
        data = value.astype(np.float64)
        return f"{head} min={data.min():.6g} max={data.max():.6g} mean={data.mean():.6g}"
    return head


def _parse_pairs(pairs: Sequence[str], what: str) -> dict[str, str]:
    parsed = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"onyxrt: {what} must look like NAME=VALUE, got '{pair}'")
        parsed[name] = value
    return parsed


def cmd_run(args: argparse.Namespace) -> int:
    expected = None
    if args.model is None:
        model_path = _light_model_dir() / f"{DEFAULT_MODEL}.onnx"
        print(f"No model given: running {DEFAULT_MODEL} from the onnx package ({model_path})")
        reference = _light_model_dir() / f"{DEFAULT_MODEL}_output_0.pb"
        expected = onnx.numpy_helper.to_array(onnx.load_tensor(str(reference)))
    else:
        model_path = Path(args.model)
    options = SessionOptions()
    options.graph_optimization_level = args.optimization_level
    session = InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    dims = {k: int(v) for k, v in _parse_pairs(args.dim, "--dim").items()}
    given = {k: np.load(v, allow_pickle=False) for k, v in _parse_pairs(args.input, "--input").items()}
    rng = np.random.default_rng(args.seed)
    feeds = {}
    for arg in session.get_inputs():
        if arg.name in given:
            feeds[arg.name] = given.pop(arg.name)
        elif expected is not None:
            feeds[arg.name] = _dummy_input(arg.shape)
        else:
            feeds[arg.name] = _random_input(arg, dims, rng)
    if given:
        raise SystemExit(f"onyxrt: the model has no input named {', '.join(given)}")

    times = []
    outputs = None
    for _ in range(max(1, args.repeat)):
        start = time.perf_counter()
        outputs = session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
    for arg in session.get_inputs():
        print(f"input  {arg.name}: {_summary(feeds[arg.name])}")
    for arg, value in zip(session.get_outputs(), outputs):
        print(f"output {arg.name}: {_summary(value)}")
    print(f"latency: median {statistics.median(times):.3f} ms, min {min(times):.3f} ms over {len(times)} run(s)")
    if expected is not None:
        error = float(np.max(np.abs(outputs[0].astype(np.float64) - expected)))
        ok = np.allclose(outputs[0], expected, rtol=1e-3, atol=1e-5)
        print(f"check against the stored reference output: max abs error {error:.3g} -> {'OK' if ok else 'MISMATCH'}")
        return 0 if ok else 1
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    proto, _ = read_model_proto(args.model)
    graph = proto.graph
    print(f"model: {args.model}")
    print(f"ir_version: {proto.ir_version}  producer: {proto.producer_name} {proto.producer_version}".rstrip())
    print("opsets: " + ", ".join(f"{imp.domain or 'ai.onnx'}={imp.version}" for imp in proto.opset_import))
    initializer_names = {t.name for t in graph.initializer}
    print("inputs:")
    for vi in graph.input:
        if vi.name not in initializer_names:
            print(f"  {vi.name}: {type_string(vi.type)} {tensor_shape(vi.type)}")
    print("outputs:")
    for vi in graph.output:
        print(f"  {vi.name}: {type_string(vi.type)} {tensor_shape(vi.type)}")
    histogram = _op_histogram(graph)
    print(f"nodes: {len(graph.node)}")
    for op_type, count in histogram.most_common():
        print(f"  {op_type:32s} {count}")
    total = sum(_tensor_bytes(t) for t in graph.initializer)
    print(f"initializers: {len(graph.initializer)}, {total:,} bytes ({total / 2**20:.2f} MiB)")
    if proto.functions:
        print(f"model-local functions: {', '.join(f.name for f in proto.functions)}")
    return 0


def _op_histogram(graph: onnx.GraphProto) -> collections.Counter:
    """Op types of the graph's own nodes (domain-qualified outside ai.onnx), counted."""
    return collections.Counter(
        (n.domain + "::" if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in graph.node
    )


_LEVELS = {"disabled": 0, "basic": 1, "extended": 2, "layout": 3, "all": 99}


def cmd_optimize(args: argparse.Namespace) -> int:
    """Optimize IN at a level and save it to OUT (onnxruntime's optimized_model_filepath), with a report."""
    before, _ = read_model_proto(args.model)
    options = SessionOptions()
    options.graph_optimization_level = _LEVELS[args.level]
    options.optimized_model_filepath = args.output
    start = time.perf_counter()
    session = InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    seconds = time.perf_counter() - start
    after, _ = read_model_proto(args.output)
    print(f"{args.model} -> {args.output} at level {args.level}: "
          f"{len(before.graph.node)} -> {len(after.graph.node)} nodes, session created in {seconds:.2f} s")
    if not args.report:
        return 0
    report = session._optimization_report
    print(f"passes ({report.rounds} rounds, fixed point {'reached' if report.reached_fixed_point else 'not reached'}):")
    for name, spent in report.seconds.items():
        print(f"  {name:40s} {report.counts.get(name, 0):6d} rewrites {spent * 1000:9.1f} ms")
    old, new = _op_histogram(before.graph), _op_histogram(after.graph)
    print("ops (before -> after):")
    for op_type in sorted(old.keys() | new.keys(), key=lambda op: (-old[op], op)):
        print(f"  {op_type:32s} {old[op_type]:6d} -> {new[op_type]}")
    return 0


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    return count * np_dtype(tensor.data_type).itemsize


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onyxrt", description="Run and inspect ONNX models with onyxrt.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a model (an embedded example when MODEL is omitted)")
    run.add_argument("model", nargs="?", help="path of an .onnx model")
    run.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy", help="feed an input from a .npy file")
    run.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE", help="value of a symbolic dimension for random inputs (default 1)")
    run.add_argument("--repeat", type=int, default=1, help="run N times and report latency statistics")
    run.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    run.add_argument("--optimization-level", type=int, default=99, choices=(0, 1, 2, 3, 99), help="graph optimization level")
    run.set_defaults(handler=cmd_run)
    info = commands.add_parser("info", help="describe a model: inputs, outputs, opsets, ops, weights")
    info.add_argument("model", help="path of an .onnx model")
    info.set_defaults(handler=cmd_info)
    optimize = commands.add_parser("optimize", help="optimize a model and save it (loadable by onnxruntime)")
    optimize.add_argument("model", help="path of the .onnx model to optimize")
    optimize.add_argument("output", help="path to write the optimized model to")
    optimize.add_argument("--level", choices=tuple(_LEVELS), default="extended", help="graph optimization level")
    optimize.add_argument("--report", action="store_true", help="each pass's rewrites and time, ops before and after")
    optimize.set_defaults(handler=cmd_optimize)
    bench = commands.add_parser("bench", help="latency percentiles, throughput, memory and session creation (--compare onnxruntime)")
    benchmark.add_arguments(bench)
    bench.set_defaults(handler=benchmark.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except OnyxRuntimeError as exc:
        print(f"onyxrt: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into a pager or `head` that closed early
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
