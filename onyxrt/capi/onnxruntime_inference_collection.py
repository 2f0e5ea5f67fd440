"""Alias module: onnxruntime's Python classes live here in its package layout."""

from ..session.inference_session import InferenceSession  # noqa: F401
from ..session.io_binding import IOBinding  # noqa: F401
from ..session.ort_value import OrtValue  # noqa: F401
