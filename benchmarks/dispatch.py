"""Per-node dispatch cost: time per node of long chains of tiny nodes, onyxrt against onnxruntime.

    python benchmarks/dispatch.py --out benchmarks/dispatch.md

Each model is a chain of N nodes on a 1-element float tensor (Neg, Add of a constant, Relu,
alternating; Reshape no-ops are avoided because the optimizer would remove them), run with the
optimizer off so every node executes. The kernel work is negligible, so time / N is what a
runtime spends per node around its kernels; a one-node chain's time is what a run costs around its
nodes (feed checks, the thread and BLAS set-up, the plan's buffers, the outputs' checks). Each runtime
runs in its own process, alternating, median of the per-run times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import timed_runs, worker_result, write_table  # noqa: E402

LENGTHS = (1, 100, 1000)


def chain_model(length: int) -> onnx.ModelProto:
    """``length`` alternating Neg / Add(constant) / Relu nodes on a [1] float tensor."""
    nodes, previous = [], "x"
    for i in range(length):
        output = "y" if i == length - 1 else f"v{i}"
        op = ("Neg", "Add", "Relu")[i % 3]
        inputs = [previous, "one"] if op == "Add" else [previous]
        nodes.append(helper.make_node(op, inputs, [output]))
        previous = output
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              [numpy_helper.from_array(np.ones(1, np.float32), "one")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def worker(runtime: str, path: str, repeat: int) -> None:
    rt = __import__(runtime)
    options = rt.SessionOptions()
    options.graph_optimization_level = rt.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = rt.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    print(json.dumps(timed_runs(session, {"x": np.ones(1, np.float32)}, repeat, warmup=20)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--out")
    parser.add_argument("--worker", nargs=2, metavar=("RUNTIME", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.repeat)
        return
    lines = ["# Per-node dispatch cost (optimizer off, 1 thread, chains of tiny nodes)", "",
             "| nodes | onyxrt (µs / node) | onnxruntime (µs / node) | ratio |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        for length in LENGTHS:
            path = str(Path(folder) / f"chain{length}.onnx")
            onnx.save(chain_model(length), path)
            samples: dict[str, list[float]] = {"onyxrt": [], "onnxruntime": []}
            for _ in range(args.rounds):
                for runtime in samples:
                    samples[runtime] += worker_result([__file__, "--worker", runtime, path, "--repeat", str(args.repeat)])
            ours, theirs = (statistics.median(samples[r]) * 1000 / length for r in ("onyxrt", "onnxruntime"))
            lines.append(f"| {length} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.1f}× |")
    lines += ["", f"Command: `python benchmarks/dispatch.py {' '.join(sys.argv[1:])}`".rstrip()]
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
