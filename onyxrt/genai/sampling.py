"""Logits processing and token choice for generation, on ``[batch, vocab]`` float arrays.

The processors follow transformers' definitions (and order: repetition penalty, then temperature,
top-k, top-p), so a seeded run is reproducible and comparable with theirs in distribution.
"""

from __future__ import annotations

import numpy as np


def apply_repetition_penalty(logits: np.ndarray, previous_tokens: np.ndarray, penalty: float,
                             mask: np.ndarray | None = None) -> np.ndarray:
    """Penalize tokens already seen in each row: positive logits divided by ``penalty``, negative multiplied.

    ``previous_tokens`` is ``[batch, length]``; positions where ``mask`` is 0 (padding) do not count.
    Each seen token is penalized once however often it occurs (as transformers does).
    """
    if penalty == 1.0:
        return logits
    result = np.array(logits, dtype=np.float32, copy=True)
    for row in range(result.shape[0]):
        tokens = previous_tokens[row] if mask is None else previous_tokens[row][mask[row] != 0]
        seen = np.unique(tokens)
        values = result[row, seen]
        result[row, seen] = np.where(values > 0, values / penalty, values * penalty)
    return result


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Logits divided by ``temperature`` (below 1 sharpens the distribution, above 1 flattens it)."""
    if temperature == 1.0:
        return logits
    return np.asarray(logits, dtype=np.float32) / np.float32(temperature)


def top_k_filter(logits: np.ndarray, top_k: int) -> np.ndarray:
    """Logits below each row's ``top_k``-th largest set to -inf (ties with it are kept); 0 keeps all."""
    vocab = logits.shape[-1]
    if top_k <= 0 or top_k >= vocab:
        return logits
    kth_largest = np.partition(logits, vocab - top_k, axis=-1)[:, vocab - top_k, None]
    return np.where(logits < kth_largest, -np.inf, logits).astype(np.float32)


def top_p_filter(logits: np.ndarray, top_p: float) -> np.ndarray:
    """Nucleus filtering: keep each row's most probable tokens whose probabilities first sum to at least ``top_p``.

    The most probable token is always kept; 1.0 keeps all.
    """
    if top_p >= 1.0:
        return logits
    order = np.argsort(-logits, axis=-1, kind="stable")
    sorted_logits = np.take_along_axis(logits, order, axis=-1)
    probabilities = softmax(sorted_logits)
    mass_before = np.cumsum(probabilities, axis=-1) - probabilities
    drop_sorted = mass_before >= top_p  # the tokens before already hold top_p of the mass
    drop_sorted[:, 0] = False
    drop = np.empty_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    return np.where(drop, -np.inf, logits).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (-inf logits get probability 0)."""
    values = np.asarray(logits, dtype=np.float64)
    values = values - values.max(axis=-1, keepdims=True)
    exponentials = np.exp(values)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def greedy(logits: np.ndarray) -> np.ndarray:
    """Each row's most probable token (the first of equal maxima), as int64 ``[batch]``."""
    return np.argmax(logits, axis=-1).astype(np.int64)


def sample(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row drawn from softmax(logits) with ``rng``, as int64 ``[batch]``."""
    probabilities = softmax(logits)
    cumulative = np.cumsum(probabilities, axis=-1)
    draws = rng.random(probabilities.shape[0]) * cumulative[:, -1]
    tokens = np.array([np.searchsorted(cumulative[row], draws[row], side="right") for row in range(len(draws))], np.int64)
    # a draw can only land past the end by rounding; the last token with probability > 0 takes it
    last_possible = probabilities.shape[-1] - 1 - np.argmax(probabilities[:, ::-1] > 0, axis=-1)
    return np.minimum(tokens, last_possible).astype(np.int64)


def next_tokens(logits: np.ndarray, *, do_sample: bool, temperature: float, top_k: int, top_p: float,
                repetition_penalty: float, previous_tokens: np.ndarray, previous_mask: np.ndarray | None,
                rng: np.random.Generator | None) -> np.ndarray:
    """The next token of each row: the processors in transformers' order, then greedy or sampled."""
    logits = np.asarray(logits, dtype=np.float32)
    logits = apply_repetition_penalty(logits, previous_tokens, repetition_penalty, previous_mask)
    if not do_sample:
        return greedy(logits)
    logits = top_p_filter(top_k_filter(apply_temperature(logits, temperature), top_k), top_p)
    assert rng is not None
    return sample(logits, rng)
