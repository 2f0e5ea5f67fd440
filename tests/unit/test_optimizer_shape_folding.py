"""Constant folding of shape arithmetic on partly dynamic shapes: Gather/Slice of Shape picking static dims."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from optimizer_checks import op_histogram, optimized_at_basic, optimized_ir


def _model(picks: list[onnx.NodeProto], outputs: list[str], constants: dict[str, list[int]], shape=("B", "S", 12, 64)):
    nodes = [helper.make_node("Shape", ["x"], ["shape"])] + picks
    graph = helper.make_graph(
        nodes,
        "shape_arithmetic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(name, TensorProto.INT64, None) for name in outputs],
        [helper.make_tensor(name, TensorProto.INT64, [len(values)], values) for name, values in constants.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


FEEDS = {"x": np.zeros((2, 3, 12, 64), np.float32)}


def test_gather_and_slice_of_static_dims_fold_to_constants(tmp_path):
    model = _model(
        [
            helper.make_node("Gather", ["shape", "minus_two"], ["heads"], axis=0),
            helper.make_node("Slice", ["shape", "two", "big"], ["tail"]),
            helper.make_node("Mul", ["heads", "heads"], ["squared"]),
        ],
        ["squared", "tail"],
        {"minus_two": [-2], "two": [2], "big": [2**62]},
    )
    histogram, _ = optimized_at_basic(model, tmp_path, FEEDS)
    assert histogram == {}  # everything became the constant outputs [144] and [12, 64]


def test_picked_dynamic_dims_stay_computed(tmp_path):
    model = _model(
        [
            helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
            helper.make_node("Slice", ["shape", "one", "three"], ["seq_and_heads"]),
        ],
        ["batch", "seq_and_heads"],
        {"zero": [0], "one": [1], "three": [3]},
    )
    histogram, _ = optimized_at_basic(model, tmp_path, FEEDS)
    assert histogram == {"Shape": 1, "Gather": 1, "Slice": 1}


@pytest.mark.parametrize(
    "pick, constants",
    [
        (helper.make_node("Gather", ["shape", "index"], ["out"], axis=0), {"index": [7]}),  # out of range: the kernel reports it
        (helper.make_node("Slice", ["shape", "start", "end", "axis", "step"], ["out"]), {"start": [3], "end": [0], "axis": [0], "step": [0]}),
    ],
)
def test_malformed_picks_are_left_to_run_time(pick, constants):
    optimized, _ = optimized_ir(_model([pick], ["out"], constants))
    assert op_histogram(optimized.graph)["Shape"] == 1


def test_shape_start_end_and_negative_step_slices(tmp_path):
    shape = helper.make_node("Shape", ["x"], ["shape_tail"], start=1)
    model = _model(
        [shape, helper.make_node("Slice", ["shape_tail", "minus_one", "far_back", "zero", "minus_one"], ["reversed"])],
        ["reversed"],
        {"minus_one": [-1], "far_back": [-(2**62)], "zero": [0]},
        shape=(2, "S", 12, 64),
    )
    histogram, _ = optimized_at_basic(model, tmp_path, FEEDS)
    assert histogram == {"Shape": 1, "Slice": 1}  # [64, 12, S]: S is dynamic
    model = _model(
        [shape, helper.make_node("Slice", ["shape_tail", "minus_one", "zero_end", "zero", "minus_one"], ["reversed"])],
        ["reversed"],
        {"minus_one": [-1], "zero_end": [0], "zero": [0]},
        shape=(2, "S", 12, 64),
    )
    histogram, _ = optimized_at_basic(model, tmp_path, FEEDS)
    assert histogram == {}  # [64, 12]
