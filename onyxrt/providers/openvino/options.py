"""The OpenVINO provider's options, named and valued as onnxruntime's OpenVINO execution provider has them.

Options arrive as strings (``normalize_providers`` turns every value into one). Each is
checked when the provider is created: an unknown name or a bad value is an
:class:`~onyxrt.errors.InvalidArgument` naming it and listing what is accepted.

Options that do not apply on this build are accepted and ignored, as onnxruntime's
provider ignores them on devices they are not meant for: ``enable_qdq_optimizer``
(onnxruntime strips QDQ pairs for NPU only) and ``enable_opencl_throttling`` (GPU only;
forwarded as OpenVINO's GPU queue throttle where the device is a GPU).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

from ...errors import InvalidArgument

DEVICES = ("CPU", "GPU", "NPU")
# Virtual devices whose string names other devices: passed to OpenVINO as written.
VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI")
PRECISIONS = ("FP32", "FP16", "ACCURACY")
MODEL_PRIORITIES = ("LOW", "MEDIUM", "HIGH", "DEFAULT")

_OPTION_NAMES = (
    "device_type", "precision", "num_of_threads", "num_streams", "cache_dir", "load_config",
    "enable_qdq_optimizer", "disable_dynamic_shapes", "model_priority", "enable_opencl_throttling",
)
# A physical device, optionally numbered (GPU.1).
_DEVICE = re.compile(r"^(CPU|GPU|NPU)(\.\d+)?$")
# onnxruntime's deprecated spelling of device and precision together (CPU_FP32).
_LEGACY_DEVICE = re.compile(r"^(CPU|GPU|NPU)(\.\d+)?_(FP32|FP16)$")


@dataclass(frozen=True)
class OpenVINOOptions:
    """The provider's options, parsed. ``precision`` None: OpenVINO's default for the device."""

    device_type: str = "CPU"
    precision: str | None = None
    num_of_threads: int | None = None
    num_streams: int | None = None
    cache_dir: str | None = None
    load_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    enable_qdq_optimizer: bool = False
    disable_dynamic_shapes: bool = False
    model_priority: str | None = None
    enable_opencl_throttling: bool = False

    @property
    def devices(self) -> list[str]:
        """The physical devices ``device_type`` names (``HETERO:GPU,CPU`` -> GPU, CPU)."""
        _, _, listed = self.device_type.partition(":")
        return [name.strip() for name in (listed or self.device_type).split(",") if name.strip()]

    def compile_properties(self) -> dict[str, Any]:
        """OpenVINO properties for ``compile_model``: the options as OpenVINO hints, then ``load_config``'s."""
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        properties: dict[str, Any] = {}
        if self.precision == "FP32":
            properties[hints.inference_precision()] = ov.Type.f32
        elif self.precision == "FP16":
            properties[hints.inference_precision()] = ov.Type.f16
        elif self.precision == "ACCURACY":  # the model's own precisions, no faster approximations
            properties[hints.execution_mode()] = hints.ExecutionMode.ACCURACY
        if self.num_of_threads is not None:
            properties[props.inference_num_threads()] = self.num_of_threads
        if self.num_streams is not None:
            properties[props.num_streams()] = self.num_streams
        if self.cache_dir:
            properties[props.cache_dir()] = self.cache_dir
        if self.model_priority not in (None, "DEFAULT"):
            properties[hints.model_priority()] = getattr(hints.Priority, self.model_priority)
        if self.enable_opencl_throttling and any(device.startswith("GPU") for device in self.devices):
            import openvino.properties.intel_gpu.hint as gpu_hints

            properties[gpu_hints.queue_throttle()] = gpu_hints.ThrottleLevel.LOW
        return properties

    def device_properties(self) -> dict[str, dict[str, Any]]:
        """``load_config``'s properties for the devices this provider compiles for (others are ignored)."""
        wanted = {device.partition(".")[0] for device in self.devices} | {self.device_type.partition(":")[0]}
        return {device: dict(config) for device, config in self.load_config.items()
                if device.partition(".")[0] in wanted or device in self.devices}


def parse_options(options: Mapping[str, str], default_threads: int | None = None) -> OpenVINOOptions:
    """Check and parse the provider options; ``default_threads`` is used when ``num_of_threads`` is not given."""
    unknown = [name for name in options if name not in _OPTION_NAMES]
    if unknown:
        raise InvalidArgument(
            f"Unknown provider option(s) {', '.join(repr(n) for n in unknown)} for OpenVINOExecutionProvider. "
            f"Valid options: {', '.join(_OPTION_NAMES)}"
        )
    device_type, precision = _device_and_precision(options)
    threads = _positive_int(options, "num_of_threads")
    return OpenVINOOptions(
        device_type=device_type,
        precision=precision,
        num_of_threads=threads if threads is not None else default_threads,
        num_streams=_positive_int(options, "num_streams"),
        cache_dir=options.get("cache_dir") or None,
        load_config=_load_config(options.get("load_config", "")),
        enable_qdq_optimizer=_boolean(options, "enable_qdq_optimizer"),
        disable_dynamic_shapes=_boolean(options, "disable_dynamic_shapes"),
        model_priority=_choice(options, "model_priority", MODEL_PRIORITIES),
        enable_opencl_throttling=_boolean(options, "enable_opencl_throttling"),
    )


def _device_and_precision(options: Mapping[str, str]) -> tuple[str, str | None]:
    device_type = options.get("device_type", "CPU").strip() or "CPU"
    precision = _choice(options, "precision", PRECISIONS)
    legacy = _LEGACY_DEVICE.match(device_type)
    if legacy:
        device_type = legacy.group(1) + (legacy.group(2) or "")
        if precision is None:
            precision = legacy.group(3)
        warnings.warn(f"device_type '{options['device_type']}' is deprecated: use device_type='{device_type}' "
                      f"and precision='{legacy.group(3)}'", DeprecationWarning, stacklevel=4)
    kind, colon, listed = device_type.partition(":")
    if colon:
        devices = [name.strip() for name in listed.split(",")]
        if kind not in VIRTUAL_DEVICES or not all(_DEVICE.match(name) for name in devices):
            raise InvalidArgument(
                f"Invalid device_type '{device_type}' for OpenVINOExecutionProvider: expected one of "
                f"{', '.join(DEVICES + ('AUTO',))}, a numbered device (GPU.1), or AUTO:/HETERO:/MULTI: followed by "
                "a comma-separated list of those devices"
            )
    elif not (_DEVICE.match(device_type) or device_type == "AUTO"):
        raise InvalidArgument(
            f"Invalid device_type '{device_type}' for OpenVINOExecutionProvider: expected one of "
            f"{', '.join(DEVICES + ('AUTO',))}, a numbered device (GPU.1), or AUTO:/HETERO:/MULTI: followed by "
            "a comma-separated list of those devices"
        )
    return device_type, precision


def _choice(options: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    if name not in options or options[name] == "":
        return None
    value = options[name].strip().upper()
    if value not in allowed:
        raise InvalidArgument(
            f"Invalid {name} '{options[name]}' for OpenVINOExecutionProvider: expected one of {', '.join(allowed)}"
        )
    return value


def _positive_int(options: Mapping[str, str], name: str) -> int | None:
    if name not in options or options[name] == "":
        return None
    try:
        value = int(options[name])
    except ValueError:
        value = 0
    if value <= 0:
        raise InvalidArgument(
            f"Invalid {name} '{options[name]}' for OpenVINOExecutionProvider: expected a positive integer"
        )
    return value


def _boolean(options: Mapping[str, str], name: str) -> bool:
    value = options.get(name, "false").strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidArgument(
            f"Invalid {name} '{options[name]}' for OpenVINOExecutionProvider: expected true, false, 1 or 0"
        )
    return value in ("true", "1")


def _load_config(text: str) -> dict[str, dict[str, Any]]:
    """``load_config``: a JSON file's path or a JSON string, ``{"CPU": {"PROPERTY": value, ...}, ...}``."""
    if not text:
        return {}
    source = "load_config"
    if os.path.isfile(text):
        source = f"load_config file '{text}'"
        with open(text, encoding="utf-8") as file:
            text = file.read()
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"Invalid {source} for OpenVINOExecutionProvider: not a JSON file or string ({exc})") from None
    if not isinstance(config, dict) or not all(isinstance(v, dict) for v in config.values()):
        raise InvalidArgument(
            f"Invalid {source} for OpenVINOExecutionProvider: expected a JSON object of devices, each an object "
            'of OpenVINO properties, e.g. {"CPU": {"INFERENCE_PRECISION_HINT": "f32"}}'
        )
    return config
