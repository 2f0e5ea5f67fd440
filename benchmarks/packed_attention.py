"""Packed (padding-free) attention against the padded run, BERT-base-sized.

    python benchmarks/packed_attention.py --out benchmarks/packed_attention.md

One encoder self-attention layer (hidden 768, 12 heads of 64; Q/K/V projection weights and
bias as initializers) on a batch of 8 sequences of lengths 16, 32, ..., 128:

* onyxrt com.microsoft PackedAttention on the 576 real tokens (token_offset /
  cumulative_sequence_length from onyxrt.packing.pack_padded_batch);
* onyxrt com.microsoft Attention on the batch padded to 128 (8 x 128 = 1024 rows) with a
  mask_index of the lengths;
* onnxruntime's Attention on the same padded batch, as a reference (onnxruntime's CPU build
  has no PackedAttention kernel).

First the three outputs are compared on the real tokens. Then each configuration runs in its
own process, the configurations alternating for ``--rounds`` rounds; a process times
``--repeat`` runs after a warm-up and reports their median; the table gives the median of those
per-process medians (and their range). Optimizer off, ``--threads`` intra-op threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import timed_runs, worker_result, write_table  # noqa: E402

HIDDEN, HEADS = 768, 12
LENGTHS = tuple(range(16, 129, 16))  # 8 sequences, 16..128
MAX_LENGTH = max(LENGTHS)
CONFIGS = (("onyxrt", "packed"), ("onyxrt", "padded"), ("onnxruntime", "padded"))


def _weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    weights = (rng.standard_normal((HIDDEN, 3 * HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)
    bias = (rng.standard_normal(3 * HIDDEN) * 0.02).astype(np.float32)
    return weights, bias


def padded_batch() -> tuple[np.ndarray, np.ndarray]:
    """(8, 128, 768) hidden states (padding rows random too) and the (8, 128) right-padded mask."""
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((len(LENGTHS), MAX_LENGTH, HIDDEN)).astype(np.float32)
    mask = (np.arange(MAX_LENGTH)[None, :] < np.asarray(LENGTHS)[:, None]).astype(np.int32)
    return hidden, mask


def feeds(mode: str) -> dict[str, np.ndarray]:
    from onyxrt.packing import pack_padded_batch

    hidden, mask = padded_batch()
    if mode == "padded":
        return {"input": hidden, "mask_index": np.asarray(LENGTHS, np.int32)}
    batch = pack_padded_batch(hidden, mask)
    return {"input": batch.packed, "token_offset": batch.token_offset,
            "cumulative_sequence_length": batch.cumulative_sequence_length}


def model(mode: str) -> onnx.ModelProto:
    weights, bias = _weights()
    initializers = [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")]
    if mode == "packed":
        inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["tokens", HIDDEN]),
                  helper.make_tensor_value_info("token_offset", TensorProto.INT32, ["batch", "sequence"]),
                  helper.make_tensor_value_info("cumulative_sequence_length", TensorProto.INT32, ["batch_plus_1"])]
        node = helper.make_node("PackedAttention", ["input", "weights", "bias", "token_offset", "cumulative_sequence_length"],
                                ["output"], domain="com.microsoft", num_heads=HEADS)
        output_shape = ["tokens", HIDDEN]
    else:
        inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "sequence", HIDDEN]),
                  helper.make_tensor_value_info("mask_index", TensorProto.INT32, ["batch"])]
        node = helper.make_node("Attention", ["input", "weights", "bias", "mask_index"], ["output"],
                                domain="com.microsoft", num_heads=HEADS)
        output_shape = ["batch", "sequence", HIDDEN]
    graph = helper.make_graph([node], f"attention_{mode}", inputs,
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, output_shape)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def session(runtime: str, path: str, threads: int):
    rt = __import__(runtime)
    options = rt.SessionOptions()
    options.graph_optimization_level = rt.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = threads
    return rt.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def worker(runtime: str, mode: str, path: str, repeat: int, threads: int) -> None:
    times = timed_runs(session(runtime, path, threads), feeds(mode), repeat, warmup=5)
    print(json.dumps(statistics.median(times)))


def check_equal(paths: dict[str, str], threads: int) -> float:
    """Largest |difference| on the real tokens between the packed run and both padded runs."""
    from onyxrt.packing import pack_padded_batch

    hidden, mask = padded_batch()
    batch = pack_padded_batch(hidden, mask)
    valid = mask.astype(bool)
    packed = batch.unpack(session("onyxrt", paths["packed"], threads).run(None, feeds("packed"))[0])
    worst = 0.0
    for runtime in ("onyxrt", "onnxruntime"):
        padded = session(runtime, paths["padded"], threads).run(None, feeds("padded"))[0]
        worst = max(worst, float(np.abs(packed[valid] - padded[valid]).max()))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (one process per configuration each)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per process")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of every session")
    parser.add_argument("--out", help="write the markdown table here")
    parser.add_argument("--worker", nargs=3, metavar=("RUNTIME", "MODE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.repeat, args.threads)
        return 0

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for mode in ("packed", "padded"):
            paths[mode] = str(Path(tmp) / f"{mode}.onnx")
            onnx.save(model(mode), paths[mode])
        max_difference = check_equal(paths, args.threads)
        if max_difference > 1e-4:
            raise SystemExit(f"packed and padded outputs differ by {max_difference} on the real tokens")
        medians: dict[tuple[str, str], list[float]] = {config: [] for config in CONFIGS}
        for round_index in range(args.rounds):
            order = CONFIGS if round_index % 2 == 0 else tuple(reversed(CONFIGS))
            for runtime, mode in order:
                arguments = [__file__, "--worker", runtime, mode, paths[mode], "--repeat", str(args.repeat),
                             "--threads", str(args.threads)]
                medians[(runtime, mode)].append(worker_result(arguments))

    def cell(config: tuple[str, str]) -> str:
        values = medians[config]
        return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"

    load_after = os.getloadavg()[0]
    packed = statistics.median(medians[("onyxrt", "packed")])
    padded = statistics.median(medians[("onyxrt", "padded")])
    reference = statistics.median(medians[("onnxruntime", "padded")])
    tokens = sum(LENGTHS)
    lines = [
        f"# Packed attention: batch of {len(LENGTHS)} sequences of lengths {LENGTHS[0]}..{LENGTHS[-1]} "
        f"(step {LENGTHS[1] - LENGTHS[0]}), hidden {HIDDEN}, {HEADS} heads",
        "",
        f"{tokens} real tokens packed vs {len(LENGTHS) * MAX_LENGTH} padded rows. Milliseconds per run: median of "
        f"{args.rounds} per-process medians of {args.repeat} runs (range of those medians), optimizer off, "
        f"{args.threads} intra-op thread(s).",
        "",
        "| onyxrt PackedAttention | onyxrt Attention (padded) | onnxruntime Attention (padded) | padded / packed (onyxrt) |",
        "|---|---|---|---|",
        f"| {cell(('onyxrt', 'packed'))} | {cell(('onyxrt', 'padded'))} | {cell(('onnxruntime', 'padded'))} "
        f"| {padded / packed:.2f}× |",
        "",
        f"Fastest process medians: padded / packed {min(medians[('onyxrt', 'padded')]) / min(medians[('onyxrt', 'packed')]):.2f}× "
        f"(onyxrt), onnxruntime padded / onyxrt packed {min(medians[('onnxruntime', 'padded')]) / min(medians[('onyxrt', 'packed')]):.2f}×. "
        f"1-minute load average {load_before:.2f} before, {load_after:.2f} after the timed runs.",
        "",
        f"onnxruntime padded / onyxrt packed: {reference / packed:.2f}×. Largest |packed − padded| on the real tokens "
        f"(onyxrt and onnxruntime padded runs): {max_difference:.2e}.",
        "",
        f"Command: `python benchmarks/packed_attention.py --rounds {args.rounds} --repeat {args.repeat} "
        f"--threads {args.threads} --out benchmarks/packed_attention.md`",
    ]
    write_table(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
