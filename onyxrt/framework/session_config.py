"""The session's config entries (``SessionOptions.add_session_config_entry``) as kernels' prepack
functions see them: the session sets them around building its plan.

Prepack functions receive only a node's constant inputs and attributes; a setting that changes
how weights are prepared (sparse execution, ``onyxrt.sparse.*``) is read here instead.
Outside a session's plan build (constant folding, direct calls) no entry is set.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping

_current_config: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "onyxrt_session_config", default={})


@contextlib.contextmanager
def active_session_config(config: Mapping[str, str]) -> Iterator[None]:
    """Make ``config`` the current session's config entries for the duration of the block."""
    token = _current_config.set(dict(config))
    try:
        yield
    finally:
        _current_config.reset(token)


def session_config_entry(key: str, default: str) -> str:
    """The current session's value for ``key``, or ``default`` when unset."""
    return _current_config.get().get(key, default)
