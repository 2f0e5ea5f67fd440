"""The session-owned intra-op thread pool, and how kernels reach it.

A session owns one :class:`ThreadPool` of ``SessionOptions.intra_op_num_threads``
threads (0: one per physical core, onnxruntime's default), counting the thread that
calls ``run``. Around each run the session enters :meth:`ThreadPool.activate`: kernels
then find that pool with :func:`current_pool` (a context variable, so concurrent runs of
sessions with different settings each see their own), and the BLAS libraries numpy
calls use no more threads than the pool has (through ``threadpoolctl`` when it is
installed).

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
    """One pool thread: it blocks on a lock until handed a task, runs it, and signals done.

    Two lock hand-offs per task (about 15 us measured, against ~80 us through a
    ``concurrent.futures`` executor), and nothing runs while idle: no spinning.
    """

    def __init__(self, name: str) -> None:
        self._go = threading.Lock()
        self._go.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._task: Callable[[], None] | None = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            self._go.acquire()
            task = self._task
            if task is None:  # stop
                self._done.release()
                return
            try:
                task()
            except BaseException as error:  # re-raised by join, on the caller's thread
                self._error = error
            self._task = None
            self._done.release()

    def start(self, task: Callable[[], None]) -> None:
        self._task = task
        self._go.release()

    def join(self) -> None:
        self._done.acquire()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def stop(self) -> None:
        self._task = None
        self._go.release()
        if threading.current_thread() is not self.thread:  # (a collection may run on the worker itself)
            self.thread.join()


class ThreadPool:
    """``num_threads`` threads for intra-op parallelism, the calling thread included.

    Worker threads (``num_threads - 1``) start on first parallel use and block when idle; a
    pool of one thread never starts any. One parallel loop runs on the workers at a time: a
    loop started while another holds them (a concurrent run of the same session) runs on its
    calling thread alone.

    GEMMs: with ``allow_spinning`` (onnxruntime's ``session.intra_op.allow_spinning``, default
    on) the BLAS library runs them on its own threads, as many as the pool has; OpenBLAS's
    threads spin for a moment after each call (about 6 ms, ``openblas_spin``), as
    onnxruntime's pool spins after a run.
    Without it, BLAS is single-threaded during runs and the pool splits large GEMMs itself
    (``providers.cpu.gemm``): nothing spins when idle, at some latency (``benchmarks/idle_cpu.md``).
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
        self._workers: list[_Worker] = []  # shared with the finalizer, which stops them with the pool
        self._workers_pid = [0]
        self._lock = threading.Lock()  # guards starting and stopping the workers
        self._busy = threading.Lock()  # held while a loop runs on the workers
        weakref.finalize(self, _stop_workers, self._workers, self._workers_pid)

    @property
    def num_threads(self) -> int:
        return self._num_threads

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(item) for item in items]``, the items shared out over the pool's threads."""
        items = list(items)
        helpers = min(self._num_threads, len(items)) - 1
        if helpers <= 0 or not self._busy.acquire(blocking=False):
            return [fn(item) for item in items]
        try:
            results: list[Any] = [None] * len(items)
            claim = itertools.count()  # next() on a count is atomic under the GIL

            def drain() -> None:
                index = next(claim)
                while index < len(items):
                    results[index] = fn(items[index])
                    index = next(claim)

            workers = self._worker_threads()[:helpers]
            for worker in workers:
                worker.start(drain)
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
            self._busy.release()

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

    def splitting_gemms(self) -> ThreadPool:
        """This pool's threads in the split-GEMM mode (as without ``allow_spinning``): the same
        workers, shared with this pool; this pool itself when it already splits or has one thread."""
        if self.splits_gemms or self._num_threads < 2:
            return self
        view = copy.copy(self)  # shares the workers' list and locks, not the finalizer
        view.splits_gemms = True
        view._base = self  # keeps the finalizer's owner, and so the workers, alive
        return view

    def activate(self) -> _Activation:
        """A context manager making this the current pool for its block, with the BLAS library's
        threads capped to the pool's size (to one when the pool splits GEMMs itself)."""
        return _Activation(self, 1 if self.splits_gemms else self._num_threads)

    def shutdown(self) -> None:
        """Stop the worker threads (a later parallel call starts new ones)."""
        with self._lock:
            _stop_workers(self._workers, self._workers_pid)

    def _worker_threads(self) -> list[_Worker]:
        with self._lock:
            # a forked child inherits the workers but not their threads: it starts its own
            if not self._workers or self._workers_pid[0] != os.getpid():
                self._workers[:] = [_Worker(f"onyxrt-intra-op-{i}") for i in range(self._num_threads - 1)]
                self._workers_pid[0] = os.getpid()
            return list(self._workers)


def _stop_workers(workers: list[_Worker], pid: list[int]) -> None:
    """Stop (this process's) ``workers`` and empty the list."""
    stopping, workers[:] = list(workers), []
    if pid[0] == os.getpid():
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
    so a run of a session sized like the host's BLAS costs one query per library. Without
    ``threadpoolctl`` BLAS threads are left alone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, int] = {}  # pool size -> runs active with it
        self._libraries: Sequence[Any] | None = None
        self._own: list[tuple[Any, int]] = []  # (library, its own thread count) while runs are active
        self._changed: list[bool] = []  # which of them are set to the limit instead
        self._applied: int | None = None

    def acquire(self, num_threads: int) -> None:
        with self._lock:
            self._active[num_threads] = self._active.get(num_threads, 0) + 1
            if self._applied is None or num_threads < self._applied:
                self._apply(min(self._active))

    def release(self, num_threads: int) -> None:
        with self._lock:
            remaining = self._active[num_threads] - 1
            if remaining:
                self._active[num_threads] = remaining
                return
            del self._active[num_threads]
            self._apply(min(self._active) if self._active else None)

    def _apply(self, limit: int | None) -> None:
        if limit == self._applied:
            return
        if self._applied is None:  # leaving the idle state: note the libraries' own settings
            self._own = [(library, library.num_threads) for library in self._blas_libraries()]
            self._changed = [False] * len(self._own)
        for index, (library, own) in enumerate(self._own):
            target = own if limit is None else limit
            current = self._applied if self._changed[index] else own
            if target != current:
                library.set_num_threads(target)
                self._changed[index] = target != own
        self._applied = limit

    def _blas_libraries(self) -> Sequence[Any]:
        if self._libraries is None:
            try:
                import threadpoolctl
            except ImportError:  # optional at run time: BLAS then keeps its own thread count
                self._libraries = ()
            else:
                self._libraries = threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers
                shorten_idle_spin(self._libraries)
        return self._libraries


_BLAS_THREADS = _BlasThreadLimit()
# The pool of code that runs outside any session's run (and on worker threads): no threads.
_SERIAL = ThreadPool(1)
_CURRENT: contextvars.ContextVar[ThreadPool] = contextvars.ContextVar("onyxrt_thread_pool", default=_SERIAL)


def current_pool() -> ThreadPool:
    """The pool of the session run this code is part of (a one-thread pool outside any run)."""
    return _CURRENT.get()
