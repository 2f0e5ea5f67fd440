"""What a running plan's kernels may ask about the run they are in (set by the session around each run).

Today: whether the caller asked it to stop (``RunOptions.terminate``), which long kernels
and control-flow loops check between iterations; and numpy's floating-point error state, ignored in a run.
"""

from __future__ import annotations

import contextvars
from typing import Any

import numpy as np

from ..errors import Fail

_current_run_options: contextvars.ContextVar[Any] = contextvars.ContextVar("onyxrt_current_run_options", default=None)


try:  # numpy >= 2 keeps its floating-point error state in a context variable: a run sets it directly
    from numpy._core.umath import _extobj_contextvar as _numpy_errors, _make_extobj

    _IGNORE_ERRORS: Any = _make_extobj(all="ignore")
except ImportError:  # numpy 1.x: np.errstate
    _numpy_errors = _IGNORE_ERRORS = None


class run_scope:
    """The block of one run: ``run_options`` (a RunOptions or None) is the current run's options, and numpy's
    floating-point errors are ignored -- IEEE results (inf, nan) are the answer, as in onnxruntime, and numpy's
    warnings about them are noise.

    (A class with slots entered once per run: ``np.errstate`` costs ~0.9 us a run, numpy's context variable set
    with a prepared state ~0.1; the options are set only where they differ from the current ones.)"""

    __slots__ = ("_run_options", "_options_token", "_errors")

    def __init__(self, run_options: Any) -> None:
        self._run_options = run_options

    def __enter__(self) -> None:
        if self._run_options is not None or _current_run_options.get() is not None:
            self._options_token = _current_run_options.set(self._run_options)
        else:
            self._options_token = None
        if _numpy_errors is not None:
            self._errors = _numpy_errors.set(_IGNORE_ERRORS)
        else:
            self._errors = np.errstate(all="ignore")
            self._errors.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        if _numpy_errors is not None:
            _numpy_errors.reset(self._errors)
        else:
            self._errors.__exit__(*exc_info)
        if self._options_token is not None:
            _current_run_options.reset(self._options_token)


def check_terminate() -> None:
    """Raise onnxruntime's Fail when the current run's ``RunOptions.terminate`` is set."""
    run_options = _current_run_options.get()
    if run_options is not None and run_options.terminate:
        raise Fail("Exiting due to terminate flag being set to true.")
