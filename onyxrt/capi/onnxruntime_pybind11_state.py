"""Where code written for onnxruntime imports the error classes and core types from."""

from ..errors import (  # noqa: F401
    EngineError,
    EPFail,
    Fail,
    InvalidArgument,
    InvalidGraph,
    InvalidProtobuf,
    ModelLoadCanceled,
    ModelLoaded,
    ModelRequiresCompilation,
    NoModel,
    NoSuchFile,
    NotImplemented,
    RuntimeException,
)
from ..providers import get_available_providers  # noqa: F401
from ..session.node_arg import ModelMetadata, NodeArg  # noqa: F401
from ..session.ort_value import OrtValue  # noqa: F401
from ..session.session_options import (  # noqa: F401
    ExecutionMode,
    ExecutionOrder,
    GraphOptimizationLevel,
    RunOptions,
    SessionOptions,
)
from ..session.device import (  # noqa: F401
    NativeOrtDevice as OrtDevice,
    OrtDeviceMemoryType,
    OrtMemoryInfo,
    OrtMemoryInfoDeviceType,
)
from ..session.global_thread_pool import set_global_thread_pool_sizes  # noqa: F401
from ..session.ort_value import copy_tensors  # noqa: F401
from ..session.ort_value_vector import OrtValueVector  # noqa: F401
from ..session.session_api import OrtEpAssignedNode, OrtEpAssignedSubgraph  # noqa: F401
from ..session.session_options import OrtAllocatorType, OrtMemType  # noqa: F401
from ..session.sparse_tensor import OrtSparseFormat, SparseCooView, SparseCsrView, SparseTensor  # noqa: F401
from .. import (  # noqa: F401, E402 - onyxrt is initialized before any of its submodules
    set_default_logger_callback,
    set_default_logger_severity,
    set_default_logger_verbosity,
)
