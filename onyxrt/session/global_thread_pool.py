"""The process-wide thread pool of ``set_global_thread_pool_sizes``, and which pool a session runs on.

As in onnxruntime: ``set_global_thread_pool_sizes`` creates the global pools once per
process (a second call fails); sessions created with ``use_per_session_threads = False``
then share the global intra-op pool (their own ``intra_op_num_threads`` ignored, with a
warning), and from then on a session asking for its own threads is refused. A session with
``use_per_session_threads = False`` when no global pool exists is refused too.

The inter-op size sizes the threads of such sessions' ``ExecutionMode.ORT_PARALLEL`` runs (each
session starts its own threads of that count: ``framework/parallel_executor.py``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ..errors import Fail
from ..framework import logging
from ..framework.thread_pool import ThreadPool
from .session_options import int32_argument

if TYPE_CHECKING:
    from .session_options import SessionOptions

_LOCK = threading.Lock()
_global_pool: ThreadPool | None = None
_global_inter_op_threads = 0


def set_global_thread_pool_sizes(intra_op_num_threads: int = 0, inter_op_num_threads: int = 0) -> None:
    """Create the process's global thread pools (0: one intra-op thread per physical core).

    FAIL when they already exist. Only sessions with ``use_per_session_threads = False`` use them.
    """
    global _global_pool, _global_inter_op_threads
    intra = int32_argument("set_global_thread_pool_sizes", "intra_op_num_threads", intra_op_num_threads)
    inter = int32_argument("set_global_thread_pool_sizes", "inter_op_num_threads", inter_op_num_threads)
    with _LOCK:
        if _global_pool is not None:
            raise Fail("Global thread pools have already been created, cannot replace them")
        _global_pool = ThreadPool(max(intra, 0))  # negative sizes mean the default, as in onnxruntime
        _global_inter_op_threads = max(inter, 0)


def global_inter_op_threads() -> int:
    """The global inter-op size (0: the default, one thread per physical core)."""
    return _global_inter_op_threads


def global_thread_pool() -> ThreadPool | None:
    """The global intra-op pool, or None before ``set_global_thread_pool_sizes``."""
    return _global_pool


def session_thread_pool(options: SessionOptions) -> ThreadPool:
    """The intra-op pool a session created with ``options`` runs on (its own, or the global one)."""
    pool = _global_pool
    if options.use_per_session_threads:
        if pool is not None:
            raise RuntimeError("use_per_session_threads must be false when using a global thread pool")
        return ThreadPool(
            options.intra_op_num_threads,
            allow_spinning=options._config.get("session.intra_op.allow_spinning", "1") != "0",
        )
    if pool is None:
        raise RuntimeError(
            "When the session is not configured to use per session threadpools, the env must be created with "
            "the CreateEnvWithGlobalThreadPools API (onyxrt: call set_global_thread_pool_sizes first)."
        )
    if options.intra_op_num_threads or options.inter_op_num_threads:
        logging.default_logger().warning(
            "session options intra_op_param.thread_pool_size and inter_op_param.thread_pool_size are ignored "
            "when using a global thread pool"
        )
    return pool
