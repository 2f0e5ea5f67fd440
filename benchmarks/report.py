"""Writing a benchmark's markdown report without losing the notes written into it by hand; timing helpers the
per-layer benchmarks share."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def write_keeping_notes(lines: list[str], out: str | None, notes_heading: str) -> str:
    """``lines`` joined as the report, printed and written to ``out`` (when given); a section under
    ``notes_heading`` already in ``out`` (the interpretation, written by hand) is kept below them."""
    if out and Path(out).exists() and notes_heading in Path(out).read_text():
        lines = lines + ["", notes_heading + Path(out).read_text().split(notes_heading, 1)[1].rstrip("\n")]
    text = "\n".join(lines) + "\n"
    if out:
        Path(out).write_text(text)
    print(text)
    return text


def cpu_model() -> str:
    """The CPU's model name for a report (onyxrt's ``cpu_features``, imported only when asked, so
    onnxruntime's worker processes never load onyxrt)."""
    from onyxrt.framework.cpu_features import cpu_model_name

    return cpu_model_name() or "unknown CPU"


def median_of_block(fn: Callable[[], object], repeat: int) -> float:
    """Microseconds: the median of ``repeat`` timed calls of ``fn``, the first two (warming) left out."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:]) * 1e6


def layer_benchmark_parser(description: str) -> argparse.ArgumentParser:
    """The options the per-layer benchmarks (winograd.py, direct_conv.py) share: blocks per layer (``--rounds``) of
    ``--repeat`` calls, end-to-end rounds and runs, ``--out``, and the hidden ``--worker`` a child process gets."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--e2e-rounds", type=int, default=6)
    parser.add_argument("--e2e-repeat", type=int, default=20)
    parser.add_argument("--out")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def run_child(script: str, *args: str) -> str:
    """The standard output of ``script`` run with ``args`` in a fresh Python process (a benchmark's worker)."""
    return subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True).stdout
