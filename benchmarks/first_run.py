"""Session creation and first-run cost, with a cold and a warm JIT cache, against onnxruntime.

    python benchmarks/first_run.py --out benchmarks/first_run.md

onyxrt compiles its numba kernels on their first use (a run, not session creation) and caches
them on disk. Each measurement is a fresh process: import, create the session, run once, run
again. Variants: onyxrt with an empty ``NUMBA_CACHE_DIR`` (cold), the same directory again
(warm), onyxrt with ``ONYXRT_DISABLE_NUMBA=1`` (numpy kernels), and onnxruntime. Medians over
``--rounds``; cases as in latency.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import case_inputs, worker_result, write_table  # noqa: E402

VARIANTS = ("onyxrt cold cache", "onyxrt warm cache", "onyxrt without numba", "onnxruntime")


def worker(variant: str, case: str) -> dict:
    path, feeds = case_inputs(case)
    start = time.perf_counter()
    if variant == "onnxruntime":
        import onnxruntime as rt
    else:
        import onyxrt as rt
    imported = time.perf_counter()
    session = rt.InferenceSession(path, providers=["CPUExecutionProvider"])
    created = time.perf_counter()
    session.run(None, feeds)
    first = time.perf_counter()
    session.run(None, feeds)
    second = time.perf_counter()
    return {"import": imported - start, "create": created - imported, "first": first - created,
            "second": second - first}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=["mobilenet_v2", "minilm_l6", "llama_decode"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return 0
    lines = [
        "# Session creation and first run: onyxrt (cold / warm JIT cache) vs onnxruntime",
        "",
        f"Command: `python benchmarks/first_run.py {' '.join(sys.argv[1:])}`",
        "",
        f"Each figure from a fresh process, {args.rounds} rounds alternating the variants; medians, seconds.",
        "Cold: an empty NUMBA_CACHE_DIR, so the first run compiles every numba kernel the model uses;",
        "warm: that directory again. The creation ratio compares onyxrt (warm) with onnxruntime.",
        "",
        "| case | variant | import (s) | session creation (s) | first run (s) | second run (s) |",
        "|---|---|---|---|---|---|",
    ]
    for case in args.cases:
        samples: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as cache:
                for variant in VARIANTS:
                    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
                    if variant.endswith("without numba"):
                        env["ONYXRT_DISABLE_NUMBA"] = "1"
                    samples[variant].append(worker_result([__file__, "--worker", variant, case], env=env))
        medians = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in samples.items()}
        for variant, m in medians.items():
            lines.append(f"| {case} | {variant} | {m['import']:.2f} | {m['create']:.3f} | {m['first']:.3f} | "
                         f"{m['second']:.3f} |")
            print(lines[-1], flush=True)
        ratio = medians["onyxrt warm cache"]["create"] / medians["onnxruntime"]["create"]
        lines.append(f"| {case} | creation onyxrt warm / onnxruntime | | {ratio:.2f}x | | |")
    write_table(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
