"""GroupQueryAttention's kernel alone on decoding-step inputs: its few-rows path against the general
path (``_attend`` with boolean masks), alternating in one process; minimum and median microseconds.

    python benchmarks/gqa_decode_kernel.py            # llama_tiny's shapes (8 heads, 2 kv heads, 64, past 127)
    python benchmarks/gqa_decode_kernel.py --repeat 30
"""

from __future__ import annotations

import argparse
import statistics
import timeit

import numpy as np

from onyxrt.providers.cpu.contrib import attention

CASES = {  # name: (batch, heads, kv heads, head size, past length, with an attention_bias (causal=0))
    "llama_tiny step, bias (as exported)": (1, 8, 2, 64, 127, True),
    "llama_tiny step, causal": (1, 8, 2, 64, 127, False),
    "batch 4, 32/8 heads, past 511": (4, 32, 8, 64, 511, False),
}


def step(batch: int, heads: int, kv_heads: int, head: int, past: int, bias: bool):
    """A callable running one decoding step's GroupQueryAttention."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((batch, 1, heads * head), dtype=np.float32)
    k, v = (rng.standard_normal((batch, 1, kv_heads * head), dtype=np.float32) for _ in range(2))
    past_k, past_v = (rng.standard_normal((batch, kv_heads, past, head), dtype=np.float32) for _ in range(2))
    seqlens, total = np.full(batch, past, np.int32), np.array(past + 1, np.int32)
    kwargs = {"num_heads": heads, "kv_num_heads": kv_heads, "_num_outputs": 3}
    if bias:
        kwargs.update(attention_bias=np.zeros((batch, 1, 1, past + 1), np.float32), causal=0)
    return lambda: attention.group_query_attention(q, k, v, past_k, past_v, seqlens, total, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15, help="alternations (each times 100 calls per path)")
    args = parser.parse_args()
    lean_rows = attention._FEW_QUERY_ROWS
    for name, shape in CASES.items():
        run = step(*shape)
        times: dict[str, list[float]] = {"few-rows path": [], "general path": []}
        for _ in range(args.repeat):
            for path, rows in (("few-rows path", lean_rows), ("general path", -1)):
                attention._FEW_QUERY_ROWS = rows
                times[path].append(timeit.timeit(run, number=100) / 100 * 1e6)
        attention._FEW_QUERY_ROWS = lean_rows
        print(f"{name}: " + "; ".join(f"{path} min {min(t):.1f} us, median {statistics.median(t):.1f} us"
                                      for path, t in times.items()))


if __name__ == "__main__":
    main()
