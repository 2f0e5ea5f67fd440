"""Token generation over a decoder with a key/value cache fed back step by step.

The decoder has the inputs and outputs transformers/optimum exporters (and onnxruntime-genai's
builder without a shared buffer) name: ``input_ids``, ``attention_mask``, optional
``position_ids`` and ``past_key_values.N.key/value`` ``[batch, kv_heads, past, head_size]`` in;
``logits`` and ``present.N.key/value`` ``[batch, kv_heads, past + seq, head_size]`` out. The
attention inside may be spelled out or fused (GroupQueryAttention / MultiHeadAttention): only the
inputs and outputs matter. How the cache is kept between steps (in-place appends to buffers with spare
room, onnxruntime's shared past/present buffers, or the presents fed back as pasts) is
:mod:`onyxrt.genai.kv_cache`'s choice.
"""

from __future__ import annotations

import numbers
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from . import sampling
from .kv_cache import GrowingCache, PlainCache, SharedBufferCache, genai_config_shares_buffers, shares_buffers

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(bfloat16)": None}


@dataclass(frozen=True)
class CacheLayout:
    """What the decoder's key/value cache looks like, read from the session's inputs and outputs."""

    past_names: tuple[str, ...]        # past_key_values.N.key/value, layer by layer
    present_names: tuple[str, ...]     # the output fed back to each of them
    kv_heads: int
    head_size: int
    dtype: np.dtype
    has_position_ids: bool
    has_attention_mask: bool

    @property
    def layers(self) -> int:
        return len(self.past_names) // 2


@dataclass
class GenerationStats:
    """Timing of the last generation: the prompt's forward pass (prefill) and the steps after it (decode)."""

    batch: int = 0
    prompt_tokens: int = 0      # per row, padding included
    new_tokens: int = 0         # per row (steps taken)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    cache: str = ""             # how the key/value cache was kept: "buffers", "shared" or "plain" (kv_cache)
    cache_reloads: int = 0      # "buffers": presents a kernel concatenated itself, copied into the buffer

    @property
    def time_to_first_token(self) -> float:
        """Seconds from the start to the first new token (the prefill and its token choice)."""
        return self.prefill_seconds

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.batch * self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        """New tokens after the first (each needs one decode step), all rows counted, per second."""
        steps = self.new_tokens - 1
        return self.batch * steps / self.decode_seconds if steps > 0 and self.decode_seconds else 0.0


def _layout(session: Any) -> CacheLayout:
    inputs = {arg.name: arg for arg in session.get_inputs()}
    outputs = {arg.name for arg in session.get_outputs()}
    if "input_ids" not in inputs:
        raise ValueError(f"model: a decoder needs an input named 'input_ids' (its inputs: {', '.join(inputs)})")
    if "logits" not in outputs:
        raise ValueError(f"model: a decoder needs an output named 'logits' (its outputs: {', '.join(sorted(outputs))})")
    layers: dict[int, dict[str, str]] = {}
    for name in inputs:
        match = _PAST.match(name)
        if match:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = name
    known = {"input_ids", "attention_mask", "position_ids"}
    unknown = [name for name in inputs if name not in known and not _PAST.match(name)]
    if unknown:
        raise ValueError(f"model: input '{unknown[0]}' is not one a decoder generation feeds "
                         "(input_ids, attention_mask, position_ids, past_key_values.N.key/value)")
    if not layers:
        raise ValueError("model: no past_key_values.N.key/value inputs; generation needs a decoder with a key/value cache")
    if sorted(layers) != list(range(len(layers))) or any(set(kinds) != {"key", "value"} for kinds in layers.values()):
        raise ValueError(f"model: past_key_values inputs must be a key and a value for each layer 0..N-1 "
                         f"(found layers {sorted(layers)})")
    past_names, present_names = [], []
    for layer in range(len(layers)):
        for kind in ("key", "value"):
            past = layers[layer][kind]
            present = f"present.{layer}.{kind}"
            if present not in outputs:
                raise ValueError(f"model: input '{past}' has no output '{present}' to be fed back from")
            past_names.append(past)
            present_names.append(present)
    for name in past_names:
        shape = list(inputs[name].shape)
        if len(shape) != 4 or not all(isinstance(dim, int) for dim in (shape[1], shape[3])):
            raise ValueError(f"model: input '{name}' must be [batch, kv_heads, past, head_size] with fixed "
                             f"kv_heads and head_size (declared {shape})")
        if (shape[1], shape[3]) != (inputs[past_names[0]].shape[1], inputs[past_names[0]].shape[3]):
            raise ValueError(f"model: input '{name}' is {shape}, '{past_names[0]}' {list(inputs[past_names[0]].shape)}; "
                             "every layer's cache must have the same kv_heads and head_size")
    first = inputs[past_names[0]]
    shape = list(first.shape)
    dtype = _DTYPES.get(first.type, "unknown")
    if dtype is None or dtype == "unknown":
        raise ValueError(f"model: input '{first.name}' has type {first.type}; the cache must be float, float16 or double")
    for name in past_names[1:]:
        if inputs[name].type != first.type:
            raise ValueError(f"model: input '{name}' has type {inputs[name].type}, '{first.name}' {first.type}")
    return CacheLayout(tuple(past_names), tuple(present_names), int(shape[1]), int(shape[3]), np.dtype(dtype),
                       "position_ids" in inputs, "attention_mask" in inputs)


def _check_int(name: str, value: Any, minimum: int | None = None, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int{' or None' if optional else ''}, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _check_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return (_check_int("eos_token_id", value, 0),)
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        return tuple(_check_int("eos_token_id", item, 0) for item in value)
    raise TypeError(f"eos_token_id must be an int, a sequence of ints or None, got {type(value).__name__}")


def _token_array(name: str, value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "iu" and array.size:  # [] and [[]] are empty prompts, reported below
        raise TypeError(f"{name} must be an integer array, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [batch, sequence], got shape {list(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one token per row, got shape {list(array.shape)}")
    return array.astype(np.int64)


def _left_padding_mask(mask: np.ndarray, input_ids: np.ndarray) -> np.ndarray:
    mask = _token_array("attention_mask", mask)
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {list(mask.shape)}, input_ids {list(input_ids.shape)}")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("attention_mask must hold only 0 and 1")
    if (mask.sum(axis=1) == 0).any():
        raise ValueError(f"attention_mask: row {int(np.argmin(mask.sum(axis=1)))} masks every token")
    if (np.diff(mask, axis=1) < 0).any():  # a 1 followed by a 0: padding on the right or inside
        raise ValueError("attention_mask: generation needs left padding (zeros only before each row's first token)")
    return mask


class Generator:
    """Greedy or sampled generation with a decoder ONNX model (onnxruntime-genai's role, numpy in and out).

    ``model`` is a path (or bytes) loaded with onyxrt, or an existing session (onyxrt's or
    onnxruntime's ``InferenceSession``). ``tokenizer`` (a ``tokenizers.Tokenizer`` or the path of a
    tokenizer.json) enables :meth:`generate_text`.

    ``past_present_share_buffer``: bind each present to its past's ``(batch, kv_heads, max_length,
    head_size)`` buffer (onnxruntime's GroupQueryAttention buffer sharing, as onnxruntime-genai
    does); None (default) takes ``search.past_present_share_buffer`` from a ``genai_config.json``
    beside the model file (onnxruntime-genai's), else turns it on when the declared past and
    present shapes share their sequence dim. ``max_length`` caps prompt + new tokens (and sizes those buffers; without it they
    hold each generation's prompt + ``max_new_tokens``). Otherwise an onyxrt session appends to
    buffers with spare room in place, and any other session gets its presents back as pasts.
    """

    def __init__(self, model: str | os.PathLike | bytes | Any, *, sess_options: Any = None,
                 providers: Sequence[Any] | None = None, tokenizer: Any = None,
                 past_present_share_buffer: bool | None = None, max_length: int | None = None) -> None:
        if isinstance(model, (str, os.PathLike, bytes)):
            from ..session.inference_session import InferenceSession
            self.session = InferenceSession(os.fspath(model) if not isinstance(model, bytes) else model,
                                            sess_options, providers=list(providers or ["CPUExecutionProvider"]))
        elif all(hasattr(model, attribute) for attribute in ("run", "get_inputs", "get_outputs")):
            self.session = model
        else:
            raise TypeError(f"model must be a path, bytes or an InferenceSession, got {type(model).__name__}")
        self.layout = _layout(self.session)
        self.max_length = _check_int("max_length", max_length, 1, optional=True)
        if past_present_share_buffer is None and isinstance(model, (str, os.PathLike)):
            past_present_share_buffer = genai_config_shares_buffers(model)
        if past_present_share_buffer is None:
            past_present_share_buffer = shares_buffers(self.session, self.layout)
        elif not isinstance(past_present_share_buffer, (bool, np.bool_)):
            raise TypeError("past_present_share_buffer must be a bool or None, "
                            f"got {type(past_present_share_buffer).__name__}")
        if past_present_share_buffer and not self.layout.has_attention_mask:
            raise ValueError("past_present_share_buffer: the model needs an 'attention_mask' input "
                             "(its valid cache length comes from the mask)")
        self.past_present_share_buffer = bool(past_present_share_buffer)
        logits = next(arg for arg in self.session.get_outputs() if arg.name == "logits")
        vocab = list(logits.shape)[-1] if logits.shape else None
        self.vocab_size: int | None = vocab if isinstance(vocab, int) else None
        self.tokenizer = _load_tokenizer(tokenizer) if tokenizer is not None else None
        self.last_stats = GenerationStats()

    # --- public API ---------------------------------------------------------------------------

    def generate(self, input_ids: Any, max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                 eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
                 seed: int | None = None, attention_mask: Any = None) -> np.ndarray:
        """Prompt + new tokens, int64 ``[batch, prompt + steps]``.

        ``input_ids`` is ``[batch, prompt]``, rows left-padded (padding marked by ``attention_mask``
        or, without one, by ``pad_token_id``). Rows that produced an eos token are filled with
        ``pad_token_id`` (else the first eos id) afterwards; generation stops once every row has.
        """
        prompt = _token_array("input_ids", input_ids)
        steps = list(self.stream(prompt, max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty,
                                 eos_token_id, pad_token_id, seed, attention_mask))
        new = np.stack(steps, axis=1) if steps else np.zeros((prompt.shape[0], 0), np.int64)
        return np.concatenate([prompt, new], axis=1)

    def stream(self, input_ids: Any, max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
               eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
               seed: int | None = None, attention_mask: Any = None) -> Iterator[np.ndarray]:
        """Like :meth:`generate`, but yields each step's tokens (int64 ``[batch]``) as they come.

        The arguments are checked when this is called, before the first token is asked for.
        """
        prompt = _token_array("input_ids", input_ids)
        max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 0)
        if not isinstance(do_sample, (bool, np.bool_)):
            raise TypeError(f"do_sample must be a bool, got {type(do_sample).__name__}")
        temperature = _check_float("temperature", temperature)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        top_k = _check_int("top_k", top_k, 0)
        top_p = _check_float("top_p", top_p)
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        repetition_penalty = _check_float("repetition_penalty", repetition_penalty)
        if repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
        eos = _eos_ids(eos_token_id)
        pad_token_id = _check_int("pad_token_id", pad_token_id, 0, optional=True)
        seed = _check_int("seed", seed, 0, optional=True)
        if (prompt < 0).any() or (self.vocab_size is not None and (prompt >= self.vocab_size).any()):
            raise ValueError(f"input_ids must be token ids in [0, {self.vocab_size or 'vocabulary size'}), "
                             f"got {int(prompt.min())}..{int(prompt.max())}")
        if attention_mask is not None:
            mask = _left_padding_mask(attention_mask, prompt)
        elif pad_token_id is not None:
            mask = _left_padding_mask((prompt != pad_token_id).astype(np.int64), prompt)
        else:
            mask = np.ones_like(prompt)
        if self.max_length is not None and prompt.shape[1] + max_new_tokens > self.max_length:
            raise ValueError(f"max_length {self.max_length}: a prompt of {prompt.shape[1]} tokens and "
                             f"max_new_tokens {max_new_tokens} do not fit")
        if self.past_present_share_buffer and not mask.all():
            # GroupQueryAttention reads each row's length from the mask and takes padding as trailing
            raise ValueError("past_present_share_buffer: padded rows are not supported (the shared buffers "
                             "hold each row's tokens from position 0); generate them one by one")
        filler = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
        rng = np.random.default_rng(seed) if do_sample else None
        return self._steps(prompt, mask, max_new_tokens, eos, filler, rng,
                           dict(do_sample=bool(do_sample), temperature=temperature, top_k=top_k, top_p=top_p,
                                repetition_penalty=repetition_penalty))

    def generate_text(self, prompt: str, max_new_tokens: int = 20, **options: Any) -> str:
        """The text that follows ``prompt`` (the new tokens decoded, special tokens skipped); needs ``tokenizer=``."""
        if self.tokenizer is None:
            raise ValueError("generate_text needs a tokenizer: pass tokenizer= (a tokenizers.Tokenizer or a tokenizer.json path)")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        ids = self.tokenizer.encode(prompt).ids
        if not ids:
            raise ValueError("prompt: the tokenizer made no tokens of it")
        output = self.generate(np.asarray([ids], np.int64), max_new_tokens, **options)
        return self.tokenizer.decode(output[0, len(ids):].tolist(), skip_special_tokens=True)

    # --- the loop -----------------------------------------------------------------------------

    def _steps(self, prompt: np.ndarray, mask: np.ndarray, max_new_tokens: int, eos: tuple[int, ...], filler: int,
               rng: np.random.Generator | None, choice: dict[str, Any]) -> Iterator[np.ndarray]:
        layout = self.layout
        batch = prompt.shape[0]
        stats = self.last_stats = GenerationStats(batch=batch, prompt_tokens=prompt.shape[1])
        if max_new_tokens == 0:
            return
        cache = self._cache(batch, prompt.shape[1], max_new_tokens)
        stats.cache = cache.mode
        feeds: dict[str, np.ndarray] = {"input_ids": prompt}
        history, history_mask = prompt, mask
        finished = np.zeros(batch, bool)
        for step in range(max_new_tokens):
            start = time.perf_counter()
            if layout.has_attention_mask:
                feeds["attention_mask"] = mask
            if layout.has_position_ids:
                # HF's positions: count only real tokens, so a left-padded row starts at 0 like an unpadded one
                positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
                feeds["position_ids"] = positions[:, -feeds["input_ids"].shape[1]:]
            logits = cache.run(self.session, feeds)
            stats.cache_reloads = cache.reloads
            tokens = sampling.next_tokens(logits[:, -1, :], previous_tokens=history, previous_mask=history_mask,
                                          rng=rng, **choice)
            tokens = np.where(finished, filler, tokens).astype(np.int64)
            if eos:
                finished |= np.isin(tokens, eos)
            seconds = time.perf_counter() - start
            stats.step_seconds.append(seconds)
            if step == 0:
                stats.prefill_seconds = seconds
            else:
                stats.decode_seconds += seconds
            stats.new_tokens = step + 1
            yield tokens
            if finished.all() or step + 1 == max_new_tokens:
                return
            history = np.concatenate([history, tokens[:, None]], axis=1)
            history_mask = np.concatenate([history_mask, np.ones((batch, 1), np.int64)], axis=1)
            mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
            feeds = {"input_ids": tokens[:, None]}

    def _cache(self, batch: int, prompt_length: int,
               max_new_tokens: int) -> PlainCache | GrowingCache | SharedBufferCache:
        """The key/value cache of one generation (see :mod:`onyxrt.genai.kv_cache`)."""
        from ..session.inference_session import InferenceSession

        # the last token is chosen, never fed: the cache holds at most prompt + max_new_tokens - 1 rows
        longest = self.max_length or prompt_length + max_new_tokens
        if self.past_present_share_buffer:
            return SharedBufferCache(self.session, self.layout, batch, longest)
        if isinstance(self.session, InferenceSession):
            # room for the prompt and some steps; doubling after that, never past the longest
            return GrowingCache(self.layout, batch, prompt_length + max(64, prompt_length), longest)
        return PlainCache(self.layout, batch)


def _load_tokenizer(tokenizer: Any) -> Any:
    try:
        import tokenizers
    except ImportError:
        raise ImportError("tokenizer= needs the 'tokenizers' package: pip install onyxrt[genai]") from None
    if isinstance(tokenizer, (str, os.PathLike)):
        path = os.fspath(tokenizer)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer: no such file '{path}'")
        return tokenizers.Tokenizer.from_file(path)
    if isinstance(tokenizer, tokenizers.Tokenizer):
        return tokenizer
    raise TypeError(f"tokenizer must be a tokenizers.Tokenizer or the path of a tokenizer.json, got {type(tokenizer).__name__}")
