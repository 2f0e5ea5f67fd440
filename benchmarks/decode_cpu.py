"""CPU time of one inference on one thread: onyxrt vs onnxruntime (and optionally an older onyxrt checkout).

    python benchmarks/decode_cpu.py llama_decode llama_prefill --rounds 3 --repeat 40
    python benchmarks/decode_cpu.py llama_decode --baseline /tmp/onyxrt-before   # a `git archive` of an older commit

Both runtimes run with one intra-op thread, each in its own process, alternating A B A B
(cases from ``latency.py``). Besides the wall time of each run it records the thread CPU time
the run took (``time.thread_time``): on a machine shared with other work a run's wall time
includes the time it waited for a core, its CPU time mostly does not, so the CPU-time ratio
still says which runtime does less work when the wall-time ratio is noise. It says nothing
about how well a runtime uses several cores (``latency.py`` measures that, on a quiet machine).
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


def worker(runtime: str, case: str, repeat: int) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from latency import case_inputs

    path, feeds = case_inputs(case)
    if runtime == "onnxruntime":
        import onnxruntime as rt
    else:
        import onyxrt as rt
    options = rt.SessionOptions()
    options.intra_op_num_threads = 1
    session = rt.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, feeds)
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.thread_time()
        session.run(None, feeds)
        cpu.append((time.thread_time() - start_cpu) * 1000)
        wall.append((time.perf_counter() - start) * 1000)
    print(json.dumps({"wall": wall, "cpu": cpu, "module": rt.__file__}))


def run_worker(runtime: str, case: str, repeat: int, baseline: str | None) -> dict:
    environment = dict(os.environ)
    checkout = baseline if runtime == "onyxrt (baseline)" else str(ROOT)  # whose onyxrt the worker imports
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [checkout, environment.get("PYTHONPATH")]))
    name = "onnxruntime" if runtime == "onnxruntime" else "onyxrt"
    done = subprocess.run([sys.executable, __file__, "--worker", name, case, "--repeat", str(repeat)],
                          capture_output=True, text=True, check=True, env=environment, cwd=ROOT.parent)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=["llama_decode", "llama_prefill"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--baseline", help="another onyxrt checkout (its root directory) to compare too")
    parser.add_argument("--out", help="write the markdown table here")
    parser.add_argument("--worker", nargs=2, metavar=("RUNTIME", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.repeat)
        return 0
    runtimes = (["onyxrt (baseline)"] if args.baseline else []) + ["onyxrt", "onnxruntime"]
    loads = [os.getloadavg()[0]]
    lines = [
        "# One-thread CPU time per run: onyxrt vs onnxruntime",
        "",
        f"Command: `python benchmarks/decode_cpu.py {' '.join(sys.argv[1:])}`",
        "",
        f"One intra-op thread each; each runtime in its own process, alternating, {args.rounds} rounds x "
        f"{args.repeat} timed runs; medians (ms). CPU = the run's thread CPU time.",
        "",
        "| case | runtime | wall (ms) | CPU (ms) | CPU / onnxruntime's |",
        "|---|---|---|---|---|",
    ]
    for case in args.cases:
        samples = {runtime: {"wall": [], "cpu": []} for runtime in runtimes}
        for _ in range(args.rounds):
            for runtime in runtimes:
                result = run_worker(runtime, case, args.repeat, args.baseline)
                samples[runtime]["wall"] += result["wall"]
                samples[runtime]["cpu"] += result["cpu"]
                loads.append(os.getloadavg()[0])
        reference = statistics.median(samples["onnxruntime"]["cpu"])
        for runtime in runtimes:
            wall, cpu = statistics.median(samples[runtime]["wall"]), statistics.median(samples[runtime]["cpu"])
            lines.append(f"| {case} | {runtime} | {wall:.2f} | {cpu:.2f} | {cpu / reference:.2f} |")
            print(f"{case} {runtime}: wall {wall:.2f} ms, cpu {cpu:.2f} ms", flush=True)
    lines += ["", f"Load average (1 min) during the runs: {min(loads):.1f} to {max(loads):.1f} on "
              f"{os.cpu_count()} cores; measured {time.strftime('%Y-%m-%d %H:%M')}."]
    table = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
