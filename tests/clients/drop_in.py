"""Run a snippet in a fresh process, with the real onnxruntime or with onyxrt in its place.

With ``use_onyxrt`` the snippet runs after ``onyxrt.install_as_onnxruntime()``, so every
``import onnxruntime`` in the client package gives onyxrt; afterwards the process checks that the
package did import onnxruntime and that what it got was onyxrt, so a client that silently
bypassed the swap cannot pass as a drop-in success.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PRELUDE = """
import sys
if {use_onyxrt}:
    import onyxrt
    onyxrt.install_as_onnxruntime()
"""

EPILOGUE = """
if {use_onyxrt}:
    _loaded = {{name: module for name, module in sys.modules.items() if name.split(".")[0] == "onnxruntime"}}
    assert "onnxruntime" in _loaded, "the snippet never imported onnxruntime"
    _foreign = sorted(name for name, module in _loaded.items() if not module.__name__.startswith("onyxrt"))
    assert not _foreign, f"real onnxruntime modules were loaded: {{_foreign}}"
"""


def run_snippet(code: str, use_onyxrt: bool, timeout: float = 600) -> object:
    """Execute ``code`` (which prints one JSON line last) and return the decoded result."""
    program = (
        PRELUDE.format(use_onyxrt=use_onyxrt)
        + textwrap.dedent(code)
        + EPILOGUE.format(use_onyxrt=use_onyxrt)
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"snippet failed (onyxrt={use_onyxrt}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
