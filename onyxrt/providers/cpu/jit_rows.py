"""numba row kernels for float32 activations, normalizations, softmax and convolution epilogues:
one pass over memory each.

Imported only by ``row_kernels`` through ``jit.LazyModuleKernel``, on first use: this module
imports numba at its top, and numba is optional. Every kernel works on C-contiguous 2-D float32
rows ``[r0, r1)`` (so a caller may split rows over threads) and releases the GIL.

Why these exist: numpy evaluates GELU's erf as ~20 passes over a temporary, and libm's scalar
``expf``/``erff``/``tanhf`` stop LLVM from vectorizing a numba loop. Here tanh and erf are rational functions of
x^2 without branches (``math.rational_fits``, the numpy path's erf too: one division and a dozen FMAs an element);
the logistic, SiLU / QuickGelu and tanh-GELU are one division by 1 + 2^t (``exp2_limited``: a degree-5 polynomial,
2^n from exponent bits; half the operations of the tanh rational they were, 1.12 -> 0.6 cycles a value for SiLU on a
Zen 4 core, where MLAS's logistic takes ~0.65); exp, for softmax, is the same polynomial of a fraction taken by two
FMAs, within 4e-7 relative (softmax rows of 64 1.25 -> 1.0 cycles a value on a Zen 4 core, from a Cody-Waite
reduction and a degree-6 polynomial).
Reductions (LayerNorm's sums) may be reassociated so they vectorize; nothing else is. A multiply and an
add may contract to one FMA (``_CONTRACT``).
"""

from __future__ import annotations


import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic

from .math.rational_fits import ERF_LIMIT, ERF_P, ERF_Q, EXP2_P, TANH_LIMIT, TANH_P, TANH_Q
from .native_tasks import float32_array, linked_kernel

_f = np.float32
_E0, _E1, _E2, _E3, _E4, _E5 = ERF_P
_D0, _D1, _D2, _D3, _D4, _D5 = ERF_Q
_T0, _T1, _T2, _T3, _T4 = TANH_P
_U0, _U1, _U2, _U3, _U4 = TANH_Q
# "contract": a multiply and an add may become one FMA where the CPU has it (one rounding instead of
# two; GELU rows 2.33 -> 1.70 ns an element on an AVX2 EPYC)
_CONTRACT = {"contract"}
_X0, _X1, _X2, _X3, _X4, _X5 = EXP2_P
_EXP2_LOW, _EXP2_HIGH = _f(-126.0), _f(128.0)
_ROUNDING = _f(1.5 * 2 ** 23)
_ROUNDING_BITS = np.int32(0x4B400000)  # the bits of 1.5 * 2^23
_MINUS_LOG2E = _f(-1.4426950408889634)
_LOG2E = _f(1.4426950408889634)
_LOG2E_LOW = _f(1.4426950408889634 - float(_LOG2E))  # log2 e less its float32 rounding
_REASSOC = {"reassoc", "contract"}
_jit = dict(cache=True, nogil=True, error_model="numpy")  # numpy: no ZeroDivisionError branch, which stops vectorization


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 ``bits`` (an LLVM bitcast: vectorizes, unlike ldexp)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _bits_of_float32(typingctx, value):
    """The IEEE bits of float32 ``value`` as an int32 (an LLVM bitcast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c of float32 values with one rounding (``llvm.fma``: vectorizes, and no flag decides whether it fuses)."""
    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, f32, f32]), "llvm.fma.f32")
        return builder.call(function, list(args))

    return types.float32(types.float32, types.float32, types.float32), codegen


_LANES = 8  # float32 lanes of an AVX2 register; LLVM splits wider vectors or fuses narrower ones as the CPU needs


@intrinsic
def _row_max(typingctx, address, count):
    """The largest of ``count`` >= 1 float32 at byte ``address`` as the loop ``top = v if v > top else top``
    from the first value finds it (NaN only where the first is NaN), in vectors of eight: LLVM leaves
    that select-based reduction scalar, and softmax spends a third of its time there."""
    def codegen(context, builder, signature, args):
        address, count = args
        f32 = ir.FloatType()
        vector = ir.VectorType(f32, _LANES)
        base = builder.inttoptr(address, f32.as_pointer())
        first = builder.load(base)
        splat = builder.shuffle_vector(builder.insert_element(ir.Constant(vector, ir.Undefined), first, ir.Constant(ir.IntType(32), 0)),
                                       ir.Constant(vector, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), _LANES), None))
        lanes = cgutils.alloca_once_value(builder, splat)
        whole = builder.and_(count, ir.Constant(count.type, -_LANES))
        with cgutils.for_range_slice(builder, ir.Constant(count.type, 0), whole, ir.Constant(count.type, _LANES)) as (j, _):
            values = builder.load(builder.bitcast(builder.gep(base, [j]), vector.as_pointer()), align=4)
            current = builder.load(lanes)
            builder.store(builder.select(builder.fcmp_ordered(">", values, current), values, current), lanes)
        current = builder.load(lanes)
        top = builder.extract_element(current, ir.Constant(ir.IntType(32), 0))
        for lane in range(1, _LANES):
            value = builder.extract_element(current, ir.Constant(ir.IntType(32), lane))
            top = builder.select(builder.fcmp_ordered(">", value, top), value, top)
        best = cgutils.alloca_once_value(builder, top)
        with cgutils.for_range_slice(builder, whole, count, ir.Constant(count.type, 1)) as (j, _):
            value = builder.load(builder.gep(base, [j]))
            current = builder.load(best)
            builder.store(builder.select(builder.fcmp_ordered(">", value, current), value, current), best)
        return builder.load(best)

    return types.float32(types.intp, types.intp), codegen


@numba.njit(inline="always", fastmath=_CONTRACT, **_jit)
def exp_nonpositive(q):
    """exp(q) for float32 ``q`` <= 0, within 4e-7 relative; 0 below -87 (float32's normal range). 2^(q log2 e) by
    :func:`exp2_limited`'s polynomial, the fraction taken from q itself by two FMAs (q log2 e - n, plus q times log2
    e's float32 rounding error), so it stays accurate where |q log2 e| is large."""
    tiny = q < _f(-87.0)
    shifted = q * _LOG2E + _ROUNDING
    n = shifted - _ROUNDING
    result = _pow2(shifted, _fma(q, _LOG2E_LOW, _fma(q, _LOG2E, -n)))
    return _f(0.0) if tiny else result


@numba.njit(inline="always", fastmath=_CONTRACT, **_jit)
def _clamp(v, limit):
    """``v`` within +-``limit``; NaN stays NaN (comparisons with it are false)."""
    return limit if v > limit else (-limit if v < -limit else v)


@numba.njit(inline="always", fastmath=_CONTRACT, **_jit)
def erf32(z):
    """erf of float32 ``z`` (``math.rational_fits``: within 4e-7)."""
    x = _clamp(z, ERF_LIMIT)
    s = x * x
    p = ((((_E5 * s + _E4) * s + _E3) * s + _E2) * s + _E1) * s + _E0
    q = ((((_D5 * s + _D4) * s + _D3) * s + _D2) * s + _D1) * s + _D0
    return _clamp(x * p / q, _f(1.0))


@numba.njit(inline="always", fastmath=_CONTRACT, **_jit)
def tanh32(u):
    """tanh of float32 ``u`` (``math.rational_fits``: within 4e-7)."""
    x = _clamp(u, TANH_LIMIT)
    s = x * x
    p = (((_T4 * s + _T3) * s + _T2) * s + _T1) * s + _T0
    q = (((_U4 * s + _U3) * s + _U2) * s + _U1) * s + _U0
    return _clamp(x * p / q, _f(1.0))


@numba.njit(inline="always", fastmath=_CONTRACT, **_jit)
def exp2_limited(t):
    """2^t of float32 ``t`` within 3e-7 relative; 2^-126 below -126, +inf from 128 on; NaN stays NaN. A degree-5
    polynomial of t's fraction (``math.rational_fits.EXP2_P``), 2^n from exponent bits: t rounds to n by adding
    1.5 * 2^23 (the sum's low bits are n), so it costs one multiply per coefficient and a few adds."""
    t = _EXP2_HIGH if t > _EXP2_HIGH else (_EXP2_LOW if t < _EXP2_LOW else t)
    shifted = t + _ROUNDING
    return _pow2(shifted, t - (shifted - _ROUNDING))  # (the fraction exact, in [-0.5, 0.5])


@numba.njit(inline="always", fastmath=_CONTRACT, **_jit)
def _pow2(shifted, f):
    """2^(n + f), n the integer in the low bits of ``shifted`` (a value plus 1.5 * 2^23, n in [-126, 128]) and
    |f| <= 0.5: the polynomial of f times 2^n from exponent bits (n + 127 in the field: 255, n = 128, is +inf)."""
    p = ((((_X5 * f + _X4) * f + _X3) * f + _X2) * f + _X1) * f + _X0
    return p * _float32_from_bits((_bits_of_float32(shifted) - _ROUNDING_BITS + np.int32(127)) << np.int32(23))


@numba.njit(inline="always", fastmath=_CONTRACT, **_jit)
def sigmoid32(t):
    """1 / (1 + exp(-t)) of float32 ``t``, within 4e-7 relative for |t| <= 20 (the exponent's rounding error grows
    with |t|: 4e-6 at 87); 0 for -inf, NaN for NaN."""
    return _f(1.0) / (_f(1.0) + exp2_limited(t * _MINUS_LOG2E))


@numba.njit(inline="always", fastmath=_CONTRACT, **_jit)
def _gelu_erf(v, alpha):
    return _f(0.5) * v * (_f(1.0) + erf32(v * _f(0.7071067811865476)))


@numba.njit(inline="always", fastmath=_CONTRACT, **_jit)
def _gelu_tanh(v, alpha):
    # 0.5 v (1 + tanh(u)) is v * sigmoid(2u): one division, no tanh
    u = v * (_f(2 * 0.7978845608028654) + _f(2 * 0.035677408136300125) * v * v)
    return v / (_f(1.0) + exp2_limited(u * _MINUS_LOG2E))


@numba.njit(inline="always", fastmath=_CONTRACT, **_jit)
def x_sigmoid(v, alpha):
    """QuickGelu(alpha) / SiLU of float32 ``v``: v * sigmoid(alpha v)."""
    # v / (1 + exp(-alpha v)): one division (v * sigmoid would take a second); -inf gives NaN, as -inf * 0
    return v / (_f(1.0) + exp2_limited(v * (alpha * _MINUS_LOG2E)))


@numba.njit(inline="always", fastmath=_CONTRACT, **_jit)
def _sigmoid(v, alpha):
    return sigmoid32(v)


@numba.njit(inline="always", fastmath=_CONTRACT, **_jit)
def hard_swish(v, alpha):
    """HardSwish of float32 ``v`` (``alpha`` unused: the activations' common signature)."""
    h = v * _f(1.0 / 6.0) + _f(0.5)
    h = _f(0.0) if h < _f(0.0) else (_f(1.0) if h > _f(1.0) else h)  # NaN stays NaN, as np.clip
    return v * h


@numba.njit(inline="always", fastmath=_CONTRACT, **_jit)
def _activation_rows(x, bias, out, alpha, r0, r1, activation):
    """out[r] = activation(x[r] + bias, alpha) for rows r0..r1; ``bias`` has 0 or x.shape[1] entries.
    ``out`` may be ``x`` itself. Inlined into one kernel per activation: a loop choosing among
    several at run time does not vectorize."""
    cols = x.shape[1]
    biased = bias.shape[0] == cols
    # In place, the loops read ``out``: were x and out two names of one buffer, LLVM's run-time
    # overlap test would send them down their scalar path (ten times slower).
    same = x.ctypes.data == out.ctypes.data
    for i in range(r0, r1):
        src, dst = x[np.uintp(i)], out[np.uintp(i)]
        if same and biased:
            for j in range(cols):
                dst[np.uintp(j)] = activation(dst[np.uintp(j)] + bias[np.uintp(j)], alpha)
        elif same:
            for j in range(cols):
                dst[np.uintp(j)] = activation(dst[np.uintp(j)], alpha)
        elif biased:
            for j in range(cols):
                dst[np.uintp(j)] = activation(src[np.uintp(j)] + bias[np.uintp(j)], alpha)
        else:
            for j in range(cols):
                dst[np.uintp(j)] = activation(src[np.uintp(j)], alpha)


@numba.njit(fastmath=_CONTRACT, **_jit)
def gelu_erf_rows(x, bias, out, alpha, r0, r1):
    """erf GELU of the rows (see ``_activation_rows``)."""
    _activation_rows(x, bias, out, alpha, r0, r1, _gelu_erf)


@numba.njit(fastmath=_CONTRACT, **_jit)
def gelu_tanh_rows(x, bias, out, alpha, r0, r1):
    """tanh GELU (FastGelu) of the rows."""
    _activation_rows(x, bias, out, alpha, r0, r1, _gelu_tanh)


@numba.njit(fastmath=_CONTRACT, **_jit)
def x_sigmoid_rows(x, bias, out, alpha, r0, r1):
    """v * sigmoid(alpha * v) of the rows (QuickGelu, SiLU)."""
    _activation_rows(x, bias, out, alpha, r0, r1, x_sigmoid)


@numba.njit(fastmath=_CONTRACT, **_jit)
def sigmoid_rows(x, bias, out, alpha, r0, r1):
    """sigmoid of the rows."""
    _activation_rows(x, bias, out, alpha, r0, r1, _sigmoid)


@numba.njit(fastmath=_CONTRACT, **_jit)
def hard_swish_rows(x, bias, out, alpha, r0, r1):
    """HardSwish of the rows."""
    _activation_rows(x, bias, out, alpha, r0, r1, hard_swish)


@numba.njit(fastmath=_REASSOC, **_jit)
def layer_norm_rows(x, skip, bias, gamma, beta, epsilon, simplified, y, total, mean, inv, r0, r1):
    """LayerNorm (or RMSNorm when ``simplified``) of the rows ``x + skip + bias``, rows r0..r1.

    ``skip`` (same shape as x), ``bias``, ``gamma`` and ``beta`` may be empty (absent);
    ``total`` receives x + skip + bias when it has rows; ``mean`` and ``inv`` (one per row)
    the statistics (mean 0 when simplified). Two-pass variance, as the numpy path.
    """
    cols = x.shape[1]
    has_skip = skip.shape[0] > 0
    has_bias = bias.shape[0] == cols
    has_gamma = gamma.shape[0] == cols
    has_beta = beta.shape[0] == cols
    keep_total = total.shape[0] > 0
    count = _f(cols)
    for i in range(r0, r1):
        src = x[np.uintp(i)]
        dst = y[np.uintp(i)]
        acc = _f(0.0)
        for j in range(cols):  # y holds the sum until it is normalized
            v = src[np.uintp(j)]
            if has_skip:
                v += skip[np.uintp(i), np.uintp(j)]
            if has_bias:
                v += bias[np.uintp(j)]
            dst[np.uintp(j)] = v
            acc += v
        if keep_total:
            keep = total[np.uintp(i)]
            for j in range(cols):
                keep[np.uintp(j)] = dst[np.uintp(j)]
        mu = _f(0.0) if simplified else acc / count
        sq = _f(0.0)
        for j in range(cols):
            d = dst[np.uintp(j)] - mu
            sq += d * d
        r = _f(1.0) / np.sqrt(sq / count + epsilon)
        mean[np.uintp(i)] = mu
        inv[np.uintp(i)] = r
        for j in range(cols):
            v = (dst[np.uintp(j)] - mu) * r
            if has_gamma:
                v *= gamma[np.uintp(j)]
            if has_beta:
                v += beta[np.uintp(j)]
            dst[np.uintp(j)] = v


@numba.njit(fastmath=_CONTRACT, **_jit)
def channel_epilogue(y, channels, bias, residual, act, a, b, r0, r1):
    """In place on rows r0..r1 of ``y`` (N*M, P), row r of channel r % ``channels``:
    y = act(y + bias[channel] + residual) (onnxruntime's FusedConv order: the sum before the
    activation). ``bias`` has 0 or M entries, ``residual`` 0 rows or y's shape. ``act``: see
    :func:`epilogue_row`."""
    biased = bias.shape[0] > 0
    summed = residual.shape[0] > 0
    for i in range(r0, r1):
        add = bias[np.uintp(i % channels)] if biased else _f(0.0)
        epilogue_row(y[np.uintp(i)], add, residual[np.uintp(i)] if summed else y[np.uintp(i)], summed, act, a, b)


@numba.njit(fastmath=_REASSOC, **_jit)
def channel_gate_rows(x, first, first_bias, act1, a1, b1, second, second_bias, act2, a2, b2, means, hidden, out):
    """A squeeze-and-excitation gate per image: ``out[n]`` (N, C) = act2(second^T-product of act1(first^T-product of
    the means of ``x``'s rows + first_bias) + second_bias), ``x`` (N*C, P) the images' channel planes, ``first`` (C,
    R) and ``second`` (R, C) the transposed 1x1 filters, a bias empty where absent; ``means`` (C,) and ``hidden``
    (R,) scratch. ``act1`` / ``act2``: see :func:`epilogue_row`. The means and products are summed in any order
    (float rounding apart, what GlobalAveragePool and the two convolutions compute)."""
    images, channels = out.shape
    reduced = hidden.shape[0]
    pixels = x.shape[1]
    scale = _f(1.0) / _f(pixels)
    zero = _f(0.0)
    for n in range(images):
        for c in range(channels):
            row = x[np.uintp(n * channels + c)]
            total = zero
            for j in range(pixels):
                total += row[np.uintp(j)]
            means[np.uintp(c)] = total * scale
        _biased_product(hidden, first_bias, means, first)
        epilogue_run(hidden, zero, hidden, False, act1, a1, b1)
        gate = out[np.uintp(n)]
        _biased_product(gate, second_bias, hidden, second)
        epilogue_run(gate, zero, gate, False, act2, a2, b2)


@numba.njit(fastmath=_REASSOC, inline="always", **_jit)
def _biased_product(out, bias, values, weights):
    """out = bias + values @ weights (``weights`` (len(values), len(out)), row by row; ``bias`` empty: none)."""
    for k in range(out.shape[0]):
        out[np.uintp(k)] = bias[np.uintp(k)] if bias.shape[0] else _f(0.0)
    for r in range(values.shape[0]):
        value = values[np.uintp(r)]
        row = weights[np.uintp(r)]
        for k in range(out.shape[0]):
            out[np.uintp(k)] += value * row[np.uintp(k)]


@numba.njit(fastmath=_CONTRACT, **_jit)
def channel_affine(x, y, channels, scale, bias, act, a, b, r0, r1):
    """Rows r0..r1 of ``y`` (N*M, P) = act(x * scale[channel] + bias[channel]), row r of channel r % ``channels``
    (a 1x1 depthwise convolution, an inference BatchNormalization); ``act``: see :func:`epilogue_row`."""
    cols = x.shape[1]
    for i in range(r0, r1):
        c = np.uintp(i % channels)
        src, dst = x[np.uintp(i)], y[np.uintp(i)]
        factor = scale[c]
        for j in range(cols):
            dst[np.uintp(j)] = src[np.uintp(j)] * factor
        epilogue_row(dst, bias[c], dst, False, act, a, b)


@numba.njit(fastmath=_CONTRACT, inline="always", **_jit)
def epilogue_row(row, add, extra, summed, act, a, b):
    """In place: row = act(row + add + extra), ``extra`` (a row as long) only where ``summed``.
    ``act``: the depthwise kernel's codes (0 none, 1 Relu, 2 LeakyRelu(a), 3 Tanh, 4 Sigmoid,
    5 Clip(a, b), 6 HardSigmoid(a, b)) and onyxrt's own 7 HardSwish, 8 QuickGelu(a) (v * sigmoid(a v),
    as the row kernels compute them); comparisons keep NaN as NaN, as numpy's. Inlined: for loops over short
    rows (a channel's plane at a time); a kernel applying it to long runs calls :func:`epilogue_run`."""
    cols = row.shape[0]
    zero, one = _f(0.0), _f(1.0)
    if summed:
        for j in range(cols):
            row[np.uintp(j)] += extra[np.uintp(j)]
    if act == 0:
        for j in range(cols):
            row[np.uintp(j)] += add
    elif act == 1:
        for j in range(cols):
            v = row[np.uintp(j)] + add
            row[np.uintp(j)] = zero if v < zero else v
    elif act == 2:
        for j in range(cols):
            v = row[np.uintp(j)] + add
            row[np.uintp(j)] = v * a if v < zero else v
    elif act == 3:
        for j in range(cols):
            row[np.uintp(j)] = tanh32(row[np.uintp(j)] + add)
    elif act == 4:
        for j in range(cols):
            row[np.uintp(j)] = sigmoid32(row[np.uintp(j)] + add)
    elif act == 5:
        for j in range(cols):
            v = row[np.uintp(j)] + add
            row[np.uintp(j)] = a if v < a else (b if v > b else v)
    elif act == 6:
        for j in range(cols):
            v = (row[np.uintp(j)] + add) * a + b
            row[np.uintp(j)] = zero if v < zero else (one if v > one else v)
    elif act == 7:
        for j in range(cols):
            row[np.uintp(j)] = hard_swish(row[np.uintp(j)] + add, a)
    else:
        for j in range(cols):
            row[np.uintp(j)] = x_sigmoid(row[np.uintp(j)] + add, a)


_EPILOGUE_SIGNATURE = types.void(types.int64, types.int64, types.float32, types.int64, types.int64, types.int64,
                                  types.float32, types.float32)


@numba.cfunc(_EPILOGUE_SIGNATURE, cache=True, nopython=True, error_model="numpy")
def epilogue_kernel(row_address, cols, add, extra_address, summed, act, a, b):
    """:func:`epilogue_row` on the ``cols`` float32 at ``row_address`` (``extra``'s at ``extra_address``): its loops
    compiled once, for :func:`epilogue_run`."""
    epilogue_row(float32_array(row_address, cols), add, float32_array(extra_address, cols), summed, act, a, b)


_call_epilogue = linked_kernel("onyxrt_epilogue_run", epilogue_kernel, _EPILOGUE_SIGNATURE)


@numba.njit(inline="always", **_jit)
def epilogue_run(run, add, extra, summed, act, a, b):
    """:func:`epilogue_row` over a long contiguous ``run`` (a band of outputs, a plane, rows of planes), called
    through a linked symbol (``native_tasks.linked_kernel``): its ten loops are compiled once, not again in every
    kernel that applies it (each inlined copy cost ~4 s of cold compile). A call costs ~10 ns more than the inlined
    loops (measured over 49-float rows), so loops over short rows inline :func:`epilogue_row` instead."""
    _call_epilogue((run.ctypes.data, run.shape[0], add, extra.ctypes.data, summed, act, a, b))


@numba.njit(fastmath=_CONTRACT, **_jit)
def swiglu_rows(gate, gate_at, up, up_at, out, alpha, beta, limit, r0, r1):
    """Rows r0..r1 of ``out`` (rows, F) = G * sigmoid(alpha * G) * (L + beta), G = gate[r, gate_at:][:F]
    clamped above at ``limit`` and L = up[r, up_at:][:F] clamped to [-limit, limit] where limit > 0
    (com.microsoft SwiGLU; ``gate`` and ``up`` may be one packed array read at two offsets)."""
    cols = out.shape[1]
    clamped = limit > _f(0.0)
    for i in range(r0, r1):
        g, u, o = gate[np.uintp(i)], up[np.uintp(i)], out[np.uintp(i)]
        for j in range(cols):
            a = g[np.uintp(gate_at + j)]
            b = u[np.uintp(up_at + j)]
            if clamped:
                a = limit if a > limit else a
                b = _clamp(b, limit)
            o[np.uintp(j)] = x_sigmoid(a, alpha) * (b + beta)


@numba.njit(fastmath=_REASSOC, **_jit)
def softmax_rows(x, r0, r1):
    """In place: softmax over each row r0..r1 of ``x``. A row of -inf only becomes NaN, as numpy's."""
    for i in range(r0, r1):
        softmax_row(x[np.uintp(i)])


@numba.njit(fastmath=_REASSOC, inline="always", **_jit)
def softmax_row(row):
    """In place: softmax over the float32 ``row`` (at least one value); callers compile with
    ``_REASSOC`` (the sum vectorizes)."""
    cols = row.shape[0]
    top = _row_max(row.ctypes.data, cols)
    total = _f(0.0)
    for j in range(cols):
        e = exp_nonpositive(row[np.uintp(j)] - top)
        row[np.uintp(j)] = e
        total += e
    scale = _f(1.0) / total
    for j in range(cols):
        row[np.uintp(j)] *= scale


@numba.njit(**_jit)  # (no contraction: rows equal to the numpy path's, bit for bit)
def rotary_rows(x, positions, cos, sin, out, interleaved, r0, r1):
    """Rotary embedding of rows r0..r1 of ``x`` (rows, heads, head_size) into ``out``: row r at
    ``positions[r]`` of the (positions, half) ``cos``/``sin`` caches (see :func:`rotate_head`)."""
    heads = x.shape[1]
    for r in range(r0, r1):
        p = positions[np.uintp(r)]
        c, s = cos[np.uintp(p)], sin[np.uintp(p)]
        for h in range(heads):
            rotate_head(x[np.uintp(r), np.uintp(h)], out[np.uintp(r), np.uintp(h)], c, s, interleaved)


@numba.njit(inline="always", **_jit)
def rotate_head(src, dst, c, s, interleaved):
    """``dst`` = the head ``src`` with its first 2 * half features rotated by the cache rows ``c``/``s``
    (half values each), pairs (i, i + half) or, ``interleaved``, (2i, 2i + 1); the rest copied. Inlined:
    callers compile it without contraction (the numpy path's products)."""
    half = c.shape[0]
    if interleaved:
        for i in range(half):
            a, b = src[np.uintp(2 * i)], src[np.uintp(2 * i + 1)]
            dst[np.uintp(2 * i)] = a * c[np.uintp(i)] - b * s[np.uintp(i)]
            dst[np.uintp(2 * i + 1)] = b * c[np.uintp(i)] + a * s[np.uintp(i)]
    else:
        for i in range(half):
            a, b = src[np.uintp(i)], src[np.uintp(i + half)]
            dst[np.uintp(i)] = a * c[np.uintp(i)] - b * s[np.uintp(i)]
            dst[np.uintp(i + half)] = b * c[np.uintp(i)] + a * s[np.uintp(i)]
    for j in range(2 * half, src.shape[0]):
        dst[np.uintp(j)] = src[np.uintp(j)]
