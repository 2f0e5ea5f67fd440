"""SessionOptions, RunOptions, exceptions, logging and profiling: the same code against onnxruntime and onyxrt.

Each idiom runs once with ``ort`` = onnxruntime and once with ``ort`` = onyxrt (``assert_same``).
Logging idioms capture what each runtime writes to stderr (``capfd``) and compare the severity,
logger id and message of each line, not timestamps, code locations or the category
(``onnxruntime`` / ``onyxrt``). Profiling idioms compare event names, categories, keys and the
node arguments that do not depend on timing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

import models
import onyxrt
from idioms import assert_same, error_kind

LINEAR = models.linear().SerializeToString()
GATHER = models.gather().SerializeToString()
TWO_OUTPUTS = models.two_outputs().SerializeToString()
X = np.arange(8, dtype=np.float32).reshape(2, 4)
A = np.arange(6, dtype=np.float32).reshape(2, 3)

# A log line: "<timestamp> [<severity letter>:<category>:<logid>, <where>] <message>" (onnxruntime adds colours).
_LOG_LINE = re.compile(r"\[([VIWEF]):(onnxruntime|onyxrt):(.*?), [^\]]*\] (.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(autouse=True)
def default_logging():
    """Each idiom starts and ends with both runtimes' default logger at WARNING, writing to stderr."""
    for runtime in (onnxruntime, onyxrt):
        runtime.set_default_logger_callback(None)
        runtime.set_default_logger_severity(2)
    yield
    for runtime in (onnxruntime, onyxrt):
        runtime.set_default_logger_callback(None)
        runtime.set_default_logger_severity(2)


def session(ort, model: bytes = LINEAR, **options):
    so = ort.SessionOptions()
    for name, value in options.items():
        setattr(so, name, value)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def logged(text: str) -> list[tuple[str, str, str]]:
    """(severity letter, logger id, message) of each log line in ``text``."""
    lines = []
    for line in _ANSI.sub("", text).splitlines():
        match = _LOG_LINE.search(line)
        if match:
            lines.append((match.group(1), match.group(3), match.group(4)))
    return lines


def shown(value):
    """An option's value in a form both runtimes' types compare by: enums as (type name, member name)."""
    if hasattr(value, "name") and type(value).__name__ in ("GraphOptimizationLevel", "ExecutionMode", "ExecutionOrder"):
        return type(value).__name__, value.name
    return value


# --------------------------------------------------------------------------- SessionOptions and RunOptions fields

SESSION_FIELDS = [
    "graph_optimization_level", "intra_op_num_threads", "inter_op_num_threads", "execution_mode", "execution_order",
    "optimized_model_filepath", "enable_profiling", "profile_file_prefix", "log_severity_level",
    "log_verbosity_level", "logid", "enable_cpu_mem_arena", "enable_mem_pattern", "enable_mem_reuse",
    "use_deterministic_compute", "use_per_session_threads",
]


@pytest.mark.parametrize("field", SESSION_FIELDS)
def test_session_options_default(field):
    assert_same(lambda ort: shown(getattr(ort.SessionOptions(), field)))


@pytest.mark.parametrize("field", ["log_severity_level", "log_verbosity_level", "logid", "terminate",
                                   "only_execute_path_to_fetches"])
def test_run_options_default(field):
    assert_same(lambda ort: getattr(ort.RunOptions(), field))


@pytest.mark.parametrize(
    "field, value",
    [
        ("intra_op_num_threads", lambda ort: 3),
        ("intra_op_num_threads", lambda ort: np.int64(2)),
        ("intra_op_num_threads", lambda ort: True),
        ("inter_op_num_threads", lambda ort: -5),
        ("log_severity_level", lambda ort: 7),  # accepted here, refused when a session is created
        ("log_verbosity_level", lambda ort: -3),
        ("graph_optimization_level", lambda ort: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        ("execution_mode", lambda ort: ort.ExecutionMode.ORT_PARALLEL),
        ("execution_order", lambda ort: ort.ExecutionOrder.PRIORITY_BASED),
        ("enable_profiling", lambda ort: 1),
        ("enable_profiling", lambda ort: None),
        ("enable_mem_pattern", lambda ort: 0.0),
        ("logid", lambda ort: b"bytes-id"),
        ("profile_file_prefix", lambda ort: np.str_("prefix")),
        ("optimized_model_filepath", lambda ort: "/tmp/optimized.onnx"),
        ("use_per_session_threads", lambda ort: False),
    ],
)
def test_session_options_field_set_and_read_back(field, value):
    def idiom(ort):
        so = ort.SessionOptions()
        setattr(so, field, value(ort))
        return shown(getattr(so, field))

    assert_same(idiom)


@pytest.mark.parametrize(
    "field, value",
    [
        ("intra_op_num_threads", "x"),
        ("intra_op_num_threads", 2.0),
        ("intra_op_num_threads", None),
        ("intra_op_num_threads", 2**31),
        ("graph_optimization_level", 2),  # a plain int, not the enum
        ("execution_mode", 1),
        ("execution_order", 0),
        ("log_severity_level", "3"),
        ("logid", 3),
        ("logid", None),
        ("enable_profiling", "yes"),
        ("enable_profiling", []),
        ("optimized_model_filepath", Path("/tmp/optimized.onnx")),
    ],
)
def test_session_options_wrong_type_is_a_type_error(field, value):
    outcome = assert_same(lambda ort: setattr(ort.SessionOptions(), field, value))
    assert outcome.error[0] == "TypeError"


@pytest.mark.parametrize("owner", ["SessionOptions", "RunOptions"])
def test_unknown_attribute_is_an_attribute_error(owner):
    outcome = assert_same(lambda ort: setattr(getattr(ort, owner)(), "unknown_attr", 1))
    assert outcome.error[0] == "AttributeError"
    assert_same(lambda ort: getattr(getattr(ort, owner)(), "unknown_attr"))


def test_run_options_have_no_run_tag_in_1_32():
    assert_same(lambda ort: ort.RunOptions().run_tag)


@pytest.mark.parametrize("field, value", [("terminate", 1), ("terminate", "x"), ("log_severity_level", "x"),
                                          ("logid", 5), ("only_execute_path_to_fetches", 2.0)])
def test_run_options_field_types(field, value):
    def idiom(ort):
        ro = ort.RunOptions()
        setattr(ro, field, value)
        return getattr(ro, field)

    assert_same(idiom)


def test_options_are_not_picklable():
    import pickle

    assert_same(lambda ort: pickle.dumps(ort.SessionOptions()))


# --------------------------------------------------------------------------- config entries


def test_session_config_entry_set_get_overwrite():
    def idiom(ort):
        so = ort.SessionOptions()
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.intra_op.allow_spinning", "1")
        so.add_session_config_entry("custom.empty", "")
        return so.get_session_config_entry("session.intra_op.allow_spinning"), so.get_session_config_entry("custom.empty")

    assert_same(idiom)


@pytest.mark.parametrize("owner, getter", [("SessionOptions", "get_session_config_entry"),
                                           ("RunOptions", "get_run_config_entry")])
def test_missing_config_key_is_a_runtime_error(owner, getter):
    def idiom(ort):
        try:
            getattr(getattr(ort, owner)(), getter)("no.such.key")
        except RuntimeError as error:  # what code written for onnxruntime catches
            return type(error).__name__, str(error)
        return None

    assert_same(idiom)


@pytest.mark.parametrize("key, value", [("a", 1), (1, "a"), ("", "x"), ("k" * 1025, "v"), ("k" * 1024, "v" * 5000)])
@pytest.mark.parametrize("owner, adder", [("SessionOptions", "add_session_config_entry"),
                                          ("RunOptions", "add_run_config_entry")])
def test_config_entry_key_and_value_checks(owner, adder, key, value):
    assert_same(lambda ort: getattr(getattr(ort, owner)(), adder)(key, value))


def test_run_config_entry_round_trip():
    def idiom(ort):
        ro = ort.RunOptions()
        ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return ro.get_run_config_entry("memory.enable_memory_arena_shrinkage")

    assert_same(idiom)


def test_add_initializer_takes_an_ort_value_only():
    assert_same(lambda ort: ort.SessionOptions().add_initializer("W", np.zeros(3, np.float32)))
    assert_same(lambda ort: ort.SessionOptions().add_initializer(
        "W", ort.OrtValue.ortvalue_from_numpy(np.zeros((4, 3), np.float32))))


# --------------------------------------------------------------------------- log levels


@pytest.mark.parametrize("function, value", [
    ("set_default_logger_severity", 5), ("set_default_logger_severity", -1), ("set_default_logger_severity", "x"),
    ("set_default_logger_severity", 3), ("set_default_logger_verbosity", -1), ("set_default_logger_verbosity", "x"),
])
def test_default_logger_setting_checks(function, value):
    assert_same(lambda ort: getattr(ort, function)(value))


@pytest.mark.parametrize("severity", [7, -5, 0, 4, -1])
def test_session_log_severity_is_checked_when_the_session_is_created(severity):
    outcome = assert_same(lambda ort: session(ort, log_severity_level=severity).get_providers())
    if severity in (7, -5):
        assert outcome.error[0] == "RuntimeError"


@pytest.mark.parametrize("severity", [9, -2, 3])
def test_run_log_severity_is_checked_when_the_run_starts(severity):
    def idiom(ort):
        ro = ort.RunOptions()
        ro.log_severity_level = severity
        return session(ort).run(None, {"x": X}, ro)[0]

    assert_same(idiom)


def test_set_default_logger_callback_checks():
    assert_same(lambda ort: ort.set_default_logger_callback(3))
    assert_same(lambda ort: ort.set_default_logger_callback(print, 7))
    assert_same(lambda ort: ort.set_default_logger_callback(None, 7))
    assert_same(lambda ort: ort.set_default_logger_callback(callback=None, severity=2))


# --------------------------------------------------------------------------- exception classes


@pytest.mark.parametrize("indices", [[7], [-6], [0, 5, 9], [-5, 4]])
def test_gather_index_out_of_range_is_invalid_argument_in_onnxruntime_s_words(indices):
    def idiom(ort):
        try:
            return session(ort, GATHER).run(None, {"indices": np.array(indices, np.int64)})[0]
        except Exception as error:  # the class and the whole message must agree
            return error_kind(error)[0], str(error)

    assert_same(idiom)


@pytest.mark.parametrize("value", [
    lambda: [1, 2], lambda: 3.0, lambda: np.float32(3), lambda: None, lambda: (1, 2),
    lambda: np.array(["a", "b"]), lambda: np.array(["a"], dtype=object), lambda: np.array([b"a"]),
    lambda: np.zeros(2, np.complex64), lambda: np.zeros(2, np.float16), lambda: np.zeros((3, 3))[:, 1],
    lambda: np.ma.array([1.0, 2.0]),
])
def test_ort_value_from_numpy_input_validation(value):
    assert_same(lambda ort: ort.OrtValue.ortvalue_from_numpy(value()).numpy())


@pytest.mark.parametrize("device", ["cpu", "CPU", "Cpu", "cuda", "gpu", "foo"])
def test_ort_value_device_names(device):
    assert_same(lambda ort: ort.OrtValue.ortvalue_from_numpy(np.zeros(2, np.float32), device).numpy())


# --------------------------------------------------------------------------- IOBinding misuse


@pytest.mark.parametrize("name, value", [("nope", lambda: np.array([1], np.int64)), ("indices", lambda: [1, 2]),
                                         ("indices", lambda: np.int64(1)), ("indices", lambda: None)])
def test_bind_cpu_input_is_checked_when_binding(name, value):
    outcome = assert_same(lambda ort: session(ort, GATHER).io_binding().bind_cpu_input(name, value()))
    assert outcome.error[0] == "RuntimeError"


def test_bind_ortvalue_input_unknown_name():
    assert_same(lambda ort: session(ort, GATHER).io_binding().bind_ortvalue_input(
        "nope", ort.OrtValue.ortvalue_from_numpy(np.array([1], np.int64))))


@pytest.mark.parametrize("case", ["unknown output", "wrong input type", "gather out of range"])
def test_run_with_iobinding_failures_are_runtime_errors(case):
    def idiom(ort):
        sess = session(ort, GATHER)
        binding = sess.io_binding()
        indices = {"wrong input type": np.array([1], np.float32), "gather out of range": np.array([9], np.int64)}
        binding.bind_cpu_input("indices", indices.get(case, np.array([1], np.int64)))
        binding.bind_output("nope" if case == "unknown output" else "y")
        try:
            sess.run_with_iobinding(binding)
        except RuntimeError as error:
            return type(error).__name__, str(error)
        return None

    assert_same(idiom)


# --------------------------------------------------------------------------- logging to stderr and to a callback


@pytest.mark.parametrize("setup", ["defaults", "logids", "session ERROR+", "session FATAL", "run FATAL", "run VERBOSE",
                                   "default FATAL", "default ERROR"])
def test_failing_node_is_logged_before_the_exception(capfd, setup):
    def idiom(ort):
        if setup.startswith("default"):
            ort.set_default_logger_severity(4 if setup == "default FATAL" else 3)
        options = {"logids": {"logid": "S1"}, "session ERROR+": {"log_severity_level": 3},
                   "session FATAL": {"log_severity_level": 4}}.get(setup, {})
        sess = session(ort, GATHER, **options)
        ro = ort.RunOptions()
        if setup == "logids":
            ro.logid = "R1"
        if setup.startswith("run"):
            ro.log_severity_level = 4 if setup == "run FATAL" else 0
        capfd.readouterr()
        try:
            sess.run(None, {"indices": np.array([9], np.int64)}, ro)
        except Exception as error:  # noqa: BLE001 - compared with onnxruntime's
            raised = type(error).__name__
        return raised, [line for line in logged(capfd.readouterr().err) if line[0] in "WEF"]

    outcome = assert_same(idiom)
    if setup in ("defaults", "logids"):
        assert outcome.value[1], "the failing node must be logged"


def test_overwritten_config_key_is_a_warning_on_the_default_logger(capfd):
    def idiom(ort):
        capfd.readouterr()
        so = ort.SessionOptions()
        so.log_severity_level = 3  # the default logger's severity applies, not the session's
        so.add_session_config_entry("a", "1")
        so.add_session_config_entry("a", "2")
        ro = ort.RunOptions()
        ro.add_run_config_entry("b", "1")
        ro.add_run_config_entry("b", "2")
        return logged(capfd.readouterr().err)

    assert len(assert_same(idiom).value) == 2


def test_info_severity_logs_session_creation_and_the_run_tag(capfd):
    milestones = {"Initializing session.", "Session successfully initialized.", "Running with tag: R1"}

    def idiom(ort):
        capfd.readouterr()
        sess = session(ort, LINEAR, log_severity_level=1, logid="S1")
        ro = ort.RunOptions()
        ro.logid = "R1"
        sess.run(None, {"x": X}, ro)
        lines = logged(capfd.readouterr().err)
        return sorted({line for line in lines if line[2] in milestones}), all(line[0] in "IVW" for line in lines)

    assert_same(idiom)


def test_nothing_is_logged_at_the_default_severity_for_a_good_session(capfd):
    def idiom(ort):
        capfd.readouterr()
        session(ort, LINEAR).run(None, {"x": X})
        return logged(capfd.readouterr().err)

    assert assert_same(idiom).value == []


@pytest.mark.parametrize("severity", [2, 3])
def test_logger_callback_receives_severity_category_logid_location_message(capfd, severity):
    def idiom(ort):
        received = []
        ort.set_default_logger_callback(lambda *fields: received.append(fields), severity)
        so = ort.SessionOptions()
        so.add_session_config_entry("a", "1")
        so.add_session_config_entry("a", "2")  # a WARNING from the default logger
        sess = session(ort, GATHER, logid="S1")
        try:
            sess.run(None, {"indices": np.array([9], np.int64)})
        except Exception:  # noqa: BLE001 - the log line is the result here
            pass
        ort.set_default_logger_callback(None)
        sess2 = session(ort, GATHER)  # after reset: stderr again
        capfd.readouterr()
        try:
            sess2.run(None, {"indices": np.array([9], np.int64)})
        except Exception:  # noqa: BLE001
            pass
        types = {tuple(type(field).__name__ for field in fields) for fields in received}
        return ([(level, logid, message) for level, _, logid, _, message in received if level >= 2], types,
                len(logged(capfd.readouterr().err)))

    assert_same(idiom)


# --------------------------------------------------------------------------- profiling


def _profile(ort, model, tmp_path: Path, feeds: dict, runs: int = 2, **options) -> tuple[str, list[dict]]:
    sess = session(ort, model, enable_profiling=True, profile_file_prefix=str(tmp_path / ort.__name__),
                   graph_optimization_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL, **options)
    for _ in range(runs):
        sess.run(None, feeds)
    path = sess.end_profiling()
    return path, json.loads(Path(path).read_text())


NODE_ARGS = {"op_name", "provider", "node_index", "parameter_size", "activation_size", "output_size",
             "input_type_shape", "output_type_shape"}


def test_profile_events_and_node_arguments(tmp_path):
    def idiom(ort):
        _, events = _profile(ort, TWO_OUTPUTS, tmp_path, {"a": A, "b": A + 1})
        summary, nodes = [], []
        for event in events:
            assert {"cat", "pid", "tid", "dur", "ts", "ph", "name", "args"} <= event.keys()
            assert all(isinstance(event[key], int) for key in ("pid", "tid", "dur", "ts"))
            args = {key: value for key, value in event["args"].items() if key in NODE_ARGS}
            if event["cat"] == "Node":  # independent nodes may run in either order
                nodes.append((event["name"], event["ph"], args))
            else:
                summary.append((event["cat"], event["name"], event["ph"], sorted(nodes)))
                nodes = []
        return summary

    assert_same(idiom)


def test_profile_of_a_model_file_starts_with_model_loading_uri(tmp_path):
    path = models.save(models.linear(), tmp_path)

    def idiom(ort):
        _, events = _profile(ort, path, tmp_path, {"x": X}, runs=1)
        return [(event["cat"], event["name"]) for event in events[:2]], events[0]["pid"] == events[0]["tid"]

    assert_same(idiom)


def test_profile_file_name_and_second_end_profiling(tmp_path):
    def idiom(ort):
        sess = session(ort, LINEAR, enable_profiling=True, profile_file_prefix=str(tmp_path / ort.__name__))
        path = sess.end_profiling()
        name_shape = re.fullmatch(re.escape(str(tmp_path / ort.__name__)) + r"_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{3}\.json",
                                  path) is not None
        start = sess.get_profiling_start_time_ns()
        return name_shape, sess.end_profiling(), isinstance(start, int) and start > 1.7e18

    assert_same(idiom)


def test_profile_without_profiling_is_empty():
    assert_same(lambda ort: (session(ort).end_profiling(), session(ort).get_profiling_start_time_ns()))


def test_failed_run_is_profiled(tmp_path):
    def idiom(ort):
        sess = session(ort, GATHER, enable_profiling=True, profile_file_prefix=str(tmp_path / ort.__name__))
        try:
            sess.run(None, {"indices": np.array([9], np.int64)})
        except Exception:  # noqa: BLE001 - the failed run's events are the result
            pass
        events = json.loads(Path(sess.end_profiling()).read_text())
        return [event["name"] for event in events if event["cat"] == "Session"][-1]

    assert_same(idiom)


# --------------------------------------------------------------------------- onyxrt's deliberate differences (pinned)


def test_onnxruntime_s_profile_tool_reads_onyxrt_s_profile(tmp_path):
    """onnxruntime.transformers.profile_result_processor summarizes onyxrt's profile like onnxruntime's."""
    from onnxruntime.transformers import profile_result_processor as processor

    tables = {}
    for ort in (onnxruntime, onyxrt):
        _, events = _profile(ort, TWO_OUTPUTS, tmp_path, {"a": A, "b": A + 1}, runs=3)
        rows = [line.split("\t") for line in processor.parse_node_results(events, kernel_time_only=True, threshold=0)]
        # (node, calls, provider) of each row of its two tables, not the timings
        tables[ort.__name__] = sorted((row[-1], row[-3].strip(), row[-2].strip())
                                      for row in rows if len(row) >= 6 and row[-1] != "Node")
    assert tables["onyxrt"] == tables["onnxruntime"]
    assert ("add", "3", "CPU") in tables["onyxrt"] and len(tables["onyxrt"]) == 4


def test_onyxrt_profile_has_memory_figures_of_its_own_and_no_arena_statistics(tmp_path):
    _, events = _profile(onyxrt, TWO_OUTPUTS, tmp_path, {"a": A, "b": A + 1}, runs=1)
    run = next(event for event in events if event["name"] == "model_run")
    assert {"peak_bytes", "reused_bytes", "inplace_bytes"} <= run["args"].keys()
    node = next(event for event in events if event["cat"] == "Node")
    assert node["args"].keys() == NODE_ARGS  # no mem_* arena counters, no thread_scheduling_stats


def test_onyxrt_log_lines_name_onyxrt_and_python_code(capfd):
    sess = session(onyxrt, GATHER, logid="S1")
    capfd.readouterr()
    with pytest.raises(onyxrt.InvalidArgument):
        sess.run(None, {"indices": np.array([9], np.int64)})
    (line,) = capfd.readouterr().err.splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{9} \[E:onyxrt:S1, inference_session\.py:\d+ _execute\] "
                        r"Non-zero status code returned while running Gather node\. Name:'gather' .*", line)


def test_onyxrt_warns_about_inter_op_threads_of_a_sequential_session(capfd):
    capfd.readouterr()
    session(onyxrt, LINEAR, inter_op_num_threads=4).run(None, {"x": X})
    ((severity, _, message),) = logged(capfd.readouterr().err)
    assert severity == "W" and "inter_op_num_threads" in message and "ignored" in message
    session(onyxrt, LINEAR, inter_op_num_threads=4, execution_mode=onyxrt.ExecutionMode.ORT_PARALLEL).run(None, {"x": X})
    assert not logged(capfd.readouterr().err)  # honoured: see tests/unit/test_parallel_executor.py


def test_onyxrt_refuses_a_negative_thread_count_when_the_session_is_created():
    with pytest.raises(onyxrt.InvalidArgument, match="intra_op_num_threads must be a non-negative integer"):
        session(onyxrt, LINEAR, intra_op_num_threads=-1)
    session(onnxruntime, LINEAR, intra_op_num_threads=-1)  # onnxruntime takes it


def test_enums_compare_with_their_values_and_onyxrt_s_also_order():
    assert_same(lambda ort: (ort.GraphOptimizationLevel.ORT_ENABLE_ALL == 99, int(ort.ExecutionMode.ORT_PARALLEL),
                             ort.GraphOptimizationLevel(1).name, list(ort.ExecutionOrder.__members__)))
    assert onyxrt.GraphOptimizationLevel.ORT_ENABLE_BASIC < onyxrt.GraphOptimizationLevel.ORT_ENABLE_ALL
    with pytest.raises(TypeError):
        onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC < onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL  # noqa: B015


def test_a_session_collected_before_end_profiling_writes_its_profile(tmp_path):
    import gc

    def idiom(ort):
        prefix = tmp_path / ort.__name__
        sess = session(ort, LINEAR, enable_profiling=True, profile_file_prefix=str(prefix))
        sess.run(None, {"x": X})
        del sess
        gc.collect()
        (path,) = tmp_path.glob(f"{ort.__name__}_*.json")
        return [event["name"] for event in json.loads(path.read_text()) if event["cat"] == "Session"]

    assert_same(idiom)


@pytest.mark.parametrize("case", ["unused initializers", "initializer among the inputs", "IR 3 unused initializer"])
def test_initializer_warnings_at_session_creation(capfd, case):
    from onnx import TensorProto, helper, numpy_helper

    model = models.linear()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "unused"))
    if case == "unused initializers":
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "unused2"))
    elif case == "initializer among the inputs":
        model.graph.input.append(helper.make_tensor_value_info("unused", TensorProto.FLOAT, [3]))
    else:
        model.ir_version = 3
        model.graph.input.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                                 for name in ("W", "b", "unused"))

    def idiom(ort):
        capfd.readouterr()
        session(ort, model.SerializeToString())
        # the severity, logger and the initializer each line names (wordings of the advice differ)
        return sorted((level, logid, re.sub(r"[.:].*", "", message)) for level, logid, message in
                      logged(capfd.readouterr().err))

    assert assert_same(idiom).value


@pytest.mark.parametrize("entry", ["run", "run_with_iobinding"])
def test_run_options_of_another_type_is_a_type_error(entry):
    def idiom(ort):
        sess = session(ort)
        if entry == "run":
            return sess.run(None, {"x": X}, {"terminate": False})
        binding = sess.io_binding()
        binding.bind_cpu_input("x", X)
        binding.bind_output("y")
        return sess.run_with_iobinding(binding, "options")

    # run's binding refuses it (TypeError); onnxruntime's run_with_iobinding reads it (AttributeError)
    assert assert_same(idiom).error[0] == ("TypeError" if entry == "run" else "AttributeError")


def test_unavailable_provider_is_a_python_warning():
    import warnings

    def idiom(ort):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            providers = ort.InferenceSession(LINEAR, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]) \
                .get_providers()
        return providers, [(w.category.__name__, str(w.message).split(".")[0]) for w in caught]

    assert assert_same(idiom).value[1]


def test_a_callback_that_raises_is_reported_and_the_line_goes_to_stderr(capfd, monkeypatch):
    import sys

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda hook_args: reported.append(hook_args))

    def idiom(ort):
        def failing(*fields):
            raise ValueError("callback failed")

        reported.clear()
        ort.set_default_logger_callback(failing)
        capfd.readouterr()
        so = ort.SessionOptions()
        so.add_session_config_entry("a", "1")
        so.add_session_config_entry("a", "2")
        return (logged(capfd.readouterr().err),
                [(type(r.exc_value).__name__, str(r.exc_value), r.object is failing) for r in reported])

    assert assert_same(idiom).value[1] == [("ValueError", "callback failed", True)]


def _one_node(op_type: str, feeds: dict[str, np.ndarray], **attributes) -> bytes:
    from onnx import TensorProto, helper

    def info(name: str, value: np.ndarray):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT if value.dtype == np.float32 else TensorProto.INT64, None)

    node = helper.make_node(op_type, list(feeds), ["y"], name="n", **attributes)
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return models.make_model([node], [info(name, value) for name, value in feeds.items()], [output]).SerializeToString()


_F = np.ones((2, 3), np.float32)
_REFUSALS = {
    "Reshape to a wrong size": ("Reshape", {"x": _F, "shape": np.array([4, 2])}, {}),
    "MatMul with mismatched inner dims": ("MatMul", {"a": _F, "b": np.ones((4, 2), np.float32)}, {}),
    "Add of shapes that do not broadcast": ("Add", {"a": _F, "b": np.ones((4, 2), np.float32)}, {}),
    "Concat of mismatched shapes": ("Concat", {"a": _F, "b": np.ones((4, 2), np.float32)}, {"axis": 0}),
    "Expand to a shape that does not broadcast": ("Expand", {"x": _F, "shape": np.array([4, 2])}, {}),
    "Slice on an axis out of range": (
        "Slice", {"x": _F, "starts": np.array([0]), "ends": np.array([1]), "axes": np.array([5])}, {}),
    "Transpose with a perm of the wrong rank": ("Transpose", {"x": _F}, {"perm": [0, 1, 2]}),
}


@pytest.mark.parametrize("case", list(_REFUSALS))
def test_a_kernel_refusing_its_inputs_raises_onnxruntimes_status_class(case):
    """Fail where onnxruntime's kernel throws, InvalidArgument where it returns that status."""
    op_type, feeds, attributes = _REFUSALS[case]
    model = _one_node(op_type, feeds, **attributes)
    assert_same(lambda ort: ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds))


def test_a_directory_given_as_the_model_is_invalid_protobuf(tmp_path):
    assert_same(lambda ort: ort.InferenceSession(str(tmp_path)))


def test_model_metadata_of_a_model_that_sets_none_of_it():
    def metadata(ort):
        meta = ort.InferenceSession(LINEAR, providers=["CPUExecutionProvider"]).get_modelmeta()
        return [meta.producer_name, meta.graph_name, meta.domain, meta.description, meta.graph_description,
                meta.version, meta.custom_metadata_map]

    assert_same(metadata)
