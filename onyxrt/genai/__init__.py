"""Text generation with decoder models: a greedy/sampling loop over a key/value cache (onnxruntime-genai's role).

``Generator(model).generate(input_ids, max_new_tokens=...)``; ``onyxrt generate MODEL`` on the command line.
"""

from ..framework.kv_cache import CacheBuffer
from .generator import CacheLayout, GenerationStats, Generator
from .sampling import apply_repetition_penalty, apply_temperature, top_k_filter, top_p_filter

__all__ = ["CacheBuffer", "CacheLayout", "GenerationStats", "Generator", "apply_repetition_penalty",
           "apply_temperature", "top_k_filter", "top_p_filter"]
