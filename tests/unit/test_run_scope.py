"""A run ignores numpy's floating-point errors (IEEE results are the answer) and leaves the caller's state alone."""

from __future__ import annotations

import warnings

import numpy as np
from onnx import TensorProto as T
from onnx import helper as h

import onyxrt
from onyxrt.framework.run_context import check_terminate, run_scope
from onyxrt.errors import Fail
from onyxrt.session.session_options import RunOptions


def _divide_model() -> bytes:
    graph = h.make_graph([h.make_node("Div", ["a", "b"], ["y"])],
                         "g", [h.make_tensor_value_info("a", T.FLOAT, [3]), h.make_tensor_value_info("b", T.FLOAT, [3])],
                         [h.make_tensor_value_info("y", T.FLOAT, [3])])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]).SerializeToString()


def test_run_gives_ieee_results_without_warnings_and_keeps_the_callers_error_state():
    session = onyxrt.InferenceSession(_divide_model(), providers=["CPUExecutionProvider"])
    feed = {"a": np.array([1, -1, 0], np.float32), "b": np.zeros(3, np.float32)}
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        (y,) = session.run(None, feed)
        assert np.geterr()["divide"] == "raise"
    assert y[0] == np.inf and y[1] == -np.inf and np.isnan(y[2])


def test_run_scope_sets_run_options_for_its_block_only():
    stop = RunOptions()
    stop.terminate = True
    with run_scope(stop):
        assert np.geterr()["invalid"] == "ignore"
        try:
            check_terminate()
        except Fail:
            pass
        else:
            raise AssertionError("terminate not seen")
        with run_scope(None):  # a nested run without options does not see the outer one's
            check_terminate()
    check_terminate()
