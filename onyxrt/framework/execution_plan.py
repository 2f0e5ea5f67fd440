"""The execution plan: a flat, precomputed list of steps over value slots.

Built once per session (and once per subgraph). Every value name gets an integer
slot; a step is ``(kernel, input slots, output slots, slots to free)``, extended by
the buffer planner (``framework.allocation_planner``) with whether the kernel takes
``_alloc`` and which dying inputs it may overwrite. Running is a single loop with no
dictionary lookups, or (no profiling, bound outputs or hand-over) the same steps as one
generated function (``compiled_steps``): values are released right after their last
reader (their buffers to the run's arena), and graph outputs are gathered by slot. A run keeps its values
in a list and its buffers in an arena of its own, so concurrent runs of one plan are
independent.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from ..errors import InvalidGraph, NotImplemented as OrtNotImplemented, OnyxRuntimeError, node_failure
import onnx_ir as ir

from ..graph.attributes import attribute_value
from ..graph.builder import captured_values, subgraphs
from ..graph.opsets import describe, opset_for
from ..graph.tensors import constant_array
from ..graph.types import value_type_string
from ..providers.base import ExecutionProvider
from ..providers.kernel_registry import accepts, kernel_contract
from .allocation_planner import Arena, PoolPolicy, RunReport, owner_ids, plan_donations
from .compiled_steps import compile_steps, compile_uncounted_steps
from .device import HOST, BoundOutput, data_transfer_for, deliver, move_to
from .memcpy import compile_copy, is_copy, value_device
from .partitioner import FUSED_GROUP, PROVIDER_KEY, on_cpu_kernels
from .parallel_executor import ParallelExecutor
from .shape_specialization import ShapeSpecializations, frozen_copy, recordable, shape_determined_steps, signature

_NONE_SLOT = 0  # always None: where missing optional inputs read from
_TRASH_SLOT = 1  # where skipped optional outputs are written
_UNKNOWN = object()  # ExecutionPlan.run's key when the caller has not computed the inputs' signature
# Runs of a plan whose kernels take no buffers from the arena (no ``_alloc``) between two that count its figures
UNCOUNTED_RUNS = 15


class Subgraph:
    """A compiled graph attribute (If branch, Loop body, Scan body).

    Call it with the subgraph's formal inputs and the node's ``_outer`` values;
    it returns the list of its outputs.
    """

    def __init__(self, plan: ExecutionPlan, outer_index: tuple[int, ...]) -> None:
        self.plan = plan
        self._outer_index = outer_index
        self.input_names = plan.input_names
        self.output_names = plan.output_names

    def __call__(self, *inputs: Any, outer: Sequence[Any] = ()) -> list[Any]:
        return self.plan.run(inputs, [outer[i] for i in self._outer_index])


class ExecutionPlan:
    """Steps over slots for one graph; see the module docstring."""

    def __init__(
        self,
        graph: ir.Graph,
        steps: list[tuple[Callable[..., Any], tuple[int, ...], tuple[int, ...], tuple[int, ...], bool]],
        nodes: list[ir.Node],
        template: list[Any],
        input_slots: tuple[int, ...],
        outer_slots: tuple[int, ...],
        output_slots: tuple[int, ...],
        reuse_buffers: bool = True,
        specialize_shapes: bool = True,
        node_indices: Sequence[int] | None = None,
    ) -> None:
        self.graph = graph
        # each step's node index in the graph's plan (a specialized plan skips some: see _specialized)
        self._node_indices = tuple(node_indices) if node_indices is not None else tuple(range(len(nodes)))
        # where each input is read (the partitioner's placement), and whether that is the host
        self._input_devices = tuple((device, device.is_host) for device in map(value_device, graph.inputs))
        self._outputs_on_host = all(value_device(v).is_host for v in graph.outputs)
        self._inputs_on_host = all(on_host for _, on_host in self._input_devices)
        producer_step = {v: index for index, node in enumerate(nodes) for v in node.outputs}
        # the step after which each output can be handed over (-1: an input or initializer, before any step)
        self._output_steps = tuple(producer_step.get(v, -1) for v in graph.outputs)
        self.input_names = [v.name for v in graph.inputs]
        self.output_names = [v.name for v in graph.outputs]
        self.nodes = nodes
        self.reuse_buffers = reuse_buffers
        self._template = template
        self._input_slots = input_slots
        self._outer_slots = outer_slots
        self._output_slots = output_slots
        self._raw_steps = steps
        self._steps = _with_buffer_plan(steps, template, input_slots, outer_slots, output_slots, reuse_buffers)
        self._step_inplace = [kernel_contract(fn).inplace for fn, *_ in steps]
        # Steps whose outputs were all tiny in the last run skip _alloc and donation in the next (a
        # learned hint, shared by concurrent runs: a wrong guess costs one run without reuse, never a result).
        self._small_outputs = [False] * len(steps)
        self._compiled: Callable[[list, Arena, list], None] | None = None  # the steps unrolled, made at first use
        # where no kernel takes _alloc, runs between counted ones skip the arena (``compile_uncounted_steps``)
        self._uncounted: Callable[[list], None] | None = None
        self._takes_buffers = any(step[5] for step in self._steps)
        self._uncounted_runs = UNCOUNTED_RUNS  # runs since the last counted one (the first run counts)
        self._weight_owners = frozenset(owner_ids(template))
        self._weight_slots = frozenset(slot for slot, value in enumerate(template) if value is not None)
        self._arenas: list[Arena] = []  # idle arenas with their pools; a run takes one, so concurrent runs never share
        self._pool_policy = PoolPolicy(len(steps))  # what its arenas learn from runs (see allocation_planner.Arena)
        self._last_peak_bytes = 0
        self._parallel: ParallelExecutor | None = None  # ORT_PARALLEL's inter-op threads (use_inter_op_threads)
        self._inter_op_threads = 0
        self._specializations = None  # plans for input shapes seen again (a top-level graph's; see shape_specialization)
        if specialize_shapes and not outer_slots:
            fixed = frozenset(slot for slot in self._weight_slots if slot not in input_slots)
            static = shape_determined_steps(nodes, steps, input_slots, fixed, _runs_cpu_kernel)
            if static:
                self._specializations = ShapeSpecializations(static)

    def use_inter_op_threads(self, threads: int) -> None:
        """Run steps whose inputs are ready at the same time on ``threads`` threads (``ExecutionMode.ORT_PARALLEL``,
        see ``framework.parallel_executor``); 0 returns to one step at a time."""
        if self._parallel is not None:
            self._parallel.shutdown()
        self._parallel, self._inter_op_threads = None, threads
        if threads > 0:
            protected = _protected_slots(self._template, self._input_slots, self._outer_slots, self._output_slots)
            self._parallel = ParallelExecutor(self._steps, protected, threads)

    @property
    def peak_bytes(self) -> int:
        """Peak bytes of the most recent finished run that counted them (see :class:`RunReport`; 0 before any run):
        every run where a kernel takes ``_alloc``, else one in :data:`UNCOUNTED_RUNS` + 1 and every run asked for a
        report or a profile."""
        return self._last_peak_bytes

    def run(self, inputs: Sequence[Any], outer: Sequence[Any] = (), profile: list | None = None,
            targets: Sequence[BoundOutput | None] | None = None, report: RunReport | None = None,
            key: Any = _UNKNOWN) -> list[Any]:
        """Run with ``inputs`` aligned to the graph inputs; returns graph outputs in order.

        Inputs may live on any device: each is copied only where its readers run on
        another. Outputs come back on the host, or as ``targets`` (one per graph output)
        ask, handed over as soon as their producer has run (a None target: not wanted).
        ``profile`` (a list) receives a :class:`ProfiledStep` per step that ran; ``report``
        receives the run's memory figures. Inputs of shapes seen before may run a plan specialized to
        them (``framework.shape_specialization``): the same results without the steps that only
        compute from those shapes; ``key``, where the caller has it, is the inputs' ``signature``.
        """
        specializations = self._specializations
        if specializations is not None:
            if key is _UNKNOWN:
                key = signature(inputs)
            specialized = specializations.plan_for(key)
            if specialized is not None:
                try:
                    return specialized.run(inputs, outer, profile, targets, report)
                finally:
                    self._last_peak_bytes = specialized._last_peak_bytes
            if specializations.should_record(key):
                recorded: dict[int, Any] = {}
                outputs = self._run_steps(inputs, outer, profile, targets, report, self._recording_steps(recorded))
                specializations.remember(key, self._specialized(recorded))
                return outputs
        return self._run_steps(inputs, outer, profile, targets, report, self._steps)

    def _recording_steps(self, recorded: dict[int, Any]) -> list[tuple]:
        """The steps, with each shape-determined one keeping a frozen copy of its outputs in ``recorded``
        (by step index; only outputs ``recordable`` as a whole)."""
        steps = list(self._steps)
        for index in self._specializations.static_steps:
            fn, ins, outs, frees, multi, alloc, donors = steps[index]

            def keeping(*args, _fn=fn, _index=index, _multi=multi, **kwargs):
                result = _fn(*args, **kwargs)
                values = result if _multi else (result,)
                if all(recordable(v) for v in values):
                    recorded[_index] = [frozen_copy(v) for v in values]
                return result

            steps[index] = (keeping, ins, outs, frees, multi, alloc, donors)
        return steps

    def _specialized(self, recorded: dict[int, Any]) -> ExecutionPlan:
        """This plan without the recorded steps, their outputs held like weights."""
        template = list(self._template)
        kept_steps, kept_nodes, kept_indices = [], [], []
        fixed = set(self._weight_slots) - set(self._input_slots)  # weights, then the recorded outputs too
        recorded_slots: set[int] = set()
        for index, (step, node) in enumerate(zip(self._raw_steps, self.nodes)):
            if index in recorded:
                for slot, value in zip(step[2], recorded[index]):
                    if slot != _TRASH_SLOT:
                        template[slot] = value
                        fixed.add(slot)
                        recorded_slots.add(slot)
            else:
                kept_steps.append(_with_constant_inputs(step, template, fixed, recorded_slots))
                kept_nodes.append(node)
                kept_indices.append(index)
        plan = ExecutionPlan(self.graph, kept_steps, kept_nodes, template, self._input_slots, self._outer_slots,
                             self._output_slots, self.reuse_buffers, specialize_shapes=False,
                             node_indices=kept_indices)
        if self._inter_op_threads:
            plan.use_inter_op_threads(self._inter_op_threads)
        return plan

    def _run_steps(self, inputs: Sequence[Any], outer: Sequence[Any], profile: list | None,
                   targets: Sequence[BoundOutput | None] | None, report: RunReport | None, steps: list) -> list[Any]:
        values = self._template.copy()
        if self._inputs_on_host:
            for slot, value in zip(self._input_slots, inputs):
                values[slot] = value if type(value) is np.ndarray else move_to(value, HOST)
        else:
            for slot, value, (device, on_host) in zip(self._input_slots, inputs, self._input_devices):
                values[slot] = value if on_host and isinstance(value, np.ndarray) else move_to(value, device)
        if outer:
            for slot, value in zip(self._outer_slots, outer):
                values[slot] = value
        if self._parallel is not None:
            return self._run_parallel(values, steps, profile, targets, report)
        handover = delivered = None
        if targets is not None:
            handover = self._handover(targets)
            delivered = [None] * len(self._output_slots)
            if -1 in handover:
                self._deliver_after(-1, values, handover, targets, delivered)
        if (not self._takes_buffers and profile is None and targets is None and report is None
                and steps is self._steps and self._uncounted_runs < UNCOUNTED_RUNS):
            self._uncounted_runs += 1  # (concurrent runs may miscount: a counted run sooner or later, no more)
            uncounted = self._uncounted
            if uncounted is None:
                uncounted = self._uncounted = compile_uncounted_steps(steps, self._failed, OnyxRuntimeError)
            uncounted(values)
            return self._outputs(values, delivered)
        self._uncounted_runs = 0
        arenas = self._arenas
        try:
            arena = arenas.pop()  # atomic: no two runs get one arena
        except IndexError:
            arena = Arena(self.reuse_buffers, self._pool_policy)
        arena.begin(self._weight_owners, owner_ids(inputs) | owner_ids(outer) if outer else owner_ids(inputs))
        try:
            if profile is None and targets is None and steps is self._steps:
                # the common run: the steps as straight-line code (``compiled_steps``), ~0.4 us a step less than the loop
                compiled = self._compiled
                if compiled is None:
                    compiled = self._compiled = compile_steps(steps, _largest_output, self._failed, OnyxRuntimeError)
                compiled(values, arena, self._small_outputs)
            else:
                if targets is not None:
                    arena.bound = self._bound_buffers(targets)
                self._run(values, arena, handover, targets, delivered, profile, steps)
            peak, reused, inplace = arena.peak_bytes, arena.reused_bytes, arena.inplace_bytes
        finally:
            arena.end()
            arenas.append(arena)
        self._last_peak_bytes = peak
        if report is not None:
            report.peak_bytes, report.reused_bytes, report.inplace_bytes = peak, reused, inplace
        return self._outputs(values, delivered)

    def _outputs(self, values: list[Any], delivered: list[Any] | None) -> list[Any]:
        """A finished run's outputs: those handed over (``delivered``), else the output slots' values on the host."""
        if delivered is not None:
            return delivered
        if self._outputs_on_host:
            return [values[slot] for slot in self._output_slots]
        return [move_to(values[slot], HOST) for slot in self._output_slots]

    def _run_parallel(self, values: list[Any], steps: list, profile: list | None,
                      targets: Sequence[BoundOutput | None] | None, report: RunReport | None) -> list[Any]:
        """The run on the inter-op threads; bound outputs are handed over at its end, no buffers recycled."""
        record = None
        if profile is not None:
            lock = threading.Lock()

            def record(index, args, start, duration, result):
                step = self._profiled_step(index, start, duration, self._inputs_seen(steps[index][1], args), result,
                                           steps[index][4])
                with lock:
                    profile.append(step)

        self._parallel.run(steps, self.nodes, values, record)
        if profile is not None:
            profile.sort(key=lambda step: step.start_ns)
        self._last_peak_bytes = 0
        if report is not None:
            report.peak_bytes = report.reused_bytes = report.inplace_bytes = 0
        outputs = [values[slot] for slot in self._output_slots]
        if targets is not None:
            if len(targets) != len(outputs):
                raise ValueError(f"{len(targets)} output targets for {len(outputs)} outputs")
            return [None if target is None else deliver(value, target) for value, target in zip(outputs, targets)]
        return outputs if self._outputs_on_host else [move_to(value, HOST) for value in outputs]

    def _inputs_seen(self, ins: Sequence[int], args: Sequence[Any]) -> list[tuple[bool, TensorTypeShape | None]]:
        """What the profiler records of a step's inputs: whether each is a weight, its type and shape."""
        return [(slot in self._weight_slots, _tensor_type_shape(value)) for slot, value in zip(ins, args)]

    def _profiled_step(self, index: int, start: int, duration: int, inputs_seen: list, result: Any,
                       multi: bool) -> ProfiledStep:
        outputs_seen = [_tensor_type_shape(value) for value in (result if multi else (result,))]
        return ProfiledStep(self.nodes[index], self._node_indices[index], start, duration, inputs_seen, outputs_seen)

    def _handover(self, targets: Sequence[BoundOutput | None]) -> dict[int, list[int]]:
        """Output positions to hand over after each step (key -1: before the first)."""
        if len(targets) != len(self._output_slots):
            raise ValueError(f"{len(targets)} output targets for {len(self._output_slots)} outputs")
        after: dict[int, list[int]] = {}
        for position, step in enumerate(self._output_steps):
            if targets[position] is not None:
                after.setdefault(step, []).append(position)
        return after

    def _bound_buffers(self, targets: Sequence[BoundOutput | None]) -> dict[tuple[int, int], np.ndarray]:
        """Host buffers bound to outputs, by (producing step, output index): ``_alloc`` hands them to the kernel."""
        bound = {}
        for position, target in enumerate(targets):
            step = self._output_steps[position]
            if target is None or step < 0 or type(target.buffer) is not np.ndarray or not target.device.is_host:
                continue
            outs = self._steps[step][2]
            bound[(step, outs.index(self._output_slots[position]))] = target.buffer
        return bound

    def _deliver_after(self, index: int, values: list[Any], handover, targets, delivered: list[Any]) -> None:
        for position in handover[index]:
            delivered[position] = deliver(values[self._output_slots[position]], targets[position])

    def _run(self, values: list[Any], arena: Arena, handover, targets, delivered: list[Any] | None,
             profile: list | None, steps: list) -> None:
        """The steps run one by one: a profiled run, one with outputs handed over or bound, a specialized plan's
        recording run."""
        produced, release = arena.produced, arena.release
        small, min_bytes = self._small_outputs, arena.min_bytes
        ndarray = np.ndarray
        clock = time.perf_counter_ns
        index = start = 0
        try:
            for fn, ins, outs, frees, multi, alloc, donors in steps:
                arena.step = index
                if profile is not None:
                    inputs_seen = self._inputs_seen(ins, [values[slot] for slot in ins])
                if alloc and (arena.bound or not small[index]):
                    if donors:
                        arena.offer(values, donors)
                    if profile is not None:
                        start = clock()
                    args = [values[i] for i in ins]
                    if arena.bound:
                        arena.step_args, arena.step_inplace = args, self._step_inplace[index]
                        result = fn(*args, _alloc=arena)
                        arena.step_args = ()
                    else:
                        result = fn(*args, _alloc=arena)
                    args = None
                    small[index] = _largest_output(result, multi) < min_bytes
                else:
                    if profile is not None:
                        start = clock()
                    result = fn(*[values[i] for i in ins])
                if profile is not None:
                    profile.append(self._profiled_step(index, start, clock() - start, inputs_seen, result, multi))
                # (the arena tracks only arrays of min_bytes or more: the test is inlined, as most
                # values of a small model or decoding step are below it)
                if multi:
                    for slot, value in zip(outs, result):
                        values[slot] = value
                        if type(value) is ndarray and value.nbytes >= min_bytes:
                            produced(value)
                    value = None
                else:
                    values[outs[0]] = result
                    if type(result) is ndarray and result.nbytes >= min_bytes:
                        produced(result)
                result = None  # no reference of the loop's own may keep a buffer from the pool
                if arena.donated:  # a donation the kernel did not take
                    arena.donated.clear()
                if handover and index in handover:
                    self._deliver_after(index, values, handover, targets, delivered)
                for slot in frees:
                    # no local reference to the value: release() tells shared buffers by their reference count
                    if type(values[slot]) is ndarray and values[slot].nbytes >= min_bytes:
                        release(values, slot)
                    else:
                        values[slot] = None
                index += 1
        except OnyxRuntimeError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported with the failing node
            self._failed(index, exc)

    def _failed(self, index: int, exc: Exception) -> None:
        """Raise step ``index``'s failure ``exc`` as the node's error."""
        node = self.nodes[index]
        raise node_failure(node.name, node.op_type, exc) from exc


class ProfiledStep(NamedTuple):
    """One step of a profiled run: what onnxruntime's profiler writes for a node.

    ``inputs`` pairs whether each input is a weight (an initializer) with its tensor type and
    shape; ``inputs`` and ``outputs`` hold None for values that are not tensors (or absent).
    """

    node: ir.Node
    index: int
    start_ns: int
    duration_ns: int
    inputs: list[tuple[bool, TensorTypeShape | None]]
    outputs: list[TensorTypeShape | None]


class TensorTypeShape(NamedTuple):
    """A tensor's element type as onnxruntime's profiler names it ('float', 'int64', ...), shape and bytes."""

    element_type: str
    shape: list[int]
    nbytes: int


def _tensor_type_shape(value: Any) -> TensorTypeShape | None:
    """The type, shape and size of a tensor value (on any device); None for anything else."""
    dtype, shape = getattr(value, "dtype", None), getattr(value, "shape", None)
    if dtype is None or shape is None or isinstance(value, (list, dict)):
        return None
    dtype = np.dtype(dtype)
    name = value_type_string(np.empty(0, dtype))
    element_type = name[len("tensor("):-1] if name.startswith("tensor(") else name
    shape = [int(d) for d in shape]
    return TensorTypeShape(element_type, shape, math.prod(shape) * dtype.itemsize)


def _largest_output(result: Any, multi: bool) -> int:
    """Bytes of a step's largest array output."""
    if multi:
        return max((value.nbytes for value in result if type(value) is np.ndarray), default=0)
    return result.nbytes if type(result) is np.ndarray else 0


def _with_constant_inputs(step: tuple, template: list[Any], fixed: set[int], recorded: set[int]) -> tuple:
    """``step`` with its kernel rebound to the inputs a specialized plan holds as constants, where one of them is a
    ``recorded`` output (a Reshape's shape that Shape and Concat nodes computed: ``kernel_registry``'s
    ``with_constants``) and the kernel has such a path."""
    fn = step[0]
    rebind = getattr(fn, "with_constants", None)
    if rebind is None or not any(slot in recorded for slot in step[1]):
        return step
    constants = [template[slot] if slot in fixed else None for slot in step[1]]
    rebound = rebind(constants)
    return step if rebound is None else (rebound, *step[1:])


def _protected_slots(template: list[Any], input_slots, outer_slots, output_slots) -> set[int]:
    """Slots whose values a run never frees or overwrites: feeds, outer values, outputs, weights, the none
    and trash slots."""
    return {_NONE_SLOT, _TRASH_SLOT, *input_slots, *outer_slots, *output_slots,
            *(slot for slot, value in enumerate(template) if value is not None)}


def _with_buffer_plan(steps, template: list[Any], input_slots, outer_slots, output_slots, reuse_buffers: bool):
    """Steps extended with whether the kernel takes ``_alloc`` and which inputs it may overwrite."""
    contracts = [kernel_contract(fn) for fn, *_ in steps]
    if reuse_buffers:
        protected = _protected_slots(template, input_slots, outer_slots, output_slots)
        donations = plan_donations([(ins, outs, frees) for _, ins, outs, frees, _ in steps], contracts, protected,
                                   _TRASH_SLOT)
    else:
        donations = [()] * len(steps)
    return [(fn, ins, outs, frees, multi, contract.uses_alloc, donors)
            for (fn, ins, outs, frees, multi), contract, donors in zip(steps, contracts, donations)]


def build_plan(
    graph: ir.Graph,
    opsets: dict[str, int],
    providers: Mapping[str, ExecutionProvider],
    outer_values: Sequence[ir.Value] = (),
    reuse_buffers: bool = True,
) -> ExecutionPlan:
    """Compile ``graph`` into an :class:`ExecutionPlan`; each node runs on the provider the partitioner recorded.

    ``reuse_buffers`` turns the buffer planner on (recycled and in-place outputs; see
    ``framework.allocation_planner``); subgraphs get the same setting.
    """
    slots: dict[ir.Value, int] = {}
    template: list[Any] = [None, None]

    def slot_of(value: ir.Value | None) -> int:
        if value is None:
            return _NONE_SLOT
        slot = slots.get(value)
        if slot is None:
            slot = slots[value] = len(template)
            template.append(None)
        return slot

    input_slots = tuple(slot_of(v) for v in graph.inputs)
    outer_slots = tuple(slot_of(v) for v in outer_values)
    fed = set(graph.inputs)
    weights: dict[ir.Value, Any] = {}
    for value in graph.initializers.values():
        array = _read_only(constant_array(value))
        device = value_device(value)
        # a weight read only on a device is copied there once, here
        template[slot_of(value)] = array if device.is_host else data_transfer_for(device).to_device(array)
        if value not in fed:  # weights a kernel may prepare once: initializers no feed can override
            weights[value] = array

    ordered = _checked_order(graph, set(slots))
    steps = []
    last_use: dict[int, int] = {}
    for index, (node, implicit) in enumerate(ordered):
        constants = [weights.get(v) if v is not None else None for v in node.inputs]
        fn, multi = _compile_node(node, implicit, opsets, providers, constants, reuse_buffers)
        ins = tuple(slot_of(v) for v in node.inputs) + tuple(slot_of(v) for v in implicit)
        outs = tuple(slot_of(v) if _is_used(v) else _TRASH_SLOT for v in node.outputs)
        for slot in ins:
            last_use[slot] = index
        steps.append([fn, ins, outs, [], multi])

    keep = {_NONE_SLOT, _TRASH_SLOT} | set(input_slots) | set(outer_slots)
    keep |= {slots[v] for v in graph.initializers.values()}
    output_slots = []
    for value in graph.outputs:
        if value not in slots:
            raise InvalidGraph(
                f"Graph '{graph.name}' output '{value.name}' is not produced by any node, input or initializer"
            )
        output_slots.append(slots[value])
    keep |= set(output_slots)
    for slot, index in last_use.items():
        if slot not in keep:
            steps[index][3].append(slot)
    for step in steps:
        if _TRASH_SLOT in step[2]:
            step[3].append(_TRASH_SLOT)
    frozen = [(fn, ins, outs, tuple(frees), multi) for fn, ins, outs, frees, multi in steps]
    return ExecutionPlan(graph, frozen, [n for n, _ in ordered], template, input_slots, outer_slots, tuple(output_slots),
                         reuse_buffers)


def _runs_cpu_kernel(node: ir.Node) -> bool:
    """Whether ``node`` runs one of the CPU provider's kernels (not a copy, nor a region another provider compiled)."""
    return on_cpu_kernels(node) and not is_copy(node)


def _is_used(value: ir.Value) -> bool:
    """Whether anything reads ``value`` (a node, a subgraph, or the graph's outputs)."""
    return bool(value.name) and (value.is_graph_output() or len(value.uses()) > 0)


def _read_only(array: Any) -> Any:
    """A read-only view of a weight, so no kernel or caller can change it in place."""
    if isinstance(array, np.ndarray) and array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


def _compile_node(node: ir.Node, implicit: list[ir.Value], opsets, providers: Mapping[str, ExecutionProvider],
                  constants: list[Any], reuse_buffers: bool):
    provider = providers[node.meta[PROVIDER_KEY]]
    if FUSED_GROUP in node.meta:
        return provider.compile(node.meta[FUSED_GROUP]), True
    if is_copy(node):
        return compile_copy(node, provider), False
    opset = opset_for(node, opsets)
    attributes: dict[str, Any] = {}
    has_subgraphs = False
    for name, attr in node.attributes.items():
        if attr.type == ir.AttributeType.GRAPH:
            attributes[name] = _compile_subgraph(attr.value, implicit, opsets, providers, reuse_buffers)
            has_subgraphs = True
        elif attr.type == ir.AttributeType.GRAPHS:
            attributes[name] = [_compile_subgraph(g, implicit, opsets, providers, reuse_buffers) for g in attr.value]
            has_subgraphs = True
        else:
            attributes[name] = attribute_value(attr)
    fn, multi = provider.compile_node(node, opset, attributes, constants)
    if implicit or has_subgraphs:
        kernel = getattr(fn, "func", fn)
        if not accepts(kernel, "_outer"):
            raise OrtNotImplemented(f"{describe(node)}: its kernel cannot pass outer-scope values to subgraphs")
        fn = _with_outer(fn, len(node.inputs))
    return fn, multi


def _with_outer(fn: Callable[..., Any], n_explicit: int) -> Callable[..., Any]:
    def run_with_outer(*values: Any) -> Any:
        return fn(*values[:n_explicit], _outer=values[n_explicit:])

    return run_with_outer


def _compile_subgraph(sub: ir.Graph, implicit: list[ir.Value], opsets, providers, reuse_buffers: bool) -> Subgraph:
    free = captured_values(sub)
    plan = build_plan(sub, opsets, providers, outer_values=free, reuse_buffers=reuse_buffers)
    return Subgraph(plan, tuple(implicit.index(v) for v in free))


def _checked_order(graph: ir.Graph, available: set[ir.Value]) -> list[tuple[ir.Node, list[ir.Value]]]:
    """The graph's nodes (kept in topological order by the loader and every pass), each with its implicit inputs.

    Verifies what running needs: every value read is defined before it is read, and no
    name is defined twice.
    """
    defined = set(available)
    names = {v.name for v in available if v.name}
    entries = []
    for node in graph:
        implicit: dict[ir.Value, None] = {}
        for sub in subgraphs(node):
            for value in captured_values(sub):
                implicit.setdefault(value)
        for value in list(node.inputs) + list(implicit):
            if value is not None and value not in defined:
                producer = value.producer()
                if producer is not None and producer.graph is graph:
                    raise InvalidGraph(f"Graph '{graph.name}' has a cycle through {describe(node)}")
                raise InvalidGraph(
                    f"{describe(node)}: input '{value.name}' is not a graph input, initializer, "
                    f"or output of another node in graph '{graph.name}'"
                )
        for value in node.outputs:
            if not value.name:
                continue
            if value.name in names:
                raise InvalidGraph(f"{describe(node)}: output '{value.name}' is already defined in graph '{graph.name}'")
            names.add(value.name)
            defined.add(value)
        entries.append((node, list(implicit)))
    return entries
