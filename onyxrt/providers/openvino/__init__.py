"""The OpenVINO execution provider (``pip install onyxrt[openvino]``); see docs/openvino.md.

``openvino`` is imported only when the provider is created, so ``import onyxrt`` stays
fast; :func:`openvino_installed` tells whether it can be.
"""

from __future__ import annotations

import importlib.util

from .provider import OpenVINOExecutionProvider


def openvino_installed() -> bool:
    """Whether the ``openvino`` package can be imported (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


__all__ = ["OpenVINOExecutionProvider", "openvino_installed"]
