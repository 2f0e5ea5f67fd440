"""Run fuzz cases in forked children under time and memory limits, one JSON record per case.

The parent imports the runtime once and forks a child per case (a fresh interpreter per
case would cost a second of imports each). The child creates a session from the case's
bytes, feeds inputs made from the session's declared inputs, and reports through a pipe;
the parent reads the child's peak RSS and exit signal from ``wait4``.
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import signal
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

# Exception types that mean "a bug in the runtime's code", wherever they surface.
INTERNAL_EXCEPTIONS = (
    "IndexError", "KeyError", "AttributeError", "AxisError", "OverflowError", "TypeError", "ZeroDivisionError",
    "AssertionError", "NameError", "UnboundLocalError", "RecursionError", "UnicodeDecodeError",
    "UnicodeEncodeError", "SystemError", "MemoryError", "NotImplementedError", "StopIteration",
)
_INTERNAL_IN_MESSAGE = re.compile(r"\b(" + "|".join(INTERNAL_EXCEPTIONS) + r")\b")
_STATUS = re.compile(r"\[ONNXRuntimeError\] : \d+ : (\w+) :")
_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_, "tensor(string)": np.str_,
}
_MAX_FEED_ELEMENTS = 1 << 16
_MAX_REPORTED_ELEMENTS = 64


@dataclass(frozen=True)
class Limits:
    """What a child may use: wall seconds before it is killed, and address space in bytes."""

    seconds: float = 30.0
    address_space: int = 8 << 30


def run_cases(runtime: str, cases: Iterable[tuple[int, bytes]], limits: Limits) -> Iterator[dict]:
    """Yield one record per ``(case id, model bytes)``: stage reached, error class, time, peak RSS."""
    module = _import_runtime(runtime)
    for case_id, model in cases:
        yield _run_in_child(module, runtime, case_id, model, limits)


def _import_runtime(runtime: str):
    if runtime == "onyxrt":
        import onyxrt

        # Warm the lazily imported kernel modules once, so each child does not pay for them.
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])], "warm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        onyxrt.InferenceSession(helper.make_model(graph).SerializeToString()).run(None, {"x": np.ones(1, np.float32)})
        return onyxrt
    if runtime == "onnxruntime":
        import onnxruntime

        onnxruntime.set_default_logger_severity(4)
        return onnxruntime
    raise ValueError(f"unknown runtime {runtime!r}: onyxrt or onnxruntime")


def _run_in_child(module, runtime: str, case_id: int, model: bytes, limits: Limits) -> dict:
    read_end, write_end = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)  # onnxruntime prints provider fallbacks; the record says what matters
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limits.address_space, limits.address_space))
            record = _load_and_run(module, runtime, model)
            os.write(write_end, json.dumps(record).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    payload, timed_out = _read_until(read_end, pid, start + limits.seconds)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    record = {"case": case_id, "seconds": round(seconds, 3), "peak_rss_mb": round(usage.ru_maxrss / 1024)}
    if timed_out:
        record.update(outcome="timeout")
    elif os.WIFSIGNALED(status):
        record.update(outcome="crash", signal=signal.Signals(os.WTERMSIG(status)).name)
    elif not payload:
        record.update(outcome="crash", signal="no report")
    else:
        record.update(json.loads(payload))
    return record


def _read_until(fd: int, pid: int, deadline: float) -> tuple[bytes, bool]:
    chunks = []
    try:
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                return b"", True
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return b"".join(chunks), False
                chunks.append(chunk)
    finally:
        os.close(fd)


def _load_and_run(module, runtime: str, model: bytes) -> dict:
    options = module.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = module.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except BaseException as exc:  # noqa: BLE001 - classified, not handled
        return _error_record("load", runtime, exc)
    try:
        feeds = make_feeds(session)
        if len(feeds) < len(session.get_inputs()):
            return {"outcome": "not fed"}  # an input of a type this harness does not make
        outputs = session.run(None, feeds)
    except BaseException as exc:  # noqa: BLE001
        return _error_record("run", runtime, exc)
    return {"outcome": "ran", "outputs": [_summary(output) for output in outputs]}


def make_feeds(session) -> dict:
    """Seeded inputs for every tensor input the session declares (symbolic dims are 2)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for info in session.get_inputs():
        dtype = _TYPES.get(info.type)
        if dtype is None:
            continue  # sequences, maps, optionals: left missing (both runtimes refuse alike)
        dims = [d if isinstance(d, int) and d >= 0 else 2 for d in (info.shape or [])]
        if np.prod(dims, dtype=np.float64) > _MAX_FEED_ELEMENTS:
            dims = [min(d, 4) for d in dims]
        if dtype is np.str_:
            feeds[info.name] = rng.choice(np.array(["a", "bc", ""], dtype=object), size=dims)
        elif np.issubdtype(dtype, np.floating):
            feeds[info.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[info.name] = rng.integers(0, 3, size=dims).astype(dtype)
    return feeds


def _summary(output) -> dict:
    if not isinstance(output, np.ndarray):
        return {"kind": type(output).__name__}
    summary = {"dtype": str(output.dtype), "shape": list(output.shape)}
    if output.dtype.name.startswith("float8"):
        # onnxruntime hands float8 tensors back as their uint8 bits: compare bits with bits.
        output = output.view(np.uint8)
        summary.update(dtype="uint8", bits_of=summary["dtype"])
    if output.size <= _MAX_REPORTED_ELEMENTS and output.dtype.kind in "biuf":
        summary["values"] = [None if not np.isfinite(v) else v for v in output.astype(np.float64).reshape(-1).tolist()]
    return summary


def _error_record(stage: str, runtime: str, exc: BaseException) -> dict:
    message = str(exc)
    status = _STATUS.search(message)
    record = {
        "outcome": f"{stage} error",
        "error_type": type(exc).__name__,
        "status": status.group(1) if status else None,
        "typed": _is_typed(runtime, exc),
        "internal": _INTERNAL_IN_MESSAGE.search(f"{type(exc).__name__} {message}") is not None,
        "message": message[:400],
    }
    if not record["typed"]:
        record["where"] = "".join(traceback.format_tb(exc.__traceback__)[-2:])[-600:]
    return record


def _is_typed(runtime: str, exc: BaseException) -> bool:
    if runtime == "onyxrt":
        from onyxrt.errors import OnyxRuntimeError

        return isinstance(exc, OnyxRuntimeError)
    return type(exc).__module__.startswith("onnxruntime")
