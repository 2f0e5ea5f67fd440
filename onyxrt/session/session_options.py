"""SessionOptions, RunOptions and the enums onnxruntime exposes with them."""

from __future__ import annotations

import enum

from ..errors import InvalidArgument


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


class SessionOptions:
    """Per-session configuration, with onnxruntime's field names and defaults."""

    def __init__(self) -> None:
        self.graph_optimization_level = GraphOptimizationLevel.ORT_ENABLE_ALL
        self.intra_op_num_threads = 0
        self.inter_op_num_threads = 0
        self.execution_mode = ExecutionMode.ORT_SEQUENTIAL
        self.execution_order = ExecutionOrder.DEFAULT
        self.optimized_model_filepath = ""
        self.enable_profiling = False
        self.profile_file_prefix = "onnxruntime_profile_"
        self.log_severity_level = 2
        self.log_verbosity_level = 0
        self.logid = ""
        self.enable_cpu_mem_arena = True
        self.enable_mem_pattern = True
        self.enable_mem_reuse = True
        self.use_deterministic_compute = False
        self._config: dict[str, str] = {}
        self._free_dimension_overrides_by_name: dict[str, int] = {}
        self._free_dimension_overrides_by_denotation: dict[str, int] = {}
        self._initializers: dict[str, object] = {}

    def add_session_config_entry(self, key: str, value: str) -> None:
        """Set a session configuration entry (``session.*`` keys as onnxruntime documents them)."""
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidArgument("Config key and value must both be strings")
        self._config[key] = value

    def get_session_config_entry(self, key: str) -> str:
        try:
            return self._config[key]
        except KeyError:
            raise InvalidArgument(f"SessionOptions does not have configuration with key: {key}") from None

    def add_free_dimension_override_by_name(self, dim_name: str, dim_value: int) -> None:
        """Fix the symbolic dimension ``dim_name`` of every graph input to ``dim_value``."""
        self._free_dimension_overrides_by_name[dim_name] = int(dim_value)

    def add_free_dimension_override_by_denotation(self, dim_denotation: str, dim_value: int) -> None:
        """Fix every input dimension with this denotation (e.g. ``DATA_BATCH``) to ``dim_value``."""
        self._free_dimension_overrides_by_denotation[dim_denotation] = int(dim_value)

    def add_initializer(self, name: str, value) -> None:
        """Replace the initializer ``name`` with ``value`` (an OrtValue or numpy array)."""
        self._initializers[name] = value

    def register_custom_ops_library(self, library_path: str) -> None:
        raise InvalidArgument(
            f"Custom op libraries are compiled onnxruntime plugins and cannot be loaded by onyxrt: {library_path}"
        )


class RunOptions:
    """Per-run configuration, with onnxruntime's field names."""

    def __init__(self) -> None:
        self.log_severity_level = 2
        self.log_verbosity_level = 0
        self.logid = ""
        self.run_tag = ""
        self.terminate = False
        self.only_execute_path_to_fetches = False
        self._config: dict[str, str] = {}

    def add_run_config_entry(self, key: str, value: str) -> None:
        self._config[key] = value

    def get_run_config_entry(self, key: str) -> str:
        try:
            return self._config[key]
        except KeyError:
            raise InvalidArgument(f"RunOptions does not have configuration with key: {key}") from None


# The RunOptions of the run in progress on this thread (None outside a run or when the caller
# gave none): long kernels read it through check_terminate() instead of a global.
