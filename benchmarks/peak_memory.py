"""Peak memory and latency per run with the buffer planner off and on.

    python benchmarks/peak_memory.py                       # resnet50 (batch 1), bert_base (batch 1, seq 128)
    python benchmarks/peak_memory.py resnet50 --rounds 5 --repeat 40

The planner is switched with ``SessionOptions.enable_mem_reuse`` (onnxruntime's option).

* Memory: one process per (model, planner setting, round). It loads the model, runs it
  three times (the pool learns the run's buffer sizes), then reports ``traced``,
  tracemalloc's peak during one more run minus what was traced before the first run
  (weights and the session itself; memory a pool keeps between runs counts), and
  ``counted``, the plan's own figure (``ExecutionPlan.peak_bytes``: live step outputs,
  deduplicated by memory owner, plus the pool). The tables show the largest of the rounds.
* Latency: one process per model holding both sessions, alternating off/on runs so
  drifting machine load hits both alike; median and minimum of ``--repeat`` runs each.

Models come from ``$ZOO_DIR`` (default /tmp/zoo, ``<name>.onnx``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZOO_DIR = Path(os.environ.get("ZOO_DIR", "/tmp/zoo"))
CASES = ("resnet50", "bert_base")


def _session(case: str, reuse: bool):
    import onyxrt as ort

    sys.path.insert(0, str(ROOT / "tests" / "zoo"))
    from feeds import encoder_feeds, vision_feeds

    options = ort.SessionOptions()
    options.enable_mem_reuse = reuse
    session = ort.InferenceSession(str(ZOO_DIR / f"{case}.onnx"), options, providers=["CPUExecutionProvider"])
    if session._plan.reuse_buffers != reuse:  # noqa: SLF001 - a check that the option reaches the plan
        raise SystemExit("this session ignores SessionOptions.enable_mem_reuse: nothing to compare")
    names = {i.name for i in session.get_inputs()}
    feeds = vision_feeds(1) if case == "resnet50" else encoder_feeds(case, 1, 128)
    return session, {k: v for k, v in feeds.items() if k in names}


def memory_worker(case: str, reuse: bool) -> dict:
    tracemalloc.start()
    session, feeds = _session(case, reuse)
    baseline = tracemalloc.get_traced_memory()[0]
    for _ in range(3):
        session.run(None, feeds)
    tracemalloc.reset_peak()
    session.run(None, feeds)
    traced = tracemalloc.get_traced_memory()[1] - baseline
    return {"traced": traced, "counted": session._plan.peak_bytes}  # noqa: SLF001 - until the session exposes it


def latency_worker(case: str, repeat: int) -> dict:
    sessions = {reuse: _session(case, reuse) for reuse in (False, True)}
    for _ in range(3):
        for session, feeds in sessions.values():
            session.run(None, feeds)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(repeat):
        for reuse in (False, True) if i % 2 else (True, False):
            session, feeds = sessions[reuse]
            start = time.perf_counter()
            session.run(None, feeds)
            times[reuse].append(time.perf_counter() - start)
    return {str(reuse): times[reuse] for reuse in (False, True)}


def _worker(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="*", default=list(CASES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, case, value = args.worker
        result = memory_worker(case, value == "1") if kind == "memory" else latency_worker(case, int(value))
        print(json.dumps(result))
        return
    print("| model | planner | peak traced (MB) | peak counted (MB) | median latency (ms) | min latency (ms) |")
    print("|---|---|---|---|---|---|")
    for case in args.cases:
        memory = {reuse: [_worker("memory", case, "1" if reuse else "0") for _ in range(args.rounds)]
                  for reuse in (False, True)}
        latency = _worker("latency", case, str(args.repeat))
        for reuse in (False, True):
            traced = max(r["traced"] for r in memory[reuse]) / 1e6
            counted = max(r["counted"] for r in memory[reuse]) / 1e6
            times = latency[str(reuse)]
            print(f"| {case} | {'on' if reuse else 'off'} | {traced:.1f} | {counted:.1f} | "
                  f"{statistics.median(times) * 1e3:.1f} | {min(times) * 1e3:.1f} |", flush=True)


if __name__ == "__main__":
    main()
