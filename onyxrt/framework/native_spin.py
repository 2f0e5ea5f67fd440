"""Compiled hand-offs between the intra-op pool's threads (numba; imported by ``thread_pool`` only
where numba is usable).

A pool worker waits for work in :func:`spin`, a compiled loop that holds no GIL: it watches its
hand-off record (an int64 array, :data:`RECORD_SIZE` entries) for a new sequence number and runs
a *native task* (the address of a C-callable function ``void task(int64 args, int64 part, int64
parts)``, e.g. a numba ``cfunc``) right there, without touching Python, or returns to Python for
a Python task. Handing a part of a loop to a spinning worker then costs a few microseconds,
where waking a blocked thread costs tens to hundreds (a halted vCPU is woken through the
hypervisor) and a Python task also has to win the GIL. After ``limit`` idle iterations the
worker marks itself asleep and returns, and blocks until woken: idle workers cost nothing.

Record entries: SEQ (the last hand-off posted), DONE (the last one finished), TASK (0 for a
Python task, else the native task's address), ARGS, PART, PARTS (the native task's arguments),
SLEEPING (1 while the worker is blocked or about to be), WAKE (set by :func:`fork` where the worker slept
when its part was posted: the poster wakes it). Posting and going to sleep use
sequentially consistent atomics, so a hand-off is never missed: the poster stores SEQ then
reads SLEEPING, the worker stores SLEEPING then reads SEQ.
"""

from __future__ import annotations

import ctypes

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.core.extending import intrinsic

SEQ, DONE, TASK, ARGS, PART, PARTS, SLEEPING, WAKE = range(8)
RECORD_SIZE = 16  # 128 bytes: a record shares no cache line with the next one's hot entries
IDLE, PYTHON_TASK = 0, 1  # what spin returns
YIELD_EVERY = 64
_jit = dict(cache=True, nogil=True)
_I64 = ir.IntType(64)


@intrinsic
def _load(typingctx, record, index):
    """record[index], an atomic (sequentially consistent) load."""

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.load_atomic(builder.gep(array.data, [args[1]]), "seq_cst", 8)

    return types.int64(record, index), codegen


@intrinsic
def _store(typingctx, record, index, value):
    """record[index] = value, an atomic (sequentially consistent) store."""

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        builder.store_atomic(args[2], builder.gep(array.data, [args[1]]), "seq_cst", 8)
        return context.get_dummy_value()

    return types.void(record, index, value), codegen


@intrinsic
def _call_void(typingctx, function):
    """Call the C function ``void f(void)`` at address ``function``."""

    def codegen(context, builder, signature, values):
        function_type = ir.FunctionType(ir.VoidType(), [])
        builder.call(builder.inttoptr(values[0], function_type.as_pointer()), [])
        return context.get_dummy_value()

    return types.void(types.int64), codegen


@intrinsic
def _call_task(typingctx, task, args, part, parts):
    """Call the C function at address ``task`` with (args, part, parts)."""

    def codegen(context, builder, signature, values):
        function_type = ir.FunctionType(ir.VoidType(), [_I64, _I64, _I64])
        builder.call(builder.inttoptr(values[0], function_type.as_pointer()), list(values[1:]))
        return context.get_dummy_value()

    return types.void(types.int64, types.int64, types.int64, types.int64), codegen


@numba.njit(**_jit)
def _pause(count, yield_address):
    """Every YIELD_EVERY-th idle iteration gives the CPU to another runnable thread (``sched_yield``):
    a thread woken onto this CPU (the scheduler often puts it beside its waker) must not wait for
    the spinner's time slice to end (milliseconds)."""
    if yield_address != 0 and count % YIELD_EVERY == YIELD_EVERY - 1:
        _call_void(yield_address)


@numba.njit(**_jit)
def spin(record, limit, yield_address):
    """Wait for hand-offs on ``record``: run native tasks here; return PYTHON_TASK when a Python task
    is posted (the caller runs it, then :func:`finish`), IDLE after ``limit`` iterations without
    one (SLEEPING then set: the poster will wake the caller)."""
    _store(record, SLEEPING, 0)
    seen = _load(record, DONE)
    idle = 0
    while True:
        posted = _load(record, SEQ)
        if posted != seen:
            task = record[TASK]
            if task == 0:
                return PYTHON_TASK
            _call_task(task, record[ARGS], record[PART], record[PARTS])
            seen = posted
            _store(record, DONE, posted)
            idle = 0
        elif idle < limit:
            idle += 1
            _pause(idle, yield_address)
        else:
            _store(record, SLEEPING, 1)
            if _load(record, SEQ) == seen:
                return IDLE
            _store(record, SLEEPING, 0)  # posted meanwhile: take it
            idle = 0


@numba.njit(**_jit)
def post(record, sequence):
    """Publish hand-off ``sequence`` (its other entries already written); True when the worker sleeps
    and must be woken."""
    _store(record, SEQ, sequence)
    return _load(record, SLEEPING) != 0


@numba.njit(**_jit)
def finish(record, sequence):
    """Mark hand-off ``sequence`` done (after a Python task)."""
    _store(record, DONE, sequence)


@numba.njit(**_jit)
def wait(record, sequence, yield_address):
    """Spin until hand-off ``sequence`` is done."""
    count = 0
    while _load(record, DONE) != sequence:
        count += 1
        _pause(count, yield_address)


@numba.njit(**_jit)
def fork(records, task, args, helpers, parts):
    """Post parts 1..``helpers`` of the native task at ``task`` to the workers of ``records``' first ``helpers`` rows
    (their next hand-off each); WAKE set in the rows of those asleep, which the caller must wake. Returns how many."""
    sleeping = 0
    for worker in range(helpers):
        record = records[worker]
        record[TASK] = task
        record[ARGS] = args
        record[PART] = worker + 1
        record[PARTS] = parts
        record[WAKE] = 1 if post(record, record[SEQ] + 1) else 0
        sleeping += record[WAKE]
    return sleeping


@numba.njit(**_jit)
def join(records, task, args, helpers, parts, yield_address):
    """After :func:`fork`: run part 0 and parts ``helpers``+1.. on the calling thread (the GIL released), then wait
    for the workers' parts."""
    _call_task(task, args, 0, parts)
    for part in range(helpers + 1, parts):
        _call_task(task, args, part, parts)
    for worker in range(helpers):
        wait(records[worker], records[worker][SEQ], yield_address)


@numba.njit(**_jit)
def address(array):
    """The address of ``array``'s data (compiled: ``ndarray.ctypes.data`` costs ~0.8 us in Python)."""
    return array.ctypes.data


@numba.njit(**_jit)
def run_part(task, args, part, parts):
    """Run one part of a native task on the calling thread (the GIL released)."""
    _call_task(task, args, part, parts)


def _sched_yield_address() -> int:
    """The address of libc's ``sched_yield`` (0 where there is none: spinning never yields)."""
    try:
        return ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value or 0
    except (OSError, AttributeError):
        return 0


YIELD_ADDRESS = _sched_yield_address()


def new_records(workers: int) -> np.ndarray:
    """Fresh hand-off records, one row per worker (each starts asleep)."""
    records = np.zeros((workers, RECORD_SIZE), np.int64)
    records[:, SLEEPING] = 1
    return records


def warm_up() -> None:
    """Compile (or load from numba's cache) every function here: raises where numba cannot."""
    records = new_records(1)
    record = records[0]
    post(record, 0)
    finish(record, 0)
    wait(record, 0, YIELD_ADDRESS)
    spin(record, 0, YIELD_ADDRESS)
    fork(records, 0, 0, 0, 1)
    join(records, _NOOP.address, 0, 0, 1, YIELD_ADDRESS)


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def _NOOP(args, part, parts):
    """A native task doing nothing (:func:`warm_up` compiles :func:`join` with it)."""
