"""Latency of onyxrt against onnxruntime, each runtime in its own process, alternating A B A B.

    python benchmarks/latency.py --out benchmarks/latency.md            # every case
    python benchmarks/latency.py resnet50 bert_base --rounds 5          # some cases
    python benchmarks/latency.py unseen_efficientnet unseen_gpt2        # tests/data/unseen models

Each round starts one worker process per runtime (onyxrt, then onnxruntime); a worker
loads the model, warms up (its first run, then ``--warmup-seconds`` of untimed runs, 1 s by default), and times
``--repeat`` runs. The table compares the medians
of all timed runs. A second table says what bounds each case in onyxrt, from its own
profiler (one more process per case, after the timed rounds): the time in BLAS-backed
kernels (MatMul, Gemm, convolutions, attention: GEMMs plus their im2col / softmax / epilogue),
in all other kernels, and in the run loop itself (Python overhead: run time minus the
kernels'), with the page faults a run takes (memory traffic the allocator causes). Zoo cases need ../shared/zoo (materialized into $ZOO_CACHE or
~/.cache/zoo); the forest case needs scikit-learn and skl2onnx.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import cpu_model
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT.parent / "shared" / "zoo"
CASES = ("mobilenet_v2", "resnet50", "minilm_l6", "bert_base", "llama_decode", "llama_prefill", "forest_500")


def zoo_path(name: str) -> str:
    """The materialized .onnx file of a ../shared/zoo model."""
    spec = importlib.util.spec_from_file_location("zoo_materialize", ZOO / "materialize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.path(name)


def _forest_model() -> tuple[str, dict]:
    """A 500-tree random forest (depth 12) on 10,000 rows of 20 features."""
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier
    from skl2onnx import to_onnx

    path = Path(tempfile.gettempdir()) / "onyxrt-bench-forest500.onnx"
    rng = np.random.RandomState(0)
    x = rng.randn(15000, 20).astype(np.float32)
    if not path.exists():
        y = (x[:, :5].sum(axis=1) + 0.5 * rng.randn(15000) > 0).astype(np.int64)
        model = RandomForestClassifier(n_estimators=500, max_depth=12, random_state=0).fit(x[:5000], y[:5000])
        proto = to_onnx(model, x[:1], options={id(model): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
        path.write_bytes(proto.SerializeToString())
    return str(path), {"X": x[5000:]}


UNSEEN = ROOT / "tests" / "data" / "unseen"  # architectures the zoo does not hold (tools/unseen/generate.py)


def _unseen_inputs(name: str) -> tuple[str, dict]:
    """An unseen model (``unseen_<file stem>``): images (8, 3, 32, 32) or 4 texts of 64 tokens, one padded."""
    import numpy as np
    import onnx

    path = UNSEEN / f"{name}.onnx"
    if not path.exists():
        raise SystemExit(f"no model {path}")
    rng = np.random.RandomState(0)
    feeds = {}
    for value in onnx.load(str(path), load_external_data=False).graph.input:
        if value.name == "input":
            feeds["input"] = rng.randn(8, 3, 32, 32).astype(np.float32)
        elif value.name == "input_ids":
            feeds["input_ids"] = rng.randint(0, 256, (4, 64)).astype(np.int64)
        elif value.name == "attention_mask":
            feeds["attention_mask"] = np.ones((4, 64), np.int64)
            feeds["attention_mask"][1, 40:] = 0
    return str(path), feeds


def case_inputs(case: str) -> tuple[str, dict]:
    """Model path and feeds of a case (typical shapes: vision batch 1, encoders seq 128, llama past 127)."""
    if case.startswith("unseen_"):
        return _unseen_inputs(case[len("unseen_"):])
    sys.path.insert(0, str(ROOT / "tests" / "zoo"))
    from feeds import decoder_feeds, encoder_feeds, vision_feeds

    if case in ("mobilenet_v2", "resnet50"):
        return zoo_path(case), vision_feeds(1)
    if case in ("minilm_l6", "bert_base"):
        return zoo_path(case), encoder_feeds(case, 1, 128)
    if case == "llama_decode":
        return zoo_path("llama_tiny"), decoder_feeds(1, 1, 127)
    if case == "llama_prefill":
        return zoo_path("llama_tiny"), decoder_feeds(1, 128, 0)
    if case == "forest_500":
        return _forest_model()
    raise SystemExit(f"unknown case {case}")


# Seconds each worker runs its case untimed after its first run before the timed runs (and 3 runs at least), the same
# for both runtimes: steady-state latency. onyxrt's first runs of an input signature include its thread-mode trial
# (``onyxrt.framework.thread_mode``: alternating blocks of runs in both modes, ~0.1 s of a 0.4 ms net's runs). Counted
# from the end of the first run, which loads onyxrt's compiled kernels (0.8-1 s on a 2-vCPU Zen 4 with numba 0.68:
# ``first_run.md``): from the start, the trial of a small net still ran during the timed runs of some processes.
WARMUP_SECONDS = 1.0

# Ops whose kernels spend their time in BLAS GEMMs (with their im2col, softmax or epilogue passes).
BLAS_OPS = frozenset({
    "MatMul", "Gemm", "FusedGemm", "FusedMatMul", "TransposeMatMul", "FusedMatMulActivation", "Conv", "FusedConv",
    "ConvTranspose", "Attention", "MultiHeadAttention", "GroupQueryAttention", "GemmFastGelu", "Einsum",
})


def worker(runtime: str, case: str, repeat: int, config: list[str], warmup_seconds: float = WARMUP_SECONDS) -> None:
    path, feeds = case_inputs(case)
    if runtime == "onnxruntime":
        import onnxruntime as rt
    elif runtime == "breakdown":
        print(json.dumps(breakdown(path, feeds, repeat, config)))
        return
    else:
        import onyxrt as rt
    options = rt.SessionOptions()
    if runtime == "onyxrt":
        _configure(options, config)
    session = rt.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    print(json.dumps(timed_runs(session, feeds, repeat, warmup_seconds=warmup_seconds)))


def _configure(options, config: list[str]) -> None:
    """Apply ``KEY=VALUE`` session config entries (``--config``) to onyxrt's session options."""
    for entry in config:
        key, _, value = entry.partition("=")
        options.add_session_config_entry(key, value)


def breakdown(path: str, feeds: dict, repeat: int, config: list[str]) -> dict:
    """Where an onyxrt run's time goes (medians over ``repeat`` profiled runs, ms) and its page faults."""
    import resource

    import onyxrt

    options = onyxrt.SessionOptions()
    options.enable_profiling = True
    _configure(options, config)
    session = onyxrt.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    timed_runs(session, feeds, 0, warmup_seconds=WARMUP_SECONDS)  # warm-up only
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    timed_runs(session, feeds, repeat, warmup=0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / repeat
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][-repeat:]
    nodes = sorted((e for e in events if e.get("cat") == "Node"), key=lambda e: e["ts"])
    parts: dict[str, list[float]] = {"total": [], "blas": [], "other": [], "overhead": []}
    for run in runs:
        inside = [e for e in nodes if run["ts"] <= e["ts"] <= run["ts"] + run["dur"]]
        blas = sum(e["dur"] for e in inside if e["args"].get("op_name") in BLAS_OPS)
        other = sum(e["dur"] for e in inside) - blas
        for key, value in (("total", run["dur"]), ("blas", blas), ("other", other),
                           ("overhead", run["dur"] - blas - other)):
            parts[key].append(value / 1000)
    result = {key: statistics.median(values) for key, values in parts.items()}
    result["nodes"] = len(inside)  # of the last run
    result["faults"] = faults
    return result


def worker_result(arguments: list[str], **run_options: Any) -> Any:
    """The JSON that a worker process (this interpreter running ``arguments``) prints last."""
    done = subprocess.run([sys.executable, *arguments], capture_output=True, text=True, check=True, **run_options)
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_seconds(fn, repeat: int, warmup: int = 1) -> float:
    """The median wall time of ``repeat`` calls of ``fn()`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_runs(session, feeds: dict, repeat: int, warmup: int = 3, warmup_seconds: float = 0.0) -> list[float]:
    """Milliseconds of ``repeat`` runs after untimed ones: ``warmup`` at least, and for ``warmup_seconds`` at least
    after the first (a session's first run loads what it runs, onyxrt's compiled kernels: ``first_run.py`` reports
    it)."""
    runs = 0
    start = time.perf_counter()
    while runs < warmup or time.perf_counter() - start < warmup_seconds:
        session.run(None, feeds)
        runs += 1
        if runs == 1:
            start = time.perf_counter()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=list(CASES))
    parser.add_argument("--rounds", type=int, default=3, help="A B rounds (one process per runtime per round)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per process")
    parser.add_argument("--out", help="write the markdown table here")
    parser.add_argument("--breakdown", action="store_true", help="also profile where onyxrt's time goes")
    parser.add_argument("--warmup-seconds", type=float, default=WARMUP_SECONDS,
                        help="untimed runs for this long after each worker's first, before the timed ones "
                             "(3 runs at least)")
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                        help="a session config entry for onyxrt (repeatable)")
    parser.add_argument("--worker", nargs=2, metavar=("RUNTIME", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.repeat, args.config, args.warmup_seconds)
        return 0
    config_args = [f"--config={entry}" for entry in args.config]

    rows = []
    bounds: list[tuple[str, dict]] = []
    for case in args.cases:
        samples: dict[str, list[float]] = {"onyxrt": [], "onnxruntime": []}
        for _ in range(args.rounds):
            for runtime in samples:
                samples[runtime] += worker_result(
                    [__file__, "--worker", runtime, case, "--repeat", str(args.repeat),
                     f"--warmup-seconds={args.warmup_seconds}", *config_args])
        ours, theirs = statistics.median(samples["onyxrt"]), statistics.median(samples["onnxruntime"])
        rows.append((case, ours, theirs))
        if args.breakdown:
            bounds.append((case, worker_result(
                [__file__, "--worker", "breakdown", case, "--repeat", str(args.repeat), *config_args])))
        print(f"{case}: onyxrt {ours:.2f} ms, onnxruntime {theirs:.2f} ms, ratio {ours / theirs:.2f}", flush=True)

    lines = [
        "# Latency: onyxrt vs onnxruntime (CPU)",
        "",
        f"Command: `python benchmarks/latency.py {' '.join(sys.argv[1:])}`".replace(" --out", " --out").rstrip(),
        "",
        f"Each runtime in its own process, alternating, {args.rounds} rounds x {args.repeat} timed runs after "
        f"a first run and {args.warmup_seconds:g} s of untimed runs; medians.",
        "Ratio = onyxrt / onnxruntime (lower is better; 1.0 = parity).",
        "",
        "| case | onyxrt (ms) | onnxruntime (ms) | ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {case} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f} |" for case, ours, theirs in rows]
    ratios = [ours / theirs for _, ours, theirs in rows]
    if ratios:
        geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        lines += ["", f"Geometric mean of the ratios: {geomean:.2f}; largest: {max(ratios):.2f}."]
    if bounds:
        lines += [
            "",
            "## What bounds each case (onyxrt's profiler, medians of profiled runs)",
            "",
            "BLAS = MatMul/Gemm/convolution/attention kernels (their GEMMs plus im2col, softmax and epilogue",
            "passes); other = every other kernel; overhead = the run loop (run time minus kernel time);",
            "faults = minor page faults a run takes (fresh memory the allocator maps).",
            "",
            "| case | profiled run (ms) | BLAS (ms) | other kernels (ms) | overhead (ms) | nodes | faults/run |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [f"| {case} | {b['total']:.2f} | {b['blas']:.2f} ({b['blas'] / b['total']:.0%}) | "
                  f"{b['other']:.2f} ({b['other'] / b['total']:.0%}) | {b['overhead']:.2f} ({b['overhead'] / b['total']:.0%}) | "
                  f"{b['nodes']} | {b['faults']:.0f} |" for case, b in bounds]
    write_table(lines, args.out)
    return 0


def write_table(lines: list[str], out: str | None) -> None:
    """Print the markdown ``lines`` with the date and machine appended; also write them to ``out``."""
    lines = lines + ["", f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores ({cpu_model()})."]
    table = "\n".join(lines) + "\n"
    if out:
        Path(out).write_text(table)
    print(table)


if __name__ == "__main__":
    sys.exit(main())
