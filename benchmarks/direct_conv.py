"""Direct convolutions (stems, strided layers): the direct route (nn/direct_conv.py) against the column-matrix route,
and onnxruntime.

    python benchmarks/direct_conv.py --out benchmarks/direct_conv.md

* per layer (Conv + bias + Relu, random weights): the stems of common architectures at 224x224, small-image
  stems at batch 8 and resnet50's strided 3x3 layers, run as a session runs them (``float_conv`` with prepacked
  weights and the fused Relu) in a 2-thread pool in each of its modes (``default``: BLAS's threads; ``split``: the
  pool's, as models whose other layers choose it run, ``framework/thread_mode.py``); the direct route and the
  column-matrix route (``direct_conv.applies`` patched off) alternate in blocks of ``--repeat`` calls in one
  process, ``--rounds`` blocks each; the minimum of the blocks' medians. onnxruntime runs the same Conv + Relu
  (which it fuses) in its own process, 2 threads;
* end to end: resnet50 and mobilenet_v2 at batch 1, one process per variant (default; ``no-direct``: the route
  off), alternating, ``--e2e-rounds`` rounds; medians of the per-process medians.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from report import cpu_model, layer_benchmark_parser, median_of_block, run_child, write_keeping_notes  # noqa: E402

NOTES_HEADING = "## Findings"  # (written by hand below the tables, kept by reruns)

# (name, batch, input channels, output channels, kernel, stride, pad, size)
LAYERS = [
    ("MobileNet / EfficientNet 3x3/2", 1, 3, 32, 3, 2, 1, 224),
    ("ResNet 7x7/2", 1, 3, 64, 7, 2, 3, 224),
    ("VGG 3x3/1", 1, 3, 64, 3, 1, 1, 224),
    ("small images 3x3/1, batch 8", 8, 3, 32, 3, 1, 1, 32),
    ("small images 3x3/2, batch 8", 8, 3, 32, 3, 2, 1, 32),
    ("ResNet 3x3/2, 128 channels", 1, 128, 128, 3, 2, 1, 56),
    ("ResNet 3x3/2, 256 channels", 1, 256, 256, 3, 2, 1, 28),
]
MODELS = ("resnet50", "mobilenet_v2")


def _layer(spec, seed=0):
    _, n, c, m, k, _, _, size = spec
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, size, size), np.float32)
    w = (rng.standard_normal((m, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    return x, w, b


def ours(rounds: int, repeat: int) -> dict:
    from onyxrt.framework.thread_pool import ThreadPool
    from onyxrt.providers.cpu.contrib.fused import mlas_activation_fn
    from onyxrt.providers.cpu.nn import direct_conv
    from onyxrt.providers.cpu.nn.conv_core import float_conv, pack_conv_weights

    relu = mlas_activation_fn("Relu", [])
    applies = direct_conv.applies
    results = {}
    pool = ThreadPool(2)
    for mode, active in (("default", pool), ("split", pool.splitting_gemms())):
        with active.activate():
            for spec in LAYERS:
                x, w, b = _layer(spec)
                k, s, p = spec[4], spec[5], spec[6]
                conv_args = (1, [s, s], [1, 1], [p] * 4, "NOTSET", [k, k])
                attributes = dict(group=1, strides=[s, s], pads=[p] * 4, kernel_shape=[k, k])
                calls = {}
                for variant, rule in (("direct", applies), ("columns", lambda *args: False)):
                    direct_conv.applies = rule
                    packed = pack_conv_weights(w, b, attributes)
                    float_conv(x, w, b, *conv_args, packed, activation=relu)
                    calls[variant] = lambda packed=packed: float_conv(x, w, b, *conv_args, packed, activation=relu)
                direct_conv.applies = applies
                blocks = {variant: [] for variant in calls}
                for _ in range(rounds):
                    for variant, fn in calls.items():
                        blocks[variant].append(median_of_block(fn, repeat))
                results[f"{mode} {spec[0]}"] = {variant: min(values) for variant, values in blocks.items()}
    pool.shutdown()
    return results


def theirs(rounds: int, repeat: int) -> dict:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    results = {}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    for spec in LAYERS:
        x, w, b = _layer(spec)
        k, s, p = spec[4], spec[5], spec[6]
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[p] * 4, strides=[s, s], kernel_shape=[k, k]),
                 helper.make_node("Relu", ["c"], ["y"])]
        graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        session.run(None, {"x": x})
        results[spec[0]] = min(median_of_block(lambda: session.run(None, {"x": x}), repeat) for _ in range(rounds))
    return results


def end_to_end(model: str, variant: str, repeat: int) -> float:
    import latency
    import onyxrt
    from onyxrt.providers.cpu.nn import direct_conv

    if variant == "no-direct":
        direct_conv.applies = lambda *args: False
    path, feeds = latency.case_inputs(model)
    session = onyxrt.InferenceSession(path, providers=["CPUExecutionProvider"])
    return statistics.median(latency.timed_runs(session, feeds, repeat))


def _child(*args: str) -> str:
    return run_child(__file__, *args)


def main() -> int:
    args = layer_benchmark_parser(__doc__).parse_args()  # (--worker: ours, theirs, or an end-to-end variant)
    if args.worker in ("ours", "theirs"):
        print(json.dumps((ours if args.worker == "ours" else theirs)(args.rounds, args.repeat)))
        return 0
    if args.worker:
        model, variant = args.worker.split(":")
        print(json.dumps(end_to_end(model, variant, args.e2e_repeat)))
        return 0
    common = ["--rounds", str(args.rounds), "--repeat", str(args.repeat)]
    layers = json.loads(_child("--worker", "ours", *common))
    reference = json.loads(_child("--worker", "theirs", *common))
    e2e: dict[tuple[str, str], list[float]] = {(m, v): [] for m in MODELS for v in ("default", "no-direct")}
    for _ in range(args.e2e_rounds):
        for model, variant in e2e:
            e2e[model, variant].append(json.loads(_child("--worker", f"{model}:{variant}", "--e2e-repeat",
                                                         str(args.e2e_repeat))))
    lines = [
        "# Direct convolutions (stems, strided layers) against the column-matrix route (issue 9)",
        "",
        f"Command: `python benchmarks/direct_conv.py {' '.join(sys.argv[1:])}`",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores ({cpu_model()}), OpenBLAS as numpy ships it.",
        "",
        "## Per layer (Conv + bias + Relu; microseconds)",
        "",
        f"Blocks of {args.repeat} calls, the routes alternating in one process, {args.rounds} blocks each: the minimum",
        "of the blocks' medians, in a 2-thread pool's default mode (BLAS's threads) and its split mode (the pool's);",
        "onnxruntime (2 threads, its own process) the same way.",
        "",
        "| layer | batch x in -> out, size | mode | direct | column matrix | direct / columns | onnxruntime "
        "| direct / onnxruntime |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in ("default", "split"):
        for spec in LAYERS:
            row = layers[f"{mode} {spec[0]}"]
            theirs_us = reference[spec[0]]
            lines.append(f"| {spec[0]} | {spec[1]} x {spec[2]} -> {spec[3]}, {spec[7]}x{spec[7]} | {mode} | "
                         f"{row['direct']:.0f} | {row['columns']:.0f} | {row['direct'] / row['columns']:.2f} | "
                         f"{theirs_us:.0f} | {row['direct'] / theirs_us:.2f} |")
    lines += [
        "",
        "## End to end, batch 1",
        "",
        f"One process per variant, alternating, {args.e2e_rounds} rounds; each process the median of "
        f"{args.e2e_repeat} runs (ms).",
        "",
        "| model | default: per-round medians | median | no direct route: per-round medians | median | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        on, off = e2e[model, "default"], e2e[model, "no-direct"]
        lines.append(f"| {model} | {', '.join(f'{v:.2f}' for v in on)} | {statistics.median(on):.2f} | "
                     f"{', '.join(f'{v:.2f}' for v in off)} | {statistics.median(off):.2f} | "
                     f"{statistics.median(on) / statistics.median(off):.3f} |")
    write_keeping_notes(lines, args.out, NOTES_HEADING)
    return 0


if __name__ == "__main__":
    sys.exit(main())
