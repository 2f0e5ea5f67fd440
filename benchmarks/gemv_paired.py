"""Paired latency of onyxrt with and without its compiled GEMV path (``providers/cpu/gemm.small_rows_matmul``).

    python benchmarks/gemv_paired.py llama_decode --runs 80

One process, one session; runs alternate between the two paths (``GEMV_MAX_ROWS`` set to 0 turns
the path off: those products go to BLAS as before), each timed run after two untimed ones of
its path. Both paths see the same load at nearly the same moments, so on a shared machine the
comparison holds where two separate processes' medians would not. Cases from ``latency.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=["llama_decode"])
    parser.add_argument("--runs", type=int, default=80, help="timed runs per path")
    parser.add_argument("--threads", type=int, default=0, help="intra_op_num_threads (0: one per core)")
    args = parser.parse_args()

    import onyxrt
    from latency import case_inputs
    from onyxrt.providers.cpu import gemm

    on_rows = gemm.GEMV_MAX_ROWS
    for case in args.cases:
        path, feeds = case_inputs(case)
        options = onyxrt.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onyxrt.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        times: dict[str, list[float]] = {"BLAS": [], "compiled GEMV": []}
        loads = [os.getloadavg()[0]]
        for _ in range(args.runs):
            for name, rows in (("BLAS", 0), ("compiled GEMV", on_rows)):
                gemm.GEMV_MAX_ROWS = rows
                session.run(None, feeds)
                session.run(None, feeds)
                start = time.perf_counter()
                session.run(None, feeds)
                times[name].append((time.perf_counter() - start) * 1000)
        gemm.GEMV_MAX_ROWS = on_rows
        loads.append(os.getloadavg()[0])
        summary = ", ".join(f"{name}: median {statistics.median(v):.2f} ms, min {min(v):.2f}" for name, v in times.items())
        print(f"{case} ({args.runs} runs a path; load {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores): {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
