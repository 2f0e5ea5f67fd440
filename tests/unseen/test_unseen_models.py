"""Architectures the zoo does not hold (tests/data/unseen, made by tools/unseen/generate.py with both
PyTorch exporters): at every optimization level and in both thread modes onyxrt gives onnxruntime's outputs
(≤ 1e-4 relative),
its EXTENDED graph has at most onnxruntime's EXTENDED node count, and onnxruntime runs the EXTENDED
model onyxrt saves with the same outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onyxrt

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.heavy

MODELS = sorted(Path(__file__).resolve().parents[1].joinpath("data", "unseen").glob("*.onnx"))


def _feeds(session) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for arg in session.get_inputs():
        if arg.name == "input":
            feeds[arg.name] = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
        elif arg.name == "input_ids":
            feeds[arg.name] = rng.integers(0, 256, (2, 12)).astype(np.int64)
        elif arg.name == "attention_mask":
            feeds[arg.name] = np.ones((2, 12), np.int64)
            feeds[arg.name][1, 8:] = 0  # a padded row
        else:
            raise AssertionError(f"no feed for input {arg.name}")
    return feeds


def _assert_close(got, want, who: str) -> None:
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, who
        error = float(np.max(np.abs(g.astype(np.float64) - w))) / max(float(np.max(np.abs(w))), 1e-6)
        assert error <= 1e-4, f"{who}: relative error {error:.3g}"


def _ort_session(path: str, level, optimized: str | None = None):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    if optimized:
        options.optimized_model_filepath = optimized
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def test_the_unseen_models_are_there():
    assert len(MODELS) >= 16, "tests/data/unseen: run tools/unseen/generate.py"


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_unseen_model_at_every_level(path, tmp_path):
    reference = _ort_session(str(path), ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    feeds = _feeds(reference)
    want = reference.run(None, feeds)
    for level in (onyxrt.GraphOptimizationLevel.ORT_DISABLE_ALL, onyxrt.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  onyxrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, onyxrt.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = onyxrt.SessionOptions()
        options.graph_optimization_level = level
        if level == onyxrt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED:
            options.optimized_model_filepath = str(tmp_path / "onyxrt.onnx")
        session = onyxrt.InferenceSession(str(path), options)
        _assert_close(session.run(None, feeds), want, f"onyxrt at {level.name}")

    _ort_session(str(path), ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, str(tmp_path / "onnxruntime.onnx"))
    ours = len(onnx.load(str(tmp_path / "onyxrt.onnx")).graph.node)
    theirs = len(onnx.load(str(tmp_path / "onnxruntime.onnx")).graph.node)
    assert ours <= theirs, f"{ours} nodes at EXTENDED, onnxruntime {theirs}"
    saved = _ort_session(str(tmp_path / "onyxrt.onnx"), ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    _assert_close(saved.run(None, feeds), want, "onnxruntime on onyxrt's saved model")


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_unseen_model_in_the_split_thread_mode(path):
    """The split thread mode (the pool splitting products over spinning workers), which a session's thread-mode trial
    may choose for any model (framework/thread_mode.py), gives onnxruntime's outputs too."""
    reference = _ort_session(str(path), ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    feeds = _feeds(reference)
    want = reference.run(None, feeds)
    options = onyxrt.SessionOptions()
    options.intra_op_num_threads = 2
    session = onyxrt.InferenceSession(str(path), options)
    if session._thread_modes is None:
        pytest.skip("one mode only here")
    session._thread_pool = session._thread_pool.splitting_gemms()  # (the mode the trial's split runs take)
    session._thread_modes = None
    for _ in range(2):  # the first run settles the routes, the second reuses them
        _assert_close(session.run(None, feeds), want, "onyxrt in the split mode")
