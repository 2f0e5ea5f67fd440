"""Repeated runs hold memory flat: no per-run growth from plans, pools or caches."""

from __future__ import annotations

import resource

import numpy as np
from onnx import TensorProto, helper

import onyxrt as ort

RUNS = 5000


def _rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() // 1024


def test_rss_is_flat_over_thousands_of_runs():
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["s"]), helper.make_node("Relu", ["s"], ["r"]),
         helper.make_node("ReduceSum", ["r"], ["y"], keepdims=0)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    x = np.ones((64, 256), np.float32)
    for _ in range(200):  # warm: pools and caches reach their steady size
        session.run(None, {"x": x})
    before = _rss_kib()
    for _ in range(RUNS):
        session.run(None, {"x": x})
    growth = _rss_kib() - before
    assert growth < 4096, f"RSS grew by {growth} KiB over {RUNS} runs"  # a leak of 1 KiB a run would show
