"""Each CPU kernel variant against the fallback kernel of its op version, on model-sized inputs.

    python benchmarks/kernel_variants.py

Prints, per (op, input shape, dtype), the best-of-7 time per call of the fallback and of
every variant whose type constraints the input meets (process CPU time, so a shared
machine disturbs it less).
"""

from __future__ import annotations

import time

import numpy as np

from onyxrt.providers.cpu.kernel_table import CPU_KERNELS

# op -> (opset, input shapes seen in the zoo models: resnet50's activations, bert_base's FFN)
CASES = {"Relu": (14, [(1, 64, 112, 112), (1, 256, 56, 56), (1, 2048, 7, 7), (1, 128, 3072)])}
DTYPES = (np.float32, np.float16)


def best_time(fn, x, calls: int = 20) -> float:
    fn(x)
    best = float("inf")
    for _ in range(7):
        start = time.process_time()
        for _ in range(calls):
            fn(x)
        best = min(best, (time.process_time() - start) / calls)
    return best


def main() -> None:
    print("| op | input | fallback (us) | variant | variant (us) | speed-up |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for op_type, (opset, shapes) in CASES.items():
        kernel = CPU_KERNELS.lookup("", op_type, opset)
        for shape in shapes:
            for dtype in DTYPES:
                x = rng.standard_normal(shape).astype(dtype)
                base = best_time(kernel.fn, x)
                for variant in kernel.variants:
                    if not variant.handles([x.dtype]):
                        continue
                    np.testing.assert_array_equal(variant.fn(x), kernel.fn(x))
                    fast = best_time(variant.fn, x)
                    print(f"| {op_type} | {shape} {np.dtype(dtype).name} | {base * 1e6:.0f} | {variant.fn.__name__} "
                          f"| {fast * 1e6:.0f} | {base / fast:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
