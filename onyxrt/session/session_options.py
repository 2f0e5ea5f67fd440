"""SessionOptions, RunOptions and the enums onnxruntime exposes with them."""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgument
from ..framework import logging

if TYPE_CHECKING:
    from .ort_value import OrtValue


class GraphOptimizationLevel(enum.IntEnum):
    """How much graph rewriting a session does before planning."""

    ORT_DISABLE_ALL = 0
    ORT_ENABLE_BASIC = 1
    ORT_ENABLE_EXTENDED = 2
    ORT_ENABLE_LAYOUT = 3
    ORT_ENABLE_ALL = 99


class ExecutionMode(enum.IntEnum):
    ORT_SEQUENTIAL = 0
    ORT_PARALLEL = 1


class ExecutionOrder(enum.IntEnum):
    DEFAULT = 0
    PRIORITY_BASED = 1
    MEMORY_EFFICIENT = 2


class OrtAllocatorType(enum.IntEnum):
    INVALID = -1
    ORT_DEVICE_ALLOCATOR = 0
    ORT_ARENA_ALLOCATOR = 1


class OrtMemType(enum.IntEnum):
    CPU_INPUT = -2
    CPU_OUTPUT = -1
    CPU = -1
    DEFAULT = 0


def int32_argument(owner: str, name: str, value: Any) -> int:
    """``value`` as onnxruntime's int arguments take it: ints, bools and numpy numbers, not floats or strings."""
    if not isinstance(value, (float, str, bytes)):
        try:
            number = operator.index(value)
        except TypeError:
            number = int(value) if hasattr(type(value), "__int__") else None
        if number is not None and -(2**31) <= number < 2**31:
            return number
    raise TypeError(f"{owner}.{name} must be an int in the int32 range, got {type(value).__name__} {value!r}")


def _flag(owner: str, name: str, value: Any) -> bool:
    """``value`` as onnxruntime's bool fields take it: anything with a truth value of its own, and None."""
    if value is None:
        return False
    if isinstance(value, bool) or hasattr(type(value), "__bool__"):
        return bool(value)
    raise TypeError(f"{owner}.{name} must be a bool, got {type(value).__name__} {value!r}")


def _text(owner: str, name: str, value: Any) -> str:
    """``value`` as onnxruntime's str fields take it: str, or UTF-8 bytes (a path object is refused, as there)."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    raise TypeError(f"{owner}.{name} must be a str, got {type(value).__name__} {value!r}")


def _member_of(enum_type: type[enum.IntEnum]) -> Callable[[str, str, Any], Any]:
    def convert(owner: str, name: str, value: Any) -> Any:
        if isinstance(value, enum_type):
            return value
        raise TypeError(
            f"{owner}.{name} must be a {enum_type.__name__} (e.g. {enum_type.__name__}.{next(iter(enum_type)).name}), "
            f"got {type(value).__name__} {value!r}"
        )

    return convert


class _Field:
    """A typed option: read as stored, set through ``convert`` (TypeError for what onnxruntime refuses)."""

    def __init__(self, convert: Callable[[str, str, Any], Any], default: Any) -> None:
        self.convert, self.default = convert, default

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return instance._values.get(self.name, self.default)

    def __set__(self, instance: Any, value: Any) -> None:
        instance._values[self.name] = self.convert(type(instance).__name__, self.name, value)


def _config_entry(owner: str, entries: dict[str, str], key: Any, value: Any, method: str) -> None:
    """Set a config entry as onnxruntime does: str key and value, the key 1..1024 characters,
    an overwritten key warned about on the default logger."""
    if not isinstance(key, str) or not isinstance(value, str):
        raise TypeError(f"{owner}.{method}(key: str, value: str): got {type(key).__name__}, {type(value).__name__}")
    if not 0 < len(key) <= 1024:
        raise RuntimeError("Config key is empty or longer than maximum length 1024")
    if key in entries:
        logging.default_logger().warning(
            f"Config with key [{key}] already exists with value [{entries[key]}]. It will be overwritten")
    entries[key] = value


class SessionOptions:
    """Per-session configuration, with onnxruntime's field names, defaults and accepted types.

    Unknown attributes raise AttributeError and values of the wrong type TypeError, as in
    onnxruntime. ``log_severity_level`` -1 (the default) means the default logger's severity.
    """

    __slots__ = ("_values", "_config", "_free_dimension_overrides_by_name",
                 "_free_dimension_overrides_by_denotation", "_initializers", "_load_cancelled",
                 "_external_initializers", "_external_files", "__weakref__")

    graph_optimization_level = _Field(_member_of(GraphOptimizationLevel), GraphOptimizationLevel.ORT_ENABLE_ALL)
    intra_op_num_threads = _Field(int32_argument, 0)
    inter_op_num_threads = _Field(int32_argument, 0)
    execution_mode = _Field(_member_of(ExecutionMode), ExecutionMode.ORT_SEQUENTIAL)
    execution_order = _Field(_member_of(ExecutionOrder), ExecutionOrder.DEFAULT)
    optimized_model_filepath = _Field(_text, "")
    enable_profiling = _Field(_flag, False)
    profile_file_prefix = _Field(_text, "onnxruntime_profile_")
    log_severity_level = _Field(int32_argument, -1)
    log_verbosity_level = _Field(int32_argument, 0)
    logid = _Field(_text, "")
    enable_cpu_mem_arena = _Field(_flag, True)
    enable_mem_pattern = _Field(_flag, True)
    enable_mem_reuse = _Field(_flag, True)
    use_deterministic_compute = _Field(_flag, False)
    use_per_session_threads = _Field(_flag, True)

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._config: dict[str, str] = {}
        self._free_dimension_overrides_by_name: dict[str, int] = {}
        self._free_dimension_overrides_by_denotation: dict[str, int] = {}
        self._initializers: dict[str, object] = {}
        self._load_cancelled = False
        self._external_initializers: dict[str, OrtValue] = {}
        self._external_files: dict[str, tuple[memoryview, int]] = {}

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"cannot pickle '{type(self).__name__}' object")  # as onnxruntime's (a native object)

    def add_session_config_entry(self, key: str, value: str) -> None:
        """Set a session configuration entry (``session.*`` keys as onnxruntime documents them)."""
        _config_entry("SessionOptions", self._config, key, value, "add_session_config_entry")

    def get_session_config_entry(self, key: str) -> str:
        """The value of a config entry; RuntimeError (as onnxruntime) when it was never set."""
        try:
            return self._config[key]
        except KeyError:
            raise RuntimeError(f"SessionOptions does not have configuration with key: {key}") from None

    def add_free_dimension_override_by_name(self, dim_name: str, dim_value: int) -> None:
        """Fix the symbolic dimension ``dim_name`` of every graph input to ``dim_value``."""
        self._free_dimension_overrides_by_name[_text("SessionOptions", "dim_name", dim_name)] = _dim(dim_value)

    def add_free_dimension_override_by_denotation(self, dim_denotation: str, dim_value: int) -> None:
        """Fix every input dimension with this denotation (e.g. ``DATA_BATCH``) to ``dim_value``."""
        key = _text("SessionOptions", "dim_denotation", dim_denotation)
        self._free_dimension_overrides_by_denotation[key] = _dim(dim_value)

    def add_initializer(self, name: str, val: OrtValue) -> None:
        """Replace the initializer ``name`` with the OrtValue ``val`` (onnxruntime takes OrtValues only)."""
        from .ort_value import OrtValue

        name = _text("SessionOptions", "name", name)
        if not isinstance(val, OrtValue):
            raise RuntimeError(f"add_initializer('{name}'): the provided Python object must be an OrtValue, "
                               f"got {type(val).__name__}")
        self._initializers[name] = val

    def add_external_initializers(self, names: list[str], ort_values: list[OrtValue]) -> None:
        """Supply the data of initializers the model stores as external data, as OrtValues (lists).

        At session creation each named initializer must exist and be external, with the same
        shape and type (FAIL otherwise, as in onnxruntime); its file is then not read.
        """
        if not isinstance(names, list) or not isinstance(ort_values, list):
            raise TypeError("add_external_initializers(names: list, ort_values: list)")
        if len(names) != len(ort_values):
            raise RuntimeError("Expecting names and ort_values lists to have equal length")
        values = [value._ortvalue for value in ort_values]  # AttributeError for a non-OrtValue, as there
        for name, value in zip(names, values):
            name = _text("SessionOptions", "name", name)
            if name in self._external_initializers:
                raise RuntimeError(f"An OrtValue for this name has already been added: {name}")
            self._external_initializers[name] = value

    def add_external_initializers_from_files_in_memory(self, names: Sequence[str], buffers: Sequence[Any],
                                                        lengths: Sequence[int]) -> None:
        """Supply the contents of external data files (by the name the model's locations use) from memory.

        ``buffers`` are bytes-like objects; ``lengths`` their sizes. With any file given, every
        external tensor of the model must be found among them at session creation.
        """
        from .external_initializers import file_key

        names, buffers, lengths = list(names), list(buffers), list(lengths)
        if not all(isinstance(n, str) for n in names) or isinstance(buffers, (str, bytes)) \
                or any(isinstance(b, str) for b in buffers):
            raise TypeError("add_external_initializers_from_files_in_memory(names: Sequence[str], "
                            "buffers: Sequence[Buffer], lengths: Sequence[int])")
        views = [memoryview(buffer).cast("B") for buffer in buffers]
        sizes = [operator.index(length) for length in lengths]
        if not len(names) == len(views) == len(sizes):
            raise RuntimeError("add_external_initializers_from_files_in_memory: names, buffers and lengths "
                               "must have the same length")
        for name, view, size in zip(names, views, sizes):
            key = file_key(name)
            if key in self._external_files:
                raise RuntimeError(f"An entry for this name has already been added: {name}")
            self._external_files[key] = (view, size)

    def has_providers(self) -> bool:
        """False: onyxrt takes providers from InferenceSession's ``providers`` argument only."""
        return False

    def set_load_cancellation_flag(self, value: bool, /) -> None:
        """Cancel (True) the creation of sessions with these options: one in progress on another thread
        stops at its next stage with MODEL_LOAD_CANCELED, later ones fail at once."""
        self._load_cancelled = _flag("SessionOptions", "load_cancellation_flag", value)

    def register_custom_ops_library(self, library_path: str) -> None:
        raise InvalidArgument(
            f"Custom op libraries are compiled onnxruntime plugins and cannot be loaded by onyxrt: {library_path}"
        )


def _dim(value: Any) -> int:
    if isinstance(value, (bool, float, str, bytes)):
        raise TypeError(f"a dimension override must be an int, got {type(value).__name__} {value!r}")
    return operator.index(value)


class RunOptions:
    """Per-run configuration, with onnxruntime's field names, defaults and accepted types."""

    __slots__ = ("_values", "_config", "__weakref__")

    log_severity_level = _Field(int32_argument, -1)
    log_verbosity_level = _Field(int32_argument, 0)
    logid = _Field(_text, "")
    terminate = _Field(_flag, False)
    only_execute_path_to_fetches = _Field(_flag, False)

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._config: dict[str, str] = {}

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"cannot pickle '{type(self).__name__}' object")

    def add_run_config_entry(self, key: str, value: str) -> None:
        """Set a run configuration entry."""
        _config_entry("RunOptions", self._config, key, value, "add_run_config_entry")

    def get_run_config_entry(self, key: str) -> str:
        """The value of a config entry; RuntimeError (as onnxruntime) when it was never set."""
        try:
            return self._config[key]
        except KeyError:
            raise RuntimeError(f"RunOptions does not have configuration with key: {key}") from None


def options_summary(options: SessionOptions) -> str:
    """The session's options in one line, as onnxruntime logs them (INFO) when a session is created."""
    fields = " ".join(f"{field}:{_shown(getattr(options, field))}" for field in (
        "execution_mode", "execution_order", "enable_profiling", "optimized_model_filepath", "enable_mem_pattern",
        "enable_mem_reuse", "enable_cpu_mem_arena", "profile_file_prefix", "logid", "log_severity_level",
        "log_verbosity_level", "graph_optimization_level", "intra_op_num_threads", "inter_op_num_threads",
        "use_per_session_threads", "use_deterministic_compute"))
    config = " ".join(f"{key}:{value}" for key, value in options._config.items())
    return f"Session Options {{ {fields} config_options: {{ {config} }} }}"


def _shown(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, bool):
        return str(int(value))
    return f'"{value}"' if value == "" else str(value)


def ignored_options(options: SessionOptions) -> list[str]:
    """Warnings for options a user set that have no effect on the session."""
    ignored = []
    if options.inter_op_num_threads > 1 and options.execution_mode != ExecutionMode.ORT_PARALLEL:
        ignored.append(f"inter_op_num_threads={options.inter_op_num_threads} is ignored: it sizes the threads of "
                       "execution_mode ORT_PARALLEL, and the session runs its nodes sequentially (ORT_SEQUENTIAL)")
    return ignored
