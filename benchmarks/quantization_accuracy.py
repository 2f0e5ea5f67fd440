"""Accuracy and size of quantized zoo models: onyxrt.quantization and onnxruntime.quantization side by side.

    python benchmarks/quantization_accuracy.py --out benchmarks/quantization_accuracy.md
    python benchmarks/quantization_accuracy.py minilm_l6 --out /tmp/minilm.md     # one model

Every quantized file is run by both runtimes (onyxrt and onnxruntime) against onnxruntime's fp32 run:
- minilm_l6 (quantize_dynamic): mean and min cosine of mean-pooled embeddings over 50 random inputs
  (token ids uniform over the vocabulary, 16..128 tokens, as tests/zoo/test_zoo_quantization.py);
- resnet50 (quantize_static, 32 random-normal calibration images: the zoo has no real images): output
  SNR in dB on 8 other random images, and top-1 agreement;
- llama_tiny (weight-only, MatMulNBits; random weights, so near-flat logits): prefill logits cosine,
  argmax agreement over 16 positions, and how many of 20 greedy tokens match fp32's before the first
  difference.
Sizes are file sizes relative to fp32. Accuracy does not depend on machine load; the quantization
times are wall times on whatever machine ran it (shared CPUs here). A "failed" row is the tool raising
on that model; its error is recorded instead of numbers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "zoo"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from report import cpu_model  # noqa: E402

MODELS = ("minilm_l6", "resnet50", "llama_tiny")
NOTES = """## Notes

- minilm_l6: the rows "per_channel=False, FloatActivationsAfterGelu=False" (onyxrt) and onnxruntime's defaults
  are the same graph and give the same values; per-channel weights and per-row Gather tables, then float
  activations into the MatMul after GELU, are what onyxrt's defaults add.
- The onyxrt and onnxruntime columns of one file differ a little: a value at a rounding boundary of a
  dynamically quantized activation goes either way (onnxruntime's own optimized and unoptimized runs of
  one file differ as much).
- resnet50 is calibrated and measured on random-normal images (the zoo has no real images); real images
  have other activation statistics, so these SNRs say the tool and runtimes work, not what a real
  dataset would give. onnxruntime's QOperator quantizer raises on this file: its Conv biases reach the
  Conv through Identity nodes (onyxrt's tool reads them as the initializers they copy).
- llama_tiny has random weights, so its top-1 logit margins are tiny: int4 (either tool: the same
  round-to-nearest blocks) changes the first greedy token; int8 keeps all 20.
"""


def _sessions(path: str):
    import onnxruntime as ort

    import onyxrt

    return {"onyxrt": onyxrt.InferenceSession(path), "onnxruntime": ort.InferenceSession(path, providers=["CPUExecutionProvider"])}


class ToolFailed(Exception):
    """The quantization tool raised: the row records its error instead of numbers."""


def _timed(function, *args, **kwargs) -> float:
    started = time.perf_counter()
    try:
        function(*args, **kwargs)
    except Exception as exc:  # a tool crashing on a zoo model is a result worth recording
        raise ToolFailed(f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}") from exc
    return time.perf_counter() - started


def minilm(source: str, folder: Path) -> list[str]:
    import onnxruntime.quantization as theirs
    from test_zoo_quantization import mean_cosine, mean_pooled, minilm_inputs

    import onyxrt.quantization as ours

    variants = [
        ("onyxrt quantize_dynamic() defaults (GELU outputs per row)", ours.quantize_dynamic, {}),
        ("onyxrt GeluOutputActivations=float", ours.quantize_dynamic,
         {"extra_options": {"GeluOutputActivations": "float"}}),
        ("onyxrt per_channel=True, GeluOutputActivations=per_tensor", ours.quantize_dynamic,
         {"extra_options": {"GeluOutputActivations": "per_tensor"}}),
        ("onyxrt per_channel=False, GeluOutputActivations=per_tensor", ours.quantize_dynamic,
         {"per_channel": False, "extra_options": {"GeluOutputActivations": "per_tensor"}}),
        ("onnxruntime quantize_dynamic() defaults", theirs.quantize_dynamic, {}),
        ("onnxruntime per_channel=True", theirs.quantize_dynamic, {"per_channel": True}),
    ]
    samples = minilm_inputs()
    import onnxruntime as ort
    reference = mean_pooled(ort.InferenceSession(source, providers=["CPUExecutionProvider"]), samples)
    rows = ["| tool and options | size vs fp32 | quantize s | mean cosine (onyxrt) | min (onyxrt) | mean cosine (onnxruntime) | min (onnxruntime) |",
            "|---|---|---|---|---|---|---|"]
    for label, function, options in variants:
        target = str(folder / f"minilm_{len(rows)}.onnx")
        try:
            seconds = _timed(function, source, target, **options)
        except ToolFailed as failure:
            rows.append(f"| {label} | failed: {failure} |" + " |" * 5)
            print(rows[-1], flush=True)
            continue
        cells = []
        for session in _sessions(target).values():
            pooled = mean_pooled(session, samples)
            cosines = (pooled * reference).sum(1) / np.linalg.norm(pooled, axis=1) / np.linalg.norm(reference, axis=1)
            cells += [f"{mean_cosine(pooled, reference):.4f}", f"{cosines.min():.4f}"]
        rows.append(f"| {label} | {os.path.getsize(target) / os.path.getsize(source):.3f} | {seconds:.1f} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


def resnet50(source: str, folder: Path) -> list[str]:
    import onnxruntime as ort
    import onnxruntime.quantization as theirs
    from test_zoo_quantization import snr_db

    import onyxrt.quantization as ours
    from onyxrt.quantization.calibration import ArrayDataReader

    calibration = [{"input": np.random.default_rng(seed).standard_normal((1, 3, 224, 224), dtype=np.float32)} for seed in range(32)]
    images = [{"input": np.random.default_rng(2000 + seed).standard_normal((1, 3, 224, 224), dtype=np.float32)} for seed in range(8)]
    variants = [
        ("onyxrt quantize_static QDQ per_channel MinMax", ours.quantize_static, {"per_channel": True}),
        ("onyxrt quantize_static QDQ per_channel Percentile", ours.quantize_static,
         {"per_channel": True, "calibrate_method": ours.CalibrationMethod.Percentile}),
        ("onyxrt quantize_static QOperator per_channel MinMax", ours.quantize_static,
         {"per_channel": True, "quant_format": ours.QuantFormat.QOperator}),
        ("onyxrt quantize_static QDQ per-tensor MinMax", ours.quantize_static, {}),
        ("onnxruntime quantize_static QDQ per_channel MinMax", theirs.quantize_static, {"per_channel": True}),
        ("onnxruntime quantize_static QOperator per_channel MinMax", theirs.quantize_static,
         {"per_channel": True, "quant_format": theirs.QuantFormat.QOperator}),
    ]
    expected = [ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, image)[0] for image in images]
    rows = ["| tool and options | size vs fp32 | quantize s | SNR dB (onyxrt) mean / min | top-1 same (onyxrt) | SNR dB (onnxruntime) mean / min | top-1 same (onnxruntime) |",
            "|---|---|---|---|---|---|---|"]
    for label, function, options in variants:
        target = str(folder / f"resnet50_{len(rows)}.onnx")
        try:
            seconds = _timed(function, source, target, ArrayDataReader(calibration), **options)
        except ToolFailed as failure:
            rows.append(f"| {label} | failed: {failure} |" + " |" * 5)
            print(rows[-1], flush=True)
            continue
        cells = []
        for session in _sessions(target).values():
            outputs = [session.run(None, image)[0] for image in images]
            snrs = [snr_db(want, got) for want, got in zip(expected, outputs)]
            agree = sum(int(want.argmax() == got.argmax()) for want, got in zip(expected, outputs))
            cells += [f"{np.mean(snrs):.1f} / {np.min(snrs):.1f}", f"{agree}/{len(images)}"]
        rows.append(f"| {label} | {os.path.getsize(target) / os.path.getsize(source):.3f} | {seconds:.1f} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


def llama_tiny(source: str, folder: Path) -> list[str]:
    import onnx
    import onnxruntime as ort
    from feeds import decoder_feeds
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer as TheirQuantizer

    import onyxrt.quantization as ours
    from onyxrt.genai import Generator

    def theirs(source: str, target: str, bits: int, block_size: int, symmetric: bool) -> None:
        quantizer = TheirQuantizer(onnx.load(source), bits=bits, block_size=block_size, is_symmetric=symmetric)
        quantizer.process()
        quantizer.model.save_model_to_file(target, True)

    variants = [
        ("onyxrt quantize_weight_only int4 block 32 symmetric", ours.quantize_weight_only, {"bits": 4, "block_size": 32, "symmetric": True}),
        ("onyxrt quantize_weight_only int4 block 32 asymmetric", ours.quantize_weight_only, {"bits": 4, "block_size": 32, "symmetric": False}),
        ("onyxrt quantize_weight_only int8 block 32 symmetric", ours.quantize_weight_only, {"bits": 8, "block_size": 32, "symmetric": True}),
        ("onnxruntime MatMulNBitsQuantizer int4 block 32 symmetric", theirs, {"bits": 4, "block_size": 32, "symmetric": True}),
        ("onnxruntime MatMulNBitsQuantizer int4 block 32 asymmetric", theirs, {"bits": 4, "block_size": 32, "symmetric": False}),
    ]
    feeds = decoder_feeds(1, 16, 0)
    reference = ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0][0]
    prompt = np.random.default_rng(0).integers(0, 32000, size=(1, 16))
    fp32_tokens = Generator(source).generate(prompt, max_new_tokens=20)[0, 16:].tolist()
    rows = [f"fp32 greedy tokens (prompt of 16 random ids, seed 0): {fp32_tokens}", "",
            "| tool and options | size vs fp32 | quantize s | logits cosine (onyxrt) | argmax same (onyxrt) | greedy tokens = fp32 (onyxrt) | logits cosine (onnxruntime) | argmax same (onnxruntime) | greedy tokens = fp32 (onnxruntime) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for label, function, options in variants:
        target = str(folder / f"llama_{len(rows)}.onnx")
        try:
            seconds = _timed(function, source, target, **options)
        except ToolFailed as failure:
            rows.append(f"| {label} | failed: {failure} |" + " |" * 7)
            print(rows[-1], flush=True)
            continue
        size = sum(path.stat().st_size for path in folder.glob(Path(target).name + "*"))
        cells = []
        for session in _sessions(target).values():
            logits = session.run(["logits"], feeds)[0][0]
            cosine = (logits * reference).sum(-1) / np.linalg.norm(logits, axis=-1) / np.linalg.norm(reference, axis=-1)
            tokens = Generator(session).generate(prompt, max_new_tokens=20)[0, 16:].tolist()
            prefix = next((i for i, (a, b) in enumerate(zip(tokens, fp32_tokens)) if a != b), len(tokens))
            cells += [f"{cosine.mean():.4f}", f"{int((logits.argmax(-1) == reference.argmax(-1)).sum())}/16", f"{prefix}/20"]
        rows.append(f"| {label} | {size / os.path.getsize(source):.3f} | {seconds:.1f} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"some of {', '.join(MODELS)} (default: all)")
    parser.add_argument("--out", help="write the markdown report here")
    args = parser.parse_args()
    unknown = [name for name in args.models if name not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]}; choose from {', '.join(MODELS)}")
    args.models = args.models or list(MODELS)
    logging.disable(logging.WARNING)  # onnxruntime's tool logs a pre-processing hint per call
    from latency import zoo_path

    command = "python benchmarks/quantization_accuracy.py " + " ".join(sys.argv[1:])
    lines = ["# Quantization accuracy: onyxrt.quantization and onnxruntime.quantization", "",
             f"Command: `{command.strip()}`", "", f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average at start "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; onnxruntime {__import__('onnxruntime').__version__}", "",
             "\n\n".join((__doc__ or "").split("\n\n")[2:]).strip(), ""]
    functions = {"minilm_l6": minilm, "resnet50": resnet50, "llama_tiny": llama_tiny}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            print(f"## {name}", flush=True)
            model_folder = Path(folder) / name
            model_folder.mkdir()
            lines += [f"## {name}", ""] + functions[name](zoo_path(name), model_folder) + [""]
            for path in model_folder.iterdir():
                path.unlink()
    text = "\n".join(lines + [NOTES])
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
