"""``ExecutionMode.ORT_PARALLEL``: a plan's steps run on an inter-op pool as soon as their inputs exist.

onnxruntime's parallel executor runs independent branches of a graph at the same time on
``inter_op_num_threads`` threads (each node still splitting its own work over the intra-op pool). This
one does the same over an :class:`~onyxrt.framework.execution_plan.ExecutionPlan`'s steps: a step is
ready when every step producing one of its inputs has finished; ready steps go to the pool's threads
(the caller's thread waits); a value is dropped when the last step reading it has finished. Steps run
in the caller's context (the run's thread pool, run options, numpy's error state).

What it does not do: recycle buffers between steps (the sequential plan's arena assumes one step at a
time; kernels allocate their outputs), report peak bytes (0), or hand bound outputs over before the run
ends. Python kernels hold the GIL, so branches overlap where their kernels release it (BLAS products,
numba kernels, numpy's large loops): a graph of small nodes runs no faster than sequentially, as in
onnxruntime, whose documentation recommends ORT_SEQUENTIAL unless the graph has parallel branches.
"""

from __future__ import annotations

import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from ..errors import OnyxRuntimeError, node_failure


class ParallelExecutor:
    """The dependency structure of one plan's steps, and the inter-op threads that run them."""

    def __init__(self, steps: Sequence[tuple], protected: set[int], threads: int) -> None:
        """``steps``: the plan's ``(fn, ins, outs, ...)``; ``protected``: slots never dropped (inputs,
        weights, outputs, the none and trash slots); ``threads``: the pool's size."""
        producer: dict[int, int] = {}
        for index, step in enumerate(steps):
            for slot in step[2]:
                producer.setdefault(slot, index)
        self._waits_for = []  # per step: how many producing steps it waits for
        self._dependents: list[list[int]] = [[] for _ in steps]
        self._readers: dict[int, int] = {}  # slot -> steps reading it
        self._reads: list[tuple[int, ...]] = []
        for index, step in enumerate(steps):
            reads = tuple(dict.fromkeys(step[1]))
            self._reads.append(tuple(slot for slot in reads if slot not in protected))
            for slot in self._reads[-1]:
                self._readers[slot] = self._readers.get(slot, 0) + 1
            sources = {producer[slot] for slot in reads if slot in producer and producer[slot] < index}
            self._waits_for.append(len(sources))
            for source in sources:
                self._dependents[source].append(index)
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="onyxrt-inter-op")

    def run(self, steps: Sequence[tuple], nodes: Sequence[Any], values: list[Any],
            record: Callable[[int, list[Any], int, int, Any], None] | None = None) -> None:
        """Run every step once, writing outputs into ``values``; re-raises the first failure (naming its node).

        ``record(index, inputs, start_ns, duration_ns, result)`` is called after each step when profiling.
        """
        total = len(steps)
        if not total:
            return
        waits = list(self._waits_for)
        readers = dict(self._readers)
        lock = threading.Lock()
        finished = threading.Event()
        state = {"done": 0, "error": None}
        context = contextvars.copy_context()

        def run_step(index: int) -> None:
            fn, ins, outs, _, multi = steps[index][:5]
            try:
                if state["error"] is None:
                    args = [values[i] for i in ins]
                    start = time.perf_counter_ns()
                    result = fn(*args)
                    if record is not None:
                        record(index, args, start, time.perf_counter_ns() - start, result)
                    args = None
                    if multi:
                        for slot, value in zip(outs, result):
                            values[slot] = value
                    else:
                        values[outs[0]] = result
            except Exception as exc:  # noqa: BLE001 - reported with the failing node
                with lock:
                    if state["error"] is None:
                        node = nodes[index]
                        state["error"] = exc if isinstance(exc, OnyxRuntimeError) else node_failure(
                            node.name, node.op_type, exc)
            ready = []
            with lock:
                for slot in self._reads[index]:
                    readers[slot] -= 1
                    if readers[slot] == 0:
                        values[slot] = None
                for dependent in self._dependents[index]:
                    waits[dependent] -= 1
                    if waits[dependent] == 0:
                        ready.append(dependent)
                state["done"] += 1
                if state["done"] == total:
                    finished.set()
            for dependent in ready:
                self._submit(context, run_step, dependent)

        for index in [i for i, count in enumerate(waits) if count == 0]:
            self._submit(context, run_step, index)
        finished.wait()
        if state["error"] is not None:
            raise state["error"]

    def _submit(self, context: contextvars.Context, run_step: Callable[[int], None], index: int) -> None:
        self._pool.submit(context.copy().run, run_step, index)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)
