"""The pool's native hand-offs (framework.native_spin) against BLAS's own threads, on 2 threads.

    python benchmarks/native_pool.py --rounds 3 --out benchmarks/native_pool.md

Part 1, float32 products: each mode in its own process, alternating A B A B, medians: "native" is a
pool in the split-GEMM mode splitting products as native tasks (``ThreadPool.splitting_gemms``, as
sessions whose plans hold onyxrt's own pool kernels run), "blas" the default pool (OpenBLAS's
threads). Part 2, a parallel loop's hand-off: a trivial two-part loop as a native task and as
Python tasks, back to back and after idle gaps, on a split-mode pool (its workers spin). Part 3,
pointwise convolutions on a split-mode pool: each block's product and epilogue in one native task
(``pointwise_conv_task``) against the product split over the pool and then the epilogue pass, alternating
in one process (the same pool), medians of five alternations.
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
from report import write_keeping_notes

SHAPES = [(96, 16, 12544), (384, 64, 196), (576, 96, 196), (1280, 320, 49), (144, 24, 3136), (128, 384, 1536),
          (128, 768, 3072), (64, 2304, 3136), (1, 512, 1376), (1, 512, 32000)]
# Pointwise convolutions (batch, input channels, height = width, output channels, activation): mobilenet_v2's
# and EfficientNet's kinds of layers.
POINTWISE = [(1, 16, 112, 96, "Clip"), (1, 24, 56, 144, "Clip"), (1, 144, 56, 24, None), (1, 64, 14, 384, "Clip"),
             (1, 96, 14, 576, "Clip"), (1, 320, 7, 1280, "Clip"), (8, 16, 16, 48, "QuickGelu"),
             (8, 24, 8, 72, "QuickGelu"), (8, 32, 32, 32, "Relu")]
_ACTIVATION_PARAMS = {"Clip": [0.0, 6.0], "QuickGelu": [1.702]}


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


def pointwise_rows() -> list[str]:
    from onyxrt.framework.thread_pool import ThreadPool
    from onyxrt.providers.cpu.contrib.fused import mlas_activation_fn
    from onyxrt.providers.cpu.nn import conv_core

    pool = ThreadPool(2).splitting_gemms()
    fused_route = conv_core._pointwise_task
    rows = []
    with pool.activate():
        for n, c, hw, m, activation in POINTWISE:
            rng = np.random.default_rng(0)
            x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
            packed = conv_core.pack_conv_weights(rng.standard_normal((m, c, 1, 1)).astype(np.float32),
                                                 rng.standard_normal(m).astype(np.float32), {})
            act = mlas_activation_fn(activation, _ACTIVATION_PARAMS.get(activation)) if activation else None
            times: dict[str, list[float]] = {"fused": [], "unfused": []}
            try:
                for _ in range(5):
                    for mode in times:
                        conv_core._pointwise_task = fused_route if mode == "fused" else (lambda *args: None)
                        times[mode].append(median_seconds(lambda: conv_core._pointwise(x, packed, act, None), 60,
                                                          warmup=10) * 1e6)
            finally:
                conv_core._pointwise_task = fused_route
            fused, unfused = statistics.median(times["fused"]), statistics.median(times["unfused"])
            rows.append(f"| {n}x{c}x{hw}x{hw} -> {m} | {activation or '-'} | {fused:.0f} | {unfused:.0f} | "
                        f"{unfused / fused:.2f} |")
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
    lines += ["", "Pointwise convolutions on a split-mode pool (us, medians): one native task per block's product and "
              "epilogue against the product split over the pool, then the epilogue pass:", "",
              "| input -> output channels | activation | one task | product, then epilogue | speed-up |",
              "|---|---|---|---|---|", *pointwise_rows()]
    write_keeping_notes(lines, args.out, "## Findings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
