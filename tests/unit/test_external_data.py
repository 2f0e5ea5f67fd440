"""External data: resolved relative to the model's folder; locations escaping it are refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onyxrt as ort


def model_with_external_weight(tmp_path, location: str) -> str:
    weight = numpy_helper.from_array(np.arange(1024, dtype=np.float32), "w")
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Add", ["x", "w"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1024])],
            [weight],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.external_data_helper.convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)  # writes weights.bin beside the model
    if location != "weights.bin":
        loaded = onnx.load(path, load_external_data=False)
        for entry in loaded.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = location
        onnx.save(loaded, path)
    return str(path)


def test_external_data_is_loaded(tmp_path):
    session = ort.InferenceSession(model_with_external_weight(tmp_path, "weights.bin"))
    (y,) = session.run(None, {"x": np.ones(1024, np.float32)})
    np.testing.assert_array_equal(y, np.arange(1024, dtype=np.float32) + 1)


@pytest.mark.parametrize("location", ["../weights.bin", "/etc/passwd", "sub/../../weights.bin"])
def test_escaping_locations_are_refused(tmp_path, location):
    path = model_with_external_weight(tmp_path, location)
    with pytest.raises(ort.InvalidGraph, match="escapes|relative path inside"):
        ort.InferenceSession(path)


def test_missing_external_file(tmp_path):
    path = model_with_external_weight(tmp_path, "missing.bin")
    with pytest.raises(ort.NoSuchFile, match="missing.bin"):
        ort.InferenceSession(path)


def test_external_data_needs_a_path(tmp_path):
    path = model_with_external_weight(tmp_path, "weights.bin")
    with pytest.raises(ort.InvalidArgument, match="external data"):
        ort.InferenceSession(onnx.load(path, load_external_data=False).SerializeToString())
