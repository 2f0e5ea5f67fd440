"""float32 3x3 depthwise layers on the planes' rows (nn/depthwise_rows.py) against the channels-last vector blocks
(nn/depthwise_channels_last.py), per layer, on the calling thread.

    python benchmarks/depthwise_rows.py --out benchmarks/depthwise_rows.md

The layers are mobilenet_v2's 3x3 depthwise shapes at 224x224 (batch 1) and the unseen MobileNetV3- and
EfficientNet-like nets' at 32x32 (batch 8), random weights, Clip(0, 6) fused as FusedConv fuses it. Each kernel is
prepared once as a session's route is (``depthwise_conv.depthwise_runner``), the row kernel's width threshold set to
take or leave every layer; the two alternate per round, each round's time the median of ``--repeat`` calls; the
table holds the median over rounds. Both run on one thread (the pool's split shares either's planes out alike).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latency import median_seconds  # noqa: E402  (benchmarks/ is the script's directory)
from report import cpu_model  # noqa: E402
from onyxrt.providers.cpu.contrib.fused import mlas_activation_fn  # noqa: E402
from onyxrt.providers.cpu.nn import depthwise_conv  # noqa: E402

# (batch, channels, input size, stride)
LAYERS = [
    (1, 32, 112, 1), (1, 96, 112, 2), (1, 144, 56, 1), (1, 144, 56, 2), (1, 192, 28, 1), (1, 192, 28, 2),
    (1, 384, 14, 1), (1, 576, 14, 1), (1, 576, 14, 2), (1, 960, 7, 1),
    (8, 32, 16, 1), (8, 48, 16, 2), (8, 72, 8, 1),
]


def _runner(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, rows: bool):
    saved = depthwise_conv._ROWS_MIN_WIDTH
    depthwise_conv._ROWS_MIN_WIDTH = 0 if rows else 1 << 30
    try:
        size = (x.shape[2] - 1) // stride + 1
        return depthwise_conv.depthwise_runner(x.shape, x.dtype, w, b, (stride, stride), (1, 1), (1, 1, 1, 1),
                                               (size, size), mlas_activation_fn("Clip", [0.0, 6.0]))
    finally:
        depthwise_conv._ROWS_MIN_WIDTH = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--out")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    lines = [
        "# float32 3x3 depthwise layers: planes' rows vs channels-last blocks (issue 9)", "",
        f"Command: `python benchmarks/depthwise_rows.py --rounds {args.rounds} --repeat {args.repeat}` "
        f"(copied here). Machine: {cpu_model()}; one thread, Clip fused; medians over rounds of the median "
        f"of {args.repeat} calls.", "",
        "| layer (N, C, H=W, stride) | blocks (us) | rows (us) | rows / blocks | chosen |",
        "|---|---|---|---|---|",
    ]
    for n, c, size, stride in LAYERS:
        x = rng.standard_normal((n, c, size, size)).astype(np.float32)
        w = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
        b = rng.standard_normal(c).astype(np.float32)
        blocks, rows = _runner(x, w, b, stride, False), _runner(x, w, b, stride, True)
        np.testing.assert_allclose(rows(x), blocks(x), rtol=1e-5, atol=1e-5)
        timed = {"blocks": [], "rows": []}
        for _ in range(args.rounds):
            for name, fn in (("blocks", blocks), ("rows", rows)):
                timed[name].append(median_seconds(lambda: fn(x), args.repeat) * 1e6)
        block_us, row_us = statistics.median(timed["blocks"]), statistics.median(timed["rows"])
        chosen = "rows" if size >= depthwise_conv._ROWS_MIN_WIDTH else "blocks"
        lines.append(f"| ({n}, {c}, {size}, {stride}) | {block_us:.1f} | {row_us:.1f} | {row_us / block_us:.2f} "
                     f"| {chosen} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
