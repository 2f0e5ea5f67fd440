"""Graph optimizer: node counts, session creation and latency, onyxrt against onnxruntime and onnxscript.

    python benchmarks/optimizer.py --out benchmarks/optimizer.md

Node counts are of the main graph after each runtime's optimizer at BASIC and EXTENDED (each
saves its optimized model through ``SessionOptions.optimized_model_filepath``) and after
onnxscript's ``optimize_for_ort`` on the raw model (column left empty where onnxscript is not
installed). Session creation (optimizer on, ORT_ENABLE_ALL) is timed in a fresh process per
runtime, alternating A B A B; the table gives the medians. Latency before/after optimization is
onyxrt's at ORT_DISABLE_ALL, ORT_ENABLE_EXTENDED and ORT_ENABLE_ALL, each level in its own process,
alternating, on the typical shapes (vision batch 1, encoders batch 1 seq 128, llama decode seq 1
after 127 past tokens).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import timed_runs, worker_result, write_table, zoo_path  # noqa: E402

MODELS = ("resnet50", "mobilenet_v2", "bert_base", "minilm_l6", "llama_tiny", "distilbert_dynamo", "llama_tiny_dynamo")
LEVELS = {"basic": 1, "extended": 2}
LATENCY_LEVELS = {"DISABLED": 0, "EXTENDED": 2, "ALL": 99}
_CREATE = """
import sys, time
import {module} as rt
options = rt.SessionOptions()
options.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_ALL
start = time.perf_counter()
rt.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
print(time.perf_counter() - start)
"""


def optimized_nodes(runtime: str, model: str, level: int, folder: str) -> list[onnx.NodeProto]:
    """The main graph's nodes after ``runtime``'s optimizer at ``level``."""
    module = __import__(runtime)
    options = module.SessionOptions()
    options.graph_optimization_level = module.GraphOptimizationLevel(level)
    options.optimized_model_filepath = str(Path(folder) / f"{runtime}_{Path(model).stem}_{level}.onnx")
    module.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return list(onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node)


def creation_seconds(runtime: str, model: str) -> float:
    result = subprocess.run([sys.executable, "-c", _CREATE.format(module=runtime), model],
                            capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def onnxscript_nodes(model: str) -> tuple[list, float] | None:
    """(the main graph's nodes after onnxscript's ``optimize_for_ort``, its seconds), None without onnxscript."""
    try:
        import onnx_ir as ir
        from onnxscript.rewriter.ort_fusions import optimize_for_ort
    except ImportError:
        return None
    loaded = ir.load(model)
    start = time.perf_counter()
    optimized, _ = optimize_for_ort(loaded)
    return list(optimized.graph), time.perf_counter() - start


def model_feeds(name: str, input_names: list[str]) -> dict:
    """Typical-shape inputs of a zoo model, restricted to the inputs it declares."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "zoo"))
    from feeds import decoder_feeds, encoder_feeds, vision_feeds

    if name in ("resnet50", "mobilenet_v2"):
        feeds = vision_feeds(1)
    elif name.startswith("llama"):
        feeds = decoder_feeds(1, 1, 127)
    else:
        feeds = encoder_feeds("bert_base", 1, 128)
    return {key: value for key, value in feeds.items() if key in input_names}


def latency_worker(name: str, level: int, repeat: int) -> None:
    """Print the milliseconds of ``repeat`` onyxrt runs of zoo model ``name`` optimized at ``level``."""
    import onyxrt

    options = onyxrt.SessionOptions()
    options.graph_optimization_level = onyxrt.GraphOptimizationLevel(level)
    session = onyxrt.InferenceSession(zoo_path(name), options, providers=["CPUExecutionProvider"])
    feeds = model_feeds(name, [i.name for i in session.get_inputs()])
    print(json.dumps(timed_runs(session, feeds, repeat)))


def latency_medians(name: str, rounds: int, repeat: int) -> dict[int, float]:
    """Median ms of onyxrt on ``name`` per optimization level, levels alternating in fresh processes."""
    samples: dict[int, list[float]] = {level: [] for level in LATENCY_LEVELS.values()}
    for _ in range(rounds):
        for level in samples:
            samples[level] += worker_result([__file__, "--worker", name, str(level), "--repeat", str(repeat)])
    return {level: statistics.median(times) for level, times in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=MODELS)
    parser.add_argument("--rounds", type=int, default=3, help="session creations per runtime and latency processes per level (alternating)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per latency process")
    parser.add_argument("--out")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "LEVEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        latency_worker(args.worker[0], int(args.worker[1]), args.repeat)
        return
    lines = [
        "| model | raw nodes | onnxruntime BASIC | onyxrt BASIC | onnxruntime EXTENDED | onyxrt EXTENDED "
        "| onnxscript optimize_for_ort (its time) | creation onnxruntime (s) | creation onyxrt (s) | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    latency_lines = [
        "| model | " + " | ".join(f"onyxrt {level} (ms)" for level in LATENCY_LEVELS) + " | DISABLED / EXTENDED | DISABLED / ALL |",
        "|---|" + "---|" * (len(LATENCY_LEVELS) + 2),
    ]
    histograms = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            path = zoo_path(name)
            raw = len(onnx.load(path, load_external_data=False).graph.node)
            counts = {}
            for level_name, level in LEVELS.items():
                for runtime in ("onnxruntime", "onyxrt"):
                    nodes = optimized_nodes(runtime, path, level, folder)
                    counts[runtime, level_name] = len(nodes)
                    if level_name == "extended":
                        histograms.append((name, runtime, collections.Counter(n.op_type for n in nodes)))
            script = onnxscript_nodes(path)
            if script is not None:
                histograms.append((name, "onnxscript", collections.Counter(n.op_type for n in script[0])))
            times = {"onnxruntime": [], "onyxrt": []}
            for _ in range(args.rounds):
                for runtime in times:
                    times[runtime].append(creation_seconds(runtime, path))
            ort_s, ours_s = statistics.median(times["onnxruntime"]), statistics.median(times["onyxrt"])
            lines.append(
                f"| {name} | {raw} | {counts['onnxruntime', 'basic']} | {counts['onyxrt', 'basic']} "
                f"| {counts['onnxruntime', 'extended']} | {counts['onyxrt', 'extended']} "
                f"| {'' if script is None else f'{len(script[0])} ({script[1]:.2f} s)'} "
                f"| {ort_s:.2f} | {ours_s:.2f} | {ours_s / ort_s:.2f}× |"
            )
            ms = latency_medians(name, args.rounds, args.repeat)
            disabled, extended, full = (ms[level] for level in LATENCY_LEVELS.values())
            latency_lines.append(f"| {name} | " + " | ".join(f"{ms[level]:.1f}" for level in LATENCY_LEVELS.values())
                                 + f" | {disabled / extended:.2f}× | {disabled / full:.2f}× |")
    lines += ["", "Latency in onyxrt before/after optimization (medians; higher DISABLED/level = faster optimized):", ""]
    lines += latency_lines
    lines += ["", "Op histograms at EXTENDED (main graph; onnxscript: optimize_for_ort):", ""]
    for name, runtime, histogram in histograms:
        ops = ", ".join(f"{op} {count}" for op, count in histogram.most_common())
        lines.append(f"- {name}, {runtime}: {ops}")
    lines += ["", f"Command: `python benchmarks/optimizer.py {' '.join(sys.argv[1:])}`"]
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
