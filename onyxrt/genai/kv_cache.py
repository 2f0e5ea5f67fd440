"""How the Generator keeps a decoder's key/value cache between steps.

Three ways, chosen by :func:`choose_cache`:

- :class:`GrowingCache` (onyxrt sessions, Concat-export decoders): each past is a view of a
  :class:`~onyxrt.framework.kv_cache.CacheBuffer` with spare room; the kernel that would
  concatenate (Concat, or GroupQueryAttention fused from it) writes only the new rows there, so a
  step copies no cache. Room grows by doubling, up to the generation's length.
- :class:`SharedBufferCache` (onnxruntime's ``past_present_share_buffer``): GroupQueryAttention
  decoders whose pasts are ``(batch, kv_heads, max_length, head_size)`` buffers; each present output
  is bound (IOBinding) to its past's own buffer, so the kernel writes the new rows in place and
  ``attention_mask`` (through seqlens_k / total_sequence_length) says how many are valid. Works
  with onyxrt's and onnxruntime's sessions alike, as onnxruntime-genai drives them.
- :class:`PlainCache`: the presents fed back as the next pasts (any session, e.g. onnxruntime's,
  whose Concat copies the cache each step anyway).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from ..framework.kv_cache import CacheBuffer

if TYPE_CHECKING:
    from .generator import CacheLayout


class PlainCache:
    """Each step's presents become the next step's pasts."""

    mode = "plain"

    def __init__(self, layout: CacheLayout, batch: int) -> None:
        self.layout = layout
        self.reloads = 0
        empty = np.zeros((batch, layout.kv_heads, 0, layout.head_size), layout.dtype)
        self._pasts = {name: empty for name in layout.past_names}

    def run(self, session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One step; returns the logits and keeps the presents."""
        logits, *presents = session.run(["logits", *self.layout.present_names], {**feeds, **self._pasts})
        self._pasts = dict(zip(self.layout.past_names, presents))
        return logits


class GrowingCache:
    """Pasts fed as views of buffers with spare room; onyxrt's kernels append the new rows in place."""

    mode = "buffers"

    def __init__(self, layout: CacheLayout, batch: int, initial_capacity: int, max_length: int) -> None:
        self.layout = layout
        self.reloads = 0  # presents a kernel concatenated itself (copied into the buffer afterwards)
        self.max_length = max_length
        shape = (batch, layout.kv_heads, 0, layout.head_size)
        self.buffers = [CacheBuffer(shape, layout.dtype, min(initial_capacity, max_length))
                        for _ in layout.past_names]

    def run(self, session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
        new = feeds["input_ids"].shape[1]
        pasts = {}
        for name, buffer in zip(self.layout.past_names, self.buffers):
            buffer.reserve(buffer.length + new, self.max_length)
            pasts[name] = buffer.view()
        logits, *presents = session.run(["logits", *self.layout.present_names], {**feeds, **pasts})
        for buffer, present in zip(self.buffers, presents):
            if not buffer.holds(present):  # concatenated elsewhere (an unfused graph the check missed, no room)
                buffer.load(present)
                self.reloads += 1
        return logits


class SharedBufferCache:
    """Pasts and presents bound to one ``(batch, kv_heads, max_length, head_size)`` buffer per cache tensor."""

    mode = "shared"

    def __init__(self, session: Any, layout: CacheLayout, batch: int, max_length: int) -> None:
        self.layout = layout
        self.reloads = 0
        self.max_length = max_length
        self.length = 0
        shape = (batch, layout.kv_heads, max_length, layout.head_size)
        self.buffers = [np.zeros(shape, layout.dtype) for _ in layout.past_names]
        self._binding = session.io_binding()
        self._binding.bind_output("logits", "cpu")  # first: get_outputs() lists outputs in binding order
        for past, present, buffer in zip(layout.past_names, layout.present_names, self.buffers):
            # the same memory as input and output: the kernel sees one buffer and writes only the new rows
            self._binding.bind_input(past, "cpu", 0, buffer.dtype, buffer.shape, buffer.ctypes.data)
            self._binding.bind_output(present, "cpu", 0, buffer.dtype, buffer.shape, buffer.ctypes.data)

    def run(self, session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
        new = feeds["input_ids"].shape[1]
        if self.length + new > self.max_length:
            raise ValueError(f"max_length {self.max_length}: the shared key/value buffers have no room for "
                             f"{self.length + new} tokens")
        # rebound each step: onnxruntime would otherwise write into the last step's logits, of its shape
        self._binding.bind_output("logits", "cpu")
        for name, value in feeds.items():
            self._binding.bind_cpu_input(name, np.ascontiguousarray(value))
        session.run_with_iobinding(self._binding)
        self.length += new
        return np.asarray(self._binding.get_outputs()[0].numpy())


def shares_buffers(session: Any, layout: CacheLayout) -> bool:
    """Whether the declared shapes say each present is its past's buffer: the same sequence dim (a shared
    symbol such as ``max_sequence_length``, or the same number) -- where a Concat export says past vs total."""
    inputs = {arg.name: list(arg.shape) for arg in session.get_inputs()}
    outputs = {arg.name: list(arg.shape) for arg in session.get_outputs()}
    for past, present in zip(layout.past_names, layout.present_names):
        past_dim = inputs[past][2]
        present_shape = outputs.get(present) or []
        if len(present_shape) != 4 or past_dim is None or present_shape[2] != past_dim:
            return False
    return True


def genai_config_shares_buffers(model_path: str | os.PathLike) -> bool | None:
    """onnxruntime-genai's setting for a model file: ``search.past_present_share_buffer`` of the
    ``genai_config.json`` beside it; None without such a file or setting."""
    config = os.path.join(os.path.dirname(os.path.abspath(os.fspath(model_path))), "genai_config.json")
    if not os.path.isfile(config):
        return None
    try:
        with open(config, encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{config}: cannot read it as JSON ({exc})") from None
    search = data.get("search") if isinstance(data, dict) else None
    value = search.get("past_present_share_buffer") if isinstance(search, dict) else None
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{config}: search.past_present_share_buffer must be true or false, got {value!r}")
    return value
