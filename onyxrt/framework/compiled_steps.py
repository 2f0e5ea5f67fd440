"""A plan's steps as one generated Python function: the run loop unrolled.

``ExecutionPlan._run`` walks its steps in a loop: per step it unpacks the step's tuple, builds the
argument list, checks for profiling and output hand-over, and stores and frees values through
index lists. For a small model that bookkeeping is a large share of a run (~0.55 us a step on a
Zen 4 core, where onnxruntime's whole per-node cost is ~0.2 us). :func:`compile_steps` writes the
same steps as straight-line code instead, each step's slots constants of its own lines: a call on
``values[i]`` expressions, the stores, the frees. The plan uses it for runs without profiling, bound
outputs or hand-over (the loop keeps those); the arena (``allocation_planner.Arena``) sees the same
calls in the same order as from the loop: ``_alloc`` and donations where a step's outputs were large
in its last run, each large result counted, each freed slot released. Measured in one process, runs
alternating in blocks with the loop's (2 Zen 4 vCPUs): a ShuffleNet-like net 0.938x, a ConvNeXt-like
0.957x, an EfficientNet-like 0.978x, a ViT-like 0.992x.

A plan none of whose kernels takes ``_alloc`` has nothing to gain from the arena but its figures (a run's peak
bytes): :func:`compile_uncounted_steps` writes its steps without it, each freed slot simply cleared, for the runs
between counted ones (an EfficientNet-like net 0.979x, a ShuffleNet-like 0.992x in one process, blocks alternating).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

# a step: (kernel, input slots, output slots, slots freed after it, multiple outputs, takes _alloc, donors)
Step = tuple


def compile_steps(steps: Sequence[Step], largest_output: Callable[[Any, bool], int],
                  fail: Callable[[int, Exception], None], passthrough: type[BaseException]
                  ) -> Callable[[list, Any, list], None]:
    """``run(values, arena, small)``: the ``steps`` on the slot list ``values`` with ``arena`` (its ``_alloc``,
    ``offer``, ``produced`` and ``release``), ``small`` the per-step flags of outputs below the arena's tracked size
    in the last run (updated as the loop does). ``largest_output(result, multi)`` gives a result's largest array's
    bytes; an exception other than ``passthrough`` from step i is handed to ``fail(i, exc)``, which raises."""
    return _compiled(steps, largest_output, fail, passthrough, counting=True)


def compile_uncounted_steps(steps: Sequence[Step], fail: Callable[[int, Exception], None],
                            passthrough: type[BaseException]) -> Callable[[list], None]:
    """``run(values)``: the ``steps``, none of which takes ``_alloc``, on the slot list ``values`` without an arena:
    each freed slot cleared, nothing counted (the arena's figures, a run's peak bytes, come from the counted runs);
    errors as :func:`compile_steps` hands them over."""
    if any(alloc for _, _, _, _, _, alloc, _ in steps):
        raise ValueError("a step takes _alloc: its runs need an arena")
    return _compiled(steps, None, fail, passthrough, counting=False)


def _compiled(steps: Sequence[Step], largest_output, fail, passthrough, counting: bool) -> Callable:
    lines = ["def run(values, arena, small):" if counting else "def run(values):"]
    if counting:
        lines.append("    produced, release, min_bytes = arena.produced, arena.release, arena.min_bytes")
    lines += ["    index = 0",
              "    try:"]
    scope: dict[str, Any] = {"ndarray": np.ndarray, "largest_output": largest_output, "fail": fail,
                             "Passthrough": passthrough}
    for index, (fn, ins, outs, frees, multi, alloc, donors) in enumerate(steps):
        kernel = f"k{index}"
        scope[kernel] = fn
        args = ", ".join(f"values[{slot}]" for slot in ins)
        body = [f"index = {index}"]
        if alloc:
            extra = ", _alloc=arena" if ins else "_alloc=arena"
            body += [f"if small[{index}]:",
                     f"    result = {kernel}({args})",
                     "else:",
                     f"    arena.step = {index}"]
            if donors:
                scope[f"d{index}"] = donors
                body.append(f"    arena.offer(values, d{index})")
            body += [f"    result = {kernel}({args}{extra})",
                     f"    small[{index}] = largest_output(result, {bool(multi)}) < min_bytes"]
            if donors:
                body += ["    if arena.donated:",  # a donation the kernel did not take
                         "        arena.donated.clear()"]
        else:
            body.append(f"result = {kernel}({args})")
        if multi:
            scope[f"o{index}"] = tuple(outs)
            body += [f"for slot, value in zip(o{index}, result):",
                     "    values[slot] = value"]
            if counting:
                body += ["    if type(value) is ndarray and value.nbytes >= min_bytes:",
                         "        produced(value)"]
            body.append("value = None")
        else:
            body.append(f"values[{outs[0]}] = result")
            if counting:
                body += ["if type(result) is ndarray and result.nbytes >= min_bytes:",
                         "    produced(result)"]
        body.append("result = None")  # no reference of the run's own may keep a buffer from the pool
        for slot in frees:
            if not counting:
                body.append(f"values[{slot}] = None")
                continue
            # no local reference to the value: release() tells shared buffers by their reference count
            body += [f"if type(values[{slot}]) is ndarray and values[{slot}].nbytes >= min_bytes:",
                     f"    release(values, {slot})",
                     "else:",
                     f"    values[{slot}] = None"]
        lines += ["        " + line for line in body]
    if not steps:
        lines.append("        pass")
    lines += ["    except Passthrough:",
              "        raise",
              "    except Exception as exc:  # reported with the failing step",
              "        fail(index, exc)"]
    exec(compile("\n".join(lines), "<onyxrt compiled steps>", "exec"), scope)  # noqa: S102 - our own source
    return scope["run"]
