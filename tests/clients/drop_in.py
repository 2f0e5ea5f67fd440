"""Run a snippet with ``onnxruntime`` replaced by onyxrt (``import onnxruntime`` gets onyxrt), in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PRELUDE = """
import sys
if {use_onyxrt}:
    import onyxrt
    sys.modules["onnxruntime"] = onyxrt
"""


def run_snippet(code: str, use_onyxrt: bool) -> object:
    """Execute ``code`` (which prints one JSON line last) and return the decoded result."""
    program = PRELUDE.format(use_onyxrt=use_onyxrt) + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise AssertionError(f"snippet failed (onyxrt={use_onyxrt}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
