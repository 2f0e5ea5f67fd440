"""OpenBLAS's idle spin, shortened before a process's first run (framework/openblas_spin.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from onyxrt.framework.openblas_spin import IDLE_SPIN_EXPONENT

# A fresh interpreter: the shortening happens once per process, before its first run.
SCRIPT = r"""
import ctypes, json, os, time
import numpy as np
import threadpoolctl
from onnx import TensorProto, helper
import onyxrt

libraries = [l for l in threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers
             if l.internal_api == "openblas"]
w = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 256])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, 256])],
                          [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
options = onyxrt.SessionOptions()
options.intra_op_num_threads = 2
session = onyxrt.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), options)
x = np.ones((256, 256), np.float32)
for _ in range(20):
    y = session.run(None, {"x": x})[0]
start = time.process_time()
time.sleep(0.3)
idle = time.process_time() - start
print(json.dumps({
    "openblas": bool(libraries),
    "timeouts": [ctypes.CDLL(l.filepath).openblas_thread_timeout() for l in libraries],
    "env": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
    "idle": idle,
    "correct": bool(np.allclose(y, x @ w, rtol=1e-4, atol=1e-3)),
}))
"""


def _run(env_timeout: str | None) -> dict:
    pytest.importorskip("threadpoolctl")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if env_timeout is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = env_timeout
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["openblas"]:
        pytest.skip("numpy's BLAS is not OpenBLAS")
    assert result["correct"]
    return result


def test_default_sessions_leave_openblas_spinning_briefly_and_the_environment_unchanged():
    result = _run(None)
    assert result["timeouts"] and all(t == IDLE_SPIN_EXPONENT for t in result["timeouts"])
    assert result["env"] is None
    assert result["idle"] < 0.03  # OpenBLAS's default spin alone would cost ~0.03 CPU-s of these 0.3 s


def test_a_users_openblas_thread_timeout_is_kept():
    result = _run("26")
    assert all(t == 26 for t in result["timeouts"])
    assert result["env"] == "26"
