"""The pass manager on onnx_ir models: levels, providers, disabled names, subgraphs, fixed point, order."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from onyxrt.errors import Fail, InvalidGraph
from onyxrt.optimizer import (
    GraphPass,
    OptimizationContext,
    OptimizationLevel,
    PassManager,
    optimize,
)
from onyxrt.optimizer.pass_manager import first_out_of_order


def _ir(nodes, inputs, outputs, initializers=(), opset=17) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _vi(name, shape=(2,), elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, list(shape))


def _chain_model() -> ir.Model:
    return _ir([helper.make_node("Relu", ["x"], ["y"])], [_vi("x")], [_vi("y")])


def _if_model() -> ir.Model:
    """y = If(c) { then: Add(a, w) } { else: Neg(a) } with a = Relu(x) read by both branches."""
    then_graph = helper.make_graph([helper.make_node("Add", ["a", "w"], ["t"])], "then", [], [_vi("t")])
    else_graph = helper.make_graph([helper.make_node("Neg", ["a"], ["e"])], "else", [], [_vi("e")])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph),
    ]
    w = onnx.numpy_helper.from_array(np.ones(2, np.float32), "w")
    return _ir(nodes, [_vi("x"), _vi("c", (), TensorProto.BOOL)], [_vi("y")], [w])


def _context(providers=("CPUExecutionProvider",)) -> OptimizationContext:
    return OptimizationContext(opset_imports={"": 17}, providers=providers, evaluator=lambda node, opset, inputs: None)


class _Countdown(GraphPass):
    """Rewrites (pretends to) ``times`` times in total, once per call on the main graph."""

    def __init__(self, name="countdown", times=3, level=OptimizationLevel.BASIC, providers=()):
        self.name, self.times, self.level, self.providers = name, times, level, providers
        self.ort_names = ("OrtCountdown",) if name == "countdown" else ()
        self.calls = 0

    def run(self, graph, context):
        self.calls += 1
        if graph.name == "g" and self.times:
            self.times -= 1
            return 1
        return 0


class _Recorder(GraphPass):
    name = "recorder"

    def __init__(self):
        self.seen: list[str] = []

    def run(self, graph, context):
        self.seen.append(graph.name)
        return 0


def test_rounds_repeat_until_a_round_changes_nothing():
    countdown = _Countdown(times=3)
    report = PassManager([countdown]).run(_chain_model(), _context(), OptimizationLevel.BASIC)
    assert report.counts == {"countdown": 3}
    assert report.rounds == 4  # three rounds that rewrote, one that confirmed the fixed point
    assert report.reached_fixed_point


def test_round_cap_is_reported_not_raised():
    report = PassManager([_Countdown(times=100)], max_rounds=5).run(_chain_model(), _context(), 1)
    assert report.rounds == 5
    assert report.counts == {"countdown": 5}
    assert not report.reached_fixed_point


def test_report_lists_only_passes_that_fired_in_firing_order():
    passes = [_Countdown("quiet", times=0), _Countdown("second", times=1), _Countdown("third", times=2)]
    report = PassManager(passes).run(_chain_model(), _context(), 1)
    assert report.applied == ["second", "third"]
    assert report.counts == {"second": 1, "third": 2}


def test_level_enables_passes_at_or_below_it():
    extended = _Countdown("extended", times=1, level=OptimizationLevel.EXTENDED)
    basic = _Countdown("basic", times=1)
    assert PassManager([basic, extended]).run(_chain_model(), _context(), OptimizationLevel.BASIC).applied == ["basic"]
    assert extended.calls == 0
    report = PassManager([_Countdown("basic", times=1)]).run(_chain_model(), _context(), OptimizationLevel.DISABLED)
    assert report.applied == [] and report.rounds == 0


def test_disabled_accepts_our_names_and_onnxruntime_names():
    manager = PassManager([_Countdown(times=1)])
    assert manager.run(_chain_model(), _context(), 99, disabled={"countdown"}).applied == []
    manager = PassManager([_Countdown(times=1)])
    assert manager.run(_chain_model(), _context(), 99, disabled={"OrtCountdown"}).applied == []
    manager = PassManager([_Countdown(times=1)])
    assert manager.run(_chain_model(), _context(), 99, disabled={"SomethingElse"}).applied == ["countdown"]


def test_passes_for_other_providers_do_not_run():
    def manager():
        return PassManager([_Countdown("device_only", times=1, providers=("TestDeviceExecutionProvider",))])

    assert manager().run(_chain_model(), _context(("CPUExecutionProvider",)), 99).applied == []
    providers = ("TestDeviceExecutionProvider", "CPUExecutionProvider")
    assert manager().run(_chain_model(), _context(providers), 99).applied == ["device_only"]


def test_every_subgraph_is_visited_before_the_graph_holding_it():
    recorder = _Recorder()
    PassManager([recorder]).run(_if_model(), _context(), 1)
    assert sorted(recorder.seen[:2]) == ["else", "then"]
    assert recorder.seen[2:] == ["g"]


def _out_of_order_model() -> ir.Model:
    nodes = [helper.make_node("Neg", ["a"], ["y"]), helper.make_node("Relu", ["x"], ["a"])]
    return _ir(nodes, [_vi("x")], [_vi("y")])


def test_out_of_order_model_is_sorted_even_with_optimization_disabled():
    model = _out_of_order_model()
    report = optimize(model, 0, providers=["CPUExecutionProvider"], evaluator=lambda *args: None)
    assert report.sorted_input
    assert [node.op_type for node in model.graph] == ["Relu", "Neg"]


def test_node_reading_a_later_value_only_through_its_subgraph_is_out_of_order():
    then_graph = helper.make_graph([helper.make_node("Neg", ["a"], ["t"])], "then", [], [_vi("t")])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [_vi("e")])
    nodes = [
        helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph),
        helper.make_node("Relu", ["x"], ["a"]),
    ]
    model = _ir(nodes, [_vi("x"), _vi("c", (), TensorProto.BOOL)], [_vi("y")])
    assert first_out_of_order(model.graph) is model.graph.node(0)
    PassManager([]).run(model, _context(), 1)
    assert [node.op_type for node in model.graph] == ["Relu", "If"]


def test_cycle_is_an_invalid_graph():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Neg", ["a"], ["b"])]
    with pytest.raises(InvalidGraph, match="cycle"):
        PassManager([]).run(_ir(nodes, [_vi("x")], [_vi("b")]), _context(), 1)


class _MoveLastFirst(GraphPass):
    """Moves the last node of the main graph to the front once, then does nothing."""

    name = "move_last_first"

    def __init__(self, declares: bool):
        self.declares, self.done = declares, False

    def run(self, graph, context):
        if self.done or graph.name != "g":
            return 0
        self.done = True
        last = graph.node(len(graph) - 1)
        graph.remove(last)
        graph.insert_before(graph.node(0), last)
        if self.declares:
            context.mark_reordered(graph)
        return 1


def _two_step_model() -> ir.Model:
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["y"])]
    return _ir(nodes, [_vi("x")], [_vi("y")])


def test_pass_that_reorders_and_says_so_gets_its_graph_sorted():
    model = _two_step_model()
    report = PassManager([_MoveLastFirst(declares=True)]).run(model, _context(), 1)
    assert report.applied == ["move_last_first"]
    assert [node.op_type for node in model.graph] == ["Relu", "Neg"]


def test_pass_that_breaks_the_order_silently_is_named():
    with pytest.raises(Fail, match="move_last_first"):
        PassManager([_MoveLastFirst(declares=False)]).run(_two_step_model(), _context(), 1)
