"""The error quantization raises for a model or option it cannot handle (a ``ValueError``, naming the node or option)."""

from __future__ import annotations


class QuantizationError(ValueError):
    """The model or the options cannot be quantized as asked; the message names the node, op, file or option."""
