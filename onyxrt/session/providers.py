"""Normalizing the ``providers`` / ``provider_options`` arguments as onnxruntime does."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

from ..providers import AVAILABLE_PROVIDERS, CPUExecutionProvider, ExecutionProvider


def normalize_providers(
    providers: Sequence[str | tuple[str, dict[str, Any]]] | None,
    provider_options: Sequence[dict[str, Any]] | None,
) -> list[tuple[str, dict[str, str]]]:
    """Validate and pair provider names with string options, dropping (with a warning) unavailable ones.

    The CPU provider is always appended as the fallback. With no providers given, only the CPU
    provider is used, whatever else is available (onnxruntime's rule since it stopped requiring
    an explicit choice).
    """
    if isinstance(providers, str):
        raise ValueError("'providers' should be a sequence of provider names or (name, options) tuples, not a str")
    providers = list(providers or [])
    if provider_options is not None and len(provider_options) != len(providers):
        raise ValueError("'providers' and 'provider_options' should be the same length if both are given.")

    chosen: dict[str, dict[str, str]] = {}
    for index, entry in enumerate(providers):
        if isinstance(entry, str):
            name, options = entry, (provider_options[index] if provider_options is not None else {})
        elif isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], dict):
            if provider_options is not None:
                raise ValueError("Options can only be specified once for each provider: in 'providers' or in 'provider_options'.")
            name, options = entry
        else:
            raise ValueError(
                "'providers' values must be either a provider name or a (provider name, options dict) tuple."
            )
        if not isinstance(options, dict):
            raise ValueError(f"Options for provider '{name}' must be a dict, got {type(options).__name__}")
        if name in chosen:
            raise ValueError(f"Duplicate provider '{name}' encountered.")
        if name not in AVAILABLE_PROVIDERS:
            warnings.warn(
                f"Specified provider '{name}' is not in available provider names."
                f"Available providers: '{', '.join(AVAILABLE_PROVIDERS)}'",
                stacklevel=3,
            )
            continue
        chosen[name] = {str(k): str(v) for k, v in options.items()}
    chosen.setdefault(CPUExecutionProvider.name, {})
    return list(chosen.items())


def create_providers(normalized: list[tuple[str, dict[str, str]]],
                     session_options: Any | None = None) -> list[ExecutionProvider]:
    """The providers, each told the session's options (thread counts a provider's own options leave open)."""
    providers = [AVAILABLE_PROVIDERS[name](options) for name, options in normalized]
    if session_options is not None:
        for provider in providers:
            provider.use_session_options(session_options)
    return providers
