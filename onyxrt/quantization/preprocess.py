"""``quant_pre_process``: onnxruntime's preparation step before quantization, done with onyxrt's optimizer."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx

from .model_editor import load_model

# onnxruntime's quantizers look for this metadata and otherwise suggest pre-processing.
PRE_PROCESS_KEY, PRE_PROCESS_VALUE = "onnx.quant.pre_process", "onnxruntime.quant"


def quant_pre_process(
    input_model: "str | os.PathLike | onnx.ModelProto | None" = None,
    output_model_path: "str | os.PathLike | None" = None,
    skip_optimization: bool = False,
    skip_onnx_shape: bool = False,
    skip_symbolic_shape: bool = False,
    auto_merge: bool = False,
    int_max: int = 2**31 - 1,
    guess_output_rank: bool = False,
    verbose: int = 0,
    save_as_external_data: bool = False,
    all_tensors_to_one_file: bool = False,
    external_data_location: str | None = None,
    external_data_size_threshold: int = 1024,
    **deprecated_kwargs: Any,
) -> None:
    """Optimize the model at the BASIC level (constant folding, redundant nodes, Conv+BatchNorm...) with onyxrt,
    run onnx's shape inference, mark it as pre-processed and save it to ``output_model_path``.

    onyxrt has no symbolic shape inference: ``skip_symbolic_shape``, ``auto_merge``, ``int_max`` and
    ``guess_output_rank`` are accepted and have no effect (onnx's inference still runs unless
    ``skip_onnx_shape``).
    """
    from ..session.inference_session import InferenceSession
    from ..session.session_options import GraphOptimizationLevel, SessionOptions

    if input_model is None or output_model_path is None:
        raise ValueError("quant_pre_process needs input_model and output_model_path")
    if deprecated_kwargs:
        warnings.warn(f"quant_pre_process ignores {sorted(deprecated_kwargs)}", stacklevel=2)
    model = load_model(input_model) if not skip_onnx_shape else _read(input_model)
    if not skip_optimization:
        with tempfile.TemporaryDirectory() as folder:
            optimized = Path(folder) / "optimized.onnx"
            options = SessionOptions()
            options.graph_optimization_level = GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.optimized_model_filepath = str(optimized)
            InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            model = onnx.load(optimized)  # external data, if any, is read before the folder goes
    if not skip_onnx_shape:
        model = onnx.shape_inference.infer_shapes(model)
    entries = {entry.key: entry for entry in model.metadata_props}
    if PRE_PROCESS_KEY in entries:
        entries[PRE_PROCESS_KEY].value = PRE_PROCESS_VALUE
    else:
        model.metadata_props.add(key=PRE_PROCESS_KEY, value=PRE_PROCESS_VALUE)
    path = Path(output_model_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if save_as_external_data:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=all_tensors_to_one_file,
                        location=external_data_location or f"{path.name}.data", size_threshold=external_data_size_threshold)
    else:
        onnx.save_model(model, path)


def _read(model_input: "str | os.PathLike | onnx.ModelProto") -> onnx.ModelProto:
    if isinstance(model_input, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model_input)
        return copy
    path = Path(model_input)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return onnx.load(path)
