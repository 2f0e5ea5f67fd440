"""The fuzz cases of a seed: case ``i`` is a deterministic mutation of one base model."""

from __future__ import annotations

import random
from collections.abc import Iterator

from .corpus import base_models
from .mutations import mutate


def fuzz_cases(seed: int, count: int, start: int = 0) -> Iterator[tuple[int, str, str, bytes]]:
    """(case id, base model name, mutation description, mutated bytes) for ids start..start+count-1."""
    models = base_models()
    for case_id in range(start, start + count):
        rng = random.Random(f"{seed}:{case_id}")
        name, base = models[rng.randrange(len(models))]
        mutated, description = mutate(base, rng)
        yield case_id, name, description, mutated
