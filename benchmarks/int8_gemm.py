"""Throughput of the int8 GEMM routes (``onyxrt/providers/cpu/math/int8_gemm.py``) on one core,
against numpy's float32 GEMM (OpenBLAS sgemm) of the same shape.

    python benchmarks/int8_gemm.py --out benchmarks/int8_gemm.md
    python benchmarks/int8_gemm.py --repeat 50                      # print only

Each route multiplies a uint8 A (with a zero point) by a prepacked int8 B; GOPS counts
2*M*K*N operations per product. BLAS is limited to one thread (threadpoolctl) and no session pool
is active, so every number is one core's. Shapes: minilm_l6's projections at seq 128, a decode
step (M = 1), and a resnet50-like im2col GEMM. Writing ``--out`` keeps the existing file's notes
(from ``## Why `vnni` is the default here`` on) below the new table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from latency import median_seconds
from report import write_keeping_notes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onyxrt.framework.cpu_features import cpu_flags, cpu_model_name  # noqa: E402
from onyxrt.providers.cpu.math import int8_gemm  # noqa: E402

SHAPES = [(128, 384, 384), (128, 384, 1536), (128, 1536, 384), (1, 4096, 4096), (3136, 576, 64)]




def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--out")
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    routes = int8_gemm.available_routes()
    rows = []
    with threadpool_limits(1):
        for m, k, n in SHAPES:
            a = rng.integers(0, 256, (m, k), dtype=np.uint8)
            b = rng.integers(-128, 128, (k, n), dtype=np.int8)
            ops = 2 * m * k * n
            result = {}
            for route in routes:
                packed = int8_gemm.pack_b(b, np.int8(0), route=route)
                seconds = median_seconds(lambda: int8_gemm.gemm_int8(a, packed, np.uint8(117)), args.repeat)
                result[route] = (seconds * 1e3, ops / seconds / 1e9)
            af, bf = a.astype(np.float32), b.astype(np.float32)
            seconds = median_seconds(lambda: np.matmul(af, bf), args.repeat)
            result["sgemm"] = (seconds * 1e3, ops / seconds / 1e9)
            rows.append(((m, k, n), result))
            print((m, k, n), {r: f"{ms:.3f} ms {g:.0f} GOPS" for r, (ms, g) in result.items()}, flush=True)

    columns = list(routes) + ["sgemm"]
    lines = [
        "# int8 GEMM routes on one core",
        "",
        f"Command: `python benchmarks/int8_gemm.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        "uint8 A (zero point 117) times prepacked int8 B -> int32; median of "
        f"{args.repeat} products; GOPS = 2*M*K*N / time. `sgemm` is numpy's float32 matmul of the same",
        "values (OpenBLAS, one thread), the pre-existing way of computing these products.",
        "",
        "| M x K x N | " + " | ".join(f"{c} ms (GOPS)" for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for (m, k, n), result in rows:
        cells = [f"{result[c][0]:.3f} ({result[c][1]:.0f})" for c in columns]
        lines.append(f"| {m} x {k} x {n} | " + " | ".join(cells) + " |")
    vnni = "avx512_vnni" in cpu_flags()
    lines += [
        "",
        f"Routes available here, in the order `auto` prefers them: {', '.join(routes)}. "
        f"CPU flags: avx512_vnni {'yes' if vnni else 'no'}, amx_int8 {'yes' if 'amx_int8' in cpu_flags() else 'no'}.",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores "
        f"({cpu_model_name()}); load average {os.getloadavg()[0]:.2f} (other jobs shared the machine).",
    ]
    write_keeping_notes(lines, args.out, "## Why `vnni` is the default here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
