"""3x3 stride-1 convolutions: Winograd F(2x2, 3x3) (nn/winograd.py) against the column-matrix route, and onnxruntime.

    python benchmarks/winograd.py --out benchmarks/winograd.md

* per layer (Conv + bias + Relu, random weights): resnet50's 3x3 stride-1 shapes at batch 1 and small-image
  shapes at batch 8, run as a session runs them (``float_conv`` with prepacked weights and the fused Relu, a
  2-thread pool); the Winograd route and the column-matrix route (``winograd.applies`` patched off) alternate
  in blocks of ``--repeat`` calls in one process, ``--rounds`` blocks each; the minimum of the blocks'
  medians. onnxruntime runs the same Conv + Relu (which it fuses) in its own process, 2 threads;
* end to end: resnet50 at batch 1, one process per variant (default; ``no-winograd``: the route off, and with it
  the split thread mode its layers choose, ``framework/thread_mode.py``), alternating, ``--e2e-rounds`` rounds;
  medians of the per-process medians.
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

# (batch, input channels, output channels, size): resnet50's 3x3 stride-1 layers, then small images at batch 8
LAYERS = [(1, 64, 64, 56), (1, 128, 128, 28), (1, 256, 256, 14), (1, 512, 512, 7), (8, 32, 32, 16), (8, 64, 64, 8),
          (1, 96, 96, 28)]


def _layer(spec, seed=0):
    n, c, m, size = spec
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, size, size), np.float32)
    w = (rng.standard_normal((m, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    return x, w, b


def ours(rounds: int, repeat: int) -> dict:
    from onyxrt.framework.thread_pool import ThreadPool
    from onyxrt.providers.cpu.contrib.fused import mlas_activation_fn
    from onyxrt.providers.cpu.nn import winograd
    from onyxrt.providers.cpu.nn.conv_core import float_conv, pack_conv_weights

    relu = mlas_activation_fn("Relu", [])
    applies = winograd.applies
    results = {}
    with ThreadPool(2).activate():
        for spec in LAYERS:
            x, w, b = _layer(spec)
            attributes = dict(group=1, strides=[1, 1], pads=[1] * 4, kernel_shape=[3, 3])
            calls = {}
            for variant, rule in (("winograd", applies), ("columns", lambda *args: False)):
                winograd.applies = rule
                packed = pack_conv_weights(w, b, attributes)
                float_conv(x, w, b, 1, [1, 1], [1, 1], [1] * 4, "NOTSET", [3, 3], packed, activation=relu)
                calls[variant] = (lambda packed=packed: float_conv(x, w, b, 1, [1, 1], [1, 1], [1] * 4, "NOTSET",
                                                                   [3, 3], packed, activation=relu))
            winograd.applies = applies
            took = applies(x.shape, x.dtype, w.shape, 1, [1, 1], [1, 1], [1] * 4)
            blocks = {variant: [] for variant in calls}
            for _ in range(rounds):
                for variant, fn in calls.items():
                    blocks[variant].append(median_of_block(fn, repeat))
            results[str(spec)] = {"taken": took, **{variant: min(values) for variant, values in blocks.items()}}
    return results


def theirs(rounds: int, repeat: int) -> dict:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    results = {}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    for spec in LAYERS:
        x, w, b = _layer(spec)
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * 4), helper.make_node("Relu", ["c"], ["y"])]
        graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        session.run(None, {"x": x})
        results[str(spec)] = min(median_of_block(lambda: session.run(None, {"x": x}), repeat) for _ in range(rounds))
    return results


def end_to_end(variant: str, repeat: int) -> float:
    import latency
    import onyxrt
    from onyxrt.providers.cpu.nn import winograd

    if variant == "no-winograd":
        winograd.applies = lambda *args: False
    path, feeds = latency.case_inputs("resnet50")
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
        print(json.dumps(end_to_end(args.worker, args.e2e_repeat)))
        return 0
    common = ["--rounds", str(args.rounds), "--repeat", str(args.repeat)]
    layers = json.loads(_child("--worker", "ours", *common))
    reference = json.loads(_child("--worker", "theirs", *common))
    e2e: dict[str, list[float]] = {"default": [], "no-winograd": []}
    for _ in range(args.e2e_rounds):
        for variant in e2e:
            e2e[variant].append(json.loads(_child("--worker", variant, "--e2e-repeat", str(args.e2e_repeat))))
    lines = [
        "# 3x3 stride-1 convolutions: Winograd F(2x2, 3x3) against the column-matrix route (issue 9)",
        "",
        f"Command: `python benchmarks/winograd.py {' '.join(sys.argv[1:])}`",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores ({cpu_model()}), OpenBLAS as numpy ships it.",
        "",
        "## Per layer (Conv + bias + Relu, batch x channels in -> out x size; microseconds)",
        "",
        f"Blocks of {args.repeat} calls, the routes alternating in one process, {args.rounds} blocks each: the minimum",
        "of the blocks' medians; onnxruntime (2 threads, its own process) the same way.",
        "",
        "| layer | route taken | Winograd | column matrix | Winograd / columns | onnxruntime | default / onnxruntime |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in LAYERS:
        row = layers[str(spec)]
        default = row["winograd"] if row["taken"] else row["columns"]
        n, c, m, size = spec
        lines.append(f"| {n} x {c} -> {m} x {size}x{size} | {'Winograd' if row['taken'] else 'columns'} | "
                     f"{row['winograd']:.0f} | {row['columns']:.0f} | {row['winograd'] / row['columns']:.2f} | "
                     f"{reference[str(spec)]:.0f} | {default / reference[str(spec)]:.2f} |")
    on, off = statistics.median(e2e["default"]), statistics.median(e2e["no-winograd"])
    lines += [
        "",
        "## End to end: resnet50, batch 1",
        "",
        f"One process per variant, alternating, {args.e2e_rounds} rounds; each process the median of "
        f"{args.e2e_repeat} runs.",
        "",
        "| variant | per-round medians (ms) | median (ms) |",
        "|---|---|---|",
        f"| default (Winograd; its layers put the runs in the split mode) | "
        f"{', '.join(f'{v:.2f}' for v in e2e['default'])} | {on:.2f} |",
        f"| column matrix only (BLAS's threads) | {', '.join(f'{v:.2f}' for v in e2e['no-winograd'])} | {off:.2f} |",
        "",
        f"default / column matrix only: {on / off:.3f}",
    ]
    write_keeping_notes(lines, args.out, NOTES_HEADING)
    return 0


if __name__ == "__main__":
    sys.exit(main())
