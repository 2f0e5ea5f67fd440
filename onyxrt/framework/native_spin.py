"""Compiled hand-offs between the intra-op pool's threads (numba; imported by ``thread_pool`` only
where numba is usable).

A pool worker waits for work in :func:`spin`, a compiled loop that holds no GIL: it watches its
hand-off record (an int64 array, :data:`RECORD_SIZE` entries) for a new sequence number and joins
a *native task* (the address of a C-callable function ``void task(int64 args, int64 part, int64
parts)``, e.g. a numba ``cfunc``) right there, without touching Python, or returns to Python for
a Python task. Handing a part of a loop to a spinning worker then costs a few microseconds,
where waking a blocked thread costs tens to hundreds (a halted vCPU is woken through the
hypervisor) and a Python task also has to win the GIL. After ``limit`` idle iterations the
worker marks itself asleep and returns, and blocks until woken: idle workers cost nothing.

A native task's parts are *claimed*, not assigned: the caller and the workers it posted to each take the next
unclaimed part (a compare-and-swap on the pool's claim row; the caller from the first part up, the workers from the
last down, so that with two threads each keeps its half of the data from one task to the next) until none is left,
and the caller waits only for the parts others claimed. A late worker (its vCPU descheduled, or asleep and being
woken: 50-80 us) leaves its share to the caller instead of holding it up. Each post carries a ticket (the claim
word's high bits): a worker taking a post after its task was done finds the ticket gone and claims nothing, so the
caller never waits for it and the task's arguments may be freed (tickets wrap after 2**31 tasks: a worker would
have to stall between reading a post and claiming for that long). A no-op task's hand-off to a spinning worker
measured 2.3 us against 2.5 with assigned parts (alternating processes, 2-vCPU Zen 4). Where a worker's vCPU is slow
rather than late (a split EfficientNet-like net's worker parts took 424 us a run against the caller's 255 in such a
process, 195 each in most), cutting tasks finer, two parts a thread, gave the caller more of its share (600 -> 480 us
a run) but cost 5 % where both vCPUs were fast, the common case: callers keep one part a thread.

Record entries: SEQ (even: the last post; odd while the poster writes the entries, which a worker reads
between two equal even loads of SEQ), DONE (the last post the worker finished), TASK (0 for a Python task, else the
native task's address), ARGS, TICKET, PARTS (the native task's), SLEEPING (1 while the worker is blocked or about to
be), WAKE (set by :func:`fork` where the worker slept when its part was posted: the poster wakes it), LIMIT (the idle
iterations the worker spins after its last task before it blocks, set by the poster). The claim row (the records'
last row): WORD (ticket, the caller's next part, the end of the parts left: :func:`fork`), FINISHED (parts done),
ISSUED (the last ticket), HELD (1 while a loop runs on the workers: :func:`hold`; a loop started meanwhile, a
concurrent run's, runs on its calling thread alone). Holding the pool, posting, joining and letting go are one
compiled call where the workers spin (:func:`fork_join`): in Python, a lock and the per-worker set-up cost ~1.2 us a
hand-off of a no-op task's 1.7 (2-vCPU Zen 4). Posting and going to sleep use sequentially consistent atomics, so a
hand-off is never missed: the poster stores SEQ then reads SLEEPING, the worker stores SLEEPING then reads SEQ.
"""

from __future__ import annotations

import ctypes

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.core.extending import intrinsic, overload

SEQ, DONE, TASK, ARGS, TICKET, PARTS, SLEEPING, WAKE, LIMIT = range(9)
WORD, FINISHED, ISSUED, HELD = range(4)  # the claim row's entries
RECORD_SIZE = 16  # 128 bytes: a record shares no cache line with the next one's hot entries
PART_BITS = 16  # the claim word: ticket (31 bits), the next part from the front, the parts left below the back
PART_MASK = (1 << PART_BITS) - 1
TICKET_SHIFT = 2 * PART_BITS
MAX_PARTS = PART_MASK
TICKET_MASK = (1 << 31) - 1  # (the word stays positive)
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
def _swap(typingctx, record, index, expected, value):
    """record[index] = value where it holds ``expected`` (an atomic compare-and-swap); whether it did."""

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        pair = builder.cmpxchg(builder.gep(array.data, [args[1]]), args[2], args[3], "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)

    return types.boolean(record, index, expected, value), codegen


@intrinsic
def _add(typingctx, record, index, value):
    """record[index] += value, atomically."""

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        builder.atomic_rmw("add", builder.gep(array.data, [args[1]]), args[2], "seq_cst")
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
def _claim(claims, ticket, from_back):
    """The next unclaimed part of the task of ``ticket``, now claimed: the lowest for the caller, the highest for a
    worker (``from_back``); -1 where none is left or the ticket is gone."""
    while True:
        word = _load(claims, WORD)
        front, back = (word >> PART_BITS) & PART_MASK, word & PART_MASK
        if word >> TICKET_SHIFT != ticket or front >= back:
            return -1
        claimed = word - 1 if from_back else word + (1 << PART_BITS)
        if _swap(claims, WORD, word, claimed):
            return back - 1 if from_back else front


@numba.njit(**_jit)
def _run_claimed(claims, task, args, ticket, parts, from_back):
    """Claim and run parts of the native task of ``ticket`` until none is left."""
    while True:
        part = _claim(claims, ticket, from_back)
        if part < 0:
            return
        _call_task(task, args, part, parts)
        _add(claims, FINISHED, 1)


@numba.njit(**_jit)
def spin(record, claims, yield_address):
    """Wait for hand-offs on ``record``: join native tasks here (their parts claimed on ``claims``, the records' last
    row); return PYTHON_TASK when a Python task is posted (the caller runs it, then :func:`finish`), IDLE after
    ``record[LIMIT]`` iterations without one (read again after each task; SLEEPING then set: the poster will wake the
    caller)."""
    _store(record, SLEEPING, 0)
    seen = _load(record, DONE)
    limit = _load(record, LIMIT)
    idle = 0
    while True:
        posted = _load(record, SEQ)
        if posted != seen and posted % 2 == 0:
            task = _load(record, TASK)
            args = _load(record, ARGS)
            ticket = _load(record, TICKET)
            parts = _load(record, PARTS)
            if _load(record, SEQ) != posted:
                continue  # re-posted while read: read the newest
            if task == 0:
                return PYTHON_TASK
            _run_claimed(claims, task, args, ticket, parts, True)
            seen = posted
            _store(record, DONE, posted)
            limit = _load(record, LIMIT)
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
def publish(record, task, args, ticket, parts):
    """Post a hand-off on ``record`` (SEQ odd while its entries are written); True when the worker sleeps and must be
    woken."""
    sequence = record[SEQ]
    _store(record, SEQ, sequence + 1)
    _store(record, TASK, task)
    _store(record, ARGS, args)
    _store(record, TICKET, ticket)
    _store(record, PARTS, parts)
    _store(record, SEQ, sequence + 2)
    return _load(record, SLEEPING) != 0


@numba.njit(**_jit)
def finish(record, sequence):
    """Mark hand-off ``sequence`` done (after a Python task)."""
    _store(record, DONE, sequence)


@numba.njit(**_jit)
def _wait_for(array, index, value, yield_address):
    """Spin until ``array[index]`` holds ``value``."""
    count = 0
    while _load(array, index) != value:
        count += 1
        _pause(count, yield_address)


@numba.njit(**_jit)
def wait(record, sequence, yield_address):
    """Spin until hand-off ``sequence`` is done."""
    _wait_for(record, DONE, sequence, yield_address)


def _address_of(args):
    """The address a native task's ``args`` stand for: an int64 array's data, or an address (an int) as it is."""


@overload(_address_of)
def _address_of_typed(args):
    if isinstance(args, types.Array):
        return lambda args: args.ctypes.data
    if isinstance(args, types.Integer):
        return lambda args: args
    return None


@numba.njit(**_jit)
def hold(records):
    """Take the workers of ``records`` for a loop (HELD); False where another loop holds them."""
    return _swap(records[records.shape[0] - 1], HELD, 0, 1)


@numba.njit(**_jit)
def let_go(records):
    """Give the workers of ``records`` back (after :func:`hold`)."""
    _store(records[records.shape[0] - 1], HELD, 0)


@numba.njit(**_jit)
def fork(records, task, args, helpers, parts, limit):
    """Open the native task at ``task`` for claiming (a new ticket) and post it to the workers of ``records``' first
    ``helpers`` rows, each to spin ``limit`` idle iterations after it; WAKE set in the rows of those asleep, which the
    caller must wake. Returns how many."""
    claims = records[records.shape[0] - 1]
    ticket = (claims[ISSUED] + 1) & TICKET_MASK
    claims[ISSUED] = ticket
    _store(claims, FINISHED, 0)
    _store(claims, WORD, ticket << TICKET_SHIFT | parts)
    sleeping = 0
    for worker in range(helpers):
        record = records[worker]
        _store(record, LIMIT, limit)
        record[WAKE] = 1 if publish(record, task, args, ticket, parts) else 0
        sleeping += record[WAKE]
    return sleeping


@numba.njit(**_jit)
def join(records, task, args, parts, yield_address):
    """After :func:`fork`: claim and run parts on the calling thread (the GIL released) until none is left, wait for
    the parts the workers claimed, and let the workers go (:func:`let_go`); ``args`` as :func:`fork_join` takes
    them."""
    claims = records[records.shape[0] - 1]
    _run_claimed(claims, task, _address_of(args), claims[ISSUED], parts, False)
    _wait_for(claims, FINISHED, parts, yield_address)
    let_go(records)


@numba.njit(**_jit)
def fork_join(records, task, args, helpers, parts, limit, yield_address):
    """:func:`hold`, :func:`fork` and, where no worker posted to sleeps, :func:`join`, in one call (each compiled call
    from Python costs ~0.3 us); ``args`` an int64 array (its address is taken) or an address. Where another loop
    holds the workers, every part runs here. Returns how many workers sleep: where any does, the caller wakes them
    (WAKE set in their rows) and joins itself."""
    address = _address_of(args)
    if not hold(records):
        run_parts(task, address, parts)
        return 0
    sleeping = fork(records, task, address, helpers, parts, limit)
    if sleeping == 0:
        join(records, task, address, parts, yield_address)
    return sleeping


@numba.njit(**_jit)
def run_parts(task, args, parts):
    """Run every part of a native task on the calling thread (the GIL released); ``args`` as :func:`fork_join` takes
    them."""
    address = _address_of(args)
    for part in range(parts):
        _call_task(task, address, part, parts)


def _sched_yield_address() -> int:
    """The address of libc's ``sched_yield`` (0 where there is none: spinning never yields)."""
    try:
        return ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value or 0
    except (OSError, AttributeError):
        return 0


YIELD_ADDRESS = _sched_yield_address()


def new_records(workers: int) -> np.ndarray:
    """Fresh hand-off records, one row per worker (each starts asleep), and the claim row last."""
    records = np.zeros((workers + 1, RECORD_SIZE), np.int64)
    records[:workers, SLEEPING] = 1
    return records


def warm_up() -> None:
    """Compile (or load from numba's cache) every function here: raises where numba cannot."""
    records = new_records(1)
    record, claims = records[0], records[1]
    publish(record, 0, 0, 0, 0)
    finish(record, 2)
    wait(record, 2, YIELD_ADDRESS)
    spin(record, claims, YIELD_ADDRESS)
    hold(records)
    let_go(records)
    fork(records, 0, 0, 0, 1, 0)
    join(records, _NOOP.address, 0, 1, YIELD_ADDRESS)
    join(records, _NOOP.address, np.zeros(1, np.int64), 1, YIELD_ADDRESS)
    fork_join(records, _NOOP.address, 0, 0, 1, 0, YIELD_ADDRESS)
    fork_join(records, _NOOP.address, np.zeros(1, np.int64), 0, 1, 0, YIELD_ADDRESS)
    run_parts(_NOOP.address, 0, 1)
    run_parts(_NOOP.address, np.zeros(1, np.int64), 1)


@numba.cfunc(types.void(types.int64, types.int64, types.int64), cache=True, nopython=True)
def _NOOP(args, part, parts):
    """A native task doing nothing (:func:`warm_up` compiles :func:`join` with it)."""
