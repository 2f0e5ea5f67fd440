"""ExecutionMode.ORT_PARALLEL against ORT_SEQUENTIAL, onyxrt and onnxruntime, each configuration in its own
process, alternating; medians.

    python benchmarks/parallel_branches.py --out benchmarks/parallel_branches.md

Models: ``branches`` (four independent chains MatMul -> Relu -> MatMul from one input, 64 x 1024 rows,
summed: a graph with parallel branches) and ``minilm_l6`` (seq 128, from ../shared/zoo: a chain, for what
the parallel mode costs where there is nothing to overlap). Configurations (threads = 2): sequential with
2 intra-op threads; parallel with 2 inter-op threads and 1 intra-op thread (each branch's product on
one core); parallel with 2 inter-op and 2 intra-op threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from latency import case_inputs, timed_runs
from report import cpu_model, write_keeping_notes

CONFIGS = {"sequential, intra 2": ("ORT_SEQUENTIAL", 2, 0), "parallel, inter 2, intra 1": ("ORT_PARALLEL", 1, 2),
           "parallel, inter 2, intra 2": ("ORT_PARALLEL", 2, 2)}


def branches_model() -> tuple[bytes, dict]:
    import numpy as np
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    size, nodes, inits, partial = 1024, [], [], []
    for i in range(4):
        w = (rng.standard_normal((size, size)) / size**0.5).astype(np.float32)
        inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, w.shape, w.ravel()))
        nodes += [helper.make_node("MatMul", ["x", f"w{i}"], [f"a{i}"]), helper.make_node("Relu", [f"a{i}"], [f"r{i}"]),
                  helper.make_node("MatMul", [f"r{i}", f"w{i}"], [f"b{i}"])]
        partial.append(f"b{i}")
    nodes.append(helper.make_node("Sum", partial, ["y"]))
    graph = helper.make_graph(nodes, "branches", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString(), {"x": rng.standard_normal((64, size)).astype(np.float32)}


def case(name: str) -> tuple[object, dict]:
    if name == "branches":
        return branches_model()
    return case_inputs(name)


def worker(runtime: str, name: str, config: str, repeat: int) -> None:
    model, feeds = case(name)
    rt = __import__("onnxruntime" if runtime == "onnxruntime" else "onyxrt")
    mode, intra, inter = CONFIGS[config]
    options = rt.SessionOptions()
    options.execution_mode = getattr(rt.ExecutionMode, mode)
    options.intra_op_num_threads = intra
    options.inter_op_num_threads = inter
    session = rt.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    print(json.dumps(timed_runs(session, feeds, repeat)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=["branches", "minilm_l6"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.repeat)
        return 0
    lines = ["# ORT_PARALLEL vs ORT_SEQUENTIAL: onyxrt and onnxruntime (CPU)", "",
             f"Command: `python benchmarks/parallel_branches.py {' '.join(sys.argv[1:])}`", "",
             f"Each runtime and configuration in its own process, alternating, {args.rounds} rounds x {args.repeat} "
             "timed runs; medians (ms).", "",
             "| case | configuration | onyxrt (ms) | onnxruntime (ms) | ratio |", "|---|---|---|---|---|"]
    for name in args.cases:
        times = {(runtime, config): [] for config in CONFIGS for runtime in ("onyxrt", "onnxruntime")}
        for _ in range(args.rounds):
            for key in times:
                out = subprocess.run([sys.executable, __file__, "--worker", key[0], name, key[1], "--repeat",
                                      str(args.repeat)], capture_output=True, text=True, check=True)
                times[key] += json.loads(out.stdout.strip().splitlines()[-1])
        for config in CONFIGS:
            ours, theirs = (statistics.median(times[(r, config)]) for r in ("onyxrt", "onnxruntime"))
            lines.append(f"| {name} | {config} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f} |")
    lines += ["", f"Measured {time.strftime('%Y-%m-%d')} on {cpu_model()}."]
    write_keeping_notes(lines, args.out, "## Reading these numbers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
