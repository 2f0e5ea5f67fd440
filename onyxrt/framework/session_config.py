"""The session's config entries (``SessionOptions.add_session_config_entry``) as kernels' prepack
functions see them: the session sets them around building its plan.

Prepack functions receive only a node's constant inputs and attributes; a setting that changes
how weights are prepared (sparse execution, ``onyxrt.sparse.*``) is read here instead.
Outside a session's plan build (constant folding, direct calls) no entry is set.

Prepacks also report back here what the session should know about the plan they shaped
(``note_plan_trait``): a plan holding heavy kernels split over the pool (sparse or int8 products)
runs best with the pool splitting GEMMs too (``InferenceSession``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping

_current_config: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "onyxrt_session_config", default={})
_current_traits: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar(
    "onyxrt_plan_traits", default=None)

# a heavy kernel of onyxrt's own (sparse or int8 products) split over the session's pool
KERNELS_ON_POOL = "kernels_on_pool"


@contextlib.contextmanager
def active_session_config(config: Mapping[str, str]) -> Iterator[set[str]]:
    """Make ``config`` the current session's config entries for the duration of the block; yields
    the set that collects the plan traits prepacks note meanwhile."""
    traits: set[str] = set()
    token = _current_config.set(dict(config))
    traits_token = _current_traits.set(traits)
    try:
        yield traits
    finally:
        _current_traits.reset(traits_token)
        _current_config.reset(token)


def note_plan_trait(trait: str) -> None:
    """Tell the session building its plan that the plan has ``trait`` (no-op outside a plan build)."""
    traits = _current_traits.get()
    if traits is not None:
        traits.add(trait)


def session_config_entry(key: str, default: str) -> str:
    """The current session's value for ``key``, or ``default`` when unset."""
    return _current_config.get().get(key, default)
