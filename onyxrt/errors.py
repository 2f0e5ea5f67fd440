"""Exception types with onnxruntime's names and status codes.

Code written for onnxruntime catches these by name (usually imported from
``onnxruntime.capi.onnxruntime_pybind11_state``); the message format
``[ONNXRuntimeError] : CODE : NAME : message`` matches onnxruntime's too.
"""

from __future__ import annotations


class OnyxRuntimeError(Exception):
    """Base class of every error onyxrt raises for a failed status."""

    code: int = 1
    status_name: str = "FAIL"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(f"[ONNXRuntimeError] : {self.code} : {self.status_name} : {message}")


class Fail(OnyxRuntimeError):
    code, status_name = 1, "FAIL"


class InvalidArgument(OnyxRuntimeError):
    code, status_name = 2, "INVALID_ARGUMENT"


class NoSuchFile(OnyxRuntimeError):
    code, status_name = 3, "NO_SUCHFILE"


class NoModel(OnyxRuntimeError):
    code, status_name = 4, "NO_MODEL"


class EngineError(OnyxRuntimeError):
    code, status_name = 5, "ENGINE_ERROR"


class RuntimeException(OnyxRuntimeError):
    code, status_name = 6, "RUNTIME_EXCEPTION"


class InvalidProtobuf(OnyxRuntimeError):
    code, status_name = 7, "INVALID_PROTOBUF"


class ModelLoaded(OnyxRuntimeError):
    code, status_name = 8, "MODEL_LOADED"


class NotImplemented(OnyxRuntimeError):  # noqa: A001 - onnxruntime's name
    code, status_name = 9, "NOT_IMPLEMENTED"


class InvalidGraph(OnyxRuntimeError):
    code, status_name = 10, "INVALID_GRAPH"


class EPFail(OnyxRuntimeError):
    code, status_name = 11, "EP_FAIL"


class ModelLoadCanceled(OnyxRuntimeError):
    code, status_name = 12, "MODEL_LOAD_CANCELED"


class ModelRequiresCompilation(OnyxRuntimeError):
    code, status_name = 13, "MODEL_REQUIRES_COMPILATION"


class NodeInputError(ValueError):
    """Raised by a kernel that refuses its inputs or attributes (a type, shape or value it cannot take).

    The session reports it inside a :class:`KernelError` naming the node, in the kernel's own words
    (or, where ``status`` names another class, as that status, as onnxruntime's kernel does).
    """

    status: type[OnyxRuntimeError] | None = None  # None: FAIL, reported as a KernelError


class NodeInputTypeError(NodeInputError, TypeError):
    """A kernel refuses an input's element or container type."""


class NodeIndexError(NodeInputError, IndexError):
    """A kernel refuses an index or position input that is out of range."""


class NodeInvalidArgument(NodeInputError):
    """A refusal onnxruntime's kernel returns as INVALID_ARGUMENT (Slice, Transpose, Expand) rather than FAIL."""

    status = InvalidArgument


class NodeIndexOutOfRange(NodeIndexError):
    """An index outside its valid range where onnxruntime's kernel reports INVALID_ARGUMENT (Gather)."""

    status = InvalidArgument


def _node_failure_message(node_name: str, op_type: str, cause: BaseException) -> str:
    # Running out of memory is the model's sizes meeting the machine, not a defect: said as onnxruntime says it.
    if isinstance(cause, MemoryError):
        status = f"Failed to allocate memory: {cause}"
    elif isinstance(cause, NodeInputError):
        status = str(cause)
    else:
        status = f"{type(cause).__name__}: {cause}"
    return f"Non-zero status code returned while running {op_type} node. Name:'{node_name}' Status Message: {status}"


class KernelError(Fail):
    """A kernel failed while running a node; names the node and op.

    FAIL, as onnxruntime reports an exception thrown inside a kernel (a refused shape, a failed
    allocation); kernels whose onnxruntime counterpart returns another status name it.
    """

    def __init__(self, node_name: str, op_type: str, cause: BaseException) -> None:
        self.node_name, self.op_type = node_name, op_type
        super().__init__(_node_failure_message(node_name, op_type, cause))


def node_failure(node_name: str, op_type: str, cause: BaseException) -> OnyxRuntimeError:
    """The error a run raises when the kernel of node ``node_name`` fails with ``cause``.

    A :class:`KernelError` (FAIL), or the status class the kernel's refusal names
    (``NodeInputError.status``, e.g. INVALID_ARGUMENT for Gather's out-of-range index, as in
    onnxruntime). Either carries ``node_name`` and ``op_type``.
    """
    status = getattr(cause, "status", None) if isinstance(cause, NodeInputError) else None
    if status is None:
        return KernelError(node_name, op_type, cause)
    error = status(_node_failure_message(node_name, op_type, cause))
    error.node_name, error.op_type = node_name, op_type
    return error
