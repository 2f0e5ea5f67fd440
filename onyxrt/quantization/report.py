"""What a quantizer did to a model: the nodes it rewrote, by op type and by name."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class QuantizationReport:
    """Returned by every quantize function (onnxruntime's return None; the summary is extra)."""

    mode: str
    quantized: dict[str, str] = field(default_factory=dict)  # node name -> how it was quantized
    skipped: dict[str, str] = field(default_factory=dict)  # selected node name -> why it stayed float

    def add(self, node_name: str, how: str) -> None:
        self.quantized[node_name] = how

    def skip(self, node_name: str, why: str) -> None:
        self.skipped[node_name] = why

    @property
    def counts(self) -> Counter:
        return Counter(self.quantized.values())

    def summary(self) -> str:
        parts = [f"{count} {how}" for how, count in sorted(self.counts.items())]
        text = f"{self.mode}: {len(self.quantized)} nodes quantized" + (f" ({', '.join(parts)})" if parts else "")
        if self.skipped:
            text += f"; {len(self.skipped)} nodes of those op types stay float"
        return text

    @property
    def skip_reasons(self) -> Counter:
        """How many nodes stayed float for each reason (a computed weight, a small table...)."""
        return Counter(_generic(reason) for reason in self.skipped.values())


def _generic(reason: str) -> str:
    """The reason without the value name it mentions, so equal reasons count together."""
    import re

    return re.sub(r"'[^']*'", "'...'", reason)
