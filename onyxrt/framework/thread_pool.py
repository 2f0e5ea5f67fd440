"""The session-owned intra-op thread pool, and how kernels reach it.

A session owns one :class:`ThreadPool` of ``SessionOptions.intra_op_num_threads``
threads (0: one per physical core, onnxruntime's default), counting the thread that
calls ``run``. Around each run the session enters :meth:`ThreadPool.activate`: kernels
then find that pool with :func:`current_pool` (a context variable, so concurrent runs of
sessions with different settings each see their own), and the BLAS libraries numpy
calls use no more threads than the pool has (``blas_libraries``: OpenBLAS through its own
symbols, another BLAS through ``threadpoolctl`` when it is installed).

Work handed to a pool never waits on other work handed to it, and a kernel running on
a worker thread sees the serial pool as current (worker threads do not inherit the
caller's context), so nested parallel loops run inline instead of deadlocking.
"""

from __future__ import annotations

import contextvars
import copy
import itertools
import operator
import os
import threading
import weakref
from typing import Any, Callable, Iterable, Sequence, TypeVar

from ..errors import InvalidArgument
from .blas_libraries import loaded_blas_libraries
from .openblas_spin import shorten_idle_spin

T = TypeVar("T")
R = TypeVar("R")

# Below this much work (elements touched) splitting a loop over threads costs more than it saves.
DEFAULT_MIN_PARALLEL_WORK = 1 << 17


def available_cpus() -> list[int]:
    """The logical CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def physical_core_count() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads counted once)."""
    cpus = available_cpus()
    cores = set()
    for cpu in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
                cores.add(f.read().strip())
        except OSError:  # no sysfs topology: count logical CPUs
            return len(cpus)
    return max(1, len(cores))


class _Worker:
    """One pool thread. Where numba is usable it waits for work spinning in compiled code for a
    while (its record's LIMIT iterations, a few ms, set with each task; see ``native_spin``) and runs
    native tasks there without the GIL, then blocks; elsewhere (or with a LIMIT of 0) it blocks on a lock
    as soon as it is idle (two lock hand-offs per task, about 15 us measured, against ~80 us
    through a ``concurrent.futures`` executor). Blocked, it costs nothing.
    """

    def __init__(self, name: str, native: Any, record: Any = None, claims: Any = None) -> None:
        self._wake = threading.Lock()
        self._wake.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._native = native  # the native_spin module, or None
        # with native: its row of the pool's hand-off records (its SEQ: the last posted; its LIMIT: how long it spins
        # idle, set by the pool handing work over, see ThreadPool._spin_limit)
        self._record = record
        self._claims = claims  # with native: the records' claim row
        self._task: Callable[[], None] | None = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        native, record, claims = self._native, self._record, self._claims
        while True:
            if native is None:
                self._wake.acquire()
            else:
                while native.spin(record, claims, native.YIELD_ADDRESS) == native.IDLE:
                    self._wake.acquire()
            task = self._task
            if task is not None:
                try:
                    task()
                except BaseException as error:  # re-raised by join, on the caller's thread
                    self._error = error
                self._task = None
            if native is None:
                self._done.release()
            else:
                native.finish(record, record[native.SEQ])
            if task is None:  # stop
                return

    def start(self, task: Callable[[], None] | None, spin_limit: int = 0) -> None:
        """Run the Python callable ``task`` on this thread (None: stop the thread), then spin ``spin_limit`` idle
        iterations (where it spins at all) before it blocks."""
        self._task = task
        if self._native is None:
            self._wake.release()
            return
        native, record = self._native, self._record
        record[native.LIMIT] = spin_limit
        if native.publish(record, 0, 0, 0, 0):  # (a Python task; native tasks are posted by ``native_spin.fork``)
            self.wake()

    def wake(self) -> None:
        """Wake the thread where it blocks (a hand-off was posted while it slept)."""
        try:
            self._wake.release()
        except RuntimeError:  # a wake-up is already pending
            pass

    def join(self) -> None:
        if self._native is None:
            self._done.acquire()
        else:
            self._native.wait(self._record, self._record[self._native.SEQ], self._native.YIELD_ADDRESS)
        error, self._error = self._error, None
        if error is not None:
            raise error

    def stop(self) -> None:
        self.start(None)
        if threading.current_thread() is not self.thread:  # (a collection may run on the worker itself)
            self.thread.join()


def _native_spin() -> Any:
    """The ``native_spin`` module, compiled; None where numba is missing, disabled or failing, or
    ``ONYXRT_NATIVE_POOL=0`` (workers then block when idle and BLAS runs products on its threads)."""
    global _NATIVE_SPIN
    if _NATIVE_SPIN is False:
        if os.environ.get("ONYXRT_DISABLE_NUMBA", "") not in ("", "0") or os.environ.get("ONYXRT_NATIVE_POOL") == "0":
            return None  # (not remembered: a first call while the variables are set must not disable it for good)
        _NATIVE_SPIN = None
        try:
            from . import native_spin

            native_spin.warm_up()
            _NATIVE_SPIN = native_spin
        except Exception:  # numba absent or broken: blocking workers only
            pass
    return _NATIVE_SPIN


_NATIVE_SPIN: Any = False  # not looked up yet
# Idle iterations a worker spins after a task before it blocks (~4 ms measured on a 2-core VM, where
# each sched_yield of the spin costs ~1 us).
SPIN_ITERATIONS = 1 << 18


class ThreadPool:
    """``num_threads`` threads for intra-op parallelism, the calling thread included.

    Worker threads (``num_threads - 1``) start on first parallel use; a pool of one thread never
    starts any. One parallel loop runs on the workers at a time: a loop started while another
    holds them (a concurrent run of the same session) runs on its calling thread alone.

    GEMMs: with ``allow_spinning`` (onnxruntime's ``session.intra_op.allow_spinning``, default
    on) the BLAS library runs them on its own threads, as many as the pool has; OpenBLAS's
    threads spin for a moment after each call (about 6 ms, ``openblas_spin``), as onnxruntime's
    pool spins after a run, and the pool's workers block when idle.
    In the split-GEMM mode (``splits_gemms``: without ``allow_spinning``, or a ``splitting_gemms``
    view, which sessions whose plans hold onyxrt's own pool kernels use) BLAS is single-threaded
    in runs and the pool splits large products itself (``providers.cpu.gemm``). Where numba is
    usable the workers then take *native tasks* (``run_native``: products, depthwise planes, AVX2
    int8 products) without the GIL, and with ``allow_spinning`` they spin in compiled code for a
    few milliseconds after each task before they block (``native_spin``), so the next hand-off
    costs microseconds instead of a thread wake-up. Without ``allow_spinning`` nothing spins:
    idle costs nothing, at some latency (``benchmarks/idle_cpu.md``).
    """

    def __init__(self, num_threads: int = 0, allow_spinning: bool = True) -> None:
        try:
            count = operator.index(num_threads)
        except TypeError:
            count = -1
        if count < 0:
            raise InvalidArgument(f"intra_op_num_threads must be a non-negative integer, got {num_threads!r}")
        self._num_threads = count or physical_core_count()
        self.splits_gemms = not allow_spinning and self._num_threads > 1
        self._allow_spinning = allow_spinning
        self._spin_limit = self._idle_spin()
        self._workers: list[_Worker] = []  # shared with the finalizer, which stops them with the pool
        self._workers_pid = [0]
        # while native workers run: (the process id, native_spin, the hand-off records: a row a worker, the claim
        # row, the workers), what run_native and map need
        self._hand_off: list[tuple | None] = [None]
        self._lock = threading.Lock()  # guards starting and stopping the workers
        self._busy = threading.Lock()  # held while a loop runs on the workers, where they are not native (else HELD)
        weakref.finalize(self, _stop_workers, self._workers, self._workers_pid, self._hand_off)

    @property
    def num_threads(self) -> int:
        return self._num_threads

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(item) for item in items]``, the items shared out over the pool's threads."""
        items = list(items)
        helpers = min(self._num_threads, len(items)) - 1
        if helpers <= 0:
            return [fn(item) for item in items]
        workers = self._worker_threads()[:helpers]
        hand_off = self._hand_off[0]  # (None: workers blocking on locks)
        if hand_off is None:
            if not self._busy.acquire(blocking=False):
                return [fn(item) for item in items]
        else:
            _, native, records, _ = hand_off
            if not native.hold(records):
                return [fn(item) for item in items]
        try:
            results: list[Any] = [None] * len(items)
            claim = itertools.count()  # next() on a count is atomic under the GIL

            def drain() -> None:
                index = next(claim)
                while index < len(items):
                    results[index] = fn(items[index])
                    index = next(claim)

            for worker in workers:
                worker.start(drain, self._spin_limit)
            error: BaseException | None = None
            try:
                drain()
            except BaseException as raised:
                error = raised
            for worker in workers:  # every worker is joined before anything is re-raised
                try:
                    worker.join()
                except BaseException as raised:
                    error = error or raised
            if error is not None:
                raise error
            return results
        finally:
            if hand_off is None:
                self._busy.release()
            else:
                native.let_go(records)

    def run_chunks(self, fn: Callable[[int, int], None], rows: int, work: int,
                   min_work: int = DEFAULT_MIN_PARALLEL_WORK) -> None:
        """Call ``fn(r0, r1)`` over contiguous row ranges covering ``range(rows)``, one per thread
        when ``work`` (elements touched) reaches ``min_work``, else once over all rows."""
        chunks = min(self._num_threads, rows)
        if chunks < 2 or work < min_work:
            fn(0, rows)
            return
        bounds = [rows * i // chunks for i in range(chunks + 1)]
        self.map(lambda i: fn(bounds[i], bounds[i + 1]), range(chunks))

    @property
    def workers_spin(self) -> bool:
        """Whether the workers spin between this pool's native tasks (a hand-off then costs microseconds,
        not a thread wake-up)."""
        return self._spin_limit > 0

    def _idle_spin(self) -> int:
        """How long the workers spin after this pool's tasks (``_spin_limit``): only where spinning is allowed and
        the pool owns the cores (it splits products: no BLAS thread spins beside its workers)."""
        return SPIN_ITERATIONS if self._allow_spinning and self.splits_gemms else 0

    @property
    def runs_native_tasks(self) -> bool:
        """Whether :meth:`run_native` can share a native task out over threads (numba usable, more
        than one thread)."""
        return self._num_threads > 1 and _native_spin() is not None

    def run_native(self, task: int, args: Any, parts: int) -> None:
        """Run parts 0..``parts``-1 of the native task at address ``task`` (``void task(int64 args, int64
        part, int64 parts)``, see ``native_spin``) with ``args`` (an address, or the int64 array it points at):
        posted to up to ``parts`` - 1 workers, each part claimed by whichever thread is free first (a late worker's
        share falls to the calling thread, which waits only for the parts others took); all on the calling thread
        where native tasks cannot run on the workers (no numba, one thread) or another loop holds them. Parts may run
        on any thread in any order. The task must not raise."""
        # (an array stays referenced by ``args`` until the task returns: its address alone would not keep it)
        helpers = (parts if parts < self._num_threads else self._num_threads) - 1
        hand_off = self._hand_off[0]
        if hand_off is None or hand_off[0] != _PROCESS_ID[0] or helpers <= 0:
            hand_off = self._start_hand_off(task, args, parts, helpers)
            if hand_off is None:
                return
        _, native, records, workers = hand_off
        if parts > native.MAX_PARTS:
            native.run_parts(task, args, parts)
            return
        # (holding the workers, posting and joining in one compiled call: in Python they cost ~1.2 us a task); a
        # worker asleep is woken here, and then the caller joins
        if native.fork_join(records, task, args, helpers, parts, self._spin_limit, native.YIELD_ADDRESS):
            try:
                for worker, record in zip(workers[:helpers], records):
                    if record[native.WAKE]:
                        worker.wake()
            finally:
                native.join(records, task, args, parts, native.YIELD_ADDRESS)

    def _start_hand_off(self, task: int, args: Any, parts: int, helpers: int) -> tuple | None:
        """:meth:`run_native`'s hand-off, the workers started where they are not (None: the task ran here, on the
        calling thread alone)."""
        native = _native_spin()
        if native is None:
            raise RuntimeError("native tasks need numba")
        if helpers <= 0:
            native.run_parts(task, args, parts)
            return None
        self._worker_threads()
        return self._hand_off[0]

    def splitting_gemms(self) -> ThreadPool:
        """This pool's threads in the split-GEMM mode (as without ``allow_spinning``): the same
        workers, shared with this pool; this pool itself when it already splits or has one thread."""
        if self.splits_gemms or self._num_threads < 2:
            return self
        view = copy.copy(self)  # shares the workers' list and locks, not the finalizer
        view.splits_gemms = True
        view._spin_limit = view._idle_spin()
        view._base = self  # keeps the finalizer's owner, and so the workers, alive
        return view

    def activate(self) -> _Activation:
        """A context manager making this the current pool for its block, with the BLAS library's
        threads capped to the pool's size (to one when the pool splits GEMMs itself)."""
        return _Activation(self, 1 if self.splits_gemms else self._num_threads)

    def shutdown(self) -> None:
        """Stop the worker threads (a later parallel call starts new ones)."""
        with self._lock:
            _stop_workers(self._workers, self._workers_pid, self._hand_off)

    def _worker_threads(self) -> list[_Worker]:
        """The workers, started where this process has none: the shared list (callers slice it, never change it)."""
        if self._workers and self._workers_pid[0] == _PROCESS_ID[0]:
            return self._workers  # (no lock: once started, the list changes only when the pool stops)
        with self._lock:
            # a forked child inherits the workers but not their threads: it starts its own
            if not self._workers or self._workers_pid[0] != _PROCESS_ID[0]:
                native = _native_spin()
                count = self._num_threads - 1
                records = native.new_records(count) if native is not None else None
                self._workers[:] = [_Worker(f"onyxrt-intra-op-{i}", native, *(() if records is None else
                                                                               (records[i], records[count])))
                                    for i in range(count)]
                self._workers_pid[0] = _PROCESS_ID[0]
                self._hand_off[0] = None if native is None else (_PROCESS_ID[0], native, records, self._workers)
            return self._workers


def _stop_workers(workers: list[_Worker], pid: list[int], hand_off: list) -> None:
    """Stop (this process's) ``workers`` and empty the list (and the ``hand_off`` to them)."""
    hand_off[0] = None
    stopping, workers[:] = list(workers), []
    if pid[0] == _PROCESS_ID[0]:
        for worker in stopping:
            worker.stop()


class _Activation:
    """``ThreadPool.activate``'s context manager: a class, as it is entered once per run."""

    __slots__ = ("_pool", "_blas_threads", "_token")

    def __init__(self, pool: ThreadPool, blas_threads: int) -> None:
        self._pool = pool
        self._blas_threads = blas_threads

    def __enter__(self) -> ThreadPool:
        self._token = _CURRENT.set(self._pool)
        _BLAS_THREADS.acquire(self._blas_threads)
        return self._pool

    def __exit__(self, *exc_info: object) -> None:
        _BLAS_THREADS.release(self._blas_threads)
        _CURRENT.reset(self._token)


class _BlasThreadLimit:
    """The thread count of the BLAS libraries numpy calls, which is one setting per process.

    While runs are active it is the smallest pool size among them (a single-threaded
    session stays single-threaded beside a larger one); when none is, each library that had
    to be changed gets its own setting back. A library already at the limit is not touched,
    so a run of a session sized like the host's BLAS costs one query per library. A BLAS that
    only ``threadpoolctl`` can reach keeps its own thread count where that is not installed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, int] = {}  # pool size -> runs active with it
        self._libraries: Sequence[Any] | None = None
        self._own: list[int] = []  # each library's own thread count, noted when the first run became active
        self._applied: int | None = None  # the limit while runs are active (the libraries not at it are set to it)

    def acquire(self, num_threads: int) -> None:
        with self._lock:
            active = self._active
            if not active:  # (the common case, a run in an idle process: one query a library, a set where it differs)
                active[num_threads] = 1
                libraries = self._libraries
                if libraries is None:
                    libraries = self._blas_libraries()
                if len(libraries) == 1:  # (one BLAS, the usual: its run's limit in as few Python steps as can be)
                    library = libraries[0]
                    threads = library.num_threads
                    self._own = (threads,)
                    if threads != num_threads:
                        library.set_num_threads(num_threads)
                else:
                    self._own = own = [library.num_threads for library in libraries]
                    for library, threads in zip(libraries, own):
                        if threads != num_threads:
                            library.set_num_threads(num_threads)
                self._applied = num_threads
                return
            active[num_threads] = active.get(num_threads, 0) + 1
            if num_threads < self._applied:
                self._apply(num_threads)

    def release(self, num_threads: int) -> None:
        with self._lock:
            active = self._active
            remaining = active[num_threads] - 1
            if remaining:
                active[num_threads] = remaining
                return
            del active[num_threads]
            if active:
                self._apply(min(active))
                return
            applied, self._applied = self._applied, None
            own = self._own
            if len(own) == 1:
                if own[0] != applied:
                    self._libraries[0].set_num_threads(own[0])
                return
            for library, threads in zip(self._libraries, own):
                if threads != applied:
                    library.set_num_threads(threads)

    def _apply(self, limit: int) -> None:
        """Move the libraries from the applied limit to ``limit`` (runs active before and after)."""
        if limit != self._applied:  # (every library is at the applied limit while runs are active)
            for library in self._libraries:
                library.set_num_threads(limit)
            self._applied = limit

    def _blas_libraries(self) -> Sequence[Any]:
        if self._libraries is None:
            libraries = loaded_blas_libraries()
            shorten_idle_spin(libraries)
            self._libraries = libraries
        return self._libraries


# This process's id, kept current across forks (``os.getpid`` is a system call: ~0.3 us on a VM, per native task)
_PROCESS_ID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PROCESS_ID.__setitem__(0, os.getpid()))

_BLAS_THREADS = _BlasThreadLimit()
# The pool of code that runs outside any session's run (and on worker threads): no threads.
_SERIAL = ThreadPool(1)
_CURRENT: contextvars.ContextVar[ThreadPool] = contextvars.ContextVar("onyxrt_thread_pool", default=_SERIAL)


def current_pool() -> ThreadPool:
    """The pool of the session run this code is part of (a one-thread pool outside any run)."""
    return _CURRENT.get()
