"""ai.onnx.preview.training optimizers: Adagrad, Adam, Momentum (since-version 1).

Each op updates one or more tensors at once: after the scalar inputs ``R`` (learning
rate) and ``T`` (update count) come groups of equally many tensors (all ``X``, then
all ``G``, then the optimizer state), and the outputs are the matching groups of
new values (all ``X_new``, then each new state). The update of each tensor is
independent of the others.

Scalars (learning rate, bias corrections) are computed once in double precision
and applied in the tensors' own type, so ``float32`` in gives ``float32`` out.
"""

from __future__ import annotations

import math

import numpy as np

from ..kernel_table import op
from ....errors import NodeInputError, NodeInputTypeError

TRAINING_DOMAIN = "ai.onnx.preview.training"
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _scalar(value, name: str, op_name: str, integer: bool = False):
    array = np.asarray(value)
    if array.size != 1:
        raise NodeInputError(f"{op_name}: input {name} must be a scalar, got shape {array.shape}")
    if integer:
        if array.dtype.kind not in "iu":
            raise NodeInputTypeError(f"{op_name}: input {name} must be int64, got {array.dtype}")
        return int(array.reshape(()))
    if array.dtype not in _FLOATS:
        raise NodeInputTypeError(f"{op_name}: input {name} must be float or double, got {array.dtype}")
    return float(array.reshape(()))


def _groups(op_name: str, tensors: tuple, count: int, names: str) -> list[tuple[np.ndarray, ...]]:
    """Split the variadic inputs into ``count`` equal groups and check their types."""
    if not tensors or len(tensors) % count:
        raise NodeInputError(
            f"{op_name}: expected R, T and {count} equally long groups of tensors ({names}), "
            f"got {len(tensors)} tensors after R and T"
        )
    n = len(tensors) // count
    for t in tensors:
        if not isinstance(t, np.ndarray) or t.dtype not in _FLOATS:
            raise NodeInputTypeError(f"{op_name}: optimized tensors must be float or double, got {getattr(t, 'dtype', type(t))}")
    return [tensors[i * n : (i + 1) * n] for i in range(count)]


def _regularized(x: np.ndarray, g: np.ndarray, norm_coefficient: float) -> np.ndarray:
    """G + norm_coefficient * X, in X's type."""
    if norm_coefficient == 0.0:
        return g.astype(x.dtype, copy=False)
    return g + x * x.dtype.type(norm_coefficient)


def _check_outputs(op_name: str, num_outputs: int, expected: int) -> None:
    if num_outputs != expected:
        raise NodeInputError(f"{op_name}: the node declares {num_outputs} outputs, expected {expected}")


@op("Adagrad", versions=1, domain=TRAINING_DOMAIN, multi_output=True)
def adagrad(r, t, *tensors, decay_factor=0.0, epsilon=1e-6, norm_coefficient=0.0, _num_outputs=None):
    """Inputs R, T, X..., G..., H...; outputs X_new..., H_new..."""
    xs, gs, hs = _groups("Adagrad", tensors, 3, "X, G, H")
    if _num_outputs is not None:
        _check_outputs("Adagrad", _num_outputs, 2 * len(xs))
    rate = _scalar(r, "R", "Adagrad") / (1.0 + _scalar(t, "T", "Adagrad", integer=True) * decay_factor)
    x_new, h_new = [], []
    for x, g, h in zip(xs, gs, hs):
        dt = x.dtype.type
        g_reg = _regularized(x, g, norm_coefficient)
        h_out = h + g_reg * g_reg
        denom = np.sqrt(h_out)
        denom += dt(epsilon)
        step = g_reg / denom
        step *= dt(rate)
        x_new.append(np.asarray(x - step))
        h_new.append(np.asarray(h_out, dtype=h.dtype))
    return tuple(x_new + h_new)


@op("Adam", versions=1, domain=TRAINING_DOMAIN, multi_output=True)
def adam(
    r,
    t,
    *tensors,
    alpha=0.9,
    beta=0.999,
    epsilon=1e-6,
    norm_coefficient=0.0,
    norm_coefficient_post=0.0,
    _num_outputs=None,
):
    """Inputs R, T, X..., G..., V..., H...; outputs X_new..., V_new..., H_new..."""
    xs, gs, vs, hs = _groups("Adam", tensors, 4, "X, G, V, H")
    if _num_outputs is not None:
        _check_outputs("Adam", _num_outputs, 3 * len(xs))
    rate = _scalar(r, "R", "Adam")
    count = _scalar(t, "T", "Adam", integer=True)
    if count > 0:
        rate = rate * math.sqrt(1.0 - beta**count) / (1.0 - alpha**count)
    x_new, v_new, h_new = [], [], []
    for x, g, v, h in zip(xs, gs, vs, hs):
        dt = x.dtype.type
        g_reg = _regularized(x, g, norm_coefficient)
        v_out = v * dt(alpha) + g_reg * dt(1.0 - alpha)
        h_out = h * dt(beta) + (g_reg * g_reg) * dt(1.0 - beta)
        denom = np.sqrt(h_out)
        denom += dt(epsilon)
        step = v_out / denom
        step *= dt(rate)
        x_out = x - step
        if norm_coefficient_post != 0.0:
            x_out = x_out * dt(1.0 - norm_coefficient_post)
        x_new.append(np.asarray(x_out))
        v_new.append(np.asarray(v_out))
        h_new.append(np.asarray(h_out))
    return tuple(x_new + v_new + h_new)


@op("Momentum", versions=1, domain=TRAINING_DOMAIN, multi_output=True)
def momentum(r, t, *tensors, alpha=None, beta=None, mode=None, norm_coefficient=None, _num_outputs=None):
    """Inputs R, T, X..., G..., V...; outputs X_new..., V_new...; mode 'standard' or 'nesterov'."""
    given = {"alpha": alpha, "beta": beta, "mode": mode, "norm_coefficient": norm_coefficient}
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise NodeInputError(f"Momentum: required attribute(s) {', '.join(missing)} missing")
    if mode not in ("standard", "nesterov"):
        raise NodeInputError(f"Momentum: mode must be 'standard' or 'nesterov', got {mode!r}")
    xs, gs, vs = _groups("Momentum", tensors, 3, "X, G, V")
    if _num_outputs is not None:
        _check_outputs("Momentum", _num_outputs, 2 * len(xs))
    rate = _scalar(r, "R", "Momentum")
    beta_adjusted = beta if _scalar(t, "T", "Momentum", integer=True) > 0 else 1.0
    x_new, v_new = [], []
    for x, g, v in zip(xs, gs, vs):
        dt = x.dtype.type
        g_reg = _regularized(x, g, norm_coefficient)
        v_out = v * dt(alpha) + g_reg * dt(beta_adjusted)
        if mode == "standard":
            x_out = x - v_out * dt(rate)
        else:
            x_out = x - (g_reg + v_out * dt(alpha)) * dt(rate)
        x_new.append(np.asarray(x_out))
        v_new.append(np.asarray(v_out))
    return tuple(x_new + v_new)
