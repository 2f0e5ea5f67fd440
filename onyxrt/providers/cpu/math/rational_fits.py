"""Float32 rational approximations of tanh and erf: f(x) = x * P(x^2) / Q(x^2), clamped.

One division and a dozen multiply-adds an element with no branch, so a compiled loop vectorizes
(``jit_rows``) and numpy needs no gather of special ranges; onnxruntime's MLAS computes its
logistic, tanh and erf the same way. Coefficients from ``tools/fit_rational.py`` (minimax relative
error 2-4e-8 in exact arithmetic; evaluated in float32 about 6 ulp at worst, 4e-7 relative). Inputs
are clamped where float32's result is already +-1, results to [-1, 1]; NaN stays NaN.
"""

from __future__ import annotations

import numpy as np

_F32 = np.float32

# [4/4] in x^2 on |x| <= 9.5 (where the fit reaches 1.0 in float32)
TANH_LIMIT = _F32(9.5)
TANH_P = tuple(_F32(c) for c in (0.9999999403953552, 0.13347996771335602, 0.003456502454355359, 1.997288563870825e-05,
                                  1.248947700815961e-08))
TANH_Q = tuple(_F32(c) for c in (1.0, 0.46681302785873413, 0.025727907195687294, 0.0003221997176297009,
                                  7.418803420478071e-07))
# [5/5] in x^2 on |x| <= 3.92
ERF_LIMIT = _F32(3.92)
ERF_P = tuple(_F32(c) for c in (1.1283791065216064, 0.1903841346502304, 0.052745841443538666, 0.0037646896671503782,
                                 0.0002848668664228171, 2.0503141513472656e-06))
ERF_Q = tuple(_F32(c) for c in (1.0, 0.5020563006401062, 0.11409994959831238, 0.014967341907322407,
                                 0.001162320957519114, 3.80932615371421e-05))
# 2^f on |f| <= 0.5, degree 5 (ascending powers; max relative error 7.5e-8 exact, 2.4e-7 evaluated in float32)
EXP2_P = tuple(_F32(c) for c in (1.0000001192092896, 0.6931469440460205, 0.24022120237350464, 0.05550713464617729,
                                 0.009675541892647743, 0.0013276460813358426))


def odd_rational(x: np.ndarray, limit: np.float32, p: tuple, q: tuple, out: np.ndarray | None = None) -> np.ndarray:
    """x * P(x^2) / Q(x^2) of float32 ``x`` clamped to +-``limit``, the result to [-1, 1]; into ``out``
    (not ``x``) or a fresh array."""
    with np.errstate(all="ignore"):
        clamped = np.clip(x, -limit, limit)
        s = np.multiply(clamped, clamped)
        out = _polynomial(s, p, out)
        out *= clamped
        den = _polynomial(s, q, None)
        out /= den
        return np.clip(out, -1, 1, out=out)


def _polynomial(s: np.ndarray, c: tuple, out: np.ndarray | None) -> np.ndarray:
    """c[0] + c[1] s + ... by Horner's rule, into ``out`` or a fresh array."""
    out = np.multiply(s, c[-1], out=out)
    for k in c[-2:0:-1]:
        out += k
        out *= s
    out += c[0]
    return out
