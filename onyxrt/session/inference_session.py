"""InferenceSession: onnxruntime's entry point, over onyxrt's load → optimize → partition → plan pipeline."""

from __future__ import annotations

import collections
import json
import os
import threading
import time
import weakref
from typing import Any, Sequence

import numpy as np
import onnx

import onnx_ir as ir

from ..errors import Fail, InvalidArgument, OnyxRuntimeError
from ..framework import logging
from ..framework import host_memory
from ..framework import kv_cache
from ..framework.allocation_planner import RunReport
from ..framework.execution_plan import ProfiledStep, build_plan
from ..framework.device import BoundOutput, device_of
from ..framework.memcpy import insert_copies
from ..framework.partitioner import FUSED_GROUP, PROVIDER_KEY
from ..graph.model_loader import ModelSource, load_model
from ..graph.tensors import constant_array, from_array
from ..graph.types import np_dtype, tensor_shape, type_string, value_type_proto, value_type_string
from ..providers.base import ExecutionProvider
from .io_binding import IOBinding
from .global_thread_pool import global_inter_op_threads, session_thread_pool
from .session_api import SessionApiMixin, external_data_preparer, raise_if_load_cancelled
from .node_arg import ModelMetadata, NodeArg
from .ort_value import OrtValue
from .placement import optimize_and_partition
from .sparse_tensor import SparseTensor
from .providers import create_providers, normalize_providers
from ..framework.run_context import run_scope
from ..framework.shape_specialization import signature
from ..framework.thread_mode import ThreadModes
from ..framework.session_config import KERNELS_ON_POOL, active_session_config
from .session_options import ExecutionMode, RunOptions, SessionOptions, ignored_options, options_summary


class _InputSpec:
    """What a graph input accepts, precomputed for fast feed validation."""

    __slots__ = ("name", "position", "required", "type_string", "dtype", "rank", "fixed_dims", "is_tensor",
                 "_plain_dtype", "_fixed_from", "_fixed_tail")

    def __init__(self, name: str, position: int, type_proto: onnx.TypeProto | None, required: bool = True) -> None:
        self.name, self.position, self.required = name, position, required
        self.type_string = type_string(type_proto) if type_proto is not None else "unknown"
        self.is_tensor = type_proto is not None and type_proto.HasField("tensor_type")
        self.dtype = np_dtype(type_proto.tensor_type.elem_type) if self.is_tensor else None
        shape = tensor_shape(type_proto) if self.is_tensor else None
        self.rank = None if shape is None else len(shape)
        self.fixed_dims = [] if shape is None else [(i, d) for i, d in enumerate(shape) if isinstance(d, int)]
        # the feed taken as it is without further checks: an array of exactly this dtype (not strings), of the rank,
        # whose dims from _fixed_from on are the fixed ones (the commonest shapes: every dim fixed, or the leading
        # ones symbolic, a batch or a sequence); None where fixed dims follow symbolic ones
        self._plain_dtype = self.dtype if self.is_tensor and self.dtype != object else None
        self._fixed_from = self._fixed_tail = None
        if shape is not None:
            start = len(shape) - len(self.fixed_dims)
            if all(index >= start for index, _ in self.fixed_dims):
                self._fixed_from, self._fixed_tail = start, tuple(shape[start:])

    def convert(self, value: Any) -> Any:
        """The fed value as a plain host array of the input's type (device tensors as they are).

        Raises onnxruntime's INVALID_ARGUMENT errors, naming the input, for a value that is not one.
        """
        if type(value) is np.ndarray and value.dtype is self._plain_dtype and self._fixed_from is not None:
            shape = value.shape
            if len(shape) == self.rank and shape[self._fixed_from:] == self._fixed_tail:
                return value
        if isinstance(value, OrtValue):
            value = value.value
        if not self.is_tensor:
            if self.type_string.startswith("sparse_tensor(") and not isinstance(value, SparseTensor):
                raise InvalidArgument(f"input with name: '{self.name}' expected to be of type: sparse tensor "
                                      f"but received {type(value).__name__}")
            return value
        if type(value) is not np.ndarray:  # the common feed skips every conversion below
            if isinstance(value, np.ndarray):
                # Subclasses (masked arrays, matrices) would reach kernels with their own arithmetic:
                # onnxruntime reads the buffer, so do we (a masked array's data, its mask ignored).
                value = np.asarray(value)
            elif value is None:
                raise InvalidArgument(f"Input '{self.name}' is None: a tensor is required")
            elif not device_of(value).is_host:
                return self._checked_device_tensor(value)
            else:
                value = self._from_python(value)
        if value.dtype != self.dtype:
            if self.dtype == object and value.dtype.kind in "US":
                value = self._decoded_strings(value)
            else:
                raise self._wrong_type(value_type_string(value))
        elif self.dtype == object:
            value = self._as_strings(value)
        self._check_shape(value)
        return value

    def _from_python(self, value: Any) -> np.ndarray:
        """Lists and scalars become arrays of the input's type (lists as onnxruntime converts them)."""
        try:
            return np.asarray(value, dtype=self.dtype)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidArgument(f"Input '{self.name}' cannot be converted to {self.type_string}: {exc}") from None

    def _decoded_strings(self, value: np.ndarray) -> np.ndarray:
        """A numpy str or bytes array as a string tensor: an object array of str (bytes read as UTF-8)."""
        if value.dtype.kind == "U":
            return value.astype(object)
        try:
            return np.char.decode(value, "utf-8").astype(object)
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"Input '{self.name}' holds bytes that are not UTF-8: {exc}") from None

    def _as_strings(self, value: np.ndarray) -> np.ndarray:
        """An object array whose elements are all str; others become ``str(element)``, as in onnxruntime."""
        if all(type(item) is str for item in value.flat):
            return value
        strings = np.empty(value.shape, dtype=object)
        strings.flat = [item if type(item) is str else str(item) for item in value.flat]
        return strings

    def _checked_device_tensor(self, value: Any) -> Any:
        """A tensor on a device is checked as it is: converting would mean copying it to the host."""
        if np.dtype(value.dtype) != self.dtype:
            raise self._wrong_type(value_type_string(np.empty(0, value.dtype)))
        self._check_shape(value)
        return value

    def _wrong_type(self, actual: str) -> InvalidArgument:
        return InvalidArgument(f"Unexpected input data type. Actual: ({actual}) , expected: ({self.type_string})")

    def _check_shape(self, value: Any) -> None:
        if self.rank is not None:
            if len(value.shape) != self.rank:
                raise InvalidArgument(
                    f"Invalid rank for input: {self.name} Got: {len(value.shape)} Expected: {self.rank} "
                    "Please fix either the inputs/outputs or the model."
                )
            bad = [(i, value.shape[i], d) for i, d in self.fixed_dims if value.shape[i] != d]
            if bad:
                details = "\n".join(f" index: {i} Got: {got} Expected: {want}" for i, got, want in bad)
                raise InvalidArgument(
                    f"Got invalid dimensions for input: {self.name} for the following indices\n{details}\n"
                    " Please fix either the inputs/outputs or the model."
                )


def _check_run_options(run_options: Any) -> None:
    """TypeError for a ``run_options`` argument that is not a RunOptions (or None), as onnxruntime's binding."""
    if run_options is not None and not isinstance(run_options, RunOptions):
        raise TypeError(f"run_options must be a RunOptions or None, got {type(run_options).__name__}")


def _write_profile(prefix: str, events: list[dict[str, Any]], lock: threading.Lock) -> str:
    """Write ``events`` to ``<prefix>_<date>_<time>_<ms>.json`` (onnxruntime's name) and return the name."""
    now = time.time_ns()
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now // 1_000_000_000))
    path = f"{prefix}_{stamp}_{now // 1_000_000 % 1000:03d}.json"
    with lock:
        written = list(events)
        events.clear()
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(written, handle)
    return path


class _FedArrays:
    """The numpy arrays of a run's feed, for asking whether an output shares memory with one.

    Two arrays that each own their data never overlap, so an output owning its data (a kernel's
    fresh result, the common case) is compared only with the fed views, not with every input.
    The feed is looked through only when an output asks (once a run for its views).
    """

    __slots__ = ("_feed", "_views")

    def __init__(self, input_feed: dict[str, Any]) -> None:
        self._feed = input_feed
        self._views: list[np.ndarray] | None = None

    def may_share_memory(self, value: np.ndarray) -> bool:
        if value.flags.owndata:
            for fed in self._feed.values():
                if fed is value:
                    return True
            candidates = self._views
            if candidates is None:
                candidates = self._views = [v for v in self._feed.values()
                                            if isinstance(v, np.ndarray) and not v.flags.owndata]
        else:
            candidates = [v for v in self._feed.values() if isinstance(v, np.ndarray)]
        for fed in candidates:
            if np.may_share_memory(value, fed):
                return True
        return False


class InferenceSession(SessionApiMixin):
    """Loads a model once and runs it; the same constructor and methods as ``onnxruntime.InferenceSession``."""

    def __init__(
        self,
        path_or_bytes: ModelSource,
        sess_options: SessionOptions | None = None,
        providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
        provider_options: Sequence[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        self._model_path = os.fspath(path_or_bytes) if isinstance(path_or_bytes, (str, os.PathLike)) else None
        # kept: set_providers prepares the model again from it, as onnxruntime re-creates its session
        self._model_source = path_or_bytes
        self._sess_options = sess_options if sess_options is not None else SessionOptions()
        options = self._sess_options
        self._logger = logging.session_logger(options.logid, options.log_severity_level, options.log_verbosity_level)
        # the profiler's clock starts with the session, as onnxruntime's: event times are microseconds after it
        self._profiling = bool(options.enable_profiling)
        self._profile_start_ns = time.time_ns() if self._profiling else 0  # 0: never profiled, as onnxruntime
        self._profile_origin_ns = time.perf_counter_ns()
        self._profile_events: list[dict[str, Any]] = []
        self._profile_lock = threading.Lock()
        self._profile_writer: weakref.finalize | None = None
        if self._logger.enabled(logging.INFO):
            self._logger.info(options_summary(options))
        for message in ignored_options(options):
            self._logger.warning(message)
        self._configured_pool = session_thread_pool(self._sess_options)  # its own, or the global pool
        self._thread_pool = self._configured_pool  # the pool runs use (``_build_plan`` may change its mode)
        if self._sess_options.enable_cpu_mem_arena:
            host_memory.hold_for(self)
        self._read_config_from_model = kwargs.pop("read_config_from_model", False)
        self._disabled_optimizers = frozenset(kwargs.pop("disabled_optimizers", None) or ())
        if kwargs:
            raise TypeError(f"InferenceSession got unexpected keyword arguments: {', '.join(kwargs)}")

        normalized = normalize_providers(providers, provider_options)
        self._provider_options = dict(normalized)
        self._providers = create_providers(normalized, self._sess_options)
        self._prepare(self._providers)
        if self._profiling:
            # as onnxruntime, a session collected before end_profiling still writes its profile
            self._profile_writer = weakref.finalize(self, _write_profile, options.profile_file_prefix,
                                                    self._profile_events, self._profile_lock)
        self._logger.info("Session successfully initialized.")

    # ------------------------------------------------------------------ construction helpers

    def _prepare(self, providers: Sequence[ExecutionProvider]) -> None:
        """Load the model, optimize and partition it for ``providers`` (``session.placement``) and plan its runs."""
        options = self._sess_options
        loading_started = time.perf_counter_ns()
        raise_if_load_cancelled(options)
        model = load_model(self._model_source, prepare=external_data_preparer(options))
        raise_if_load_cancelled(options)
        initialization_started = time.perf_counter_ns()
        self._logger.info("Initializing session.")
        if self._profiling:
            loading = "model_loading_uri" if self._model_path is not None else "model_loading_array"
            self._record_session_event(loading, loading_started, initialization_started)
        self._apply_initializer_overrides(model)
        self._apply_free_dimension_overrides(model)
        self._describe(model)
        self._warn_about_initializers(model)
        report = optimize_and_partition(model, providers, options, self._disabled_optimizers)
        self.applied_optimizations = report.applied
        for pass_name, rewrites in report.counts.items():
            self._logger.info(f"Graph pass {pass_name} modified: {rewrites}")
        self._optimization_report = report
        self._model = model
        raise_if_load_cancelled(options)
        self._plan = self._build_plan(providers)
        if self._profiling:
            self._record_session_event("session_initialization", initialization_started, time.perf_counter_ns())

    def _build_plan(self, providers: Sequence[ExecutionProvider]):
        graph, opsets = self._model.graph, self._model.opset_imports
        insert_copies(graph, providers)
        if self._logger.enabled(logging.VERBOSE):
            placed = collections.Counter(node.meta.get(PROVIDER_KEY, "") for node in graph)
            self._logger.verbose("Node placements")
            for provider, count in placed.items():
                self._logger.verbose(f" {count} nodes placed on [{provider}]")
        # prepacks see the session's config entries, and time kernels on the session's pool
        pool = self._thread_pool = self._configured_pool
        with active_session_config(self._sess_options._config) as traits, pool.activate():
            plan = build_plan(graph, opsets, {p.name: p for p in providers},
                              reuse_buffers=self._sess_options.enable_mem_reuse)
        # Sparse and int8 kernels split over the pool; BLAS's threads, spinning after each dense GEMM, would
        # take the same cores (measured on 2 cores: a 90%-pruned minilm_l6 40 -> 29 ms, onnxruntime's
        # int8 minilm_l6 on the AVX2 route 55 -> 45 ms): such a plan runs with the pool splitting GEMMs
        # too, unless the user set allow_spinning explicitly.
        spinning_set = "session.intra_op.allow_spinning" in self._sess_options._config
        if KERNELS_ON_POOL in traits and not spinning_set:
            self._thread_pool = pool.splitting_gemms()
        # the mode per input signature, learned from its first run (``framework.thread_mode``), where the pool has
        # two and the user chose neither
        split = self._thread_pool.splitting_gemms()
        self._thread_modes = (ThreadModes(self._thread_pool, split) if split is not self._thread_pool
                              and not spinning_set and self._sess_options.execution_mode != ExecutionMode.ORT_PARALLEL
                              else None)
        if self._sess_options.execution_mode == ExecutionMode.ORT_PARALLEL:
            # as onnxruntime: inter_op_num_threads threads, or the global pools' size for a session without its
            # own threads (0: one per physical core, the intra-op pool's default)
            options = self._sess_options
            inter = options.inter_op_num_threads if options.use_per_session_threads else global_inter_op_threads()
            plan.use_inter_op_threads(inter or pool.num_threads)
        return plan

    def _apply_initializer_overrides(self, model: ir.Model) -> None:
        for name, value in self._sess_options._initializers.items():
            if name not in model.graph.initializers:
                raise InvalidArgument(f"add_initializer: '{name}' is not an initializer of the model")
            array = value.numpy() if isinstance(value, OrtValue) else np.asarray(value)
            model.graph.initializers[name].const_value = from_array(array, name)

    def _apply_free_dimension_overrides(self, model: ir.Model) -> None:
        by_name = self._sess_options._free_dimension_overrides_by_name
        by_denotation = self._sess_options._free_dimension_overrides_by_denotation
        if not by_name and not by_denotation:
            return
        for value in model.graph.inputs:
            shape = value.shape
            if shape is None:
                continue
            dims = list(shape.dims)
            for i, dim in enumerate(dims):
                if isinstance(dim, ir.SymbolicDim) and dim.value in by_name:
                    dims[i] = by_name[dim.value]
                elif shape.get_denotation(i) in by_denotation:
                    dims[i] = by_denotation[shape.get_denotation(i)]
            value.shape = ir.Shape(dims, denotations=[shape.get_denotation(i) for i in range(len(dims))])

    def _warn_about_initializers(self, model: ir.Model) -> None:
        """onnxruntime's load-time warnings about initializers, which hold for onyxrt as well: one listed
        among the graph inputs is overridable (so never folded), one no node reads is dropped."""
        if not self._logger.enabled(logging.WARNING):
            return
        graph = model.graph
        inputs, outputs = set(graph.inputs), set(graph.outputs)
        for name, value in graph.initializers.items():
            if value in inputs and model.ir_version >= 4:  # before IR 4 every initializer is listed as an input
                self._logger.warning(
                    f"Initializer {name} appears in graph inputs and will not be treated as constant value/weight. "
                    "This may prevent graph optimizations like constant folding: move it out of the graph inputs "
                    "if it need not be overridden.")
            elif not value.uses() and value not in outputs:
                self._logger.warning(
                    f"Removing initializer '{name}'. It is not used by any node and should be removed from the model.")

    def _describe(self, model: ir.Model) -> None:
        graph = model.graph
        self._all_input_names = [v.name for v in graph.inputs]
        types = {v: value_type_proto(v) for v in list(graph.inputs) + list(graph.outputs)}
        initializers = set(graph.initializers.values())
        self._inputs_meta = [NodeArg(v.name, types[v]) for v in graph.inputs if v not in initializers]
        self._overridable_meta = [NodeArg(v.name, types[v]) for v in graph.inputs if v in initializers]
        self._outputs_meta = [NodeArg(v.name, types[v]) for v in graph.outputs]
        self._required_inputs = [a.name for a in self._inputs_meta]
        self._input_specs = {v.name: _InputSpec(v.name, i, types[v], v not in initializers)
                             for i, v in enumerate(graph.inputs)}
        self._input_defaults = [constant_array(v) if v in initializers else None for v in graph.inputs]
        self._output_index = {v.name: i for i, v in enumerate(graph.outputs)}
        self._model_meta = ModelMetadata(
            # onnxruntime reports unset strings as '' and an unset model_version as INT64_MAX.
            producer_name=model.producer_name or "",
            graph_name=graph.name or "",
            domain=model.domain or "",
            description=model.doc_string or "",
            graph_description=graph.doc_string or "",
            version=model.model_version if model.model_version is not None else 2**63 - 1,
            custom_metadata_map=dict(model.metadata_props),
        )

    # ------------------------------------------------------------------ introspection

    def get_inputs(self) -> list[NodeArg]:
        return list(self._inputs_meta)

    def get_outputs(self) -> list[NodeArg]:
        return list(self._outputs_meta)

    def get_overridable_initializers(self) -> list[NodeArg]:
        return list(self._overridable_meta)

    def get_modelmeta(self) -> ModelMetadata:
        return self._model_meta

    def get_providers(self) -> list[str]:
        return [p.name for p in self._providers]

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return {name: dict(options) for name, options in self._provider_options.items()}

    def get_session_options(self) -> SessionOptions:
        return self._sess_options

    def set_providers(self, providers=None, provider_options=None) -> None:
        """Re-create the session's providers, and its model and plan from the model source, as onnxruntime does.

        The optimizer's later stages depend on which provider takes which nodes, so the model is
        prepared again from the source (a path is read again), not re-partitioned.
        """
        normalized = normalize_providers(providers, provider_options)
        new_providers = create_providers(normalized, self._sess_options)
        self._prepare(new_providers)
        self._providers, self._provider_options = new_providers, dict(normalized)

    def disable_fallback(self) -> None:
        """Kept for API compatibility: onyxrt always keeps the CPU provider as the fallback."""

    def enable_fallback(self) -> None:
        """Kept for API compatibility: onyxrt always keeps the CPU provider as the fallback."""

    # ------------------------------------------------------------------ running

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any], run_options: RunOptions | None = None) -> list[Any]:
        """Compute ``output_names`` (all outputs when None or empty) from ``input_feed``; returns numpy values."""
        if not isinstance(input_feed, dict):
            raise InvalidArgument(f"input_feed must be a dict of input name to value, got {type(input_feed).__name__}")
        if run_options is not None:
            _check_run_options(run_options)
            if run_options.terminate:
                raise Fail("Exiting due to terminate flag being set to true.")
        wanted = self._output_positions(output_names)
        outputs = self._execute(self._prepare_inputs(input_feed), run_options=run_options)
        fed = _FedArrays(input_feed)
        return [self._finish_output(outputs[i], fed) for i in wanted]

    def _execute(self, inputs: list[Any], targets: Sequence[BoundOutput | None] | None = None,
                 run_options: RunOptions | None = None) -> list[Any]:
        """The plan's run (profiled when profiling is on); ``targets`` as in ``ExecutionPlan.run``.

        A node's failure is logged (ERROR, on the run's logger) before it is raised, as onnxruntime does.
        """
        logger = self._logger
        if run_options is not None:
            logger = logging.run_logger(logger, run_options.logid, run_options.log_severity_level,
                                        run_options.log_verbosity_level) or logger
            if self._logger.enabled(logging.INFO):
                self._logger.info(f"Running with tag: {run_options.logid}")
        # kernels see run_options (terminate) through framework.run_context.check_terminate
        key = signature(inputs)  # (the plan's specializations and the thread modes are keyed by it)
        try:
            with run_scope(run_options):
                modes = self._thread_modes
                pool = self._thread_pool if modes is None else modes.learned_pool(key)
                if pool is not None:
                    return self._run_on(pool, inputs, targets, key)
                return modes.run(key, lambda pool: self._run_on(pool, inputs, targets, key))
        except OnyxRuntimeError as error:
            if getattr(error, "node_name", None) is not None:
                logger.error(error.message)
            raise

    def _run_on(self, pool, inputs: list[Any], targets: Sequence[BoundOutput | None] | None, key) -> list[Any]:
        with pool.activate():
            if not self._profiling:
                return self._plan.run(inputs, targets=targets, key=key)
            return self._profiled_run(inputs, targets, key)

    def _profiled_run(self, inputs: list[Any], targets: Sequence[BoundOutput | None] | None, key) -> list[Any]:
        """A run whose steps are recorded (a failed run too: the steps that ran, and the run)."""
        steps: list[ProfiledStep] = []
        report = RunReport()
        start = time.perf_counter_ns()
        try:
            return self._plan.run(inputs, profile=steps, targets=targets, report=report, key=key)
        finally:
            self._record_profile(start, time.perf_counter_ns(), steps, report)

    def run_async(self, output_names: Sequence[str] | None, input_feed: dict[str, Any], callback, user_data: Any = None,
                  run_options: RunOptions | None = None) -> None:
        """Run on a worker thread; ``callback(outputs, user_data, error_message)`` gets the result.

        As in onnxruntime, ``error_message`` is '' on success and the outputs are None on failure.
        """

        def work() -> None:
            try:
                outputs = self.run(output_names, input_feed, run_options)
            except Exception as exc:  # noqa: BLE001 - handed to the callback, as onnxruntime does
                callback(None, user_data, str(exc))
                return
            callback(outputs, user_data, "")

        threading.Thread(target=work, name="onyxrt-run-async", daemon=True).start()

    def run_with_ort_values(self, output_names: Sequence[str] | None, input_dict_ort_values: dict[str, OrtValue],
                            run_options: RunOptions | None = None) -> list[OrtValue]:
        """Like ``run``, with OrtValues (on any device) in and host OrtValues out."""
        return [OrtValue(v) for v in self.run(output_names, input_dict_ort_values, run_options)]

    def io_binding(self) -> IOBinding:
        return IOBinding(self)

    def run_with_iobinding(self, iobinding: IOBinding, run_options: RunOptions | None = None) -> None:
        """Run with the binding's inputs and outputs; any failure is a RuntimeError, as in onnxruntime."""
        try:
            iobinding._run(run_options)
        except OnyxRuntimeError as error:
            raise RuntimeError(f"Error in execution: {error.message}") from error

    def _run_bound(self, input_feed: dict[str, Any], output_names: Sequence[str], targets: Sequence[BoundOutput],
                   run_options: RunOptions | None) -> list[Any]:
        """IOBinding's run: each of ``output_names`` handed over as its target asks (device, buffer)."""
        if run_options is not None and run_options.terminate:
            raise Fail("Exiting due to terminate flag being set to true.")
        wanted = self._output_positions(output_names)
        all_targets: list[BoundOutput | None] = [None] * len(self._outputs_meta)
        for position, target in zip(wanted, targets):
            all_targets[position] = target
        outputs = self._execute(self._prepare_inputs(input_feed), all_targets, run_options)
        # an output written into the caller's buffer is that buffer (a past bound as its present too)
        fed = _FedArrays(input_feed)
        return [outputs[i] if target.buffer is not None else self._finish_output(outputs[i], fed)
                for i, target in zip(wanted, targets)]

    def _output_positions(self, output_names: Sequence[str] | None) -> Sequence[int]:
        if not output_names:
            return range(len(self._outputs_meta))
        positions = []
        for name in output_names:
            if name not in self._output_index:
                raise InvalidArgument(f"Invalid output name: {name}")
            positions.append(self._output_index[name])
        return positions

    def _prepare_inputs(self, input_feed: dict[str, Any]) -> list[Any]:
        inputs = list(self._input_defaults)
        specs = self._input_specs
        required = 0
        try:
            for name, value in input_feed.items():
                spec = specs.get(name)
                if spec is None:
                    raise InvalidArgument(f"Invalid input name: {name}")
                inputs[spec.position] = spec.convert(value)
                required += spec.required
        except Exception:
            self._check_missing_inputs(input_feed)  # (onnxruntime reports missing inputs before any other error)
            raise
        if required != len(self._required_inputs):
            self._check_missing_inputs(input_feed)
        return inputs

    def _check_missing_inputs(self, input_feed: dict[str, Any]) -> None:
        missing = [name for name in self._required_inputs if name not in input_feed]
        if missing:
            raise ValueError(f"Required inputs ({missing}) are missing from input feed ({list(input_feed)}).")

    @staticmethod
    def _finish_output(value: Any, fed: _FedArrays) -> Any:
        """Outputs are fresh, writable arrays: never views of weights or of the caller's inputs --
        except a present key/value appended in place to a ``framework.kv_cache`` buffer the caller handed over."""
        if isinstance(value, np.ndarray):
            flags = value.flags
            if not flags.owndata and kv_cache.owner_of(value) is not None:
                return value
            if not flags.writeable or fed.may_share_memory(value):
                return value.copy()
            return value
        if isinstance(value, np.generic):
            return np.asarray(value)
        if isinstance(value, list):  # a sequence: its tensors may be weights or inputs too
            return [InferenceSession._finish_output(item, fed) for item in value]
        return value

    # ------------------------------------------------------------------ profiling

    def _event(self, category: str, name: str, start_ns: int, duration_ns: int, args: dict[str, Any]) -> dict[str, Any]:
        """One Chrome trace event as onnxruntime writes it (microseconds since the profiler started)."""
        return {"cat": category, "pid": os.getpid(), "tid": threading.get_native_id(), "dur": duration_ns // 1000,
                "ts": (start_ns - self._profile_origin_ns) // 1000, "ph": "X", "name": name, "args": args}

    def _record_session_event(self, name: str, start_ns: int, end_ns: int) -> None:
        with self._profile_lock:
            self._profile_events.append(self._event("Session", name, start_ns, end_ns - start_ns, {}))

    def _record_profile(self, start_ns: int, end_ns: int, steps: list[ProfiledStep], report: RunReport) -> None:
        """A run's events, in onnxruntime's order: each node's, the executor's, the run's.

        Node events carry onnxruntime's args (op_name, provider, node_index, sizes, input and output
        types and shapes); the run's carries onyxrt's memory figures (``peak_bytes``, ``reused_bytes``,
        ``inplace_bytes``) where onnxruntime's has none. A region a provider compiled is one node event
        (op_name and provider: the provider's name) whose ``fused_nodes`` and ``fused_op_types`` list the
        region's nodes, in order.
        """
        records = []
        for step in steps:
            inputs = [(is_weight, seen) for is_weight, seen in step.inputs if seen is not None]
            outputs = [seen for seen in step.outputs if seen is not None]
            args = {
                "op_name": step.node.op_type,
                "provider": step.node.meta.get(PROVIDER_KEY, ""),
                "node_index": str(step.index),
                "parameter_size": str(sum(seen.nbytes for is_weight, seen in inputs if is_weight)),
                "activation_size": str(sum(seen.nbytes for is_weight, seen in inputs if not is_weight)),
                "output_size": str(sum(seen.nbytes for seen in outputs)),
                "input_type_shape": [{seen.element_type: seen.shape} for _, seen in inputs],
                "output_type_shape": [{seen.element_type: seen.shape} for seen in outputs],
            }
            region = step.node.meta.get(FUSED_GROUP)
            if region is not None:
                args["fused_nodes"] = [node.name for node in region.nodes]
                args["fused_op_types"] = [node.op_type for node in region.nodes]
            records.append(self._event("Node", f"{step.node.name}_kernel_time", step.start_ns, step.duration_ns, args))
        if steps:
            first = steps[0].start_ns
            last = steps[-1].start_ns + steps[-1].duration_ns
            records.append(self._event("Session", "SequentialExecutor::Execute", first, last - first, {}))
        records.append(self._event("Session", "model_run", start_ns, end_ns - start_ns, {
            "peak_bytes": report.peak_bytes, "reused_bytes": report.reused_bytes, "inplace_bytes": report.inplace_bytes,
        }))
        with self._profile_lock:
            self._profile_events.extend(records)

    def end_profiling(self) -> str:
        """Write the profile as a Chrome trace JSON file and return its name ('' when profiling is off)."""
        if self._profile_writer is None or not self._profile_writer.alive:
            return ""
        self._profiling = False
        return self._profile_writer()

    def get_profiling_start_time_ns(self) -> int:
        """When profiling started (ns since the epoch), kept after ``end_profiling``; 0 if it never did."""
        return self._profile_start_ns
