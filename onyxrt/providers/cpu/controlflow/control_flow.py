"""Control-flow kernels: If, Loop, Scan.

Graph attributes arrive as ``Subgraph`` callables (framework.execution_plan):
``body(*formal_inputs, outer=_outer)`` returns the list of the subgraph's outputs.
Values are numpy arrays (tensors), lists of arrays (sequences) or ``None`` (an
empty optional); loop-carried values of any of these kinds pass through untouched.
Every iteration (and every If) first checks the run's ``RunOptions.terminate``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ....framework.run_context import check_terminate
from ..kernel_table import op
from ....errors import NodeInputError, NodeInputTypeError

_ALL_IF_LOOP_VERSIONS = (1, 11, 13, 16, 19, 21, 23, 24, 25)
_SCAN9_VERSIONS = (9, 11, 16, 19, 21, 23, 24, 25)


# --------------------------------------------------------------------------- helpers


def _scalar_bool(value: Any, what: str) -> bool:
    if type(value) is np.ndarray and value.size == 1:  # the usual case, kept cheap for Loop
        return bool(value)
    arr = np.asarray(value)
    if arr.size != 1:
        raise NodeInputError(f"{what} must hold a single element, got shape {arr.shape}")
    return bool(arr.reshape(-1)[0])


def _scalar_int(value: Any, what: str) -> int:
    arr = np.asarray(value)
    if arr.size != 1:
        raise NodeInputError(f"{what} must hold a single element, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise NodeInputTypeError(f"{what} must be an integer tensor, got {arr.dtype}")
    return int(arr.reshape(-1)[0])


def _declared_output(sub, index: int) -> tuple[np.dtype | None, list[int] | None]:
    """dtype and shape (unknown dims as 0) a subgraph declares for output ``index``; None when unknown."""
    graph = getattr(getattr(sub, "plan", None), "graph", None)
    if graph is None or index >= len(graph.outputs):
        return None, None
    from ....graph.types import np_dtype, tensor_shape, value_type_proto

    type_proto = value_type_proto(graph.outputs[index])
    if type_proto is None or type_proto.WhichOneof("value") != "tensor_type":
        return None, None
    tt = type_proto.tensor_type
    dtype = None
    if tt.elem_type:
        try:
            dtype = np_dtype(tt.elem_type)
        except ValueError:
            dtype = None
    dims = tensor_shape(type_proto)
    shape = None if dims is None else [d if isinstance(d, int) else 0 for d in dims]
    return dtype, shape


def _empty_stack(sub, index: int, lead: tuple[int, ...], axis: int | None = None) -> np.ndarray:
    """The stacked output of zero iterations: shape ``lead`` + the declared per-iteration shape.

    Unknown dims become 0; an unknown shape gives just ``lead`` (onnxruntime's rank-1 {0}).
    With ``axis`` (Scan's scan_output_axes), the zero-length axis goes there instead of first.
    """
    dtype, shape = _declared_output(sub, index)
    dtype = dtype if dtype is not None else np.dtype(np.float32)
    if shape is None:
        return np.empty(lead, dtype=dtype)
    if axis is None:
        return np.empty(tuple(lead) + tuple(shape), dtype=dtype)
    full = list(shape)
    full.insert(_normalize(axis, len(shape) + 1, "scan_output_axes"), lead[0])
    return np.empty(tuple(full), dtype=dtype)


def _normalize(axis: int, rank: int, what: str) -> int:
    if not -rank <= axis < rank:
        raise NodeInputError(f"{what} value {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _stack(values: list, what: str) -> np.ndarray:
    for v in values:
        if not isinstance(v, np.ndarray):
            raise NodeInputTypeError(f"{what} must be a tensor in every iteration, got {type(v).__name__}")
    try:
        return np.stack(values)
    except ValueError as exc:
        shapes = sorted({v.shape for v in values})
        raise NodeInputError(f"{what} changed shape between iterations: {shapes}") from exc


# --------------------------------------------------------------------------- If


@op("If", versions=_ALL_IF_LOOP_VERSIONS, multi_output=True)
def if_(cond, *, then_branch, else_branch, _outer=(), _num_outputs=None):
    check_terminate()
    branch = then_branch if _scalar_bool(cond, "If condition") else else_branch
    outputs = branch(outer=_outer)
    if _num_outputs is not None and len(outputs) != _num_outputs:
        which = "then_branch" if branch is then_branch else "else_branch"
        raise NodeInputError(f"If {which} has {len(outputs)} outputs, the node declares {_num_outputs}")
    return tuple(outputs)


# --------------------------------------------------------------------------- Loop


@op("Loop", versions=_ALL_IF_LOOP_VERSIONS, multi_output=True)
def loop(M=None, cond=None, *v_initial, body, _outer=(), _num_outputs=None):
    n_carried = len(v_initial)
    n_scan = len(body.output_names) - 1 - n_carried
    if n_scan < 0:
        raise NodeInputError(
            f"Loop body has {len(body.output_names)} outputs, needs at least 1 + {n_carried} loop-carried"
        )
    if _num_outputs is not None and _num_outputs > n_carried + n_scan:
        raise NodeInputError(
            f"Loop node declares {_num_outputs} outputs, its body gives {n_carried} loop-carried "
            f"and {n_scan} scan outputs"
        )
    max_trip = None if M is None else _scalar_int(M, "Loop M (trip count)")
    keep_going = True if cond is None else _scalar_bool(cond, "Loop cond")
    cond_value = np.array(keep_going)
    carried = list(v_initial)
    scans: list[list] = [[] for _ in range(n_scan)]
    i = 0
    while keep_going and (max_trip is None or i < max_trip):
        check_terminate()
        outs = body(np.array(i, dtype=np.int64), cond_value, *carried, outer=_outer)
        cond_value = outs[0]
        # onnxruntime stops on a false cond output even when the node has no cond input.
        keep_going = _scalar_bool(cond_value, "Loop body condition output")
        carried = outs[1:1 + n_carried]
        for acc, value in zip(scans, outs[1 + n_carried:]):
            acc.append(value)
        i += 1
    results = list(carried)
    for k, acc in enumerate(scans):
        if acc:
            results.append(_stack(acc, f"Loop scan output {k}"))
        else:
            results.append(_empty_stack(body, 1 + n_carried + k, (0,)))
    return tuple(results)


# --------------------------------------------------------------------------- Scan


def _run_scan_steps(body, states: list, steps: list, n_state: int, outer) -> tuple[list, list[list]]:
    """Run ``body`` once per element of ``steps`` (lists of scan-input slices); returns states and outputs."""
    n_out = len(body.output_names) - n_state
    if n_out < 0:
        raise NodeInputError(f"Scan body has {len(body.output_names)} outputs, needs at least {n_state} state outputs")
    collected: list[list] = [[] for _ in range(n_out)]
    for slices in steps:
        check_terminate()
        outs = body(*states, *slices, outer=outer)
        states = outs[:n_state]
        for acc, value in zip(collected, outs[n_state:]):
            acc.append(value)
    return list(states), collected


@op("Scan", versions=_SCAN9_VERSIONS, multi_output=True)
def scan(
    *inputs,
    body,
    num_scan_inputs,
    scan_input_axes=None,
    scan_input_directions=None,
    scan_output_axes=None,
    scan_output_directions=None,
    _outer=(),
):
    m = int(num_scan_inputs)
    if m < 1 or m > len(inputs):
        raise NodeInputError(f"Scan num_scan_inputs={m} does not fit its {len(inputs)} inputs")
    n_state = len(inputs) - m
    states = list(inputs[:n_state])
    scan_inputs = inputs[n_state:]
    in_axes = list(scan_input_axes) if scan_input_axes else [0] * m
    in_dirs = list(scan_input_directions) if scan_input_directions else [0] * m
    if len(in_axes) != m or len(in_dirs) != m:
        raise NodeInputError("Scan scan_input_axes/scan_input_directions must have one entry per scan input")

    prepared = []
    seq_len = None
    for j, (x, axis, direction) in enumerate(zip(scan_inputs, in_axes, in_dirs)):
        if not isinstance(x, np.ndarray) or x.ndim == 0:
            raise NodeInputError(f"Scan input {j} must be a tensor of rank >= 1")
        ax = _normalize(axis, x.ndim, "scan_input_axes")
        if seq_len is None:
            seq_len = x.shape[ax]
        elif x.shape[ax] != seq_len:
            raise NodeInputError(f"Scan inputs have different sequence lengths: {seq_len} and {x.shape[ax]} (input {j})")
        if ax:
            x = np.ascontiguousarray(np.moveaxis(x, ax, 0))
        if direction:
            x = x[::-1]
        prepared.append(x)

    steps = ([x[t] for x in prepared] for t in range(seq_len))
    states, collected = _run_scan_steps(body, states, steps, n_state, _outer)

    n_out = len(collected)
    out_axes = list(scan_output_axes) if scan_output_axes else [0] * n_out
    out_dirs = list(scan_output_directions) if scan_output_directions else [0] * n_out
    if len(out_axes) != n_out or len(out_dirs) != n_out:
        raise NodeInputError("Scan scan_output_axes/scan_output_directions must have one entry per scan output")
    results = list(states)
    for k, acc in enumerate(collected):
        if not acc:
            results.append(_empty_stack(body, n_state + k, (0,), axis=out_axes[k]))
            continue
        if out_dirs[k]:
            acc = acc[::-1]
        stacked = _stack(acc, f"Scan output {k}")
        ax = _normalize(out_axes[k], stacked.ndim, "scan_output_axes")
        results.append(np.moveaxis(stacked, 0, ax) if ax else stacked)
    return tuple(results)


@op("Scan", versions=(8,), multi_output=True)
def scan8(sequence_lens, *inputs, body, num_scan_inputs, directions=None, _outer=()):
    m = int(num_scan_inputs)
    if m < 1 or m > len(inputs):
        raise NodeInputError(f"Scan num_scan_inputs={m} does not fit its {len(inputs)} inputs")
    n_state = len(inputs) - m
    batched_states = inputs[:n_state]
    scan_inputs = inputs[n_state:]
    dirs = list(directions) if directions else [0] * m
    if len(dirs) != m:
        raise NodeInputError("Scan directions must have one entry per scan input")
    for j, x in enumerate(scan_inputs):
        if not isinstance(x, np.ndarray) or x.ndim < 2:
            raise NodeInputError(f"Scan-8 input {j} must be a tensor of rank >= 2 ([batch, sequence, ...])")
    batch, max_len = scan_inputs[0].shape[:2]
    for j, x in enumerate(list(scan_inputs) + list(batched_states)):
        if not isinstance(x, np.ndarray) or x.ndim < 1 or x.shape[0] != batch:
            raise NodeInputError(f"Scan-8 inputs must share the batch size {batch} (input {j})")
    for j, x in enumerate(scan_inputs):
        if x.shape[1] != max_len:
            raise NodeInputError(f"Scan-8 inputs have different sequence lengths: {max_len} and {x.shape[1]}")
    if sequence_lens is None:
        lens = [max_len] * batch
    else:
        lens = [int(v) for v in np.asarray(sequence_lens).reshape(-1)]
        if len(lens) != batch:
            raise NodeInputError(f"Scan sequence_lens has {len(lens)} entries for a batch of {batch}")
        for v in lens:
            if not 0 <= v <= max_len:
                raise NodeInputError(f"Scan sequence_lens value {v} is outside [0, {max_len}]")

    final_states: list[list] = [[] for _ in range(n_state)]
    per_batch_outputs: list[list[list]] = []
    for b in range(batch):
        length = lens[b]
        views = []
        for x, direction in zip(scan_inputs, dirs):
            xb = x[b, :length]
            views.append(xb[::-1] if direction else xb)
        steps = ([v[t] for v in views] for t in range(length))
        states, collected = _run_scan_steps(body, [s[b] for s in batched_states], steps, n_state, _outer)
        for acc, s in zip(final_states, states):
            acc.append(s)
        per_batch_outputs.append(collected)

    results: list[Any] = []
    for k, acc in enumerate(final_states):
        results.append(_stack(acc, f"Scan state {k}") if acc else _empty_stack(body, k, (0,)))
    n_out = len(body.output_names) - n_state
    for k in range(n_out):
        sample = next((outs[k][0] for outs in per_batch_outputs if outs[k]), None)
        if sample is None:
            results.append(_empty_stack(body, n_state + k, (batch, max_len)))
            continue
        # Steps past a batch entry's sequence length stay zero (empty strings for string tensors).
        shape = (batch, max_len) + sample.shape
        out = np.full(shape, "", dtype=object) if sample.dtype == object else np.zeros(shape, dtype=sample.dtype)
        for b, outs in enumerate(per_batch_outputs):
            if outs[k]:
                out[b, :len(outs[k])] = _stack(outs[k], f"Scan output {k}")
        results.append(out)
    return tuple(results)
