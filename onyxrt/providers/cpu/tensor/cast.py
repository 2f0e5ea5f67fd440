"""Cast and CastLike for every ONNX element type (strings, bool, float16, bfloat16, the
float8/float4/e8m0 formats and the 4/2-bit integers via ml_dtypes)."""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np

from ....graph.types import np_dtype
from ..kernel_table import op
from ....errors import NodeInputError, NodeInputTypeError

_OBJ = np.dtype(object)
_F8_SATURATING = {
    np.dtype(ml_dtypes.float8_e4m3fn),
    np.dtype(ml_dtypes.float8_e4m3fnuz),
    np.dtype(ml_dtypes.float8_e5m2),
    np.dtype(ml_dtypes.float8_e5m2fnuz),
}
_E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)
_SMALL_INTS = {np.dtype(t) for t in (ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2)}
_STD_INTS = {np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)}


def _is_float(dt: np.dtype) -> bool:
    return dt.kind == "f" or (dt.kind == "V" and dt not in _SMALL_INTS)


# --------------------------------------------------------------------------- to string


def _float_strings(x: np.ndarray) -> np.ndarray:
    f = x.astype(np.float64)
    out = np.char.mod("%.8g", f).astype(object)
    nan = np.isnan(f)
    if nan.any():
        out[nan] = "NaN"
    inf = np.isinf(f)
    if inf.any():
        out[inf & (f > 0)] = "INF"
        out[inf & (f < 0)] = "-INF"
    return out


def _to_string(x: np.ndarray) -> np.ndarray:
    if x.dtype == _OBJ:
        return x
    if x.dtype.kind == "U" or x.dtype.kind == "S":
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in x.reshape(-1)],
                        dtype=object).reshape(x.shape)
    if x.dtype == np.bool_:
        return np.where(x, "1", "0").astype(object)
    if x.dtype in _STD_INTS or x.dtype in _SMALL_INTS:
        flat = x.reshape(-1)
        if x.dtype in _SMALL_INTS:
            flat = flat.astype(np.int64)
        return np.array([str(int(v)) for v in flat.tolist()], dtype=object).reshape(x.shape)
    if _is_float(x.dtype):
        return _float_strings(x)
    raise NodeInputTypeError(f"Cast: cannot cast {x.dtype} to string")


# --------------------------------------------------------------------------- from string

_INT_PREFIX = re.compile(r"\s*([+-]?\d+)")
_FLOAT_PREFIX = re.compile(
    r"\s*([+-]?(?:0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?\d+)?"
    r"|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan))",
    re.IGNORECASE,
)


def _parse_float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        pass
    m = _FLOAT_PREFIX.match(s)
    if not m:
        raise NodeInputError(f"Cast: cannot convert string {s!r} to a number")
    tok = m.group(1)
    if "x" in tok.lower():
        return float.fromhex(tok)
    return float(tok)


def _parse_int(s: str) -> int:
    m = _INT_PREFIX.match(s)
    if not m:
        raise NodeInputError(f"Cast: cannot convert string {s!r} to an integer")
    return int(m.group(1))


def _strings(x: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in x.reshape(-1).tolist()]


def _from_string(x: np.ndarray, to: np.dtype, saturate: int, round_mode: str) -> np.ndarray:
    strs = _strings(x)
    if to == np.bool_ or to in _STD_INTS or to in _SMALL_INTS:
        ints = [_parse_int(s) for s in strs]
        if to == np.bool_:
            return np.array([v != 0 for v in ints], dtype=np.bool_).reshape(x.shape)
        bits = 64 if to in _SMALL_INTS else to.itemsize * 8
        mask = (1 << bits) - 1
        wrapped = np.array([v & mask for v in ints], dtype=np.uint64).reshape(x.shape)
        if to in _SMALL_INTS:
            return wrapped.view(np.int64).astype(to)
        return wrapped.astype(np.dtype(f"u{to.itemsize}")).view(to)
    try:
        f = np.array(strs, dtype=np.float64) if strs else np.zeros(0)
    except ValueError:
        f = np.array([_parse_float(s) for s in strs], dtype=np.float64)
    return _from_numeric(f.reshape(x.shape), to, saturate, round_mode)


# --------------------------------------------------------------------------- numeric


def _to_e8m0(x: np.ndarray, saturate: int, round_mode: str) -> np.ndarray:
    bits = x.astype(np.float32).view(np.uint32)
    exp = ((bits >> 23) & 0xFF).astype(np.uint16)
    mant = bits & 0x7FFFFF
    special = exp == 0xFF
    if round_mode == "up":
        up = (mant != 0) & ~special
    elif round_mode == "down":
        up = np.zeros(exp.shape, dtype=bool)
    elif round_mode == "nearest":
        guard = (mant & 0x400000) != 0
        rest = (mant & 0x3FFFFF) != 0
        up = guard & (rest | (exp > 0)) & ~special
    else:
        raise NodeInputError(f"Cast: unsupported round_mode {round_mode!r}")
    if saturate:
        up &= exp != 0xFE
    exp = exp + up.astype(np.uint16)
    out = np.where(special | (exp > 0xFF), 0xFF, exp).astype(np.uint8)
    return out.view(ml_dtypes.float8_e8m0fnu)


def _from_numeric(x: np.ndarray, to: np.dtype, saturate: int, round_mode: str) -> np.ndarray:
    src = x.dtype
    if to in _F8_SATURATING:
        if src not in (np.float32, np.float64) and src != np.float16:
            x = x.astype(np.float32)
        if saturate:
            fmax = float(ml_dtypes.finfo(to).max)
            with np.errstate(invalid="ignore"):
                x = np.clip(x, -fmax, fmax)  # NaN stays NaN, +-inf -> +-max
        return x.astype(to)
    if to == _E8M0:
        return _to_e8m0(x, saturate, round_mode)
    if to in _SMALL_INTS:
        if _is_float(src) and src not in (np.float32, np.float64, np.float16):
            x = x.astype(np.float32)
        return x.astype(to)
    if (to in _STD_INTS or to == np.bool_) and _is_float(src) and src not in (np.float32, np.float64, np.float16):
        x = x.astype(np.float32)  # bfloat16/float8/float4 -> int goes through float
    if src in _SMALL_INTS:
        x = x.astype(np.int64)
        if to == np.int64:
            return x
    if x.dtype.kind == "f":
        with np.errstate(all="ignore"):  # out-of-range float -> int/float16 is allowed
            return x.astype(to)
    return x.astype(to)


def cast_array(x: np.ndarray, to: np.dtype, saturate: int = 1, round_mode: str = "up") -> np.ndarray:
    """``x`` converted to numpy dtype ``to`` following ONNX Cast semantics."""
    x = np.asarray(x)
    if x.dtype == to:
        return x
    if to == _OBJ:
        return _to_string(x)
    if x.dtype == _OBJ or x.dtype.kind in "US":
        return _from_string(x, to, saturate, round_mode)
    return _from_numeric(x, to, saturate, round_mode)


@op("Cast", versions=(1, 6, 9, 13))
def cast_1(x, *, to):
    return cast_array(x, _to_dtype(to))


@op("Cast", versions=(19, 21, 23))
def cast_19(x, *, to, saturate=1):
    return cast_array(x, _to_dtype(to), saturate)


@op("Cast", versions=(24, 25, 28))
def cast_24(x, *, to, saturate=1, round_mode="up"):
    return cast_array(x, _to_dtype(to), saturate, round_mode)


@op("CastLike", versions=15)
def cast_like_15(x, target_type):
    return cast_array(x, target_type.dtype)


@op("CastLike", versions=(19, 21, 23))
def cast_like_19(x, target_type, *, saturate=1):
    return cast_array(x, target_type.dtype, saturate)


@op("CastLike", versions=(24, 25))
def cast_like_24(x, target_type, *, saturate=1, round_mode="up"):
    return cast_array(x, target_type.dtype, saturate, round_mode)


def _to_dtype(to) -> np.dtype:
    if isinstance(to, (str, bytes)):
        import onnx

        name = to.decode() if isinstance(to, bytes) else to
        to = onnx.TensorProto.DataType.Value(name.upper())
    return np_dtype(int(to))
