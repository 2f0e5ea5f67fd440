"""``onyxrt bench MODEL``: latency percentiles, throughput, peak memory and session creation time.

In the spirit of onnxruntime_perf_test and OpenVINO's benchmark_app. Every measured runtime
runs in its own process (thread pools that spin after work would slow a peer sharing the
process); with ``--compare onnxruntime`` the two alternate, A B A B, and the ratio of the
medians is printed. Inputs are made by :mod:`onyxrt.feeds` from the model's declared types and
shapes: symbolic dims from ``--dim NAME=VALUE`` or the ``--batch/--seq/--past`` shorthands,
masks as ones, position ids counting from the past length, ids inside the tables they index.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Sequence

import numpy as np
import onnx

from .feeds import Shapes, make_feeds

RUNTIMES = ("onyxrt", "onnxruntime")


def worker(args: argparse.Namespace) -> None:
    """Child process: create one session, warm it up, time the runs; print a JSON line."""
    if args.runtime == "onnxruntime":
        import onnxruntime as rt
    else:
        import onyxrt as rt
    options = rt.SessionOptions()
    options.graph_optimization_level = rt.GraphOptimizationLevel(args.level)
    if args.threads:
        options.intra_op_num_threads = args.threads
    start = time.perf_counter()
    session = rt.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    creation = time.perf_counter() - start
    feeds = make_feeds(onnx.load(args.model, load_external_data=False), _shapes(args))
    for _ in range(args.warmup):
        session.run(None, feeds)
    times = []
    deadline = time.perf_counter() + args.time if args.time else None
    while len(times) < args.runs or (deadline is not None and time.perf_counter() < deadline):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"creation_s": creation, "ms": times, "peak_rss_mib": peak_kib / 1024}))


def _shapes(args: argparse.Namespace) -> Shapes:
    dims = {}
    for pair in args.dim:
        name, sep, value = pair.partition("=")
        if not sep or not value.isdigit():
            raise SystemExit(f"onyxrt bench: --dim must look like NAME=INTEGER, got '{pair}'")
        dims[name] = int(value)
    return Shapes(dims, args.batch, args.seq, args.past)


def _child(runtime: str, args: argparse.Namespace, runs: int) -> dict:
    command = [sys.executable, "-m", "onyxrt.benchmark", "--worker", runtime, args.model,
               "--level", str(args.level), "--warmup", str(args.warmup), "--runs", str(runs),
               "--batch", str(args.batch), "--seq", str(args.seq), "--past", str(args.past)]
    command += [f"--dim={pair}" for pair in args.dim]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.time:
        command += ["--time", str(args.time / args.rounds)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        raise SystemExit(f"onyxrt bench: the {runtime} process failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<24}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(args: argparse.Namespace) -> int:
    """Benchmark ``args.model`` (and its peer with ``--compare``), print the table; 0 on success."""
    _shapes(args)  # a malformed --dim fails here, before any process starts
    runtimes = [args.runtime] + ([args.compare] if args.compare and args.compare != args.runtime else [])
    results: dict[str, dict] = {name: {"creation_s": [], "ms": [], "peak_rss_mib": 0.0} for name in runtimes}
    runs_per_round = max(1, -(-args.runs // args.rounds))
    total = args.rounds * len(runtimes)
    for round_index in range(args.rounds):
        for position, runtime in enumerate(runtimes):
            _progress(round_index * len(runtimes) + position, total, f"{runtime} round {round_index + 1}")
            child = _child(runtime, args, runs_per_round)
            results[runtime]["creation_s"].append(child["creation_s"])
            results[runtime]["ms"] += child["ms"]
            results[runtime]["peak_rss_mib"] = max(results[runtime]["peak_rss_mib"], child["peak_rss_mib"])
    _progress(total, total, "done")
    rows = {}
    for runtime, result in results.items():
        ms = result["ms"]
        median = statistics.median(ms)
        rows[runtime] = {
            "p50_ms": median, "p90_ms": _percentile(ms, 90), "p99_ms": _percentile(ms, 99), "mean_ms": statistics.fmean(ms),
            "runs": len(ms), "throughput_per_s": 1000.0 / statistics.fmean(ms),
            "samples_per_s": args.batch * 1000.0 / statistics.fmean(ms),
            "creation_s": statistics.median(result["creation_s"]), "peak_rss_mib": result["peak_rss_mib"],
        }
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"model: {args.model}  level: {args.level}  threads: {args.threads or 'default'}  "
          f"batch {args.batch} seq {args.seq} past {args.past}" + "".join(f"  {pair}" for pair in args.dim))
    header = f"{'runtime':<12} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'runs/s':>9} {'samples/s':>10} {'create s':>9} {'peak MiB':>9} {'runs':>6}"
    print(header)
    for runtime, row in rows.items():
        print(f"{runtime:<12} {row['p50_ms']:9.3f} {row['p90_ms']:9.3f} {row['p99_ms']:9.3f} {row['mean_ms']:9.3f} "
              f"{row['throughput_per_s']:9.1f} {row['samples_per_s']:10.1f} {row['creation_s']:9.3f} {row['peak_rss_mib']:9.1f} {row['runs']:6d}")
    if len(rows) == 2:
        mine, peer = (rows[name] for name in runtimes)
        print(f"ratio {runtimes[0]} / {runtimes[1]} (p50): {mine['p50_ms'] / peer['p50_ms']:.2f}  "
              f"session creation: {mine['creation_s'] / peer['creation_s']:.2f}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``onyxrt bench``'s options (shared by the CLI and the worker processes)."""
    parser.add_argument("model", help="path of an .onnx model")
    parser.add_argument("--runtime", choices=RUNTIMES, default="onyxrt", help="runtime to measure")
    parser.add_argument("--compare", choices=RUNTIMES, help="also measure this runtime, alternating processes, and print the ratio")
    parser.add_argument("--level", type=int, default=99, choices=(0, 1, 2, 3, 99), help="graph optimization level")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: the runtime's default)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per process")
    parser.add_argument("--runs", type=int, default=50, help="timed runs in all (split over the rounds)")
    parser.add_argument("--time", type=float, default=0.0, help="keep running for at least this many seconds in all")
    parser.add_argument("--rounds", type=int, default=3, help="processes per runtime (alternating with --compare)")
    parser.add_argument("--batch", type=int, default=1, help="value of batch-like symbolic dims (and of a symbolic first dim)")
    parser.add_argument("--seq", type=int, default=1, help="value of sequence-like symbolic dims")
    parser.add_argument("--past", type=int, default=0, help="value of past-length dims (total = past + seq)")
    parser.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE", help="value of a named symbolic dim")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onyxrt.benchmark")
    parser.add_argument("--worker", choices=RUNTIMES, required=True)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.runtime = args.worker
    worker(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
