"""onyxrt in onnxruntime's place: ``onyxrt.install_as_onnxruntime()`` and ``python -m onyxrt.drop_in``.

The alias changes how a whole interpreter imports, so each idiom runs in a fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPAT = Path(__file__).resolve().parent

INSTALL = "import onyxrt\nonyxrt.install_as_onnxruntime()\n"


def run_python(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` with onyxrt and tests/compat importable; return the finished process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(COMPAT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=cwd or REPO, env=env
    )


def run_code(code: str, alias: bool = False) -> object:
    """Run ``code`` in a fresh interpreter (after installing the alias if ``alias``); it must
    succeed and print one JSON value last."""
    done = run_python("-c", (INSTALL if alias else "") + textwrap.dedent(code))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_onnxruntime_gives_onyxrt_itself():
    result = run_code(
        """
        import json, onnxruntime
        print(json.dumps([onnxruntime is onyxrt, onnxruntime.__name__,
                          onnxruntime.InferenceSession is onyxrt.InferenceSession,
                          onnxruntime.get_available_providers()[-1]]))
        """,
        alias=True,
    )
    assert result == [True, "onyxrt", True, "CPUExecutionProvider"]


def test_onnxruntime_capi_paths_are_onyxrts_modules_not_copies():
    """Every capi path client code imports from is onyxrt's module object, loaded once under its own name."""
    result = run_code(
        """
        import json, sys
        import onnxruntime.capi.onnxruntime_pybind11_state as state
        from onnxruntime.capi import _pybind_state as C
        from onnxruntime.capi._pybind_state import get_available_providers, SessionOptions, OrtValue
        from onnxruntime.capi.onnxruntime_inference_collection import InferenceSession, IOBinding
        import onyxrt.capi.onnxruntime_pybind11_state
        same = [
            state is onyxrt.capi.onnxruntime_pybind11_state,
            state.NoSuchFile is onyxrt.NoSuchFile,
            C.Fail is onyxrt.Fail,
            get_available_providers is onyxrt.get_available_providers,
            SessionOptions is onyxrt.SessionOptions,
            OrtValue is onyxrt.OrtValue,
            InferenceSession is onyxrt.InferenceSession,
            IOBinding is onyxrt.IOBinding,
        ]
        copies = [name for name, module in sys.modules.items()
                  if getattr(module, "__file__", None) == state.__file__]
        print(json.dumps([same, sorted(copies), state.__spec__.name]))
        """,
        alias=True,
    )
    same, module_names, spec_name = result
    assert all(same), same
    assert module_names == ["onnxruntime.capi.onnxruntime_pybind11_state", "onyxrt.capi.onnxruntime_pybind11_state"]
    assert spec_name == "onyxrt.capi.onnxruntime_pybind11_state"


ERROR_CASES = """
import json
import numpy as np
from onnx import TensorProto, helper
import onnxruntime
import onnxruntime.capi.onnxruntime_pybind11_state as state
import models

ERROR_CLASSES = ["Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile",
                 "NotImplemented", "RuntimeException"]
linear = models.linear().SerializeToString()
x = np.zeros((1, 4), np.float32)

def single_node(node, inputs, opset=17):
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return models.make_model([node], inputs, [output], opset=opset).SerializeToString()

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
SHAPE = helper.make_tensor_value_info("shape", TensorProto.INT64, [2])
CASES = {
    "missing_file": lambda: onnxruntime.InferenceSession("/no/such/dir/model.onnx"),
    "garbage_bytes": lambda: onnxruntime.InferenceSession(b"these bytes are not a model"),
    "unknown_op": lambda: onnxruntime.InferenceSession(single_node(helper.make_node("NoSuchOp", ["x"], ["y"]), [X])),
    "unsupported_opset": lambda: onnxruntime.InferenceSession(
        single_node(helper.make_node("Relu", ["x"], ["y"]), [X], opset=99)),
    "mistyped_graph": lambda: onnxruntime.InferenceSession(
        single_node(helper.make_node("Add", ["x", "shape"], ["y"]), [X, SHAPE])),
    "wrong_input_dtype": lambda: onnxruntime.InferenceSession(linear).run(None, {"x": x.astype(np.int64)}),
    "wrong_input_rank": lambda: onnxruntime.InferenceSession(linear).run(None, {"x": x[0]}),
    "unknown_output_name": lambda: onnxruntime.InferenceSession(linear).run(["nope"], {"x": x}),
    "kernel_failure": lambda: onnxruntime.InferenceSession(
        single_node(helper.make_node("Reshape", ["x", "shape"], ["y"]), [X, SHAPE])
    ).run(None, {"x": np.zeros((2, 3), np.float32), "shape": np.array([4, 4])}),
}
outcomes = {}
for name, case in CASES.items():
    try:
        case()
        outcomes[name] = None
    except Exception as error:
        caught_by = [cls for cls in ERROR_CLASSES if isinstance(error, getattr(state, cls))]
        outcomes[name] = [type(error).__name__, caught_by]
print(json.dumps(outcomes))
"""


@pytest.fixture(scope="module")
def error_outcomes() -> dict[str, dict]:
    reference = run_code("import onnxruntime\nonnxruntime.set_default_logger_severity(4)\n" + ERROR_CASES)
    ours = run_code(ERROR_CASES, alias=True)
    return {"onnxruntime": reference, "onyxrt": ours}


@pytest.mark.parametrize(
    "case",
    [
        "missing_file",
        "garbage_bytes",
        "unknown_op",
        "unsupported_opset",
        "mistyped_graph",
        "wrong_input_dtype",
        "wrong_input_rank",
        "unknown_output_name",
        "kernel_failure",
    ],
)
def test_except_clause_from_pybind11_state_catches_onyxrts_error(error_outcomes, case):
    """``except <class from onnxruntime.capi.onnxruntime_pybind11_state>`` catches what onyxrt raises."""
    reference = error_outcomes["onnxruntime"][case]
    ours = error_outcomes["onyxrt"][case]
    assert reference is not None, f"onnxruntime raised nothing for {case}"
    expected_class = reference[0]
    assert ours is not None, f"onyxrt raised nothing for {case}; onnxruntime raised {expected_class}"
    assert expected_class in ours[1], f"onyxrt raised {ours[0]}, not caught by except {expected_class}"


def test_install_is_idempotent():
    result = run_code(
        """
        import json, sys
        from onyxrt.drop_in import is_installed
        onyxrt.install_as_onnxruntime()
        onyxrt.install_as_onnxruntime()
        import onnxruntime
        finders = [f for f in sys.meta_path if type(f).__name__ == "_OnnxruntimeAliasFinder"]
        print(json.dumps([is_installed(), len(finders), onnxruntime is onyxrt]))
        """,
        alias=True,
    )
    assert result == [True, 1, True]


def test_install_after_real_onnxruntime_was_imported_raises():
    result = run_code(
        """
        import json
        import onnxruntime
        import onyxrt
        from onyxrt.drop_in import is_installed
        try:
            onyxrt.install_as_onnxruntime()
            outcome = "installed"
        except RuntimeError as error:
            outcome = str(error)
        import onnxruntime as again
        print(json.dumps([outcome, is_installed(), again is onnxruntime, again is onyxrt]))
        """
    )
    message, installed, unchanged, aliased = result
    assert "already imported" in message and "'onnxruntime'" in message and "python -m onyxrt.drop_in" in message
    assert (installed, unchanged, aliased) == (False, True, False)


@pytest.mark.parametrize(
    "module", ["onnxruntime.transformers", "onnxruntime.tools", "onnxruntime.training"]
)
def test_onnxruntime_packages_onyxrt_lacks_fail_with_a_named_module_not_found(module):
    result = run_code(
        f"""
        import importlib, json
        try:
            importlib.import_module({module!r})
            outcome = None
        except ModuleNotFoundError as error:
            outcome = [error.name, str(error)]
        print(json.dumps(outcome))
        """,
        alias=True,
    )
    assert result is not None, f"{module} imported"
    name, message = result
    assert name == module
    assert message.startswith(f"No module named {module!r}") and "install_as_onnxruntime" in message



def test_onnxruntime_quantization_is_onyxrts_with_onnxruntimes_submodule_paths():
    result = run_code(
        """
        import json
        import onyxrt.quantization
        from onnxruntime.quantization import QuantType, quantize, quantize_dynamic
        from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
        from onnxruntime.quantization.quant_utils import QuantFormat
        from onnxruntime.quantization import quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
        import onnxruntime.quantization as package
        names = [QuantType, quantize, quantize_dynamic, CalibrationDataReader, CalibrationMethod,
                 MatMulNBitsQuantizer, QuantFormat, quantize_static, quant_pre_process]
        print(json.dumps([package is onyxrt.quantization, callable(package.quantize),
                          all(getattr(onyxrt.quantization, n.__name__) is n for n in names)]))
        """,
        alias=True,
    )
    assert result == [True, True, True]


SCRIPT = """
import json, sys
import numpy as np
import onnxruntime
import models
session = onnxruntime.InferenceSession(models.linear().SerializeToString(), providers=["CPUExecutionProvider"])
y = session.run(None, {"x": np.ones((1, 4), np.float32)})[0]
print(json.dumps([onnxruntime.__name__, __name__, sys.argv[1:], y[0].tolist()]))
sys.exit(int(sys.argv[-1]))
"""


def test_python_m_onyxrt_drop_in_runs_a_script_on_onyxrt(tmp_path):
    script = tmp_path / "client.py"
    script.write_text(SCRIPT)
    done = run_python("-m", "onyxrt.drop_in", str(script), "--flag", "3", cwd=tmp_path)
    assert done.returncode == 3, done.stderr[-3000:]
    runtime, main_name, argv, output = json.loads(done.stdout.strip().splitlines()[-1])
    assert (runtime, main_name, argv) == ("onyxrt", "__main__", ["--flag", "3"])
    assert output == pytest.approx([0.8, 2.2, 3.6])


def test_python_m_onyxrt_drop_in_runs_a_module_on_onyxrt(tmp_path):
    (tmp_path / "client_module.py").write_text(SCRIPT)
    done = run_python("-m", "onyxrt.drop_in", "-m", "client_module", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    runtime, main_name, argv, _ = json.loads(done.stdout.strip().splitlines()[-1])
    assert (runtime, main_name, argv) == ("onyxrt", "__main__", ["0"])


@pytest.mark.parametrize("args", [[], ["-m"], ["no_such_script.py"]], ids=["nothing", "m_without_module", "missing"])
def test_python_m_onyxrt_drop_in_usage_errors_exit_2(tmp_path, args):
    done = run_python("-m", "onyxrt.drop_in", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert "python -m onyxrt.drop_in" in done.stderr
