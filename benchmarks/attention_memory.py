"""Peak extra memory and latency of onyxrt's tiled vs untiled CPU attention.

Model: one com.microsoft MultiHeadAttention (12 heads x 64, batch 1, float32; query, key and
value fed as (1, seq, 768)), non-causal and causal (unidirectional=1). Each measurement runs
in a fresh subprocess:

* memory: ``tracemalloc`` (numpy registers its buffers with it) started after the feeds
  exist, around one ``session.run`` after a warm-up run; the peak of traced allocations is
  the run's extra memory, output included (the output itself is seq x 768 x 4 bytes).
* latency: fastest and median wall time of ``--repeats`` runs after one warm-up (the fastest
  is the least disturbed by other load on the machine).

The untiled path is forced by raising ``attention_tiled.TILED_THRESHOLD_BYTES`` out of reach,
the tiled one by setting it to 0. onnxruntime (latency only) runs the same model in its own
process.

    python benchmarks/attention_memory.py [--seqs 512 1024 2048 4096] [--repeats 5] [--causal 0 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HEADS, HEAD_SIZE = 12, 64

CHILD = r"""
import json, statistics, sys, time, tracemalloc
import numpy as np
seq, engine, path, mode, repeats = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
rng = np.random.default_rng(0)
feeds = {name: rng.standard_normal((1, seq, 768)).astype(np.float32) for name in ("q", "k", "v")}
if engine == "onnxruntime":
    import onnxruntime as rt
    session = rt.InferenceSession(path, providers=["CPUExecutionProvider"])
else:
    import onyxrt as rt
    from onyxrt.providers.cpu.nn import attention_tiled
    attention_tiled.TILED_THRESHOLD_BYTES = 0 if mode == "tiled" else 1 << 62
    session = rt.InferenceSession(path, providers=["CPUExecutionProvider"])
session.run(None, feeds)  # warm-up
peak = None
if engine != "onnxruntime":
    tracemalloc.start()
    session.run(None, feeds)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
times = []
for _ in range(repeats):
    start = time.perf_counter()
    session.run(None, feeds)
    times.append(time.perf_counter() - start)
print(json.dumps({"peak_bytes": peak, "median_s": statistics.median(times), "min_s": min(times)}))
"""


def build_model(path: str, causal: int) -> None:
    import onnx
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "s", HEADS * HEAD_SIZE]) for n in ("q", "k", "v")]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "s", HEADS * HEAD_SIZE])
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain="com.microsoft",
                            num_heads=HEADS, unidirectional=causal)
    graph = helper.make_graph([node], "mha", io, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, path)


def measure(seq: int, engine: str, path: str, mode: str, repeats: int) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(seq), engine, path, mode, str(repeats)],
                            capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(__file__)) or ".")
    return json.loads(result.stdout.strip().splitlines()[-1])


KERNELS = r"""
import json, sys, tracemalloc
import numpy as np
from onyxrt.providers.cpu.contrib import attention as contrib
from onyxrt.providers.cpu.nn import attention as standard
seq = int(sys.argv[1])
rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal((1, 12, seq, 64)).astype(np.float32) for _ in range(3))
hidden = rng.standard_normal((1, seq, 768)).astype(np.float32)
kv = rng.standard_normal((1, seq, 256)).astype(np.float32)
cases = {
    "Attention-23, is_causal=1 (4-D q/k/v, 12 heads)": lambda: standard.attention(q, k, v, is_causal=1),
    "Attention-23, is_causal=1, left_window_size=256, (1, seq) float mask": lambda: standard.attention(
        q, k, v, np.zeros((1, seq), np.float32), is_causal=1, left_window_size=256),
    "GroupQueryAttention prompt, 12 q / 4 kv heads, local_window_size=1024 (present K/V outputs included)": lambda: (
        contrib.group_query_attention(hidden, kv, kv.copy(), None, None, np.array([seq - 1], np.int32),
                                      np.array([seq], np.int32), num_heads=12, kv_num_heads=4,
                                      local_window_size=1024, _num_outputs=3)),
}
result = {}
for name, run in cases.items():
    run()
    tracemalloc.start()
    run()
    result[name] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
print(json.dumps(result))
"""


def kernel_memory(seq: int) -> dict:
    """Peak traced memory of the kernels called directly (default threshold: tiled at this length)."""
    result = subprocess.run([sys.executable, "-c", KERNELS, str(seq)], capture_output=True, text=True, check=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)) or ".")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _time(result: dict) -> str:
    return f"{result['min_s']:.3f} ({result['median_s']:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--causal", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    mib = 1 << 20
    print("| causal | seq | one seq x seq f32 matrix (MiB) | output (MiB) | untiled peak (MiB) | tiled peak (MiB) "
          "| untiled s: min (median) | tiled s: min (median) | onnxruntime s: min (median) |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for causal in args.causal:
            path = os.path.join(tmp, f"mha_{causal}.onnx")
            build_model(path, causal)
            for seq in args.seqs:
                untiled = measure(seq, "onyxrt", path, "untiled", args.repeats)
                tiled = measure(seq, "onyxrt", path, "tiled", args.repeats)
                ort = measure(seq, "onnxruntime", path, "-", args.repeats)
                print(f"| {causal} | {seq} | {seq * seq * 4 / mib:.0f} | {seq * HEADS * HEAD_SIZE * 4 / mib:.1f} "
                      f"| {untiled['peak_bytes'] / mib:.1f} | {tiled['peak_bytes'] / mib:.1f} "
                      f"| {_time(untiled)} | {_time(tiled)} | {_time(ort)} |", flush=True)
    seq = max(args.seqs)
    print(f"\nKernels called directly at seq {seq} (default threshold), peak traced memory, output(s) included:\n")
    for name, peak in kernel_memory(seq).items():
        print(f"* {name}: {peak / mib:.1f} MiB")


if __name__ == "__main__":
    main()
