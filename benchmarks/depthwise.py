"""Depthwise convolutions: the compiled kernels (nn/depthwise_conv.py, nn/depthwise_channels_last.py) against the numpy path.

    python benchmarks/depthwise.py --out benchmarks/depthwise.md
    python benchmarks/depthwise.py --model /tmp/zoo/mobilenet_v2.onnx --rounds 7 --e2e-rounds 8

* per layer: every depthwise Conv of the model (its input shape, weights, pads and the
  Clip after it fused as FusedConv does) and EfficientNet-like 5x5 layers (random weights),
  run as a session runs them (``float_conv`` with prepacked weights, the session's 2-thread
  pool); numpy, the numba kernel alone (planar / channels-last loops) and the default (the
  vector blocks of ``depthwise_channels_last`` where they apply) alternate; each layer's min and
  median over rounds of the per-round minimum;
* end to end: the model at batch 1, each measurement in its own process, numpy
  (``ONYXRT_DISABLE_NUMBA=1``), the numba kernel alone and the default alternating; per process
  the median of ``--repeat`` runs after warm-up; min and median over rounds;
* JIT cost: the first run of a fresh process with an empty numba cache (cold: import, compile,
  write the cache), with that cache (warm: import, load), and without numba.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onyxrt.framework.thread_pool import ThreadPool  # noqa: E402
from onyxrt.providers.cpu.contrib.fused import mlas_activation_fn  # noqa: E402
from onyxrt.providers.cpu.jit import DISABLE_ENV  # noqa: E402
from onyxrt.providers.cpu.nn import depthwise_conv  # noqa: E402
from onyxrt.providers.cpu.nn.conv_core import float_conv, pack_conv_weights  # noqa: E402

DEFAULT_MODEL = "/tmp/zoo/mobilenet_v2.onnx"
# EfficientNet-B0's 5x5 depthwise layers: (channels, size, stride)
EFFICIENTNET_5X5 = [(144, 56, 2), (240, 28, 1), (480, 14, 1), (672, 14, 1), (672, 14, 2), (1152, 7, 1)]


def model_layers(path: str):
    """(description, x, w, b, attributes, activation) per depthwise Conv of the model."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(path))
    shapes = {vi.name: [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
              for vi in list(model.graph.value_info) + list(model.graph.input)}
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:  # (PyTorch's exporter shares weights through Identity nodes)
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        elif n.op_type == "Identity" and n.input[0] in consts:
            consts[n.output[0]] = consts[n.input[0]]
    rng = np.random.default_rng(0)
    layers = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        w = consts[node.input[1]]
        x_shape = shapes[node.input[0]]
        if w.shape[1] != 1 or int(attrs.get("group", 1)) != x_shape[1]:
            continue
        b = consts[node.input[2]] if len(node.input) > 2 else None
        readers = [n for n in model.graph.node if node.output[0] in n.input]
        activation = None
        if len(readers) == 1 and readers[0].op_type == "Clip":
            lo, hi = (float(consts[name]) for name in readers[0].input[1:3])
            activation = ("Clip", [lo, hi])
        elif len(readers) == 1 and readers[0].op_type == "Relu":
            activation = ("Relu", None)
        stride = (attrs.get("strides") or [1])[0]
        desc = f"{w.shape[2]}x{w.shape[3]}{f' s{stride}' if stride > 1 else ''} {x_shape[1]}x{x_shape[2]}x{x_shape[3]}"
        layers.append((desc, rng.standard_normal(x_shape).astype(np.float32), w, b, attrs, activation))
    return layers


def efficientnet_layers():
    rng = np.random.default_rng(1)
    layers = []
    for c, size, stride in EFFICIENTNET_5X5:
        attrs = {"group": c, "strides": [stride, stride], "pads": [2, 2, 2, 2], "kernel_shape": [5, 5]}
        w = rng.standard_normal((c, 1, 5, 5)).astype(np.float32)
        b = rng.standard_normal(c).astype(np.float32)
        desc = f"5x5{f' s{stride}' if stride > 1 else ''} {c}x{size}x{size} (EfficientNet-like)"
        layers.append((desc, rng.standard_normal((1, c, size, size)).astype(np.float32), w, b, attrs, None))
    return layers


def _layer_call(x, w, b, attrs, activation):
    packed = pack_conv_weights(w, b, attrs)
    fn = mlas_activation_fn(*activation) if activation else None
    args = (x, w, b, attrs.get("group", 1), attrs.get("strides"), attrs.get("dilations"), attrs.get("pads"),
            attrs.get("auto_pad", "NOTSET"), attrs.get("kernel_shape"), packed, fn)
    return lambda: float_conv(*args)


def _best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


VARIANTS = ("numpy", "numba", "default")  # the numba kernel alone: without the vector blocks


def _variant(name: str) -> None:
    """Switch this process to one of VARIANTS."""
    os.environ.pop(DISABLE_ENV, None)
    if name == "numpy":
        os.environ[DISABLE_ENV] = "1"
    depthwise_conv._vector_blocks = _VECTOR_BLOCKS if name == "default" else (lambda *args: None)


_VECTOR_BLOCKS = depthwise_conv._vector_blocks


def per_layer(layers, rounds: int, repeat: int):
    """Per layer: (desc, {variant: (min, median)} in ms, max rel. diff of the default to numpy)."""
    rows = []
    pool = ThreadPool(2)
    try:
        with pool.activate():
            for desc, x, w, b, attrs, activation in layers:
                call = _layer_call(x, w, b, attrs, activation)
                _variant("default")
                fast = call()
                _variant("numpy")
                ref = call()
                diff = float(np.abs(fast - ref).max() / max(1e-30, np.abs(ref).max()))
                times: dict = {name: [] for name in VARIANTS}
                for _ in range(rounds):
                    for name in VARIANTS:
                        _variant(name)
                        times[name].append(_best_of(call, repeat))
                rows.append((desc, {name: (min(t) * 1e3, statistics.median(t) * 1e3) for name, t in times.items()}, diff))
    finally:
        _variant("default")
        pool.shutdown()
    return rows


def worker(model: str, repeat: int, warmup: int, variant: str) -> None:
    """One process: session creation, first run, then the median of ``repeat`` runs (JSON)."""
    _variant(variant)
    t0 = time.perf_counter()
    import onyxrt

    session = onyxrt.InferenceSession(model, providers=["CPUExecutionProvider"])
    created = time.perf_counter() - t0
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    feed = {inp.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    t = time.perf_counter()
    session.run(None, feed)
    first = time.perf_counter() - t
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t)
    print(json.dumps({"create": created, "first": first, "median": statistics.median(times)}))


def _spawn(model: str, repeat: int, warmup: int, variant: str, cache_dir: str | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop(DISABLE_ENV, None)
    if cache_dir:
        env["NUMBA_CACHE_DIR"] = cache_dir
    out = subprocess.run([sys.executable, __file__, "--worker", "--model", model, "--repeat", str(repeat),
                          "--warmup", str(warmup), "--variant", variant], env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def end_to_end(model: str, rounds: int, repeat: int, warmup: int):
    results: dict = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name in VARIANTS:
            results[name].append(_spawn(model, repeat, warmup, name))
    return results


def jit_cost(model: str, rounds: int):
    """First-run seconds: (cold cache, warm cache, without numba) per round."""
    rows = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as cache:
            cold = _spawn(model, 1, 0, "default", cache)
            warm = _spawn(model, 1, 0, "default", cache)
        off = _spawn(model, 1, 0, "numpy")
        rows.append((cold, warm, off))
    return rows


def _cpu_model() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    except OSError:
        return platform.processor()
    info = dict(line.split(":", 1) for line in lines if ":" in line)
    return (f"{info.get('Model name', '?').strip()} (family {info.get('CPU family', '?').strip()} model "
            f"{info.get('Model', '?').strip()}), {info.get('CPU(s)', '?').strip()} CPUs")


def report(args) -> str:
    import numba

    layers = model_layers(args.model) + efficientnet_layers()
    rows = per_layer(layers, args.rounds, args.layer_repeat)
    e2e = end_to_end(args.model, args.e2e_rounds, args.repeat, args.warmup)
    jit = jit_cost(args.model, args.jit_rounds)
    lines = [
        "# Depthwise convolutions: the compiled kernels vs the numpy path (issue 9)",
        "",
        f"Command: `python benchmarks/depthwise.py {' '.join(sys.argv[1:])}`. Machine: {_cpu_model()}, "
        f"numba {numba.__version__}, numpy {np.__version__}, Python {platform.python_version()}. The machine "
        "is shared with other sessions and noisy: hence min and median over rounds.",
        "",
        "## End to end: mobilenet_v2, batch 1",
        "",
        f"{args.e2e_rounds} rounds; each round one process per variant (numpy; numba: the numba kernel alone; "
        f"default: with the vector blocks), each process the median of {args.repeat} runs after {args.warmup} "
        "warm-up runs.",
        "",
        "| variant | min over rounds (ms) | median over rounds (ms) | per-round medians (ms) |",
        "|---|---|---|---|",
    ]
    for name in VARIANTS:
        medians = [r["median"] * 1e3 for r in e2e[name]]
        lines.append(f"| {name} | {min(medians):.2f} | {statistics.median(medians):.2f} | "
                     f"{', '.join(f'{m:.1f}' for m in medians)} |")
    lines.append("")
    for name in ("numba", "default"):
        ratio_min = min(r["median"] for r in e2e[name]) / min(r["median"] for r in e2e["numpy"])
        ratio_med = statistics.median(r["median"] for r in e2e[name]) / statistics.median(r["median"] for r in e2e["numpy"])
        lines.append(f"{name} / numpy: {ratio_min:.2f} (min), {ratio_med:.2f} (median).  ")
    lines.append("")
    lines += [
        "## JIT cost: the first run of a fresh process",
        "",
        "Cold: an empty `NUMBA_CACHE_DIR` (import numba, compile the float32 kernels, write the cache); warm: "
        "the same cache again (import numba, load); without numba: `ONYXRT_DISABLE_NUMBA=1`. Session creation "
        "does not compile (the kernel is built on the first depthwise convolution run).",
        "",
        "| round | cold first run (s) | warm first run (s) | numpy first run (s) | session creation cold / warm / numpy (s) |",
        "|---|---|---|---|---|",
    ]
    for i, (cold, warm, off) in enumerate(jit, 1):
        lines.append(f"| {i} | {cold['first']:.2f} | {warm['first']:.2f} | {off['first']:.3f} | "
                     f"{cold['create']:.2f} / {warm['create']:.2f} / {off['create']:.2f} |")
    lines += [
        "",
        "## Per layer",
        "",
        f"`float_conv` with prepacked weights and the fused Clip where the model has one, inside a 2-thread "
        f"session pool (BLAS capped at 2 threads, the kernel on the calling thread); {args.rounds} rounds of "
        f"alternating numpy / numba kernel alone / default, each round the minimum of {args.layer_repeat} calls; "
        "medians over rounds (min in brackets). Max diff: the largest |default - numpy| / max |numpy|.",
        "",
        "| layer | numpy (ms) | numba alone (ms) | default (ms) | default / numba alone | default / numpy | max diff |",
        "|---|---|---|---|---|---|---|",
    ]
    totals = {name: 0.0 for name in VARIANTS}
    for desc, times, diff in rows:
        if "EfficientNet" not in desc:
            for name in VARIANTS:
                totals[name] += times[name][1]
        cells = " | ".join(f"{times[name][1]:.3f} ({times[name][0]:.3f})" for name in VARIANTS)
        lines.append(f"| {desc} | {cells} | {times['default'][1] / times['numba'][1]:.2f} | "
                     f"{times['default'][1] / times['numpy'][1]:.2f} | {diff:.1e} |")
    lines += ["", "mobilenet_v2's depthwise layers together (medians): "
              + ", ".join(f"{name} {totals[name]:.2f} ms" for name in VARIANTS) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--rounds", type=int, default=7, help="per-layer rounds")
    parser.add_argument("--layer-repeat", type=int, default=20)
    parser.add_argument("--e2e-rounds", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per end-to-end process")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--jit-rounds", type=int, default=3)
    parser.add_argument("--out")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="default", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.model, args.repeat, args.warmup, args.variant)
        return
    text = report(args)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
