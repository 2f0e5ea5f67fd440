"""Pass counts of the ONNX backend test suite for onyxrt, onnxruntime and onnx.reference.

Each runtime runs in its own process (their thread pools and caches stay apart):

    python benchmarks/conformance.py --out benchmarks/conformance.md      # all three, writes the table
    python benchmarks/conformance.py --runtime onyxrt --json              # one runtime, counts as JSON

Random ops (Bernoulli) are checked by shape, dtype and range rather than values, as
the unseeded expected outputs cannot be reproduced by any runtime. Node cases come from ``onnx.backend.test.case.node``; model cases are the onnx package's
pytorch-converted, pytorch-operator and simple models; "light" are the light_* models
(onnx's "real" category, run on its deterministic dummy inputs against stored outputs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest
import warnings
from pathlib import Path

CATEGORIES = {
    "OnnxBackendNodeModelTest": "node",
    "OnnxBackendPyTorchConvertedModelTest": "model",
    "OnnxBackendPyTorchOperatorModelTest": "model",
    "OnnxBackendSimpleModelTest": "model",
    "OnnxBackendRealModelTest": "light",
}
RUNTIMES = ("onyxrt", "onnxruntime", "onnx.reference")


def _reference_backend():
    """onnx.reference.ReferenceEvaluator behind onnx's Backend interface."""
    import onnx.reference
    from onnx.backend.base import Backend, BackendRep

    class Rep(BackendRep):
        def __init__(self, model):
            self.evaluator = onnx.reference.ReferenceEvaluator(model)
            initializers = {i.name for i in model.graph.initializer}
            self.names = [i.name for i in model.graph.input if i.name not in initializers]

        def run(self, inputs, **kwargs):
            feed = inputs if isinstance(inputs, dict) else dict(zip(self.names, inputs))
            return self.evaluator.run(None, feed)

    class ReferenceBackend(Backend):
        @classmethod
        def supports_device(cls, device):
            return device == "CPU"

        @classmethod
        def prepare(cls, model, device="CPU", **kwargs):
            return Rep(model)

    return ReferenceBackend


def _backend(runtime: str):
    if runtime == "onyxrt":
        import onyxrt.backend

        return onyxrt.backend
    if runtime == "onnxruntime":
        import onnxruntime.backend

        return onnxruntime.backend
    return _reference_backend()


def count(runtime: str) -> dict[str, dict[str, int]]:
    """Run every CPU case of the suite with ``runtime``; pass/fail counts per kind.

    The cases come from the project's conformance tests (tests/conformance/backend_suite.py),
    so random ops and runner-incomparable cases are judged the same way for every runtime.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "conformance"))
    from backend_suite import backend_test_cases

    os.environ.setdefault("ONNX_HOME", os.path.join(tempfile.gettempdir(), f"onnx-home-{runtime}"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        counts: dict[str, dict[str, int]] = {}
        for class_name, cls in backend_test_cases(__name__, tuple(CATEGORIES), _backend(runtime)).items():
            kind = CATEGORIES[class_name]
            names = sorted(n for n in vars(cls) if n.startswith("test_") and n.endswith("_cpu"))
            tally = counts.setdefault(kind, {"passed": 0, "failed": 0, "total": 0})
            for name in names:
                result = unittest.TestResult()
                cls(name).run(result)
                ok = result.wasSuccessful() and not result.skipped
                tally["passed" if ok else "failed"] += 1
                tally["total"] += 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime", choices=RUNTIMES)
    parser.add_argument("--json", action="store_true", help="print one runtime's counts as JSON")
    parser.add_argument("--out", help="write the comparison table (markdown) here")
    args = parser.parse_args()
    if args.runtime:
        print(json.dumps(count(args.runtime)))
        return 0
    results = {}
    for runtime in RUNTIMES:
        start = time.perf_counter()
        output = subprocess.run(
            [sys.executable, __file__, "--runtime", runtime, "--json"], capture_output=True, text=True, check=True
        ).stdout
        results[runtime] = (json.loads(output.strip().splitlines()[-1]), time.perf_counter() - start)
    lines = [
        "# ONNX backend test suite: pass counts",
        "",
        "Command: `python benchmarks/conformance.py --out benchmarks/conformance.md` "
        "(each runtime in its own process; CPU cases only).",
        "",
        "| runtime | node cases | model cases | light models | wall time |",
        "|---|---|---|---|---|",
    ]
    for runtime, (counts, seconds) in results.items():
        cells = []
        for kind in ("node", "model", "light"):
            c = counts.get(kind, {"passed": 0, "total": 0})
            share = 100 * c["passed"] / c["total"] if c["total"] else 0
            cells.append(f"{c['passed']}/{c['total']} ({share:.1f}%)")
        lines.append(f"| {runtime} | " + " | ".join(cells) + f" | {seconds:.0f} s |")
    import numpy
    import onnx

    versions = [f"onnx {onnx.__version__}", f"numpy {numpy.__version__}"]
    try:
        import onnxruntime

        versions.append(f"onnxruntime {onnxruntime.__version__}")
    except ImportError:
        pass
    lines += ["", f"Measured {time.strftime('%Y-%m-%d')} with " + ", ".join(versions) + f", {os.cpu_count()} cores."]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
