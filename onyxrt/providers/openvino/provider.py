"""OpenVINOExecutionProvider: regions of the graph compiled and run by OpenVINO, the rest left to the CPU provider."""

from __future__ import annotations

import threading
from typing import Any, Mapping

import onnx_ir as ir

from ...errors import EPFail, InvalidArgument
from ...framework.logging import default_logger
from ..base import ExecutionProvider, NodeGroup, Step
from ..cpu import CPUExecutionProvider
from .capability import supported_regions
from .options import OpenVINOOptions, parse_options
from .region import CompiledRegion


class OpenVINOExecutionProvider(ExecutionProvider):
    """onnxruntime's OpenVINO execution provider: each region it takes is one OpenVINO model, compiled once.

    Options (strings, as onnxruntime's): see :mod:`.options`. Data stays on the host: OpenVINO
    reads numpy inputs and its outputs are copied back into numpy arrays.
    """

    name = "OpenVINOExecutionProvider"

    def __init__(self, options: dict[str, str] | None = None) -> None:
        super().__init__(options)
        self.settings: OpenVINOOptions = parse_options(self.options)
        import openvino as ov

        self.core = ov.Core()
        _check_devices(self.settings, self.core.available_devices)
        for device, properties in self.settings.device_properties().items():
            self.core.set_property(device, properties)
        self.regions: list[CompiledRegion] = []
        # weights of the graphs asked about, by name: compiled into the regions that read them
        self._constants: dict[str, ir.Value] = {}
        self._lock = threading.Lock()

    def use_session_options(self, session_options: Any) -> None:
        """The session's ``intra_op_num_threads`` is ``num_of_threads`` where the options leave it out (0: OpenVINO's)."""
        threads = int(getattr(session_options, "intra_op_num_threads", 0) or 0)
        if "num_of_threads" not in self.options and threads > 0:
            self.settings = parse_options(self.options, default_threads=threads)

    def get_capability(self, graph: ir.Graph, opset_imports: Mapping[str, int]) -> list[NodeGroup]:
        """Connected regions of free nodes OpenVINO's ONNX frontend converts and the device supports."""
        regions = supported_regions(graph, opset_imports, self.core, self.settings.device_type)
        groups = [NodeGroup.of(region, opset_imports) for region in regions]
        with self._lock:
            for group in groups:
                for value in group.inputs:
                    if value.is_initializer() and not value.is_graph_input() and value.const_value is not None:
                        self._constants[value.name] = value
        return groups

    def compile(self, group: NodeGroup) -> Step:
        """The region as one OpenVINO compiled model, run from numpy inputs to numpy outputs."""
        with self._lock:
            name = f"{self.name}_region_{len(self.regions)}"
            try:
                region = CompiledRegion(group, self._constants, self.core, self.settings, name)
            except EPFail as exc:
                # OpenVINO accepted these nodes when asked but cannot compile them together: the
                # CPU provider's kernels run them instead (the fused node keeps OpenVINO's name)
                default_logger().warning(f"{exc}; its {len(group.nodes)} nodes run on CPUExecutionProvider")
                return CPUExecutionProvider().compile(group)
            self.regions.append(region)
        return region


def _check_devices(settings: OpenVINOOptions, available: list[str]) -> None:
    """Each kind of device ``device_type`` names must be one OpenVINO sees here (which GPU: OpenVINO checks)."""
    if settings.device_type == "AUTO":
        return
    kinds = {device.partition(".")[0] for device in available}
    missing = [device for device in settings.devices if device.partition(".")[0] not in kinds]
    if missing:
        raise InvalidArgument(
            f"OpenVINOExecutionProvider: device_type '{settings.device_type}' names {', '.join(missing)}, not "
            f"available on this machine (OpenVINO sees: {', '.join(available) or 'none'})"
        )
