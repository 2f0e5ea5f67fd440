"""``onyxrt bench``: inputs made from declared shapes, and the measurement in child processes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onyxrt.benchmark import Shapes, make_feeds
from onyxrt.cli import main


def _decoder_like() -> onnx.ModelProto:
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
        helper.make_tensor_value_info("past_key", TensorProto.FLOAT, ["batch", 2, "past_len", 4]),
    ]
    nodes = [helper.make_node("ReduceSum", ["attention_mask"], ["count"], keepdims=0),
             helper.make_node("Add", ["input_ids", "position_ids"], ["ids"]),
             helper.make_node("Shape", ["past_key"], ["past_shape"])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.INT64, None) for n in ("count", "ids", "past_shape")]
    return helper.make_model(helper.make_graph(nodes, "decoder", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)])


def test_feeds_follow_the_shorthands_and_input_roles():
    feeds = make_feeds(_decoder_like(), Shapes(batch=2, seq=3, past=5))
    assert feeds["input_ids"].shape == (2, 3) and feeds["input_ids"].dtype == np.int64
    np.testing.assert_array_equal(feeds["position_ids"], [[5, 6, 7], [5, 6, 7]])
    np.testing.assert_array_equal(feeds["attention_mask"], np.ones((2, 8)))
    assert feeds["past_key"].shape == (2, 2, 5, 4) and feeds["past_key"].dtype == np.float32
    assert make_feeds(_decoder_like(), Shapes(dims={"total": 4}, batch=1, seq=1))["attention_mask"].shape == (1, 4)


def test_bench_measures_both_runtimes_in_their_own_processes(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "decoder.onnx"
    onnx.save(_decoder_like(), path)
    assert main(["bench", str(path), "--runs", "4", "--rounds", "2", "--warmup", "1", "--seq", "2", "--compare", "onnxruntime", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert set(rows) == {"onyxrt", "onnxruntime"}
    for row in rows.values():
        assert row["runs"] == 4 and 0 < row["p50_ms"] <= row["p99_ms"] and row["peak_rss_mib"] > 0 and row["creation_s"] > 0


def test_bench_table_and_a_bad_dim(tmp_path, capsys):
    path = tmp_path / "decoder.onnx"
    onnx.save(_decoder_like(), path)
    assert main(["bench", str(path), "--runs", "2", "--rounds", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "p50 ms" in out and "onyxrt" in out
    with pytest.raises(SystemExit, match="NAME=INTEGER"):
        main(["bench", str(path), "--runs", "1", "--rounds", "1", "--dim", "seq"])


def test_ids_indexing_a_table_stay_inside_it():
    table = onnx.numpy_helper.from_array(np.zeros((2, 3), np.float32), "token_types")
    graph = helper.make_graph([helper.make_node("Gather", ["token_types", "token_type_ids"], ["y"])], "g",
                              [helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["batch", "seq"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ids = make_feeds(model, Shapes(batch=4, seq=64))["token_type_ids"]
    assert ids.shape == (4, 64) and set(np.unique(ids)) <= {0, 1}
