"""``onyxrt info MODEL --providers A,B``: which nodes each provider takes, without running the model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onyxrt.cli import main
from onyxrt.providers import register_execution_provider, unregister_execution_provider
from separate_memory_provider import SeparateMemoryProvider

SEP = SeparateMemoryProvider.name
CPU = "CPUExecutionProvider"


@pytest.fixture
def device():
    register_execution_provider(SeparateMemoryProvider)
    yield
    unregister_execution_provider(SEP)


@pytest.fixture
def model_path(tmp_path):
    # MatMul -> Sub -> Relu on the device, Softmax on the CPU, Mul -> Tanh on the device again
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"), helper.make_node("Sub", ["m", "x"], ["a"], name="sub"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"), helper.make_node("Softmax", ["r"], ["s"], name="softmax"),
        helper.make_node("Mul", ["s", "r"], ["p"], name="mul"), helper.make_node("Tanh", ["p"], ["y"], name="tanh"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], initializer=[weight])
    path = tmp_path / "two_regions.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_info_lists_each_provider_s_nodes_and_regions(device, model_path, capsys):
    assert main(["info", model_path, "--providers", f"{SEP},{CPU}"]) == 0
    out = capsys.readouterr().out
    placement = out[out.index("placement with providers"):].splitlines()
    assert placement[0].startswith(f"placement with providers {SEP}, {CPU}")
    assert placement[1].split() == [SEP, "5", "nodes", "in", "2", "region(s)"]
    assert placement[2].split() == [CPU, "1", "nodes"]
    assert placement[3] == f"region 1 ({SEP}, 3 nodes): MatMul 1, Sub 1, Relu 1"
    assert placement[4] == "  nodes: matmul, sub, relu"
    assert placement[5] == f"region 2 ({SEP}, 2 nodes): Mul 1, Tanh 1"
    assert placement[6] == "  nodes: mul, tanh"
    assert placement[7] == f"{CPU} nodes (1): Softmax 1"
    assert placement[8] == "  nodes: softmax"


def test_info_without_providers_shows_no_placement(model_path, capsys):
    assert main(["info", model_path]) == 0
    assert "placement" not in capsys.readouterr().out


@pytest.mark.parametrize("providers", ["NoSuchExecutionProvider,CPUExecutionProvider", ","])
def test_an_unknown_provider_is_one_error_line(model_path, capsys, providers):
    assert _exit_code(["info", model_path, "--providers", providers]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onyxrt: error: argument --providers: unknown or unavailable")
    assert CPU in lines[0] and captured.out == ""
