"""Shared check of optimizer tests: optimize at a level, save, compare outputs with onnxruntime unoptimized."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime

import onyxrt as ort


def optimized_at_basic(model: onnx.ModelProto, tmp_path, feeds=None, exact: bool = True):
    """(op histogram of the model onyxrt saved optimized at BASIC, its session).

    Graph output names must survive; with ``feeds``, outputs must equal onnxruntime's with its
    optimizer off (bit for bit when ``exact``, else to 1e-6: libm and MLAS exp differ in the last bit).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    assert [o.name for o in optimized.graph.output] == [o.name for o in model.graph.output]
    if feeds is not None:
        reference_options = onnxruntime.SessionOptions()
        reference_options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        reference = onnxruntime.InferenceSession(
            model.SerializeToString(), reference_options, providers=["CPUExecutionProvider"]
        )
        for ours, theirs in zip(session.run(None, feeds), reference.run(None, feeds)):
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
            if exact:
                np.testing.assert_array_equal(ours, theirs)
            else:
                np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    return Counter(node.op_type for node in optimized.graph.node), session


def session_at_level(model, level, saved: str | None = None) -> ort.InferenceSession:
    """An onyxrt session of ``model`` (path or bytes) at optimization ``level``, saving the optimized model to ``saved``."""
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    if saved:
        options.optimized_model_filepath = saved
    return ort.InferenceSession(model, options)


def optimized_ir(model: onnx.ModelProto, level: int = 1):
    """(the model's IR optimized at ``level`` by onyxrt's passes with the CPU provider, the report)."""
    import onnx_ir as ir

    from onyxrt.framework.constant_evaluator import provider_evaluator
    from onyxrt.optimizer import optimize
    from onyxrt.providers.cpu import CPUExecutionProvider

    optimized = ir.serde.deserialize_model(model)
    report = optimize(optimized, level, providers=["CPUExecutionProvider"], evaluator=provider_evaluator(CPUExecutionProvider()))
    return optimized, report


def op_histogram(graph) -> Counter:
    """Op types of an IR graph's own nodes, counted."""
    return Counter(node.op_type for node in graph)


def saved_extended_ops(model: onnx.ModelProto, tmp_path, feeds: dict, rtol: float = 1e-5, atol: float = 1e-5) -> Counter:
    """Op histogram of the model onyxrt saves at EXTENDED; its outputs, and onnxruntime's on the saved model,
    must match onnxruntime's on the original with its optimizer off."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(model.SerializeToString(), options)
    plain = onnxruntime.SessionOptions()
    plain.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = onnxruntime.InferenceSession(model.SerializeToString(), plain).run(None, feeds)
    saved = onnxruntime.InferenceSession(options.optimized_model_filepath, plain).run(None, feeds)
    for ours, theirs, expected in zip(session.run(None, feeds), saved, want):
        np.testing.assert_allclose(ours, expected, rtol=rtol, atol=atol)
        np.testing.assert_allclose(theirs, expected, rtol=rtol, atol=atol)
    return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
