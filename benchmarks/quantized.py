"""Latency of onnxruntime-quantized minilm_l6 in onyxrt and onnxruntime, and of onyxrt's own fp32 run.

    python benchmarks/quantized.py --out benchmarks/quantized.md    # one thread, then default threads
    python benchmarks/quantized.py --rounds 2 --repeat 10 --threads 1        # quicker, one setting

minilm_l6 (``../shared/zoo``; /tmp/zoo/minilm_l6.onnx when present) is quantized by onnxruntime's
``quantize_dynamic`` twice (default options; ``per_channel=True``) into a temp dir. Every case
runs at batch 1, sequence 128, each runtime in its own process, alternating (onyxrt fp32, onyxrt
int8, onnxruntime int8, ...), ``--repeat`` timed runs after 3 warm-up runs per process; the table
compares medians, one table per ``--threads`` setting (intra_op_num_threads of both runtimes;
default: 1, then 0 = each runtime's default). Targets (issue 12): onyxrt int8 <= 1.25x onnxruntime
int8 on the same file, and <= 0.5x onyxrt fp32. Writing ``--out`` keeps the existing file's
``## Reading these numbers`` section (the interpretation written by hand) below the new tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import cpu_model, write_keeping_notes

ROOT = Path(__file__).resolve().parents[1]
SEQ = 128


def _minilm() -> str:
    local = Path("/tmp/zoo/minilm_l6.onnx")
    if local.exists():
        return str(local)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from latency import zoo_path

    return zoo_path("minilm_l6")


def _feeds(path: str) -> dict:
    import numpy as np
    import onnx

    names = {i.name for i in onnx.load(path, load_external_data=False).graph.input}
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 30000, (1, SEQ)).astype(np.int64),
             "attention_mask": np.ones((1, SEQ), np.int64), "token_type_ids": np.zeros((1, SEQ), np.int64)}
    return {k: v for k, v in feeds.items() if k in names}


def worker(runtime: str, path: str, repeat: int, threads: int) -> None:
    if runtime == "onnxruntime":
        import onnxruntime as rt
    else:
        import onyxrt as rt
    options = rt.SessionOptions()
    options.intra_op_num_threads = threads
    session = rt.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feeds = _feeds(path)
    for _ in range(3):
        session.run(None, feeds)
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.thread_time()
        session.run(None, feeds)
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.thread_time() - start_cpu) * 1000)
    print(json.dumps({"wall": wall, "cpu": cpu}))


def _timed(runtime: str, path: str, repeat: int, threads: int) -> dict[str, list[float]]:
    done = subprocess.run([sys.executable, __file__, "--worker", runtime, path, "--repeat", str(repeat),
                           "--threads", str(threads)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ratio_table(median: dict[tuple[str, str], float], models, label: str) -> list[str]:
    """Markdown rows: each model's medians in both runtimes (``label`` after the runtime's name in the
    header), their ratio, and onyxrt's time against its own fp32 run."""
    ours_fp32, theirs_fp32 = median[("onyxrt", "fp32")], median[("onnxruntime", "fp32")]
    rows = [f"| model | onyxrt{label} (ms) | onnxruntime{label} (ms) | onyxrt / onnxruntime | onyxrt / onyxrt fp32 |",
            "|---|---|---|---|---|",
            f"| fp32 | {ours_fp32:.2f} | {theirs_fp32:.2f} | {ours_fp32 / theirs_fp32:.2f} | 1.00 |"]
    for name in models:
        ours, theirs = median[("onyxrt", name)], median[("onnxruntime", name)]
        rows.append(f"| int8 {name} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f} | {ours / ours_fp32:.2f} |")
    return rows

def _int8_instructions() -> str:
    from onyxrt.framework.cpu_features import has_flags

    names = [name for name in ("avx512_vnni", "avx_vnni", "amx_int8") if has_flags(name)]
    return ", ".join(names) if names else "no VNNI"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0],
                        help="intra_op_num_threads settings for both runtimes (0: the runtime's default)")
    parser.add_argument("--out")
    parser.add_argument("--worker", nargs=2, metavar=("RUNTIME", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.repeat, args.threads[0])
        return 0

    from onnxruntime.quantization import quantize_dynamic

    import onyxrt.quantization

    source = _minilm()
    tmp = Path(tempfile.mkdtemp(prefix="onyxrt-quantized-"))
    models = {"default": tmp / "minilm_int8.onnx", "per_channel": tmp / "minilm_int8_pc.onnx",
              "onyxrt defaults": tmp / "minilm_int8_onyxrt.onnx"}
    quantize_dynamic(source, str(models["default"]))
    quantize_dynamic(source, str(models["per_channel"]), per_channel=True)
    onyxrt.quantization.quantize_dynamic(source, str(models["onyxrt defaults"]))

    cases = [("onyxrt", "fp32", source)] + [
        (runtime, name, str(path)) for name, path in models.items() for runtime in ("onyxrt", "onnxruntime")]
    cases.append(("onnxruntime", "fp32", source))
    lines = [
        "# Quantized minilm_l6 (onnxruntime's and onyxrt's quantize_dynamic): onyxrt vs onnxruntime (CPU, batch 1, seq 128)",
        "",
        f"Command: `python benchmarks/quantized.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"Each runtime in its own process, alternating, {args.rounds} rounds x {args.repeat} timed runs; medians.",
        "Models: onnxruntime's `quantize_dynamic` (default options; `per_channel=True`) of minilm_l6, and",
        "`onyxrt.quantization.quantize_dynamic` with no options (`onyxrt defaults`).",
        "Targets: onyxrt / onnxruntime <= 1.25 on onnxruntime's files; onyxrt int8 / onyxrt fp32 <= 0.5 on",
        f"onyxrt's own file, on a CPU with VNNI (this one: {_int8_instructions()}).",
    ]
    for threads in args.threads:
        samples: dict[tuple[str, str], list[float]] = {(r, n): [] for r, n, _ in cases}
        cpu_samples: dict[tuple[str, str], list[float]] = {(r, n): [] for r, n, _ in cases}
        load_before = os.getloadavg()
        for round_index in range(args.rounds):
            for runtime, name, path in cases:
                timed = _timed(runtime, path, args.repeat, threads)
                samples[(runtime, name)] += timed["wall"]
                cpu_samples[(runtime, name)] += timed["cpu"]
            print(f"threads {threads}: round {round_index + 1}/{args.rounds} done", flush=True)
        load_after = os.getloadavg()
        median = {key: statistics.median(values) for key, values in samples.items()}
        lines += ["", f"## intra_op_num_threads = {threads or 'default (0)'}", ""] + _ratio_table(median, models, "")
        if threads == 1:  # the calling thread does all the work: its CPU time is robust to other load
            cpu = {key: statistics.median(values) for key, values in cpu_samples.items()}
            lines += ["", "CPU time of the run (the calling thread's `time.thread_time()`, medians; robust to other jobs):",
                      ""] + _ratio_table(cpu, models, " CPU")
        lines += [
            "",
            f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores "
            f"({cpu_model()}); load average {load_before[0]:.2f} before, {load_after[0]:.2f} after.",
        ]
    write_keeping_notes(lines, args.out, "## Reading these numbers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
