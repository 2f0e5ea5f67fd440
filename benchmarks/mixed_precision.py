"""float16 / bfloat16 / mixed-precision conversions of zoo models: size, output error and latency,
in onyxrt and onnxruntime, each runtime in its own process, alternating A B A B.

    python benchmarks/mixed_precision.py --out benchmarks/mixed_precision.md
    python benchmarks/mixed_precision.py resnet50 --rounds 5 --repeat 20
    python benchmarks/mixed_precision.py --mixed minilm_l6 --out benchmarks/mixed_precision.md   # + automatic mixed precision

The converted models are onyxrt.quantization's (``keep_io_types=True``: float32 in and out).
Relative error = max|converted - fp32| / max|fp32| over the output, the worst of ``--samples``
inputs, against onnxruntime's float32 output. Latency: each round starts one worker process per
runtime and model file (fp32 first); a worker loads the file, warms up and times ``--repeat`` runs;
the table gives medians of all timed runs. Needs ../shared/zoo (benchmarks/latency.py's zoo_path).
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from latency import timed_runs, worker_result, write_table, zoo_path  # noqa: E402

MODELS = ("minilm_l6", "resnet50")
SEQ = 128


def sample_feeds(model: str, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if model == "resnet50":
        return {"input": rng.standard_normal((1, 3, 224, 224), dtype=np.float32)}
    return {"input_ids": rng.integers(0, 30522, (1, SEQ), dtype=np.int64),
            "attention_mask": np.ones((1, SEQ), np.int64),
            "token_type_ids": np.zeros((1, SEQ), np.int64)}


def convert(model: str, variant: str, folder: Path) -> tuple[Path, str]:
    """The file of ``variant`` (fp32 is the zoo's own file) and a note on the conversion."""
    from onyxrt.quantization import auto_convert_mixed_precision
    from onyxrt.quantization.float16 import convert_with_report
    import onnx

    source = Path(zoo_path(model))
    if variant == "fp32":
        return source, ""
    target = folder / f"{model}_{variant}.onnx"
    started = time.perf_counter()
    if variant == "mixed":
        result = auto_convert_mixed_precision(str(source), sample_feeds(model, 0), rtol=1e-2, atol=1e-3,
                                              return_details=True)
        onnx.save(result.model, target)
        note = (f"{len(result.kept_float32)} of {result.candidates} nodes float32 (rtol 1e-2, atol 1e-3), "
                f"{result.attempts} trial conversions")
    else:
        report = convert_with_report(str(source), variant, keep_io_types=True)
        onnx.save(report.model, target)
        note = f"{len(report.converted_nodes)} nodes converted, {len(report.kept_nodes)} kept float32, {report.casts_added} Casts"
    return target, f"{note}; {time.perf_counter() - started:.1f} s"


def worker(runtime: str, model: str, path: str, repeat: int, samples: int, outputs: str) -> None:
    if runtime == "onnxruntime":
        import onnxruntime as rt
    else:
        import onyxrt as rt
    try:
        session = rt.InferenceSession(path, providers=["CPUExecutionProvider"])
        results = [session.run(None, sample_feeds(model, seed))[0] for seed in range(samples)]
    except Exception as exc:  # noqa: BLE001 - recorded in the table (onnxruntime lacks bfloat16 kernels)
        print(json.dumps({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}))
        return
    np.save(outputs, np.stack([np.asarray(r, np.float32) for r in results]))
    print(json.dumps({"times": timed_runs(session, sample_feeds(model, 0), repeat)}))


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(actual.astype(np.float64) - expected)) / np.max(np.abs(expected)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(MODELS))
    parser.add_argument("--rounds", type=int, default=3, help="A B rounds (one process per runtime and file per round)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per process")
    parser.add_argument("--samples", type=int, default=3, help="inputs the output error is measured on")
    parser.add_argument("--mixed", nargs="*", metavar="MODEL",
                        help="also the automatic mixed-precision model of these models (all without names; minutes)")
    parser.add_argument("--out", help="write the markdown table here")
    parser.add_argument("--worker", nargs=4, metavar=("RUNTIME", "MODEL", "PATH", "OUTPUTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        runtime, model, path, outputs = args.worker
        worker(runtime, model, path, args.repeat, args.samples, outputs)
        return 0

    runtimes = ("onyxrt", "onnxruntime")
    rows = []
    notes = []
    with tempfile.TemporaryDirectory(prefix="onyxrt-mixed-precision-") as work:
        folder = Path(work)
        for model in args.models:
            wants_mixed = args.mixed is not None and (not args.mixed or model in args.mixed)
            variants = ["fp32", "fp16", "bf16"] + (["mixed"] if wants_mixed else [])
            files = {}
            for variant in variants:
                files[variant], note = convert(model, variant, folder)
                if note:
                    notes.append(f"- {model} {variant}: {note}")
            times: dict[tuple[str, str], list[float]] = {(r, v): [] for r in runtimes for v in variants}
            errors: dict[tuple[str, str], str] = {}
            outputs: dict[tuple[str, str], np.ndarray] = {}
            for round_index in range(args.rounds):
                for variant in variants:
                    for runtime in runtimes:
                        if (runtime, variant) in errors:
                            continue
                        saved = folder / f"{model}_{variant}_{runtime}.npy"
                        result = worker_result([__file__, "--worker", runtime, model, str(files[variant]), str(saved),
                                                "--repeat", str(args.repeat), "--samples", str(args.samples)])
                        if "error" in result:
                            errors[(runtime, variant)] = result["error"]
                            continue
                        times[(runtime, variant)] += result["times"]
                        if round_index == 0:
                            outputs[(runtime, variant)] = np.load(saved)
                print(f"{model}: round {round_index + 1} of {args.rounds}", flush=True)
            reference = outputs[("onnxruntime", "fp32")].astype(np.float64)
            size32 = files["fp32"].stat().st_size
            for variant in variants:
                cells = [model, variant, f"{files[variant].stat().st_size / 1e6:.1f} ({files[variant].stat().st_size / size32:.0%})"]
                for runtime in runtimes:
                    key = (runtime, variant)
                    cells.append(f"{relative_error(outputs[key], reference):.2e}" if key in outputs else "not run")
                for runtime in runtimes:
                    key, base = (runtime, variant), (runtime, "fp32")
                    if times[key]:
                        median = statistics.median(times[key])
                        ratio = median / statistics.median(times[base]) if times[base] else float("nan")
                        cells.append(f"{median:.1f} ({ratio:.2f}x)")
                    else:
                        cells.append("not run")
                rows.append(cells)
                print(" | ".join(cells), flush=True)
            notes += [f"- {model} {variant} in {runtime}: {message}" for (runtime, variant), message in errors.items()]

    load = os.getloadavg()
    lines = [
        "# Mixed precision: float16 / bfloat16 models in onyxrt and onnxruntime",
        "",
        f"Command: `python benchmarks/mixed_precision.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"Models converted by `onyxrt.quantization` with `keep_io_types=True`; minilm_l6 at batch 1, sequence {SEQ};",
        "resnet50 at batch 1. Relative error = max|converted - fp32| / max|fp32| of the output, worst of",
        f"{args.samples} random inputs, against onnxruntime's float32 output (the fp32 row is each runtime's own",
        f"float32 error). Latency: each runtime in its own process, alternating, {args.rounds} rounds x",
        f"{args.repeat} timed runs; medians, with the ratio to the same runtime's float32 median.",
        "",
        "| model | variant | size MB (of fp32) | rel. error onyxrt | rel. error onnxruntime | onyxrt ms (vs fp32) | onnxruntime ms (vs fp32) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    if notes:
        lines += ["", "Conversions and runs:", "", *notes]
    lines += [
        "",
        "Notes:",
        "",
        "- onyxrt runs float16/bfloat16 models as onnxruntime's CPU provider does (`Float16ToFloat32`): the",
        "  nodes compute in float32 and values are rounded to the model's type only where they leave that",
        "  region (the graph outputs; with `keep_io_types` none), so the float32 fusions apply (minilm_l6's",
        "  float16 graph runs 6 Attention, 6 BiasGelu and 18 MatMul nodes, as its float32 one). Before it",
        "  (2026-12-04), each node's output was rounded to float16, the fusions did not match, and float16",
        "  minilm_l6 ran 2.5-3x, resnet50 1.5x its float32 time. `ORT_DISABLE_ALL` still runs the model as",
        "  written (and automatic mixed precision measures candidates that way: the error of hardware",
        "  computing in float16).",
        "- bfloat16 resnet50 keeps Conv, MaxPool and GlobalAveragePool float32: ONNX has no bfloat16 for",
        "  them before opset 22 (the zoo file is opset 17); `onnx.version_converter.convert_version(model, 22)`",
        "  first makes all 169 nodes bfloat16.",
        "- onnxruntime's CPU provider has no bfloat16 Add/Relu kernels: those rows are not run.",
        "- Sizes are the saved files; float16/bfloat16 weights take half the bytes.",
        f"- Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; this VM's speed drifts, so compare",
        "  ratios measured alternately rather than absolute times.",
    ]
    write_table(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
