"""The size of a model on disk, and byte counts written for people (the quantize and prune reports)."""

from __future__ import annotations

from pathlib import Path

import onnx


def model_file_bytes(path: Path) -> int:
    """Bytes of the model file and of the external data files it names."""
    size = path.stat().st_size
    model = onnx.load(path, load_external_data=False)
    locations = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data if entry.key == "location"}
    return size + sum((path.parent / location).stat().st_size for location in locations if (path.parent / location).is_file())


def human_bytes(size: int) -> str:
    """``size`` in the largest binary unit it reaches, e.g. ``"1.50 MiB"``."""
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{size / factor:.2f} {unit}"
    return f"{size} B"
