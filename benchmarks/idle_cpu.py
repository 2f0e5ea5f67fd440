"""Process CPU time of a session that waits: idle after runs, and at a light steady load.

    python benchmarks/idle_cpu.py --out benchmarks/idle_cpu.md
    python benchmarks/idle_cpu.py minilm_l6 --rate 6 --seconds 3

Each runtime runs in its own process (onyxrt and onnxruntime with their defaults, and each with
``session.intra_op.allow_spinning = 0``), alternating over ``--rounds``. A worker loads the
model and warms up with 10 runs, then measures the process CPU time (all its threads) of:
sleeping 1 s (idle), and running ``--rate`` runs a second for ``--seconds`` (each run followed
by a sleep to the next slot). Medians over rounds. Cases as in latency.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import case_inputs, worker_result, write_table  # noqa: E402

VARIANTS = ("onyxrt", "onyxrt, no spinning", "onnxruntime", "onnxruntime, no spinning")


def worker(variant: str, case: str, rate: float, seconds: float) -> dict:
    path, feeds = case_inputs(case)
    if variant.startswith("onyxrt"):
        import onyxrt as rt
    else:
        import onnxruntime as rt
    options = rt.SessionOptions()
    if variant.endswith("no spinning"):
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = rt.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for _ in range(10):
        session.run(None, feeds)
    start = time.process_time()
    time.sleep(1.0)
    idle = time.process_time() - start
    start_cpu, start_wall, runs = time.process_time(), time.perf_counter(), 0
    busy = 0.0
    while time.perf_counter() - start_wall < seconds:
        slot = time.perf_counter()
        session.run(None, feeds)
        busy += time.perf_counter() - slot
        runs += 1
        time.sleep(max(0.0, 1.0 / rate - (time.perf_counter() - slot)))
    loaded = time.process_time() - start_cpu
    return {"idle": idle, "loaded": loaded / seconds, "run_ms": busy / runs * 1000, "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=["minilm_l6", "resnet50", "llama_decode"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=6.0, help="runs per second under load")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the loaded period")
    parser.add_argument("--out")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.rate, args.seconds)))
        return 0
    lines = [
        "# CPU time of a waiting session: onyxrt vs onnxruntime",
        "",
        f"Command: `python benchmarks/idle_cpu.py {' '.join(sys.argv[1:])}`",
        "",
        f"Each variant in its own process, alternating, {args.rounds} rounds; medians. Idle: process CPU",
        f"seconds while sleeping 1 s after 10 runs. Load: process CPU seconds per wall second at {args.rate:g}",
        f"runs a second for {args.seconds:g} s (1.0 = one core busy). Run: the runs' wall time under that load.",
        "",
        "| case | variant | idle 1 s (CPU s) | load (CPU s / s) | run (ms) |",
        "|---|---|---|---|---|",
    ]
    for case in args.cases:
        samples: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for variant in VARIANTS:
                samples[variant].append(worker_result(
                    [__file__, "--worker", variant, case, "--rate", str(args.rate), "--seconds", str(args.seconds)]))
        for variant, results in samples.items():
            idle, load, run = (statistics.median(r[k] for r in results) for k in ("idle", "loaded", "run_ms"))
            lines.append(f"| {case} | {variant} | {idle:.3f} | {load:.2f} | {run:.1f} |")
            print(lines[-1], flush=True)
    write_table(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
