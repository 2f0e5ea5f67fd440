"""What a running plan's kernels may ask about the run they are in (set by the session around each run).

Today: whether the caller asked it to stop (``RunOptions.terminate``), which long kernels
and control-flow loops check between iterations.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

from ..errors import Fail

_current_run_options: contextvars.ContextVar[Any] = contextvars.ContextVar("onyxrt_current_run_options", default=None)


@contextlib.contextmanager
def active_run_options(run_options: Any) -> Iterator[None]:
    """Make ``run_options`` (a RunOptions or None) the current run's options for the duration of the block."""
    token = _current_run_options.set(run_options)
    try:
        yield
    finally:
        _current_run_options.reset(token)


def check_terminate() -> None:
    """Raise onnxruntime's Fail when the current run's ``RunOptions.terminate`` is set."""
    run_options = _current_run_options.get()
    if run_options is not None and run_options.terminate:
        raise Fail("Exiting due to terminate flag being set to true.")
