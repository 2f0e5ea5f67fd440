"""``providers.cpu.kernel_modules``: every op module registered, compiled-kernel modules left for first use,
so that ``import onyxrt`` needs no numba (an optional extra) and compiles nothing."""

import ast
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

from onyxrt.providers.cpu import kernel_modules


def _imports_numba_at_top(path: Path) -> bool:
    for node in ast.parse(path.read_text()).body:
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        if any(name == "numba" or name.startswith("numba.") for name in names):
            return True
    return False


def test_the_skipped_modules_are_exactly_those_importing_numba():
    found = set()
    for package in kernel_modules.PACKAGES:
        short = package.__name__.rsplit(".", 1)[1]
        for path in Path(package.__path__[0]).glob("*.py"):
            if path.stem != "__init__" and _imports_numba_at_top(path):
                found.add(f"{short}.{path.stem}")
    assert found == kernel_modules.COMPILED_ON_USE


def test_the_skipped_modules_register_no_ops():
    root = Path(kernel_modules.__file__).parent
    for name in kernel_modules.COMPILED_ON_USE:
        source = (root / (name.replace(".", "/") + ".py")).read_text()
        assert "@op(" not in source, name


def _model_with_compiled_fast_paths():
    """Depthwise and dense convolutions, GELU, LayerNorm: kernels with numba fast paths and numpy fallbacks."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w_dw = numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "w_dw")
    w_pw = numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w_pw")
    scale = numpy_helper.from_array(np.ones(6, np.float32), "scale")
    nodes = [
        helper.make_node("Conv", ["x", "w_dw"], ["a"], group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w_pw"], ["b"]),
        helper.make_node("Gelu", ["b"], ["c"]),
        helper.make_node("LayerNormalization", ["c", "scale"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w_dw, w_pw, scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    return model, rng.standard_normal((1, 8, 6, 6)).astype(np.float32)


def test_onyxrt_imports_and_runs_without_numba(tmp_path):
    """numba made unimportable in a fresh process: onyxrt imports, and the model runs on the numpy
    fallbacks with the outputs of this process's run (numba's kernels where it is installed)."""
    import numpy as np
    import onnx

    import onyxrt

    model, x = _model_with_compiled_fast_paths()
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["numba"] = None  # import numba now raises ImportError
        import numpy as np
        import onyxrt
        y = onyxrt.InferenceSession({str(tmp_path / "m.onnx")!r}).run(None, {{"x": np.load({str(tmp_path / "x.npy")!r})}})[0]
        np.save({str(tmp_path / "y.npy")!r}, y)
        assert sys.modules["numba"] is None
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    here = onyxrt.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), here, rtol=1e-4, atol=1e-5)


def test_the_skipped_modules_still_load_where_numba_is():
    """Every compiled module imports, but those whose intrinsics need CPU flags this one lacks (LLVM aborts the process
    compiling them; ``int8_gemm`` imports them only where the CPU has the flags)."""
    import pytest

    from onyxrt.framework.cpu_features import has_flags
    from onyxrt.providers.cpu.math.int8_gemm import AVX2_FLAGS, VNNI_FLAGS

    needs_flags = {"math.int8_gemm_vnni": VNNI_FLAGS, "math.int8_gemm_avx2": AVX2_FLAGS}
    pytest.importorskip("numba")
    for name in sorted(kernel_modules.COMPILED_ON_USE):
        if has_flags(*needs_flags.get(name, ())):
            importlib.import_module(f"onyxrt.providers.cpu.{name}")
