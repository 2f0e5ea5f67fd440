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
    gc.collect()  # sessions earlier tests left in reference cycles
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
    gc.collect()
    before = host_memory.holders()
    session = ort.InferenceSession(_chain_model(), options)
    assert host_memory.holders() == before
    del session


@glibc_only
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="minor page faults are read from getrusage")
def test_while_a_session_lives_repeated_work_reuses_its_pages() -> None:
    """Kernels' numpy temporaries on a worker thread (as the intra-op pool runs them): their pages
    are faulted in once while a session holds the arena, and again on every round once it is gone."""
    import resource
    from concurrent.futures import ThreadPoolExecutor

    x = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)

    def temporaries() -> None:
        for _ in range(3):
            a = np.exp(x)
            b = np.sin(a)
            del a, b

    def faults_of_later_rounds(worker: ThreadPoolExecutor) -> int:
        worker.submit(temporaries).result()  # the first round may fault its pages in
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            worker.submit(temporaries).result()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    # numpy asks for transparent huge pages on blocks of 4 MiB and up: a fresh block then faults in
    # a few 2 MiB pages instead of 1,024 small ones, whenever the kernel has huge pages at hand
    set_madvise_hugepage = _numpy_madvise_hugepage_switch()
    huge_pages_before = set_madvise_hugepage(False)
    try:
        with ThreadPoolExecutor(1) as worker:
            session = ort.InferenceSession(_chain_model())
            held = faults_of_later_rounds(worker)
            del session
            gc.collect()
            if host_memory.holders():
                pytest.skip("another live session holds the arena")
            released = faults_of_later_rounds(worker)
    finally:
        set_madvise_hugepage(huge_pages_before)
    assert held < 200
    if _transparent_huge_pages_always():
        return  # the kernel maps huge pages whatever numpy asks: fault counts say nothing of reuse
    # each round's two 4 MiB temporaries are 2,048 pages: faulted again each round without the arena
    assert released > 3000


def _numpy_madvise_hugepage_switch():
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _set_madvise_hugepage
    return _set_madvise_hugepage


def _transparent_huge_pages_always() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[always]" in f.read()
    except OSError:
        return False
