"""Graph optimizer: node counts and session creation, onyxrt against onnxruntime, per zoo model.

    python benchmarks/optimizer.py --out benchmarks/optimizer.md

Node counts are of the main graph after each runtime's optimizer at BASIC and EXTENDED (each
saves its optimized model through ``SessionOptions.optimized_model_filepath``). Session
creation (optimizer on, ORT_ENABLE_ALL) is timed in a fresh process per runtime, alternating
A B A B; the table gives the medians.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import write_table, zoo_path  # noqa: E402

MODELS = ("resnet50", "mobilenet_v2", "bert_base", "minilm_l6", "llama_tiny", "distilbert_dynamo", "llama_tiny_dynamo")
LEVELS = {"basic": 1, "extended": 2}
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=MODELS)
    parser.add_argument("--rounds", type=int, default=3, help="session creations per runtime (alternating)")
    parser.add_argument("--out")
    args = parser.parse_args()
    lines = [
        "| model | raw nodes | onnxruntime BASIC | onyxrt BASIC | onnxruntime EXTENDED | onyxrt EXTENDED "
        "| creation onnxruntime (s) | creation onyxrt (s) | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
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
            times = {"onnxruntime": [], "onyxrt": []}
            for _ in range(args.rounds):
                for runtime in times:
                    times[runtime].append(creation_seconds(runtime, path))
            ort_s, ours_s = statistics.median(times["onnxruntime"]), statistics.median(times["onyxrt"])
            lines.append(
                f"| {name} | {raw} | {counts['onnxruntime', 'basic']} | {counts['onyxrt', 'basic']} "
                f"| {counts['onnxruntime', 'extended']} | {counts['onyxrt', 'extended']} "
                f"| {ort_s:.2f} | {ours_s:.2f} | {ours_s / ort_s:.2f}× |"
            )
    lines += ["", "Op histograms at EXTENDED (main graph):", ""]
    for name, runtime, histogram in histograms:
        ops = ", ".join(f"{op} {count}" for op, count in histogram.most_common())
        lines.append(f"- {name}, {runtime}: {ops}")
    lines += ["", f"Command: `python benchmarks/optimizer.py {' '.join(sys.argv[1:])}`"]
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
