"""All ONNX backend node cases (onnx.backend.test.case.node) through onyxrt.backend."""

from backend_suite import NODE, backend_test_cases

globals().update(backend_test_cases(__name__, (NODE,)))
