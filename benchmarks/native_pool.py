"""The pool's native hand-offs (framework.native_spin) against BLAS's own threads, on 2 threads.

    python benchmarks/native_pool.py --rounds 3 --out benchmarks/native_pool.md

Part 1, float32 products: each mode in its own process, alternating A B A B, medians: "native" is a
pool in the split-GEMM mode splitting products as native tasks (``ThreadPool.splitting_gemms``, as
sessions whose plans hold onyxrt's own pool kernels run), "blas" the default pool (OpenBLAS's
threads). Part 2, a parallel loop's hand-off: a trivial two-part loop as a native task and as
Python tasks, back to back and after idle gaps, on a split-mode pool (its workers spin).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from latency import median_seconds

SHAPES = [(96, 16, 12544), (384, 64, 196), (576, 96, 196), (1280, 320, 49), (144, 24, 3136), (128, 384, 1536),
          (128, 768, 3072), (64, 2304, 3136), (1, 512, 1376), (1, 512, 32000)]




def products_worker() -> None:
    from onyxrt.framework.thread_pool import ThreadPool
    from onyxrt.providers.cpu import gemm

    rng = np.random.default_rng(0)
    pool = ThreadPool(2)
    if os.environ.get("NATIVE_POOL_MODE") == "native":
        pool = pool.splitting_gemms()
    results = []
    with pool.activate():
        for m, k, n in SHAPES:
            a = rng.random((m, k), dtype=np.float32)
            b = rng.random((k, n), dtype=np.float32)
            out = np.empty((m, n), np.float32)
            results.append(median_seconds(lambda: gemm.matmul(a, b, out=out), 100, warmup=5) * 1e3)
    print(json.dumps(results))


def handoff_rows() -> list[str]:
    import numba
    from numba.core import types

    from onyxrt.framework.thread_pool import ThreadPool
    from onyxrt.providers.cpu.native_tasks import int64_array

    @numba.cfunc(types.void(types.int64, types.int64, types.int64), nopython=True)
    def touch(args, part, parts):
        int64_array(args, 2)[part] += 1

    counts = np.zeros(2, np.int64)
    pool = ThreadPool(2).splitting_gemms()
    rows = []
    for gap_ms in (0, 0.5, 2, 20):
        def timed(fn):
            times = []
            for _ in range(200):
                if gap_ms:
                    time.sleep(gap_ms / 1e3)
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return statistics.median(times) * 1e6, float(np.percentile(times, 90)) * 1e6

        native = timed(lambda: pool.run_native(touch.address, counts.ctypes.data, 2))
        python = timed(lambda: pool.map(lambda i: None, range(2)))
        rows.append(f"| {gap_ms} | {native[0]:.1f} / {native[1]:.1f} | {python[0]:.1f} / {python[1]:.1f} |")
    pool.shutdown()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        products_worker()
        return 0
    results: dict[str, list[list[float]]] = {"native": [], "blas": []}
    for _ in range(args.rounds):
        for mode in results:
            env = dict(os.environ, NATIVE_POOL_MODE=mode)
            done = subprocess.run([sys.executable, __file__, "--worker"], env=env, capture_output=True, text=True,
                                  check=True)
            results[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
    from onyxrt.framework.cpu_features import cpu_model_name

    lines = ["# Native hand-offs: products split by the pool vs BLAS's threads (2 threads)", "",
             f"Command: `python benchmarks/native_pool.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {cpu_model_name()}, {os.cpu_count()} CPUs. {args.rounds} rounds, each mode in its own process, "
             "alternating; medians of the rounds' medians.", "",
             "| M x K x N | native split (ms) | OpenBLAS threads (ms) | ratio |", "|---|---|---|---|"]
    for i, (m, k, n) in enumerate(SHAPES):
        native = statistics.median(r[i] for r in results["native"])
        blas = statistics.median(r[i] for r in results["blas"])
        lines.append(f"| {m} x {k} x {n} | {native:.3f} | {blas:.3f} | {native / blas:.2f} |")
    lines += ["", "A two-part loop's hand-off (us, median / p90), after an idle gap before each loop:", "",
              "| gap (ms) | native task | Python tasks |", "|---|---|---|", *handoff_rows()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
