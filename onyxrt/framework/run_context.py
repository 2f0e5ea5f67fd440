"""What a running plan's kernels may ask about the run they are in (set by the session around each run).

Today: whether the caller asked it to stop (``RunOptions.terminate``), which long kernels
and control-flow loops check between iterations.
"""

from __future__ import annotations

import contextvars
from typing import Any

from ..errors import Fail

_current_run_options: contextvars.ContextVar[Any] = contextvars.ContextVar("onyxrt_current_run_options", default=None)


class active_run_options:
    """Make ``run_options`` (a RunOptions or None) the current run's options for the duration of the block.

    (A class with slots, not a generator context manager: it is entered once per run, and the generator's frame
    costs about a microsecond.)"""

    __slots__ = ("_run_options", "_token")

    def __init__(self, run_options: Any) -> None:
        self._run_options = run_options

    def __enter__(self) -> None:
        self._token = _current_run_options.set(self._run_options)

    def __exit__(self, *exc_info: object) -> None:
        _current_run_options.reset(self._token)


def check_terminate() -> None:
    """Raise onnxruntime's Fail when the current run's ``RunOptions.terminate`` is set."""
    run_options = _current_run_options.get()
    if run_options is not None and run_options.terminate:
        raise Fail("Exiting due to terminate flag being set to true.")
