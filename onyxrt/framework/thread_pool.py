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

import concurrent.futures
import contextlib
import contextvars
import itertools
import operator
import os
import threading
from collections import Counter
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from ..errors import InvalidArgument

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


class ThreadPool:
    """``num_threads`` threads for intra-op parallelism, the calling thread included.

    Worker threads (``num_threads - 1``) start on first parallel use; a pool of one
    thread never starts any.
    """

    def __init__(self, num_threads: int = 0) -> None:
        try:
            count = operator.index(num_threads)
        except TypeError:
            count = -1
        if count < 0:
            raise InvalidArgument(f"intra_op_num_threads must be a non-negative integer, got {num_threads!r}")
        self._num_threads = count or physical_core_count()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_pid = 0
        self._lock = threading.Lock()

    @property
    def num_threads(self) -> int:
        return self._num_threads

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(item) for item in items]``, the items shared out over the pool's threads."""
        items = list(items)
        helpers = min(self._num_threads, len(items)) - 1
        if helpers <= 0:
            return [fn(item) for item in items]
        results: list[Any] = [None] * len(items)
        claim = itertools.count()  # next() on a count is atomic under the GIL

        def drain() -> None:
            index = next(claim)
            while index < len(items):
                results[index] = fn(items[index])
                index = next(claim)

        executor = self._worker_threads()
        futures = [executor.submit(drain) for _ in range(helpers)]
        try:
            drain()
        finally:
            concurrent.futures.wait(futures)
        for future in futures:
            future.result()  # re-raises a worker's error
        return results

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

    @contextlib.contextmanager
    def activate(self) -> Iterator[ThreadPool]:
        """Make this the current pool (and cap BLAS threads to its size) for the block."""
        token = _CURRENT.set(self)
        _BLAS_THREADS.acquire(self._num_threads)
        try:
            yield self
        finally:
            _BLAS_THREADS.release(self._num_threads)
            _CURRENT.reset(token)

    def shutdown(self) -> None:
        """Stop the worker threads (a later parallel call starts new ones)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def _worker_threads(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            # a forked child inherits the executor but not its threads: it starts its own
            if self._executor is None or self._executor_pid != os.getpid():
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._num_threads - 1, thread_name_prefix="onyxrt-intra-op"
                )
                self._executor_pid = os.getpid()
            return self._executor


class _BlasThreadLimit:
    """The thread count of the BLAS libraries numpy calls, which is one setting per process.

    While runs are active it is the smallest pool size among them (a single-threaded
    session stays single-threaded beside a larger one); when none is, the libraries' own
    setting is restored. Without ``threadpoolctl`` BLAS threads are left alone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: Counter[int] = Counter()
        self._libraries: Sequence[Any] | None = None
        self._original: list[int] = []
        self._applied: int | None = None

    def acquire(self, num_threads: int) -> None:
        with self._lock:
            self._active[num_threads] += 1
            self._apply(min(self._active))

    def release(self, num_threads: int) -> None:
        with self._lock:
            self._active[num_threads] -= 1
            if not self._active[num_threads]:
                del self._active[num_threads]
            self._apply(min(self._active) if self._active else None)

    def _apply(self, limit: int | None) -> None:
        if limit == self._applied:
            return
        libraries = self._blas_libraries()
        if self._applied is None:
            self._original = [library.num_threads for library in libraries]
        if limit is None:
            for library, count in zip(libraries, self._original):
                library.set_num_threads(count)
        else:
            for library in libraries:
                library.set_num_threads(limit)
        self._applied = limit

    def _blas_libraries(self) -> Sequence[Any]:
        if self._libraries is None:
            try:
                import threadpoolctl
            except ImportError:  # optional at run time: BLAS then keeps its own thread count
                self._libraries = ()
            else:
                self._libraries = threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers
        return self._libraries


_BLAS_THREADS = _BlasThreadLimit()
# The pool of code that runs outside any session's run (and on worker threads): no threads.
_SERIAL = ThreadPool(1)
_CURRENT: contextvars.ContextVar[ThreadPool] = contextvars.ContextVar("onyxrt_thread_pool", default=_SERIAL)


def current_pool() -> ThreadPool:
    """The pool of the session run this code is part of (a one-thread pool outside any run)."""
    return _CURRENT.get()
