"""Recurrent layers: RNN, GRU, LSTM (all versions; both layouts; forward, reverse, bidirectional).

The input projection of every time step is one large matmul up front; only the
recurrent ``H @ R^T`` product runs per step. ``sequence_lens`` is honored: past a
sequence's end its hidden state stays and its outputs are zero, and the reverse
direction walks each sequence from its own last element.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..kernel_table import op
from ....errors import NodeInputError

Activation = Callable[[np.ndarray], np.ndarray]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    positive = x >= 0
    out[positive] = 1 / (1 + np.exp(-x[positive]))
    e = np.exp(x[~positive])
    out[~positive] = e / (1 + e)
    return out


def _activation(name: str, alpha: float | None, beta: float | None) -> Activation:
    kind = name.lower()
    if kind == "sigmoid":
        return _sigmoid
    if kind == "tanh":
        return np.tanh
    if kind == "relu":
        return lambda x: np.maximum(x, 0)
    if kind == "affine":
        a, b = (1.0 if alpha is None else alpha), (0.0 if beta is None else beta)
        return lambda x: (a * x + b).astype(x.dtype)
    if kind == "leakyrelu":
        a = 0.01 if alpha is None else alpha
        return lambda x: np.where(x >= 0, x, x * x.dtype.type(a))
    if kind == "thresholdedrelu":
        a = 1.0 if alpha is None else alpha
        return lambda x: np.where(x > a, x, 0).astype(x.dtype)
    if kind == "scaledtanh":
        a, b = (1.0 if alpha is None else alpha), (1.0 if beta is None else beta)
        return lambda x: (a * np.tanh(b * x)).astype(x.dtype)
    if kind == "hardsigmoid":
        a, b = (0.2 if alpha is None else alpha), (0.5 if beta is None else beta)
        return lambda x: np.clip(a * x + b, 0, 1).astype(x.dtype)
    if kind == "elu":
        a = 1.0 if alpha is None else alpha
        return lambda x: np.where(x >= 0, x, a * (np.exp(x) - 1)).astype(x.dtype)
    if kind == "softsign":
        return lambda x: x / (1 + np.abs(x))
    if kind == "softplus":
        return lambda x: np.logaddexp(0, x).astype(x.dtype)
    raise NodeInputError(f"unsupported recurrent activation '{name}'")


_ALPHA_USERS = {"affine", "leakyrelu", "thresholdedrelu", "scaledtanh", "hardsigmoid", "elu"}
_BETA_USERS = {"affine", "scaledtanh", "hardsigmoid"}


def _activations(names: list[str] | None, defaults: list[str], directions: int,
                 alphas: list[float] | None, betas: list[float] | None) -> list[list[Activation]]:
    """Per direction, the activation functions; alpha/beta are consumed in order by the functions that take them."""
    names = list(names) if names else defaults * directions
    if len(names) == len(defaults) and directions == 2:
        names = names * 2
    if len(names) != len(defaults) * directions:
        raise NodeInputError(f"expected {len(defaults) * directions} activations, got {len(names)}")
    alphas, betas = list(alphas or []), list(betas or [])
    functions = []
    for name in names:
        kind = name.lower()
        alpha = alphas.pop(0) if kind in _ALPHA_USERS and alphas else None
        beta = betas.pop(0) if kind in _BETA_USERS and betas else None
        functions.append(_activation(name, alpha, beta))
    per = len(defaults)
    return [functions[d * per:(d + 1) * per] for d in range(directions)]


class _Setup:
    """Inputs normalized to layout 0 with per-direction helpers."""

    def __init__(self, x, w, r, b, sequence_lens, initial_h, gates, hidden_size, direction, layout, initial_c=None):
        if layout not in (0, 1):
            raise NodeInputError(f"layout must be 0 or 1, got {layout}")
        self.layout = layout
        if layout == 1:
            x = np.swapaxes(x, 0, 1)
            initial_h = None if initial_h is None else np.swapaxes(initial_h, 0, 1)
            initial_c = None if initial_c is None else np.swapaxes(initial_c, 0, 1)
        self.x = x
        self.seq, self.batch, _ = x.shape
        self.directions = 2 if direction == "bidirectional" else 1
        if direction not in ("forward", "reverse", "bidirectional"):
            raise NodeInputError(f"unknown direction '{direction}'")
        self.hidden = int(hidden_size) if hidden_size is not None else r.shape[-1]
        if w.shape[0] != self.directions:
            raise NodeInputError(f"W has {w.shape[0]} directions, the node's direction '{direction}' needs {self.directions}")
        self.reverse_flags = [direction == "reverse"] if self.directions == 1 else [False, True]
        dtype = x.dtype
        self.w, self.r = w, r
        self.b = b if b is not None else np.zeros((self.directions, 2 * gates * self.hidden), dtype)
        if sequence_lens is None:
            self.lengths = np.full(self.batch, self.seq, dtype=np.int64)
        else:
            self.lengths = np.asarray(sequence_lens, dtype=np.int64).reshape(-1)
        self.full = bool(np.all(self.lengths == self.seq))
        zeros = np.zeros((self.directions, self.batch, self.hidden), dtype)
        self.h0 = initial_h if initial_h is not None else zeros
        self.c0 = initial_c if initial_c is not None else zeros

    def time_index(self, reverse: bool) -> np.ndarray:
        """[seq, batch] source step of each processing step (within each sequence's length)."""
        steps = np.arange(self.seq)[:, None]
        if not reverse:
            return np.broadcast_to(steps, (self.seq, self.batch))
        lengths = self.lengths[None, :]
        return np.where(steps < lengths, lengths - 1 - steps, steps)

    def projected(self, d: int, reverse: bool, gates: int) -> np.ndarray:
        """X W^T + Wb for every step, in processing order: [seq, batch, gates*hidden]."""
        xw = self.x @ self.w[d].T + self.b[d, : gates * self.hidden]
        if reverse:
            xw = xw[self.time_index(True), np.arange(self.batch)[None, :]]
        return xw

    def mask(self, t: int) -> np.ndarray | None:
        return None if self.full else (t < self.lengths)[:, None]

    def advance(self, t: int, new: np.ndarray, state: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Record step ``t``'s output (zero past a sequence's end) and return the carried state."""
        m = self.mask(t)
        if m is None:
            out[t] = new
            return new
        out[t] = np.where(m, new, 0)
        return np.where(m, new, state)

    def place(self, y: np.ndarray, d: int, reverse: bool, outputs: np.ndarray) -> None:
        if reverse:
            outputs = outputs[self.time_index(True), np.arange(self.batch)[None, :]]
        y[:, d] = outputs

    def finish(self, y: np.ndarray, states: list[np.ndarray]):
        if self.layout == 1:
            return (np.ascontiguousarray(np.transpose(y, (2, 0, 1, 3))),
                    *[np.ascontiguousarray(np.swapaxes(s, 0, 1)) for s in states])
        return (y, *states)


def _clip(x: np.ndarray, clip: float | None) -> np.ndarray:
    return x if clip is None else np.clip(x, -clip, clip)


@op("RNN", versions=(1, 7, 14, 22), multi_output=True)
def rnn(x, w, r, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None, activation_beta=None,
        activations=None, clip=None, direction="forward", hidden_size=None, layout=0, output_sequence=0):
    """Simple RNN: H = f(X W^T + H R^T + Wb + Rb)."""
    s = _Setup(x, w, r, b, sequence_lens, initial_h, 1, hidden_size, direction, layout)
    funcs = _activations(activations, ["Tanh"], s.directions, activation_alpha, activation_beta)
    y = np.zeros((s.seq, s.directions, s.batch, s.hidden), x.dtype)
    last = np.empty((s.directions, s.batch, s.hidden), x.dtype)
    for d, reverse in enumerate(s.reverse_flags):
        (f,) = funcs[d]
        xw = s.projected(d, reverse, 1)
        rt, rb = s.r[d].T, s.b[d, s.hidden:]
        h = s.h0[d]
        out = np.zeros((s.seq, s.batch, s.hidden), x.dtype)
        for t in range(s.seq):
            h = s.advance(t, f(_clip(xw[t] + h @ rt + rb, clip)), h, out)
        s.place(y, d, reverse, out)
        last[d] = h
    return s.finish(y, [last])


@op("GRU", versions=(1, 3, 7, 14, 22), multi_output=True)
def gru(x, w, r, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None, activation_beta=None,
        activations=None, clip=None, direction="forward", hidden_size=None, layout=0, linear_before_reset=0,
        output_sequence=0):
    """GRU with gates z, r, h; ``linear_before_reset`` applies R_h before the reset gate."""
    s = _Setup(x, w, r, b, sequence_lens, initial_h, 3, hidden_size, direction, layout)
    funcs = _activations(activations, ["Sigmoid", "Tanh"], s.directions, activation_alpha, activation_beta)
    n = s.hidden
    y = np.zeros((s.seq, s.directions, s.batch, n), x.dtype)
    last = np.empty((s.directions, s.batch, n), x.dtype)
    for d, reverse in enumerate(s.reverse_flags):
        f, g = funcs[d]
        xw = s.projected(d, reverse, 3)
        r_zr, r_h = s.r[d, : 2 * n].T, s.r[d, 2 * n:].T
        rb = s.b[d, 3 * n:]
        rb_zr, rb_h = rb[: 2 * n], rb[2 * n:]
        h = s.h0[d]
        out = np.zeros((s.seq, s.batch, n), x.dtype)
        for t in range(s.seq):
            zr = f(_clip(xw[t, :, : 2 * n] + h @ r_zr + rb_zr, clip))
            z, reset = zr[:, :n], zr[:, n:]
            if linear_before_reset:
                candidate = g(_clip(xw[t, :, 2 * n:] + reset * (h @ r_h + rb_h), clip))
            else:
                candidate = g(_clip(xw[t, :, 2 * n:] + (reset * h) @ r_h + rb_h, clip))
            h = s.advance(t, (1 - z) * candidate + z * h, h, out)
        s.place(y, d, reverse, out)
        last[d] = h
    return s.finish(y, [last])


@op("LSTM", versions=(1, 7, 14, 22), multi_output=True)
def lstm(x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None, *, activation_alpha=None,
         activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None, input_forget=0,
         layout=0, output_sequence=0):
    """LSTM with gates i, o, f, c, optional peepholes P (i, o, f) and coupled input/forget gates."""
    s = _Setup(x, w, r, b, sequence_lens, initial_h, 4, hidden_size, direction, layout, initial_c)
    funcs = _activations(activations, ["Sigmoid", "Tanh", "Tanh"], s.directions, activation_alpha, activation_beta)
    n = s.hidden
    y = np.zeros((s.seq, s.directions, s.batch, n), x.dtype)
    last_h = np.empty((s.directions, s.batch, n), x.dtype)
    last_c = np.empty((s.directions, s.batch, n), x.dtype)
    for d, reverse in enumerate(s.reverse_flags):
        f, g, h_act = funcs[d]
        xw = s.projected(d, reverse, 4) + s.b[d, 4 * n:]
        rt = s.r[d].T
        peep = p[d] if p is not None else None
        h, c = s.h0[d], s.c0[d]
        out = np.zeros((s.seq, s.batch, n), x.dtype)
        for t in range(s.seq):
            gates = xw[t] + h @ rt
            gi, go, gf, gc = gates[:, :n], gates[:, n:2 * n], gates[:, 2 * n:3 * n], gates[:, 3 * n:]
            if peep is not None:
                gi = gi + peep[:n] * c
                gf = gf + peep[2 * n:] * c
            i = f(_clip(gi, clip))
            forget = (1 - i) if input_forget else f(_clip(gf, clip))
            new_c = forget * c + i * g(_clip(gc, clip))
            if peep is not None:
                go = go + peep[n:2 * n] * new_c
            new_h = f(_clip(go, clip)) * h_act(new_c)
            m = s.mask(t)
            if m is None:
                h, c = new_h, new_c
                out[t] = new_h
            else:
                h, c = np.where(m, new_h, h), np.where(m, new_c, c)
                out[t] = np.where(m, new_h, 0)
        s.place(y, d, reverse, out)
        last_h[d], last_c[d] = h, c
    return s.finish(y, [last_h, last_c])
