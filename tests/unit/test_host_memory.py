"""The CPU memory arena: while a session with enable_cpu_mem_arena lives, runs reuse their pages."""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper

import onyxrt as ort
from onyxrt.framework import host_memory

glibc_only = pytest.mark.skipif(host_memory._glibc() is None, reason="glibc's mallopt is needed")


def _chain_model() -> bytes:
    """x -> Exp -> Sin -> Cos: three 4 MiB activations at the shape the test feeds."""
    nodes = [helper.make_node("Exp", ["x"], ["a"]), helper.make_node("Sin", ["a"], ["b"]),
             helper.make_node("Cos", ["b"], ["y"])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@glibc_only
def test_a_live_arena_session_holds_memory_until_collected() -> None:
    before = host_memory.holders()
    session = ort.InferenceSession(_chain_model())
    assert host_memory.holders() == before + 1
    del session
    gc.collect()
    assert host_memory.holders() == before


@glibc_only
def test_a_session_without_the_arena_holds_nothing() -> None:
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    before = host_memory.holders()
    session = ort.InferenceSession(_chain_model(), options)
    assert host_memory.holders() == before
    del session


@glibc_only
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="minor page faults are read from getrusage")
def test_repeated_runs_do_not_fault_their_pages_in_again() -> None:
    import resource

    session = ort.InferenceSession(_chain_model())
    feeds = {"x": np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)}
    for _ in range(2):
        session.run(None, feeds)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        session.run(None, feeds)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # without the arena each run faults its ~12 MiB of fresh activations in: ~3,000 faults a run
    assert faults < 1000
