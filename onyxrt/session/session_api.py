"""InferenceSession's lower-level API: OrtValueVector runs, memory infos, EP graph assignment info.

A mixin of :class:`~onyxrt.session.inference_session.InferenceSession`, kept apart from the
session's construction and ``run`` path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import onnx

from ..errors import Fail, InvalidArgument, ModelLoadCanceled
from ..framework.device import HOST, BoundOutput, Device, data_transfer_for
from ..framework.memcpy import value_device
from ..framework.partitioner import FUSED_GROUP
from ..providers.base import PROVIDER_KEY
from .device import NativeOrtDevice, OrtMemoryInfo, device_of_native
from .external_initializers import inject_external_data
from .ort_value import OrtValue
from .ort_value_vector import OrtValueVector
from .session_options import OrtAllocatorType, RunOptions

if TYPE_CHECKING:
    import onnx_ir as ir

# The session config key that makes a session keep its EP graph assignment (onnxruntime's).
RECORD_ASSIGNMENT_KEY = "session.record_ep_graph_assignment_info"


class OrtEpAssignedNode:
    """A node as assigned to an execution provider: its name, op type and domain."""

    __slots__ = ("_name", "_op_type", "_domain")

    def __init__(self, name: str, op_type: str, domain: str) -> None:
        self._name, self._op_type, self._domain = name, op_type, domain

    @property
    def name(self) -> str:
        return self._name

    @property
    def op_type(self) -> str:
        return self._op_type

    @property
    def domain(self) -> str:
        return self._domain

    def __repr__(self) -> str:
        return f"OrtEpAssignedNode(name='{self._name}', op_type='{self._op_type}', domain='{self._domain}')"


class OrtEpAssignedSubgraph:
    """Nodes one execution provider runs as a unit (a single node for per-node providers like CPU)."""

    __slots__ = ("_ep_name", "_nodes")

    def __init__(self, ep_name: str, nodes: Sequence[OrtEpAssignedNode]) -> None:
        self._ep_name, self._nodes = ep_name, list(nodes)

    @property
    def ep_name(self) -> str:
        return self._ep_name

    def get_nodes(self) -> list[OrtEpAssignedNode]:
        return list(self._nodes)

    def __repr__(self) -> str:
        return f"OrtEpAssignedSubgraph(ep_name='{self._ep_name}', nodes={len(self._nodes)})"


def _assigned(node: ir.Node) -> OrtEpAssignedNode:
    return OrtEpAssignedNode(node.name or "", node.op_type, node.domain)


class SessionApiMixin:
    """The lower-level methods of onnxruntime's InferenceSession."""

    # ------------------------------------------------------------------ OrtValueVector runs

    def run_with_ortvaluevector(self, run_options: RunOptions, feed_names: Sequence[str], feeds: OrtValueVector,
                                fetch_names: Sequence[str], fetches: OrtValueVector,
                                fetch_devices: Sequence[NativeOrtDevice]) -> None:
        """Run with OrtValueVectors: ``fetches`` receives the outputs named in ``fetch_names``.

        ``fetches`` is empty (its contents are replaced by new OrtValues on ``fetch_devices``)
        or holds one preallocated tensor per fetch name, which the run writes into. A fetch
        device no provider of this build serves gets the output on the host, as in onnxruntime.
        """
        if not isinstance(run_options, RunOptions) or not isinstance(feeds, OrtValueVector) \
                or not isinstance(fetches, OrtValueVector) or isinstance(feed_names, str) \
                or isinstance(fetch_names, str):
            raise TypeError(
                "run_with_ortvaluevector(run_options: RunOptions, feed_names: list[str], feeds: OrtValueVector, "
                "fetch_names: list[str], fetches: OrtValueVector, fetch_devices: list[OrtDevice])"
            )
        feed_names, fetch_names, devices = list(feed_names), list(fetch_names), list(fetch_devices)
        if not all(isinstance(n, str) for n in feed_names + fetch_names) \
                or not all(isinstance(d, NativeOrtDevice) for d in devices):
            raise TypeError("feed_names and fetch_names must hold str, fetch_devices native OrtDevices "
                            "(OrtDevice.make(...)._get_c_device())")
        if len(feed_names) != len(feeds):
            raise InvalidArgument(f"feed names has {len(feed_names)} elements, but feed has {len(feeds)} elements.")
        if len(fetches) and len(fetches) != len(fetch_names):
            raise InvalidArgument(f"fetch names has {len(fetch_names)} elements, but fetch has {len(fetches)} elements.")
        if not fetch_names:
            raise InvalidArgument("At least one output should be requested.")
        if len(devices) < len(fetch_names):
            raise InvalidArgument(f"fetch_devices has {len(devices)} elements for {len(fetch_names)} fetch names.")
        feed = dict(zip(feed_names, feeds))
        unknown = [name for name in feed_names if name not in self._input_specs]
        if unknown:
            raise InvalidArgument(f"Invalid input name: {unknown[0]}")
        missing = [name for name in self._required_inputs if name not in feed]
        if missing:
            raise Fail(f"Missing Input: {missing[0]} (feed_names must name every required input: {missing})")
        preallocated = list(fetches) if len(fetches) else None
        targets = [BoundOutput(value.device, value.value) for value in preallocated] if preallocated else [
            BoundOutput(_served_or_host(device_of_native(native))) for native in devices[: len(fetch_names)]
        ]
        results = self._run_bound(feed, fetch_names, targets, run_options)
        if preallocated:
            fetches._replace(preallocated)
        else:
            fetches._replace([OrtValue(result, target.device) for result, target in zip(results, targets)])

    # ------------------------------------------------------------------ memory infos

    def get_input_memory_infos(self) -> list[OrtMemoryInfo]:
        """Where each input of ``get_inputs()`` is read: the memory info of its device's allocator."""
        devices = dict(zip(self._plan.input_names, (value_device(v) for v in self._plan.graph.inputs)))
        return [self._memory_info(devices.get(arg.name, HOST)) for arg in self._inputs_meta]

    def get_output_memory_infos(self) -> list[OrtMemoryInfo]:
        """Where each output of ``get_outputs()`` is produced: the memory info of its device's allocator."""
        return [self._memory_info(value_device(v)) for v in self._plan.graph.outputs]

    def _memory_info(self, device: Device) -> OrtMemoryInfo:
        # one object per device and allocator type, so equal infos compare equal (identity, as in onnxruntime)
        allocator = (OrtAllocatorType.ORT_ARENA_ALLOCATOR if self._sess_options.enable_cpu_mem_arena
                     else OrtAllocatorType.ORT_DEVICE_ALLOCATOR)
        cache = self.__dict__.setdefault("_memory_infos", {})
        key = (device, allocator)
        if key not in cache:
            cache[key] = OrtMemoryInfo.for_device(device, allocator)
        return cache[key]

    # ------------------------------------------------------------------ EP graph assignment

    def get_provider_graph_assignment_info(self) -> list[OrtEpAssignedSubgraph]:
        """The nodes each execution provider runs, one subgraph per unit it runs them in (graph order).

        As in onnxruntime, the session must be created with the session config entry
        ``session.record_ep_graph_assignment_info`` set to "1"; otherwise FAIL.
        """
        if self._sess_options._config.get(RECORD_ASSIGNMENT_KEY) != "1":
            raise Fail(f"Session configuration entry '{RECORD_ASSIGNMENT_KEY}' must be set to \"1\" to retrieve "
                       "EP graph assignment information.")
        subgraphs = []
        for node in self._plan.graph:
            group = node.meta.get(FUSED_GROUP)
            nodes = [_assigned(inner) for inner in group.nodes] if group is not None else [_assigned(node)]
            subgraphs.append(OrtEpAssignedSubgraph(node.meta.get(PROVIDER_KEY, ""), nodes))
        return subgraphs

    # ------------------------------------------------------------------ smaller pieces of onnxruntime's API

    def create_ortvalue_from_shape_and_type(self, shape: Sequence[int], element_type: Any, device_type: str,
                                            device_id: int = 0, vendor_id: int = -1) -> OrtValue:
        """An uninitialized tensor from the session's allocator on the device (onyxrt's allocators are shared)."""
        return OrtValue.ortvalue_from_shape_and_type(shape, element_type, device_type, device_id, vendor_id)

    def get_tuning_results(self) -> list[dict[str, Any]]:
        """No provider of onyxrt tunes kernels: always empty, as onnxruntime's CPU build."""
        return []

    def set_tuning_results(self, results: Sequence[dict[str, Any]], *, error_on_invalid: bool = False) -> None:
        """Accepted and ignored: no provider of onyxrt tunes kernels (as onnxruntime's CPU build)."""

    def set_ep_dynamic_options(self, options: dict[str, str]) -> None:
        """Dynamic provider options: none of onyxrt's providers has any, so they are checked and ignored."""
        if not isinstance(options, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in options.items()):
            raise TypeError("set_ep_dynamic_options takes a dict of str to str")
        if not options:
            raise RuntimeError("No options were provided")

    def release_captured_graph(self, graph_annotation_id: int = 0) -> None:
        """No-op: onyxrt captures no device graphs (as onnxruntime's providers without graph capture)."""


def _served_or_host(device: Device) -> Device:
    try:
        data_transfer_for(device)
    except InvalidArgument:
        return HOST
    return device


def raise_if_load_cancelled(options: Any) -> None:
    """MODEL_LOAD_CANCELED once ``options.set_load_cancellation_flag(True)`` was called (a session checks
    between the stages of its creation, so another thread can cancel one in progress)."""
    if options._load_cancelled:
        raise ModelLoadCanceled("Model loading was canceled: SessionOptions.set_load_cancellation_flag(True)")


def external_data_preparer(options: Any) -> Callable[[onnx.ModelProto], None] | None:
    """What ``load_model`` calls on the proto to put the options' external initializers in (None: nothing to)."""
    initializers, files = dict(options._external_initializers), dict(options._external_files)
    if not initializers and not files:
        return None
    return lambda proto: inject_external_data(proto, initializers, files)
