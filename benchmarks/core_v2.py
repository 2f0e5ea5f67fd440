"""Core v2 before/after: session creation, latency and peak memory of two onyxrt trees.

    python benchmarks/core_v2.py --baseline /path/to/old/checkout --out benchmarks/core_v2.md

Each measurement runs in its own process (one tree per process, alternating A B A B over
``--rounds``), with the tree put first on ``sys.path``. A worker creates a session (timed),
warms up, times ``--repeat`` runs, then measures one more run under ``tracemalloc``: numpy
reports its buffers to tracemalloc, so the peak is the bytes the run allocated at its
highest point, on top of the weights, whatever the tree's own accounting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ("resnet50", "bert_base", "llama_decode", "llama_prefill", "chain_400")


def _chain_case() -> tuple[bytes, dict]:
    """400 alternating Add/Mul nodes on (1, 512) float32: the plan's Python overhead per step."""
    import numpy as np
    from onnx import TensorProto, helper

    n = 400
    nodes = [helper.make_node("Add" if i % 2 else "Mul", [f"v{i}", "c"], [f"v{i + 1}"]) for i in range(n)]
    info = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 512]) for name in ("v0", "c", f"v{n}")]
    graph = helper.make_graph(nodes, "chain", info[:2], info[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString(), {"v0": np.ones((1, 512), np.float32), "c": np.full((1, 512), 0.5, np.float32)}


def worker(tree: str, case: str, repeat: int) -> None:
    sys.path.insert(0, tree)
    sys.path.insert(1, str(ROOT / "benchmarks"))
    import tracemalloc

    import onyxrt
    from latency import case_inputs, timed_runs

    assert onyxrt.__file__.startswith(tree), onyxrt.__file__
    path, feeds = _chain_case() if case == "chain_400" else case_inputs(case)
    start = time.perf_counter()
    session = onyxrt.InferenceSession(path, providers=["CPUExecutionProvider"])
    created = time.perf_counter() - start
    times = timed_runs(session, feeds, repeat)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    session.run(None, feeds)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    print(json.dumps({"create_s": created, "times_ms": times, "peak_bytes": peak}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=list(CASES))
    parser.add_argument("--baseline", required=True, help="checkout of the tree to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--out")
    parser.add_argument("--worker", nargs=3, metavar=("TREE", "CASE", "REPEAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        tree, case, repeat = args.worker
        worker(tree, case, int(repeat))
        return 0

    trees = {"before": str(Path(args.baseline).resolve()), "after": str(ROOT)}
    rows = []
    for case in args.cases:
        samples = {name: {"create_s": [], "times_ms": [], "peak_bytes": []} for name in trees}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                done = subprocess.run(
                    [sys.executable, __file__, "--baseline", args.baseline, "--worker", tree, case, str(args.repeat)],
                    capture_output=True, text=True, check=True, cwd=tree,
                    env={**os.environ, "PYTHONPATH": tree},
                )
                result = json.loads(done.stdout.strip().splitlines()[-1])
                samples[name]["create_s"].append(result["create_s"])
                samples[name]["times_ms"] += result["times_ms"]
                samples[name]["peak_bytes"].append(result["peak_bytes"])
        medians = {name: {k: statistics.median(v) for k, v in s.items()} for name, s in samples.items()}
        rows.append((case, medians))
        print(case, json.dumps(medians), flush=True)

    lines = [
        "# Core v2: before / after",
        "",
        f"Command: `python benchmarks/core_v2.py {' '.join(sys.argv[1:])}`",
        "",
        f"Each tree in its own process, alternating, {args.rounds} rounds; medians. Session creation: one per",
        f"process. Latency: {args.repeat} timed runs per process after 3 warm-ups. Peak: bytes allocated at the",
        "highest point of one run (tracemalloc, numpy buffers included), weights excluded.",
        "",
        "| case | create before (s) | create after (s) | run before (ms) | run after (ms) | peak before (MiB) | peak after (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, m in rows:
        b, a = m["before"], m["after"]
        lines.append(
            f"| {case} | {b['create_s']:.2f} | {a['create_s']:.2f} | {b['times_ms']:.2f} | {a['times_ms']:.2f} "
            f"| {b['peak_bytes'] / 2**20:.1f} | {a['peak_bytes'] / 2**20:.1f} |"
        )
    from latency import write_table

    write_table(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.exit(main())
