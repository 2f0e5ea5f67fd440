"""Low-precision kernels end to end: weight-only int4 llama_tiny decode and QDQ int8 resnet50 / mobilenet_v2.

    python benchmarks/quantized_conv_nbits.py --out benchmarks/quantized_conv_nbits.md
    python benchmarks/quantized_conv_nbits.py llama_decode --rounds 5 --threads 1

Cases (quantized files made once by onnxruntime's own tools into ``--cache``):

* ``llama_decode``: one decode step of llama_tiny at past 127 (batch 1). Variants: onyxrt on the
  float32 file, onyxrt and onnxruntime on the weight-only int4 file (``MatMulNBitsQuantizer``,
  block 32, asymmetric), onnxruntime on the float32 file.
* ``resnet50`` (and ``mobilenet_v2``, not run by default): one image. Variants: onyxrt on the float32 file,
  onyxrt and onnxruntime on the
  ``quantize_static`` file (QDQ, per-channel int8 weights, uint8 activations, 32 random calibration
  images), onnxruntime on the float32 file.

Each variant runs in its own process, the variants alternating round by round (A B C D A B C D);
the table gives the median of all timed runs. Then, in one more process each, what the quantized
runs spend in the quantized kernels (MatMulNBits / QLinearConv), in other kernels and in the run
loop (onyxrt's profiler), and the accuracy: greedy tokens of int4 against float32 (onyxrt), the
resnet50 output's signal-to-noise ratio against float32.
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
from latency import timed_runs, worker_result, write_table, zoo_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CASES = ("llama_decode", "resnet50")
VISION = ("resnet50", "mobilenet_v2")
VARIANTS = {  # (runtime, which file)
    "llama_decode": [("onyxrt", "fp32"), ("onyxrt", "int4"), ("onnxruntime", "int4"), ("onnxruntime", "fp32")],
    **{name: [("onyxrt", "fp32"), ("onyxrt", "qdq"), ("onnxruntime", "qdq"), ("onnxruntime", "fp32")] for name in VISION},
}
QUANTIZED_OPS = {"llama_decode": "MatMulNBits", **{name: "QLinearConv" for name in VISION}}


def model_path(case: str, kind: str, cache: Path) -> str:
    """The float32 zoo file, or its quantized version (made by onnxruntime's tools on first use)."""
    base = zoo_path("llama_tiny" if case == "llama_decode" else case)
    if kind == "fp32":
        return base
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{case}_{kind}.onnx"
    if not path.exists():
        _quantize(base, case, str(path))
    return str(path)


def _quantize(source: str, case: str, destination: str) -> None:
    import numpy as np
    import onnx

    if case == "llama_decode":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(onnx.load(source), bits=4, block_size=32, is_symmetric=False)
        quantizer.process()
        onnx.save(quantizer.model.model, destination)
        return
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class RandomImages(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.images = iter([{"input": rng.standard_normal((1, 3, 224, 224), dtype=np.float32)} for _ in range(32)])

        def get_next(self):
            return next(self.images, None)

    prepared = destination + ".prepared.onnx"
    quant_pre_process(source, prepared, skip_symbolic_shape=True)
    quantize_static(prepared, destination, RandomImages(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    os.remove(prepared)


def feeds_for(case: str) -> dict:
    sys.path.insert(0, str(ROOT / "tests" / "zoo"))
    from feeds import decoder_feeds, vision_feeds

    return decoder_feeds(1, 1, 127) if case == "llama_decode" else vision_feeds(1)


def _session(runtime: str, path: str, threads: int, profiling: bool = False):
    rt = __import__(runtime)
    options = rt.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = profiling
    return rt.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def worker(runtime: str, case: str, kind: str, repeat: int, threads: int, cache: Path) -> None:
    session = _session(runtime, model_path(case, kind, cache), threads)
    print(json.dumps(timed_runs(session, feeds_for(case), repeat)))


def breakdown(case: str, kind: str, repeat: int, threads: int, cache: Path) -> dict:
    """Medians over profiled onyxrt runs (ms): the quantized kernels, other kernels, the run loop."""
    session = _session("onyxrt", model_path(case, kind, cache), threads, profiling=True)
    timed_runs(session, feeds_for(case), repeat)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][-repeat:]
    nodes = [e for e in events if e.get("cat") == "Node"]
    parts: dict[str, list[float]] = {"total": [], "quantized": [], "other": [], "overhead": []}
    for run in runs:
        inside = [e for e in nodes if run["ts"] <= e["ts"] <= run["ts"] + run["dur"]]
        quantized = sum(e["dur"] for e in inside if e["args"].get("op_name") == QUANTIZED_OPS[case])
        other = sum(e["dur"] for e in inside) - quantized
        for key, value in (("total", run["dur"]), ("quantized", quantized), ("other", other),
                           ("overhead", run["dur"] - quantized - other)):
            parts[key].append(value / 1000)
    result = {key: statistics.median(values) for key, values in parts.items()}
    result["nodes"] = len(inside)
    return result


def accuracy(case: str, cache: Path, threads: int) -> dict:
    """llama: greedy tokens of int4 vs float32 (onyxrt); resnet50: output SNR (dB) vs float32, onyxrt and onnxruntime."""
    import numpy as np

    if case == "llama_decode":
        sys.path.insert(0, str(ROOT / "tests" / "zoo"))
        from feeds import decoder_feeds

        def greedy(session, steps: int = 32) -> list[int]:
            feeds = decoder_feeds(1, 8, 0, seed=3)
            pasts = [name for name in feeds if name.startswith("past_key_values.")]
            names = ["logits"] + [name.replace("past_key_values", "present") for name in pasts]
            tokens = []
            for _ in range(steps):
                logits, *presents = session.run(names, feeds)
                tokens.append(int(logits[0, -1].argmax()))
                total = feeds["attention_mask"].shape[1] + 1
                feeds = {"input_ids": np.array([[tokens[-1]]], np.int64), "position_ids": np.array([[total - 1]]),
                         "attention_mask": np.ones((1, total), np.int64), **dict(zip(pasts, presents))}
            return tokens

        fp32 = greedy(_session("onyxrt", model_path(case, "fp32", cache), threads))
        int4 = greedy(_session("onyxrt", model_path(case, "int4", cache), threads))
        ort_int4 = greedy(_session("onnxruntime", model_path(case, "int4", cache), threads))
        same_prefix = next((i for i, (a, b) in enumerate(zip(fp32, int4)) if a != b), len(fp32))
        return {"steps": len(fp32), "equal": sum(a == b for a, b in zip(fp32, int4)), "same_prefix": same_prefix,
                "int4_equals_onnxruntime_int4": int4 == ort_int4}
    feeds = feeds_for(case)
    (exact,) = _session("onnxruntime", model_path(case, "fp32", cache), threads).run(None, feeds)
    result = {}
    for runtime in ("onyxrt", "onnxruntime"):
        (y,) = _session(runtime, model_path(case, "qdq", cache), threads).run(None, feeds)
        noise = float(((y - exact).astype(np.float64) ** 2).sum())
        result[runtime] = 10 * np.log10(float((exact.astype(np.float64) ** 2).sum()) / noise)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=list(CASES), help=f"of {', '.join([*CASES, *VISION[1:]])}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per process")
    parser.add_argument("--threads", type=int, default=0, help="intra_op_num_threads of every session (0: physical cores)")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "onyxrt-bench-quantized"))
    parser.add_argument("--out", help="write the markdown here")
    parser.add_argument("--worker", nargs=3, metavar=("RUNTIME", "CASE", "KIND"), help=argparse.SUPPRESS)
    parser.add_argument("--profile", nargs=2, metavar=("CASE", "KIND"), help=argparse.SUPPRESS)
    parser.add_argument("--accuracy", metavar="CASE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = set(args.cases) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}: choose from {sorted(VARIANTS)}")
    cache = Path(args.cache)
    if args.worker:
        worker(*args.worker, args.repeat, args.threads, cache)
        return 0
    if args.profile:
        print(json.dumps(breakdown(*args.profile, args.repeat, args.threads, cache)))
        return 0
    if args.accuracy:
        print(json.dumps(accuracy(args.accuracy, cache, args.threads)))
        return 0

    common = ["--repeat", str(args.repeat), "--threads", str(args.threads), "--cache", args.cache]
    loads = [os.getloadavg()[0]]
    lines = [
        "# Quantized kernels end to end: int4 llama_tiny decode, QDQ int8 resnet50",
        "",
        f"Command: `python benchmarks/quantized_conv_nbits.py {' '.join(sys.argv[1:])}`",
        "",
        f"Each variant in its own process, alternating round by round, {args.rounds} rounds x {args.repeat} timed runs;",
        f"medians. intra_op_num_threads = {args.threads} (0: one per physical core).",
        "",
    ]
    for case in args.cases:
        for runtime, kind in VARIANTS[case]:  # make the quantized files before timing anything
            model_path(case, kind, cache)
        samples: dict[tuple[str, str], list[float]] = {variant: [] for variant in VARIANTS[case]}
        for _ in range(args.rounds):
            for runtime, kind in VARIANTS[case]:
                samples[(runtime, kind)] += worker_result([__file__, "--worker", runtime, case, kind, *common])
            loads.append(os.getloadavg()[0])
        medians = {variant: statistics.median(values) for variant, values in samples.items()}
        fastest = {variant: min(values) for variant, values in samples.items()}
        baseline = medians[("onyxrt", "fp32")]
        quantized_kind = VARIANTS[case][1][1]
        lines += [f"## {case}", "", "| variant | median (ms) | fastest run (ms) | vs onyxrt fp32 (median) |", "|---|---|---|---|"]
        for (runtime, kind), value in medians.items():
            lines.append(f"| {runtime} {kind} | {value:.2f} | {fastest[(runtime, kind)]:.2f} | {baseline / value:.2f}x |")
        profile = worker_result([__file__, "--profile", case, quantized_kind, *common])
        lines += ["", f"onyxrt {quantized_kind}, profiled ({profile['nodes']} nodes a run; medians of each part, which "
                  f"need not add up): run {profile['total']:.2f} ms, {QUANTIZED_OPS[case]} {profile['quantized']:.2f} ms, "
                  f"other kernels {profile['other']:.2f} ms, run loop {profile['overhead']:.2f} ms."]
        result = worker_result([__file__, "--accuracy", case, *common])
        if case == "llama_decode":
            lines.append(f"Greedy decoding, 32 steps from an 8-token prompt (onyxrt): int4 gives the float32 token at "
                         f"{result['equal']}/{result['steps']} steps (identical for the first {result['same_prefix']}); "
                         f"int4 tokens identical to onnxruntime's int4: {result['int4_equals_onnxruntime_int4']}.")
        else:
            lines.append(f"Output SNR against float32 (onnxruntime fp32 as the reference): onyxrt QDQ "
                         f"{result['onyxrt']:.2f} dB, onnxruntime QDQ {result['onnxruntime']:.2f} dB.")
        lines.append("")
        print("\n".join(lines[-12:]), flush=True)
    lines.append(f"Load average (1 min) before and after each round: {', '.join(f'{v:.2f}' for v in loads)}.")
    write_table(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
