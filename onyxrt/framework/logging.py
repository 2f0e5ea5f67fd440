"""onnxruntime's logging: severities, the default logger, session and run loggers, a callback sink.

A line reads as onnxruntime's does::

    2026-12-03 22:45:13.009880990 [E:onyxrt:S1:R1, inference_session.py:331 _execute] Non-zero status ...

severity letter (V, I, W, E, F), the category (``onyxrt``), the logger id (``Default`` for the
default logger; the session's ``logid``, joined with the run's by ``:``), where it was emitted
(file, line and function, Python's instead of onnxruntime's C++), and the message. Lines go to
``sys.stderr`` (without onnxruntime's terminal colours), or to the callback installed with
:func:`set_callback`, which receives ``(severity, category, logid, code_location, message)`` as
onnxruntime's ``set_default_logger_callback`` callback does.

Severity rules, as in onnxruntime: the default logger logs at :func:`default_severity` (2,
WARNING, until :func:`set_default_severity`); a session logs at its
``SessionOptions.log_severity_level``, or at the default severity of the time it was created when
that is -1; a run at its ``RunOptions.log_severity_level``, or at its session's when -1.
Verbosity (``log_verbosity_level``) is kept but selects nothing: onnxruntime's release builds
emit no verbosity-gated (VLOG) lines either.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

from ..errors import Fail

VERBOSE, INFO, WARNING, ERROR, FATAL = range(5)
SEVERITY_LETTERS = "VIWEF"
CATEGORY = "onyxrt"
DEFAULT_LOGID = "Default"

LogCallback = Callable[[int, str, str, str, str], Any]

_lock = threading.Lock()
_default_severity = WARNING
_default_verbosity = 0
_callback: LogCallback | None = None
_in_callback = threading.local()  # a message logged by the callback itself goes to stderr


def _checked_severity(severity: int) -> int:
    if not 0 <= severity <= FATAL:
        raise RuntimeError(f"Invalid logging severity: {severity}. 0:Verbose, 1:Info, 2:Warning, 3:Error, 4:Fatal")
    return severity


def default_severity() -> int:
    """The default logger's severity (2, WARNING, unless changed)."""
    return _default_severity


def set_default_severity(severity: int) -> None:
    """Set the default logger's severity (0 VERBOSE .. 4 FATAL); RuntimeError outside that range."""
    global _default_severity
    _default_severity = _checked_severity(severity)


def set_default_verbosity(verbosity: int) -> None:
    """Set the default verbosity (kept for onnxruntime's API; no onyxrt line depends on it)."""
    global _default_verbosity
    _default_verbosity = verbosity


def set_callback(callback: LogCallback | None, severity: int = WARNING) -> None:
    """Send every emitted line to ``callback(severity, category, logid, code_location, message)``.

    Installing a callback sets the default severity to ``severity``; ``None`` restores stderr and
    leaves the default severity as it is (``severity`` is still checked), as in onnxruntime.
    """
    global _callback
    _checked_severity(severity)
    if callback is not None and not callable(callback):
        raise RuntimeError(f"callback must be a callable or None, got {type(callback).__name__}")
    with _lock:
        _callback = callback
        if callback is not None:
            set_default_severity(severity)


def caller_location(depth: int = 1) -> str:
    """``file:line function`` of the frame ``depth`` levels above the caller."""
    frame = sys._getframe(depth + 1)
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} {frame.f_code.co_name}"


def format_line(severity: int, logid: str, location: str, message: str) -> str:
    """One log line in onnxruntime's layout (see the module docstring)."""
    now = time.time_ns()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now // 1_000_000_000))
    return f"{stamp}.{now % 1_000_000_000:09d} [{SEVERITY_LETTERS[severity]}:{CATEGORY}:{logid}, {location}] {message}"


def emit(severity: int, logid: str, location: str, message: str) -> None:
    """Hand one line to the callback, or write it to stderr (a callback that raises: both)."""
    callback = _callback
    if callback is not None and not getattr(_in_callback, "active", False):
        _in_callback.active = True
        try:
            callback(severity, CATEGORY, logid, location, message)
            return
        except Exception as error:  # noqa: BLE001 - as onnxruntime: reported, and the line goes to stderr
            sys.unraisablehook(types.SimpleNamespace(exc_type=type(error), exc_value=error,
                                                     exc_traceback=error.__traceback__, err_msg=None,
                                                     object=callback))
        finally:
            _in_callback.active = False
    stream = sys.stderr
    if stream is not None:
        stream.write(format_line(severity, logid, location, message) + "\n")
        stream.flush()


class Logger:
    """A logger id and the severity it logs at; ``log`` drops lines below that severity."""

    __slots__ = ("logid", "severity", "verbosity")

    def __init__(self, logid: str, severity: int, verbosity: int = 0) -> None:
        self.logid, self.severity, self.verbosity = logid, severity, verbosity

    def enabled(self, severity: int) -> bool:
        return severity >= self.severity

    def log(self, severity: int, message: str, location: str | None = None) -> None:
        """Emit ``message`` at ``severity`` if this logger's severity lets it through.

        ``location`` defaults to the caller's ``file:line function``.
        """
        if severity >= self.severity:
            emit(severity, self.logid, location or caller_location(1), message)

    def verbose(self, message: str, location: str | None = None) -> None:
        if VERBOSE >= self.severity:
            emit(VERBOSE, self.logid, location or caller_location(1), message)

    def info(self, message: str, location: str | None = None) -> None:
        if INFO >= self.severity:
            emit(INFO, self.logid, location or caller_location(1), message)

    def warning(self, message: str, location: str | None = None) -> None:
        if WARNING >= self.severity:
            emit(WARNING, self.logid, location or caller_location(1), message)

    def error(self, message: str, location: str | None = None) -> None:
        if ERROR >= self.severity:
            emit(ERROR, self.logid, location or caller_location(1), message)


def default_logger() -> Logger:
    """The default logger (``Default``), at the current default severity."""
    return Logger(DEFAULT_LOGID, _default_severity, _default_verbosity)


def session_logger(logid: str, severity: int, verbosity: int = 0) -> Logger:
    """A session's logger: ``severity`` -1 means the default severity now; RuntimeError outside -1..4."""
    if severity == -1:
        severity = _default_severity
    elif not 0 <= severity <= FATAL:
        raise RuntimeError(f"Invalid session log severity level: {severity} "
                           "(SessionOptions.log_severity_level must be -1, the default, or 0..4)")
    return Logger(logid, severity, verbosity)


def run_logger(session: Logger, logid: str, severity: int, verbosity: int = 0) -> Logger | None:
    """A run's logger, or None when the run logs as its session; :class:`Fail` outside -1..4, as onnxruntime."""
    if severity == -1 and not logid:
        return None
    if severity == -1:
        severity = session.severity
    elif not 0 <= severity <= FATAL:
        raise Fail(f"Invalid run log severity level: {severity} "
                   "(RunOptions.log_severity_level must be -1, the session's, or 0..4)")
    return Logger(":".join(part for part in (session.logid, logid) if part), severity, verbosity)
