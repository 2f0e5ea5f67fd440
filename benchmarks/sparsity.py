"""Pruned models in onyxrt with and without sparse execution, and in onnxruntime: latency over sparsity.

    python benchmarks/sparsity.py --out benchmarks/sparsity.md                        # every table
    python benchmarks/sparsity.py minilm_l6 --sparsities 90 --rounds 2 --repeat 5     # quicker, one row
    python benchmarks/sparsity.py --threads 1 --out benchmarks/sparsity.md            # one thread each

Cases (typical shapes, as benchmarks/latency.py): minilm_l6 and bert_base at batch 1, sequence
128, with the weights of their MatMul nodes pruned by ``onyxrt.sparsity.prune`` (unstructured, at
each ``--sparsities`` percentage; one more row at 2:4); resnet50 at batch 1 with its 1x1
convolutions pruned (unstructured). Models come from /tmp/zoo (else ../shared/zoo); each pruned
model is written to a temp dir and deleted after its row.

For every pruned model, each round starts one worker process per configuration, alternating:
onyxrt dense (session config ``onyxrt.sparse.enable=0``), onyxrt sparse (``=1``, with
``--min-sparsity`` as ``onyxrt.sparse.min_sparsity`` when given, else onyxrt's default), then
onnxruntime on the same file. A worker loads the model, warms up (3 runs) and times ``--repeat``
runs (wall time each, and the process's CPU time over them: steadier on a loaded machine); the
table compares medians over all rounds. ``--threads`` sets intra_op_num_threads. Weight bytes: the pruned weights in the sparse
format onyxrt would hold them in (``onyxrt.sparsity.formats``: 2:4 values + metadata, else CSR)
over their dense bytes. Max rel diff: max |sparse - dense| / max |dense| over the outputs of the
first round's first run. Writing ``--out`` keeps the file's ``## Reading these numbers`` section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from latency import timed_runs, worker_result, zoo_path
from report import cpu_model, write_keeping_notes

ROOT = Path(__file__).resolve().parents[1]
CASES = ("minilm_l6", "bert_base", "resnet50")
SPARSITIES = (50, 70, 80, 90, 95)
CONFIGURATIONS = ("onyxrt dense", "onyxrt sparse", "onnxruntime")
NOTES_HEADING = "## Reading these numbers"


def _model_and_feeds(case: str) -> tuple[str, dict]:
    """The zoo model of ``case`` (/tmp/zoo first) and its inputs: batch 1; encoders at sequence 128."""
    sys.path.insert(0, str(ROOT / "tests" / "zoo"))
    from feeds import encoder_feeds, vision_feeds

    local = Path("/tmp/zoo") / f"{case}.onnx"
    path = str(local) if local.exists() else zoo_path(case)
    return path, vision_feeds(1) if case == "resnet50" else encoder_feeds(case, 1, 128)


def _variants(case: str, sparsities: list[int], with_2_4: bool) -> list[tuple[str, dict]]:
    """(row label, ``prune`` keyword arguments) of each pruned model of ``case``."""
    if case == "resnet50":
        scope = {"op_types": ("Conv",), "conv_kernel_shapes": ((1, 1),)}
    else:
        scope = {"op_types": ("MatMul",)}
    variants = [(f"{percent}% unstructured", {**scope, "sparsity": percent / 100}) for percent in sparsities]
    if with_2_4 and case != "resnet50":
        variants.append(("2:4", {**scope, "pattern": "2:4"}))
    return variants


def worker(configuration: str, case: str, model: str, outputs: str, repeat: int, min_sparsity: str | None,
           threads: int) -> None:
    """Time ``repeat`` runs of ``model`` under one configuration (wall times, and the process's CPU time
    per run); save the first run's outputs to ``outputs``."""
    import numpy as np

    _, feeds = _model_and_feeds(case)
    if configuration == "onnxruntime":
        import onnxruntime as rt
    else:
        import onyxrt as rt
    options = rt.SessionOptions()
    options.intra_op_num_threads = threads
    if configuration != "onnxruntime":
        options.add_session_config_entry("onyxrt.sparse.enable", "1" if configuration == "onyxrt sparse" else "0")
        if min_sparsity is not None and configuration == "onyxrt sparse":
            options.add_session_config_entry("onyxrt.sparse.min_sparsity", min_sparsity)
    session = rt.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    if outputs:
        np.savez(outputs, *session.run(None, feeds))
    timed_runs(session, feeds, 0)  # warm-up only
    cpu_started = time.process_time()
    wall = timed_runs(session, feeds, repeat, warmup=0)
    print(json.dumps({"wall": wall, "cpu": (time.process_time() - cpu_started) * 1000 / repeat}))


def _weight_bytes(report) -> tuple[int, int]:
    """Bytes of the pruned weights in onyxrt's sparse formats (2:4 where their zeros allow it, else CSR), and dense."""
    import numpy as np
    from onnx import numpy_helper

    from onyxrt.sparsity.formats import CsrWeight, SemiStructuredWeight, is_semi_structured

    pruned = {weight.name for weight in report.weights}
    sparse = dense = 0
    for tensor in report.model.graph.initializer:
        if tensor.name not in pruned:
            continue
        weight = numpy_helper.to_array(tensor)
        matrix = np.ascontiguousarray(weight.reshape(weight.shape[0], -1).T) if weight.ndim > 2 else weight  # Conv: K x M
        sparse += (SemiStructuredWeight if is_semi_structured(matrix) else CsrWeight).from_dense(matrix).nbytes
        dense += weight.nbytes
    return sparse, dense


def _max_relative_difference(got_file: str, want_file: str) -> float:
    import numpy as np

    worst = 0.0
    with np.load(got_file) as got, np.load(want_file) as want:
        for name in want.files:
            scale = float(np.abs(want[name]).max()) or 1.0
            worst = max(worst, float(np.abs(got[name].astype(np.float64) - want[name]).max()) / scale)
    return worst


def measure(case: str, label: str, prune_options: dict, folder: Path, args: argparse.Namespace) -> dict:
    """Prune ``case`` as ``prune_options`` say, then time the three configurations alternately."""
    from onyxrt.sparsity import prune

    source, _ = _model_and_feeds(case)
    model = folder / f"{case}-{label.replace(' ', '-').replace(':', 'of').replace('%', 'pct')}.onnx"
    report = prune(source, model, **prune_options)
    sparse_bytes, dense_bytes = _weight_bytes(report)
    samples: dict[str, list[float]] = {configuration: [] for configuration in CONFIGURATIONS}
    cpu: dict[str, list[float]] = {configuration: [] for configuration in CONFIGURATIONS}
    outputs = {configuration: str(folder / f"{configuration.replace(' ', '-')}.npz") for configuration in CONFIGURATIONS}
    extra = ["--threads", str(args.threads)] + (["--min-sparsity", args.min_sparsity] if args.min_sparsity is not None else [])
    for round_index in range(args.rounds):
        for configuration in CONFIGURATIONS:
            save = outputs[configuration] if round_index == 0 else ""
            result = worker_result(
                [__file__, "--worker", configuration, case, str(model), save, "--repeat", str(args.repeat), *extra])
            samples[configuration] += result["wall"]
            cpu[configuration].append(result["cpu"])
    for leftover in [model, Path(str(model) + ".data")]:
        leftover.unlink(missing_ok=True)
    medians = {configuration: statistics.median(times) for configuration, times in samples.items()}
    row = {
        "label": label, "weights": len(report.weights), "sparsity": report.sparsity, **medians,
        "cpu": {configuration: statistics.median(values) for configuration, values in cpu.items()},
        "weight_bytes": sparse_bytes / dense_bytes if dense_bytes else 1.0,
        "sparse_vs_dense": _max_relative_difference(outputs["onyxrt sparse"], outputs["onyxrt dense"]),
        "onnxruntime_vs_dense": _max_relative_difference(outputs["onnxruntime"], outputs["onyxrt dense"]),
    }
    print(f"{case} {label}: " + ", ".join(f"{c} {medians[c]:.2f} ms" for c in CONFIGURATIONS)
          + f", sparse/dense {medians['onyxrt sparse'] / medians['onyxrt dense']:.2f}", flush=True)
    return row


def _table(case: str, rows: list[dict]) -> list[str]:
    scope = "1x1 convolutions" if case == "resnet50" else "MatMul weights"
    shape = "batch 1" if case == "resnet50" else "batch 1, sequence 128"
    lines = [
        f"## {case} ({shape}), {scope} pruned",
        "",
        "| pruned | weights | zeros | onyxrt dense (ms) | onyxrt sparse (ms) | onnxruntime (ms) | sparse / dense | "
        "sparse / onnxruntime | CPU ms per run: dense / sparse / onnxruntime | CPU sparse / dense | "
        "weight bytes sparse / dense | max rel diff sparse vs dense | onnxruntime vs dense |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        dense, sparse, theirs = row["onyxrt dense"], row["onyxrt sparse"], row["onnxruntime"]
        cpu = row["cpu"]
        lines.append(f"| {row['label']} | {row['weights']} | {row['sparsity']:.1%} | {dense:.2f} | {sparse:.2f} | {theirs:.2f} | "
                     f"{sparse / dense:.2f} | {sparse / theirs:.2f} | {cpu['onyxrt dense']:.1f} / {cpu['onyxrt sparse']:.1f} / "
                     f"{cpu['onnxruntime']:.1f} | {cpu['onyxrt sparse'] / cpu['onyxrt dense']:.2f} | {row['weight_bytes']:.2f} | "
                     f"{row['sparse_vs_dense']:.1e} | {row['onnxruntime_vs_dense']:.1e} |")
    return lines + [""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=list(CASES), help=f"some of {', '.join(CASES)} (default all)")
    parser.add_argument("--sparsities", type=lambda text: [int(p) for p in text.split(",")], default=list(SPARSITIES),
                        help="percentages pruned, comma-separated (default 50,70,80,90,95)")
    parser.add_argument("--no-2-4", dest="with_2_4", action="store_false", help="leave out the 2:4 row of the encoders")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (one process per configuration per round)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per process")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra_op_num_threads of every configuration (default 0: each runtime's default)")
    parser.add_argument("--min-sparsity", help="onyxrt.sparse.min_sparsity of the sparse configuration (default: onyxrt's)")
    parser.add_argument("--note", default="", help="a line under the header (e.g. the machine's load)")
    parser.add_argument("--out", help="write the markdown report here")
    parser.add_argument("--worker", nargs=4, metavar=("CONFIGURATION", "CASE", "MODEL", "OUTPUTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.repeat, args.min_sparsity, args.threads)
        return 0
    unknown = [case for case in args.cases if case not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")

    lines = [
        "# Sparse execution of pruned models: onyxrt dense vs onyxrt sparse vs onnxruntime (CPU)",
        "",
        f"Command: `python benchmarks/sparsity.py {' '.join(sys.argv[1:])}`",
        "",
        f"Each configuration in its own process, alternating, {args.rounds} rounds x {args.repeat} timed runs; medians; "
        f"intra_op_num_threads {args.threads or 'default'}. CPU ms per run: the worker's CPU time over its timed runs "
        "(all threads; steadier than wall time on a loaded machine). "
        "Ratios below 1 favour onyxrt sparse. Weight bytes: the pruned weights in onyxrt's sparse format (2:4 values + "
        "metadata where the zeros follow 2:4, else CSR) over dense. Max rel diff: max |a - b| / max |dense| over the outputs.",
        "",
    ]
    if args.note:
        lines += [args.note, ""]
    footer = f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores ({cpu_model()})."
    with tempfile.TemporaryDirectory(prefix="onyxrt-sparsity-") as folder:
        for case in args.cases:
            rows = [measure(case, label, options, Path(folder), args)
                    for label, options in _variants(case, args.sparsities, args.with_2_4)]
            lines += _table(case, rows)
            write_keeping_notes(lines + [footer], args.out, NOTES_HEADING)  # after each case: a long run keeps its tables
    return 0


if __name__ == "__main__":
    sys.exit(main())
