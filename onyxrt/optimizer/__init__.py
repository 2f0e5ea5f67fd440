"""Graph optimizer: rewrite passes run before planning, chosen by the session's optimization level.

One pass per module; each takes the IR and reports whether it changed anything.
"""

from __future__ import annotations

from ..graph.ir import Model
from ..session.session_options import GraphOptimizationLevel
from .constant_folding import fold_constants
from .dead_code_elimination import eliminate_dead_code
from .identity_elimination import eliminate_identities

BASIC_PASSES = ("identity_elimination", "constant_folding", "dead_code_elimination")


def optimize(model: Model, level: int, disabled: frozenset[str] = frozenset()) -> list[str]:
    """Run the passes enabled at ``level`` (minus ``disabled``) to a fixed point; returns the passes that changed the graph."""
    applied: list[str] = []
    if level < GraphOptimizationLevel.ORT_ENABLE_BASIC:
        return applied
    passes = {
        "identity_elimination": lambda: eliminate_identities(model.graph),
        "constant_folding": lambda: fold_constants(model),
        "dead_code_elimination": lambda: eliminate_dead_code(model.graph),
    }
    for _ in range(4):
        changed = False
        for name in BASIC_PASSES:
            if name in disabled:
                continue
            if passes[name]():
                changed = True
                if name not in applied:
                    applied.append(name)
        if not changed:
            break
    return applied
