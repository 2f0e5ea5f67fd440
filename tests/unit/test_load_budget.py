"""Load-time work is bounded: declared sizes in a tiny file cannot make loading allocate gigabytes."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap

import pytest
from onnx import TensorProto, helper

import onyxrt
from onyxrt.errors import Fail

_ADDRESS_SPACE_LIMIT = 3 << 30  # the unbounded load needed 12.9 GB


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (_ADDRESS_SPACE_LIMIT, _ADDRESS_SPACE_LIMIT))


def test_huge_declared_dim_of_slice_axes_loads_in_bounded_memory():
    # onnx's data-propagating inference sized a buffer by the declared length of `axes`.
    script = textwrap.dedent(
        """
        import onnx, onyxrt
        from onnx import helper, TensorProto
        inputs = [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 5]),
            helper.make_tensor_value_info("starts", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("ends", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("axes", TensorProto.INT64, [2**31 - 1]),
        ]
        node = helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])
        graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        session = onyxrt.InferenceSession(model.SerializeToString())
        print(session.get_inputs()[-1].shape, len(session.get_outputs()[0].shape))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, preexec_fn=_limit_memory
    )
    assert result.returncode == 0, result.stderr
    # the declared dim is kept for the user, and inference still ran (it typed y as rank 2)
    assert result.stdout.split() == ["[2147483647]", "2"]


def test_tensor_declaring_more_data_than_the_file_holds_fails_at_load():
    # A 12-byte Constant declaring 2**40 elements took over 2 GB before anything read its data.
    value = helper.make_tensor("v", TensorProto.INT64, [1], [3])
    value.dims[0] = 2**40
    node = helper.make_node("Constant", [], ["y"], value=value, name="big")
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    with pytest.raises(Fail, match=r"\('big', Constant\) declares dims \[1099511627776\]: more data than the model's"):
        onyxrt.InferenceSession(data)
