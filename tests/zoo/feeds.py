"""Deterministic inputs for the zoo models at a given batch/sequence/past length."""

from __future__ import annotations

import numpy as np

VOCAB = {"bert_base": 30522, "minilm_l6": 30522, "llama_tiny": 32000}
LLAMA_LAYERS, LLAMA_KV_HEADS, LLAMA_HEAD_DIM = 4, 2, 64


def vision_feeds(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)}


def encoder_feeds(name: str, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Token ids with the last rows padded (mask 0), two segments of token types."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(0, VOCAB[name], size=(batch, seq), dtype=np.int64)
    attention_mask = np.ones((batch, seq), dtype=np.int64)
    if batch > 1:
        attention_mask[1:, seq - seq // 4:] = 0
    token_type_ids = np.zeros((batch, seq), dtype=np.int64)
    token_type_ids[:, seq // 2:] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def decoder_feeds(batch: int, seq: int, past: int, seed: int = 0) -> dict[str, np.ndarray]:
    """llama_tiny inputs: ``seq`` new tokens after ``past`` cached ones."""
    rng = np.random.default_rng(seed)
    feeds = {
        "input_ids": rng.integers(0, VOCAB["llama_tiny"], size=(batch, seq), dtype=np.int64),
        "position_ids": np.tile(np.arange(past, past + seq, dtype=np.int64), (batch, 1)),
        "attention_mask": np.ones((batch, past + seq), dtype=np.int64),
    }
    for layer in range(LLAMA_LAYERS):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{layer}.{kind}"] = rng.standard_normal(
                (batch, LLAMA_KV_HEADS, past, LLAMA_HEAD_DIM), dtype=np.float32
            )
    return feeds
