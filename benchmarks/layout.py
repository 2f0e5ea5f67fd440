"""Conv layouts on the CPU: onyxrt's NCHW kernels against channels-last (NHWC) formulations,
on every conv / pool shape of the vision zoo models.

    python benchmarks/layout.py --rounds 7 --blocked            # both models, all layers
    python benchmarks/layout.py resnet50 --threads 1 --out /tmp/layout.md

benchmarks/layout.md (the decision these numbers led to) quotes such runs; it is written by hand.

For each Conv, MaxPool and GlobalAveragePool of a model (shapes from ONNX shape inference,
batch 1, float32, the model's weights) the two layouts run alternately, A B A B, ``--reps``
times each per round, over ``--rounds`` rounds through the whole model, BLAS limited to
``--threads`` threads as a session does; a layer's time is the minimum of its runs (bursts
of other processes on a shared machine last whole layers: percentiles did not filter them).
NCHW: onyxrt's Conv / MaxPool / GlobalAveragePool kernels with the weights prepared as a
session prepares them. NHWC (``nhwc_kernels.py``): input and output channels-last, weights laid out once;
the transposes a converted region would need at its borders (the graph input to NHWC, the
global pool's output back) are timed and added to NHWC's total. Element-wise ops between
the convolutions (Add, Relu, Clip) touch the same contiguous elements in either layout and
are left out of both. Bias and fused activations are included (Relu / Clip when the Conv's
only reader is one).

Blocked channels (NCHWc, block 16 as MLAS uses with AVX-512): the stride-1 1x1 convolutions
(the most frequent and the simplest case for the layout) as one GEMM per input block of
channels, batched and summed (``--blocked``: rows "NCHWc 1x1", left out of the totals).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import threadpoolctl
from onnx import numpy_helper, shape_inference

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import write_table, zoo_path  # noqa: E402
from nhwc_kernels import (  # noqa: E402
    NhwcConvWeights, global_average_nhwc, nchwc_blocks, nchwc_conv_1x1, nhwc_conv, nhwc_max_pool_2d,
)

from onyxrt.providers.cpu.nn.conv_core import float_conv, pack_conv_weights  # noqa: E402
from onyxrt.providers.cpu.nn.pool import global_average_pool, max_pool  # noqa: E402

MODELS = ("resnet50", "mobilenet_v2")


def _attributes(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _activation(model, node):
    """The in-place form of a Relu / Clip that is the Conv output's only reader (else None)."""
    readers = [n for n in model.graph.node if node.output[0] in n.input]
    if len(readers) != 1 or readers[0].op_type not in ("Relu", "Clip"):
        return None
    if readers[0].op_type == "Relu":
        return lambda t: np.maximum(t, 0, out=t)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"}
    lo, hi = (float((inits | consts)[name]) for name in readers[0].input[1:3])
    return lambda t: np.clip(t, lo, hi, out=t)


def _activated(y: np.ndarray, activation) -> np.ndarray:
    if activation is not None:
        activation(y)
    return y


def layer_cases(name: str, blocked: bool = False):
    """(kind, description, nchw callable, nhwc callable, check) per Conv / pool of the model."""
    model = shape_inference.infer_shapes(onnx.load(zoo_path(name)))
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[vi.name] = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    rng = np.random.default_rng(0)
    cases = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MaxPool", "GlobalAveragePool"):
            continue
        x = rng.standard_normal(shapes[node.input[0]]).astype(np.float32)
        xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        a = _attributes(node)
        if node.op_type == "Conv":
            w, b = inits[node.input[1]], inits.get(node.input[2]) if len(node.input) > 2 else None
            g = int(a.get("group", 1))
            args = (g, a.get("strides"), a.get("dilations"), a.get("pads"), a.get("auto_pad", "NOTSET"), a.get("kernel_shape"))
            packed, packed_nhwc = pack_conv_weights(w, b, a), NhwcConvWeights(w, b, g)
            act = _activation(model, node)
            s = (a.get("strides") or [1])[0]
            kind = ("depthwise" if g == w.shape[0] and w.shape[1] == 1 else f"{w.shape[2]}x{w.shape[3]}") + (f" s{s}" if s > 1 else "")
            if w.shape[1] < 8 and g == 1:
                kind += " stem"
            nchw = (lambda x=x, w=w, b=b, args=args, p=packed, act=act: float_conv(x, w, b, *args, p, act))
            nhwc = (lambda xh=xh, w=w, b=b, args=args, p=packed_nhwc, act=act: nhwc_conv(xh, w, b, *args, p, act))
            desc = f"{list(x.shape)} * {list(w.shape)}"
        elif node.op_type == "MaxPool":
            k, st = list(a["kernel_shape"]), list(a.get("strides", [1, 1]))
            pads = list(a.get("pads", [0, 0, 0, 0]))
            kind, desc = "MaxPool", f"{list(x.shape)} k{k} s{st}"
            nchw = (lambda x=x, a=a: max_pool(x, kernel_shape=a["kernel_shape"], strides=a.get("strides"), pads=a.get("pads"))[0])
            nhwc = (lambda xh=xh, k=k, st=st, pads=pads: nhwc_max_pool_2d(xh, k, st, [1, 1], pads))
        else:
            kind, desc = "GlobalAveragePool + exit transpose", f"{list(x.shape)}"
            nchw = (lambda x=x: global_average_pool(x))
            # the region ends here: its (N, 1, 1, C) result back to NCHW
            nhwc = (lambda xh=xh: np.ascontiguousarray(global_average_nhwc(xh).transpose(0, 3, 1, 2)))
        cases.append((kind, desc, nchw, nhwc))
        if blocked and node.op_type == "Conv" and kind == "1x1" and g == 1 and x.shape[1] % 16 == 0 and w.shape[0] % 16 == 0:
            xb, wb = nchwc_blocks(x, w, 16)
            bias = None if b is None else b.astype(np.float32)
            cases.append(("NCHWc 1x1", desc, nchw, (lambda xb=xb, wb=wb, bias=bias, act=act: _activated(nchwc_conv_1x1(xb, wb, bias), act))))
    graph_input = rng.standard_normal(shapes[model.graph.input[0].name]).astype(np.float32)
    cases.insert(0, ("entry transpose", f"{list(graph_input.shape)}", lambda: None,
                     lambda x=graph_input: np.ascontiguousarray(x.transpose(0, 2, 3, 1))))
    return cases


def _check(nchw_out, nhwc_out) -> float:
    if nchw_out is None:
        return 0.0
    if isinstance(nchw_out, tuple):
        nchw_out = nchw_out[0]
    if nhwc_out.ndim == 3:  # NCHWc blocks (M/bs, H*W, bs)
        nhwc_out = nhwc_out.transpose(0, 2, 1).reshape(nchw_out.shape)
    elif nhwc_out.shape != nchw_out.shape:
        nhwc_out = nhwc_out.transpose(0, 3, 1, 2)
    return float(np.max(np.abs(nchw_out - nhwc_out)) / max(1.0, float(np.max(np.abs(nchw_out)))))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=MODELS)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocked", action="store_true", help="also time NCHWc 1x1 convolutions")
    parser.add_argument("--out")
    args = parser.parse_args()
    threadpoolctl.threadpool_limits(args.threads, user_api="blas")
    lines = [f"Command: `python benchmarks/layout.py {' '.join(sys.argv[1:])}`", "",
             "| model | layers (NHWC unless named) | NCHW today (ms) | converted (ms) | converted / NCHW |", "|---|---|---|---|---|"]
    details = []
    for name in args.models:
        totals = collections.defaultdict(lambda: [0.0, 0.0, 0])
        cases = layer_cases(name, args.blocked)
        for kind, desc, nchw, nhwc in cases:
            error = _check(nchw(), nhwc())
            if error > 1e-5:
                raise AssertionError(f"{name} {kind} {desc}: NHWC differs from NCHW by {error:.2e} (relative)")
        best = [[float("inf"), float("inf")] for _ in cases]
        for _ in range(args.rounds):
            for i, (_, _, nchw, nhwc) in enumerate(cases):
                for _ in range(args.reps):
                    best[i][0] = min(best[i][0], timed(nchw))
                    best[i][1] = min(best[i][1], timed(nhwc))
        for (kind, desc, _, _), t in zip(cases, best):
            t = [v * 1e3 for v in t]
            totals[kind][0] += t[0]
            totals[kind][1] += t[1]
            totals[kind][2] += 1
            ratio = f"{t[1] / t[0]:.2f}" if t[0] > 1e-2 else "-"
            details.append(f"| {name} | {kind} | {desc} | {t[0]:.3f} | {t[1]:.3f} | {ratio} |")
        for kind, (a, b, n) in sorted(totals.items(), key=lambda kv: -kv[1][0]):
            ratio = f"{b / a:.2f}" if a > 1e-2 else "-"
            lines.append(f"| {name} | {kind} ({n}) | {a:.2f} | {b:.2f} | {ratio} |")
        a = sum(v[0] for k, v in totals.items() if not k.startswith("NCHWc"))
        b = sum(v[1] for k, v in totals.items() if not k.startswith("NCHWc"))
        lines.append(f"| **{name}** | **all NHWC (conv, pool, borders)** | **{a:.2f}** | **{b:.2f}** | **{b / a:.2f}** |")
    lines += ["", "Per layer:", "", "| model | kind | shape | NCHW today (ms) | converted (ms) | ratio |", "|---|---|---|---|---|---|"]
    write_table(lines + details, args.out)


if __name__ == "__main__":
    main()
