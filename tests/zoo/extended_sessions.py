"""The three sessions the zoo's optimizer tests compare: onyxrt at EXTENDED, onnxruntime unoptimized,
and onnxruntime running the model onyxrt saved."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

import onyxrt


def extended_sessions(model: str | bytes, folder: Path):
    """(onyxrt at EXTENDED, onnxruntime unoptimized, onnxruntime on onyxrt's saved model, that model's path)."""
    saved_path = str(folder / "onyxrt_extended.onnx")
    options = onyxrt.SessionOptions()
    options.graph_optimization_level = onyxrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = saved_path
    ours = onyxrt.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(model, plain, providers=["CPUExecutionProvider"])
    saved = ort.InferenceSession(saved_path, plain, providers=["CPUExecutionProvider"])
    return ours, reference, saved, saved_path
