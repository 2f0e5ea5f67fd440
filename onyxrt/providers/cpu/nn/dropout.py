"""Dropout: identity at inference; a random mask (scaled by 1 / (1 - ratio)) in training mode."""

from __future__ import annotations

import numpy as np

from ..kernel_table import op
from ..random_state import NodeGenerator, process_generator
from ....errors import NodeInputError


def _mask_like(x, dtype):
    return np.ones(x.shape, dtype=dtype)


def _legacy_mask(x, dtype):
    # onnxruntime's inference Dropout-7..10 outputs an all-zero (False) mask
    return np.zeros(x.shape, dtype=dtype)


@op("Dropout", versions=1, multi_output=True)
def dropout_1(x, *, consumed_inputs=None, is_test=0, ratio=0.5, _num_outputs=1):
    # An inference engine runs Dropout as the identity (is_test=0 marks training graphs).
    return (x, _legacy_mask(x, x.dtype))[:_num_outputs]


@op("Dropout", versions=6, multi_output=True)
def dropout_6(x, *, is_test=0, ratio=0.5, _num_outputs=1):
    return (x, _legacy_mask(x, x.dtype))[:_num_outputs]


@op("Dropout", versions=7, multi_output=True)
def dropout_7(x, *, ratio=0.5, _num_outputs=1):
    return (x, _legacy_mask(x, x.dtype))[:_num_outputs]


@op("Dropout", versions=10, multi_output=True)
def dropout_10(x, *, ratio=0.5, _num_outputs=1):
    return (x, _legacy_mask(x, np.bool_))[:_num_outputs]


def _mask_generator(seed) -> NodeGenerator:
    """A seeded Dropout's own generator, numpy's legacy one so that its first mask is the ONNX
    reference's; an unseeded Dropout draws from the process-wide generator (as onnxruntime's)."""
    if seed is None:
        return process_generator()
    return NodeGenerator(np.random.RandomState(int(seed) & 0xFFFFFFFF))


def _dropout_prepack(inputs, attributes) -> NodeGenerator:
    return _mask_generator(attributes.get("seed"))


@op("Dropout", versions=(12, 13, 22), multi_output=True, prepack=_dropout_prepack)
def dropout(x, ratio=None, training_mode=None, *, seed=None, _num_outputs=1, _packed=None):
    training = training_mode is not None and bool(np.asarray(training_mode).reshape(-1)[0])
    r = 0.5 if ratio is None else float(np.asarray(ratio).astype(np.float64).reshape(-1)[0])
    if not training or r == 0.0:
        return (x, _mask_like(x, np.bool_))[:_num_outputs]
    if not 0.0 <= r < 1.0:
        raise NodeInputError(f"Dropout ratio must be in [0, 1), got {r}")
    with (_packed if _packed is not None else _mask_generator(seed)) as rng:
        mask = rng.uniform(0.0, 1.0, x.shape) >= r
    if x.dtype.kind == "V" or x.dtype == np.float16:
        y = (x.astype(np.float32) * mask * np.float32(1.0 / (1.0 - r))).astype(x.dtype)
    else:
        y = (x * mask * x.dtype.type(1.0 / (1.0 - r))).astype(x.dtype, copy=False)
    return (y, mask)[:_num_outputs]
