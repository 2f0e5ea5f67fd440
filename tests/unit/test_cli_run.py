"""``onyxrt run``: inputs valid for the model, one-line argument errors, saving, --compare/--layerwise, the bundled samples."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onyxrt import cli, samples
from onyxrt.cli import main
from onyxrt.feeds import Shapes, index_limits, make_feeds
from onyxrt.version import __version__

VOCAB, TYPES, POSITIONS, HIDDEN = 50, 2, 16, 4


def _save(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> str:
    path = folder / name
    onnx.save(model, path)
    return str(path)


def _bert_like() -> onnx.ModelProto:
    """Embeddings as BERT exporters write them: ids cast/unsqueezed before their Gather, positions offset by a constant."""
    rng = np.random.default_rng(0)
    tables = [numpy_helper.from_array(rng.standard_normal((rows, HIDDEN)).astype(np.float32), name)
              for name, rows in (("word_embeddings", VOCAB), ("token_type_embeddings", TYPES), ("position_embeddings", POSITIONS))]
    offset = numpy_helper.from_array(np.array(2, dtype=np.int64), "padding_offset")
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node("Gather", ["word_embeddings", "ids32"], ["words"]),
        helper.make_node("Unsqueeze", ["token_type_ids", "axes"], ["types_3d"]),
        helper.make_node("Squeeze", ["types_3d", "axes"], ["types"]),
        helper.make_node("Gather", ["token_type_embeddings", "types"], ["segments"]),
        helper.make_node("Add", ["position_ids", "padding_offset"], ["shifted_positions"]),
        helper.make_node("Gather", ["position_embeddings", "shifted_positions"], ["positions"]),
        helper.make_node("Sum", ["words", "segments", "positions"], ["embedded"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_float"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_float", "last_axis"], ["mask_3d"]),
        helper.make_node("Mul", ["embedded", "mask_3d"], ["hidden/state:0"]),
    ]
    last_axis = numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis")
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
              for name in ("input_ids", "token_type_ids", "position_ids", "attention_mask")]
    graph = helper.make_graph(nodes, "bert_like", inputs,
                              [helper.make_tensor_value_info("hidden/state:0", TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
                              [*tables, offset, axes, last_axis])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _decoder_like() -> onnx.ModelProto:
    """A past/present cache as decoders export it: mask over past + seq, positions after the past."""
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "past + seq"]),
        helper.make_tensor_value_info("past_key", TensorProto.FLOAT, ["batch", 2, "past", 4]),
        helper.make_tensor_value_info("key", TensorProto.FLOAT, ["batch", 2, "seq", 4]),
    ]
    nodes = [helper.make_node("Concat", ["past_key", "key"], ["present_key"], axis=2),
             helper.make_node("ReduceSum", ["attention_mask"], ["attended"], keepdims=0),
             helper.make_node("Identity", ["position_ids"], ["positions"])]
    outputs = [helper.make_tensor_value_info("present_key", TensorProto.FLOAT, ["batch", 2, "past + seq", 4]),
               helper.make_tensor_value_info("attended", TensorProto.INT64, ["batch"]),
               helper.make_tensor_value_info("positions", TensorProto.INT64, ["batch", "seq"])]
    return helper.make_model(helper.make_graph(nodes, "decoder", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)])


def _chain() -> onnx.ModelProto:
    """x -> Relu (h1) -> Neg (h2) -> Exp (y): small enough to reason about each intermediate."""
    nodes = [helper.make_node("Relu", ["x"], ["h1"], name="relu"), helper.make_node("Neg", ["h1"], ["h2"], name="negate"),
             helper.make_node("Exp", ["h2"], ["y"], name="exponential")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _exit_code(argv: list[str]) -> int:
    """main's return value, or the code of the SystemExit argparse raises."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


# --- input synthesis ------------------------------------------------------------------------


def test_ids_stay_inside_the_tables_they_reach_through_cast_unsqueeze_and_add():
    model = _bert_like()
    assert index_limits(model) == {"input_ids": VOCAB, "token_type_ids": TYPES, "position_ids": POSITIONS - 2}
    feeds = make_feeds(model, Shapes(batch=3, seq=64))
    assert feeds["input_ids"].shape == (3, 64) and feeds["input_ids"].max() < VOCAB
    assert set(np.unique(feeds["token_type_ids"])) == {0, 1}
    np.testing.assert_array_equal(feeds["attention_mask"], np.ones((3, 64), np.int64))
    # 64 positions do not fit a table of 14 usable rows: they wrap inside it instead of indexing past its end
    assert feeds["position_ids"].max() == POSITIONS - 3 and feeds["position_ids"][0, 1] == 1


def test_mask_covers_past_plus_seq_and_positions_count_from_the_past():
    feeds = make_feeds(_decoder_like(), Shapes(batch=2, seq=3, past=5))
    np.testing.assert_array_equal(feeds["position_ids"], [[5, 6, 7], [5, 6, 7]])
    np.testing.assert_array_equal(feeds["attention_mask"], np.ones((2, 8), np.int64))
    assert feeds["past_key"].shape == (2, 2, 5, 4) and feeds["key"].shape == (2, 2, 3, 4)


@pytest.mark.parametrize("name, position, value", [
    ("batch_size", 0, 3), ("N", 0, 3), ("sequence_length", 1, 7), ("past_seq_len", 2, 5), ("total_length", 1, 12),
    ("past + seq", 1, 12), ("2*seq", 1, 14), ("batch-size", 1, 3), ("height", 2, 224), ("W", 3, 224), ("channels", 1, 1),
    ("heads", 1, 6),
])
def test_symbolic_dims_by_name(name, position, value):
    assert Shapes(dims={"heads": 6}, batch=3, seq=7, past=5).value(name, position) == value


def test_shape_operands_get_values_any_data_accepts():
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
              helper.make_tensor_value_info("shape", TensorProto.INT64, [3]),
              helper.make_tensor_value_info("target", TensorProto.INT64, [3]),
              helper.make_tensor_value_info("splits", TensorProto.INT64, [4])]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Expand", ["x", "target"], ["e"]),
             helper.make_node("Split", ["x", "splits"], ["a", "b", "c", "d"], axis=1)]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("r", "e", "a", "b", "c", "d")]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 18)])
    feeds = make_feeds(model, Shapes())
    np.testing.assert_array_equal(feeds["shape"], [-1, 1, 1])
    np.testing.assert_array_equal(feeds["target"], [1, 1, 1])
    assert feeds["splits"].sum() == 6 and feeds["splits"].min() >= 1


def test_a_bert_like_model_runs_with_no_flags(tmp_path, capsys):
    path = _save(_bert_like(), tmp_path)
    assert main(["run", path, "--seq", "32", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "input  token_type_ids: shape=[2, 32] dtype=int64 min=0 max=1" in out
    assert "output hidden/state:0: shape=[2, 32, 4] dtype=float32" in out


def test_dims_of_a_given_input_hold_for_the_made_up_ones(tmp_path, capsys):
    path = _save(_bert_like(), tmp_path)
    np.save(tmp_path / "ids.npy", np.arange(10, dtype=np.int64).reshape(2, 5))
    assert main(["run", path, "--input", f"input_ids={tmp_path / 'ids.npy'}"]) == 0
    out = capsys.readouterr().out
    assert "input  input_ids: shape=[2, 5] dtype=int64 min=0 max=9 mean=4.5  (from --input)" in out
    assert "input  attention_mask: shape=[2, 5]" in out


def test_decoder_defaults_to_an_empty_past_and_takes_past_and_dims(tmp_path, capsys):
    path = _save(_decoder_like(), tmp_path)
    assert main(["run", path]) == 0
    out = capsys.readouterr().out
    assert "input  past_key: shape=[1, 2, 0, 4]" in out and "input  attention_mask: shape=[1, 8]" in out
    assert main(["run", path, "--past", "3", "--dim", "seq=2", "--save-outputs", str(tmp_path / "out")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "inputs" / "position_ids.npy"), [[3, 4]])
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "attended.npy"), [5])


def test_sequence_inputs_get_a_sequence_of_tensors(tmp_path, capsys):
    sequence = helper.make_tensor_sequence_value_info("parts", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("SequenceLength", ["parts"], ["count"])], "g", [sequence],
                              [helper.make_tensor_value_info("count", TensorProto.INT64, [])])
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path)
    assert main(["run", path, "--save-outputs", str(tmp_path / "out")]) == 0
    assert "input  parts: sequence of 2 [shape=[2, 3] dtype=float32" in capsys.readouterr().out
    assert int(np.load(tmp_path / "out" / "count.npy")) == 2
    with np.load(tmp_path / "out" / "inputs" / "parts.npz") as saved:
        assert sorted(saved.files) == ["item_0", "item_1"]


# --- argument errors ------------------------------------------------------------------------


@pytest.mark.parametrize("arguments, message", [
    (["--dim", "bach=2"], "--dim bach: the model has no symbolic dimension of that name (its symbolic dimensions: n)"),
    (["--dim", "n=-1"], "a dimension cannot be negative"),
    (["--dim", "n=abc"], "'abc' is not an integer"),
    (["--dim", "n"], "must look like NAME=INTEGER"),
    (["--input", "x=missing.npy"], "--input x=missing.npy: no such file"),
    (["--input", "x"], "must look like NAME=FILE.npy"),
    (["--repeat", "0"], "argument --repeat: must be at least 1, got 0"),
    (["--warmup", "-1"], "argument --warmup: must be at least 0, got -1"),
    (["--rtol", "-1"], "must be a finite number >= 0"),
    (["--layerwise"], "--layerwise needs --compare onnxruntime"),
    (["--compare", "tensorrt"], "argument --compare: invalid choice"),
])
def test_a_bad_argument_is_one_error_line_and_exit_code_2(tmp_path, capsys, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    path = _save(_chain(), tmp_path)
    assert _exit_code(["run", path, *arguments]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("onyxrt: error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err and "Traceback" not in captured.err


def test_a_missing_or_unreadable_model_and_an_unknown_input_name(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    np.save(tmp_path / "y.npy", np.zeros((1, 3), np.float32))
    np.savez(tmp_path / "arrays.npz", x=np.zeros((1, 3), np.float32))
    path = _save(_chain(), tmp_path)
    cases = [(["run", str(tmp_path / "absent.onnx")], "no such file"),
             (["run", str(tmp_path / "notes.txt")], "is not a readable ONNX model"),
             (["run", path, "--input", f"y={tmp_path / 'y.npy'}"], "--input y: the model has no input of that name (its inputs: x)"),
             (["run", path, "--input", f"x={tmp_path / 'notes.txt'}"], "cannot read it as a .npy array"),
             (["run", path, "--input", f"x={tmp_path / 'arrays.npz'}"], "an archive of several arrays"),
             (["run", path, "--save-outputs", str(tmp_path / "notes.txt")], "exists and is not a folder")]
    for argv, message in cases:
        assert _exit_code(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("onyxrt: error: ") and message in err and err.count("\n") == 1, err


def test_version(capsys):
    assert _exit_code(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"onyxrt {__version__}"


def test_warm_up_runs_are_not_counted(tmp_path, capsys):
    path = _save(_chain(), tmp_path)
    assert main(["run", path, "--repeat", "3", "--warmup", "2"]) == 0
    latency = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("latency:"))
    assert "p50" in latency and "p90" in latency and "min" in latency and "over 3 run(s)" in latency
    assert "first run" in latency and "1 more warm-up run(s) not counted" in latency


# --- saving ---------------------------------------------------------------------------------


def test_save_outputs_writes_each_output_under_a_file_safe_name(tmp_path, capsys):
    path = _save(_bert_like(), tmp_path)
    folder = tmp_path / "saved"
    assert main(["run", path, "--save-outputs", str(folder), "--seed", "3"]) == 0
    saved = np.load(folder / "hidden_state_0.npy")
    assert saved.shape == (1, 8, HIDDEN) and saved.dtype == np.float32
    assert sorted(p.name for p in (folder / "inputs").iterdir()) == [
        "attention_mask.npy", "input_ids.npy", "position_ids.npy", "token_type_ids.npy"]
    # the saved inputs reproduce the saved output when fed back
    feeds = [f"--input={p.stem}={p}" for p in (folder / "inputs").iterdir()]
    assert main(["run", path, *feeds, "--save-outputs", str(tmp_path / "again")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "hidden_state_0.npy"), saved)


def test_tensor_proto_inputs_reproduce_a_backend_test_case(tmp_path, capsys):
    """A case folder of onnx's backend tests: its input_0.pb fed with --input, the saved output is its output_0.pb."""
    case = Path(onnx.__file__).parent / "backend" / "test" / "data" / "pytorch-converted" / "test_Conv2d"
    if not case.is_dir():
        pytest.skip(f"onnx's backend-test data not found at {case}")
    input_name = onnx.load(str(case / "model.onnx")).graph.input[0].name
    output_name = onnx.load(str(case / "model.onnx")).graph.output[0].name
    assert main(["run", str(case), "--input", f"{input_name}={case / 'test_data_set_0' / 'input_0.pb'}",
                 "--save-outputs", str(tmp_path)]) == 0
    expected = numpy_helper.to_array(onnx.load_tensor(str(case / "test_data_set_0" / "output_0.pb")))
    np.testing.assert_allclose(np.load(tmp_path / f"{output_name}.npy"), expected, rtol=1e-4, atol=1e-5)


# --- comparison with onnxruntime ------------------------------------------------------------


class _SkewedOnnxruntime:
    """onnxruntime, except that the values named in ``skew`` come back with 1 added (a stand-in for a wrong kernel)."""

    def __init__(self, skew: set[str]) -> None:
        import onnxruntime
        self._real, self.skew = onnxruntime, skew
        self.__version__ = onnxruntime.__version__
        self.SessionOptions, self.GraphOptimizationLevel = onnxruntime.SessionOptions, onnxruntime.GraphOptimizationLevel

    def InferenceSession(self, *args, **kwargs):  # noqa: N802 - onnxruntime's name
        session = self._real.InferenceSession(*args, **kwargs)
        names = [o.name for o in session.get_outputs()]
        skew, run = self.skew, session.run

        class Skewed:
            def get_outputs(self):
                return session.get_outputs()

            def run(self, output_names, feeds):
                return [value + 1 if name in skew else value for name, value in zip(names, run(output_names, feeds))]

        return Skewed()


def test_compare_with_onnxruntime_passes_on_the_same_results(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path = _save(_bert_like(), tmp_path)
    assert main(["run", path, "--compare", "onnxruntime"]) == 0
    out = capsys.readouterr().out
    assert "compare with onnxruntime" in out and "1 of 1 output(s) PASS" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("hidden/state:0"))
    assert row.split()[-1] == "PASS"


def test_compare_fails_with_exit_1_when_an_output_differs(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(cli, "_onnxruntime", lambda: _SkewedOnnxruntime({"y"}))
    path = _save(_chain(), tmp_path)
    assert main(["run", path, "--compare", "onnxruntime"]) == 1
    out = capsys.readouterr().out
    name, max_abs, _, result = next(line for line in out.splitlines() if line.strip().startswith("y ")).split()
    assert float(max_abs) == pytest.approx(1.0) and result == "FAIL"
    assert "0 of 1 output(s) PASS, 1 FAIL" in out


def test_layerwise_names_the_first_diverging_node(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(cli, "_onnxruntime", lambda: _SkewedOnnxruntime({"h2", "y"}))
    path = _save(_chain(), tmp_path)
    assert main(["run", path, "--compare", "onnxruntime", "--layerwise"]) == 1
    out = capsys.readouterr().out
    assert "layerwise (optimizations off in both, 2 intermediate values compared)" in out
    assert "first diverging node: Neg 'negate' output 'h2'" in out
    assert "1 of 2 values FAIL" in out


def test_layerwise_on_agreeing_runtimes(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path = _save(_bert_like(), tmp_path)
    assert main(["run", path, "--compare", "onnxruntime", "--layerwise"]) == 0
    assert "every intermediate value within tolerance" in capsys.readouterr().out


def test_compare_without_onnxruntime_installed_is_an_argument_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    path = _save(_chain(), tmp_path)
    assert main(["run", path, "--compare", "onnxruntime"]) == 2
    assert capsys.readouterr().err == ("onyxrt: error: --compare onnxruntime needs the onnxruntime package, "
                                       "which is not installed (pip install onnxruntime)\n")


# --- no model: the bundled samples ----------------------------------------------------------


def test_no_model_runs_the_bundled_samples_and_checks_them(capsys):
    assert main(["run"]) == 0
    out = capsys.readouterr().out
    cases = samples.load_samples()
    for case in cases:
        row = next(line for line in out.splitlines() if line.startswith(case.name))
        true, predicted, probability = row.split()[1:4]
        assert true == samples.CLASS_NAMES[case.label]
        assert predicted == samples.CLASS_NAMES[int(np.argmax(case.expected_probabilities))]
        assert float(probability) == pytest.approx(float(np.max(case.expected_probabilities)), abs=1e-4)
        assert row.endswith("OK")
    assert f"OK: all {len(cases)} predictions and probabilities match onnxruntime's" in out


def test_no_model_fails_when_a_probability_is_off(capsys, monkeypatch):
    cases = samples.load_samples()
    shifted = cases[0].expected_probabilities.copy()
    shifted[0] += 1e-3
    tampered = [type(cases[0])(cases[0].name, cases[0].feeds, cases[0].label, shifted), *cases[1:]]
    monkeypatch.setattr(samples, "load_samples", lambda: tampered)
    assert main(["run"]) == 1
    out = capsys.readouterr().out
    assert next(line for line in out.splitlines() if line.startswith(cases[0].name)).endswith("FAIL")
    assert f"FAIL: 1 of {len(cases)} samples differ" in out


def test_no_model_with_a_user_input_checks_nothing(tmp_path, capsys):
    image = tmp_path / "image.npy"
    np.save(image, np.zeros((1, 1, 8, 8), np.float32))
    assert main(["run", "--input", f"{samples.INPUT_NAME}={image}"]) == 0
    out = capsys.readouterr().out
    assert "nothing to check them against" in out and f"output {samples.OUTPUT_NAME}: shape=[1, 10]" in out
    assert "OK" not in out and "FAIL" not in out


def test_no_model_with_compare_checks_each_sample_live(capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    assert main(["run", "--compare", "onnxruntime"]) == 0
    out = capsys.readouterr().out
    assert f"{len(samples.load_samples())} of {len(samples.load_samples())} samples PASS" in out
    monkeypatch.setattr(cli, "_onnxruntime", lambda: _SkewedOnnxruntime({samples.OUTPUT_NAME}))
    assert main(["run", "--compare", "onnxruntime"]) == 1
    out = capsys.readouterr().out
    assert "0 of" in out and "FAIL: onyxrt's values differ from onnxruntime's run now" in out


def test_onnxruntime_failing_on_the_model_is_one_error_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")

    class Refusing(_SkewedOnnxruntime):
        def InferenceSession(self, *args, **kwargs):  # noqa: N802 - onnxruntime's name
            raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : no kernel\nsecond line")

    monkeypatch.setattr(cli, "_onnxruntime", lambda: Refusing(set()))
    assert main(["run", _save(_chain(), tmp_path), "--compare", "onnxruntime"]) == 1
    assert capsys.readouterr().err == "onyxrt: error: onnxruntime cannot load the model: [ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : no kernel\n"


def test_a_run_failing_on_made_up_dims_names_them(tmp_path, capsys):
    """A window longer than the default sequence: the error says which dims were made up and how to set them."""
    weight = numpy_helper.from_array(np.ones((1, 1, 16), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["audio", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", 1, "samples"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path)
    assert main(["run", path]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("onyxrt: error: ") and "Conv" in error
    assert error.endswith("(the made-up inputs had batch=1, samples=1; set them with --dim NAME=VALUE or --batch/--seq/--past)")
    assert main(["run", path, "--dim", "samples=16"]) == 0


def test_a_sample_rate_input_is_16k():
    graph = helper.make_graph([helper.make_node("Identity", ["sr"], ["rate"])], "g",
                              [helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("rate", TensorProto.INT64, [])])
    assert make_feeds(helper.make_model(graph), Shapes())["sr"] == 16000
