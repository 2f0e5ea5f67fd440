"""Fit the float32 rational (and exp2's polynomial) approximations of ``onyxrt/providers/cpu/math/rational_fits.py``.

    python tools/fit_rational.py        # needs scipy (for erf); prints the coefficient tuples

f(x) = x * P(x^2) / Q(x^2) on |x| <= limit (Q's constant term 1), fitted for the least maximum
relative error of f by linearized least squares with Lawson's reweighting: each round solves
P(s) - g(s) (Q(s) - 1) = g(s) (g = f(x) / x, s = x^2) weighted by 1 / (|g| Q_previous), then
raises the weights where the error is largest. Printed: the fit's error in exact arithmetic and the
coefficients rounded to float32, the form the kernels evaluate. 2^f on |f| <= 0.5 is a plain polynomial, fitted
the same way (least squares weighted by 1 / |2^f|, Lawson's reweighting).
"""

from __future__ import annotations

import numpy as np


def fit_odd_rational(f, limit: float, p_degree: int, q_degree: int, rounds: int = 60, samples: int = 4000
                     ) -> tuple[float, np.ndarray, np.ndarray]:
    """(max relative error, P's coefficients, Q's coefficients) in ascending powers of x^2, Q[0] = 1."""
    x = limit * (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, samples)))  # Chebyshev-spaced, dense at both ends
    x[0] = 1e-8  # g's limit at 0
    s, g = x * x, f(x) / x
    weights, q_previous = np.ones_like(s), np.ones_like(s)
    best = (np.inf, None, None)
    for _ in range(rounds):
        a = np.hstack([np.vander(s, p_degree + 1, increasing=True),
                       -g[:, None] * np.vander(s, q_degree + 1, increasing=True)[:, 1:]])
        scale = np.sqrt(weights) / (np.abs(g) * np.abs(q_previous))
        c, *_ = np.linalg.lstsq(a * scale[:, None], g * scale, rcond=None)
        p, q = c[:p_degree + 1], np.concatenate([[1.0], c[p_degree + 1:]])
        q_previous = np.polynomial.polynomial.polyval(s, q)
        error = (np.polynomial.polynomial.polyval(s, p) / q_previous - g) / g
        worst = float(np.abs(error).max())
        if worst < best[0]:
            best = (worst, p, q)
        weights = weights * np.sqrt(np.abs(error)) + 1e-300
        weights /= weights.sum()
    return best


def fit_polynomial(f, low: float, high: float, degree: int, rounds: int = 80, samples: int = 4000
                   ) -> tuple[float, np.ndarray]:
    """(max relative error, coefficients in ascending powers) of a polynomial fit of ``f`` on [low, high]."""
    x = low + (high - low) * (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, samples)))
    y = f(x)
    weights = np.ones_like(x)
    best = (np.inf, None)
    for _ in range(rounds):
        scale = np.sqrt(weights) / np.abs(y)
        c, *_ = np.linalg.lstsq(np.vander(x, degree + 1, increasing=True) * scale[:, None], y * scale, rcond=None)
        error = (np.polynomial.polynomial.polyval(x, c) - y) / y
        worst = float(np.abs(error).max())
        if worst < best[0]:
            best = (worst, c)
        weights = weights * np.sqrt(np.abs(error)) + 1e-300
        weights /= weights.sum()
    return best


def main() -> None:
    from scipy.special import erf

    for name, f, limit in (("TANH", np.tanh, 9.5), ("ERF", erf, 3.92)):
        degree = 4 if name == "TANH" else 5
        worst, p, q = fit_odd_rational(f, limit, degree, degree)
        print(f"# {name}: [{degree}/{degree}] in x^2 on |x| <= {limit}, max relative error {worst:.2e}")
        for label, c in (("P", p), ("Q", q)):
            print(f"_{name}_{label} = ({', '.join(repr(float(np.float32(v))) for v in c)})")
    worst, c = fit_polynomial(np.exp2, -0.5, 0.5, 5)
    print(f"# EXP2: degree 5 on |f| <= 0.5, max relative error {worst:.2e}")
    print(f"EXP2_P = ({', '.join(repr(float(np.float32(v))) for v in c)})")


if __name__ == "__main__":
    main()
