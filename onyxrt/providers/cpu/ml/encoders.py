"""ai.onnx.ml encoders and map ops: LabelEncoder (1, 2, 4), CategoryMapper, OneHotEncoder,
DictVectorizer, CastMap, ZipMap.

Maps are Python dicts; ZipMap returns a list of dicts (keys in sorted order, float values) as
onnxruntime does.
"""

from __future__ import annotations

import re

import numpy as np

from ..kernel_table import op
from ._common import Compiled, obj_array
from ....errors import NodeInputError, NodeInputTypeError

_F32 = np.float32
_OBJ = np.dtype(object)


def _is_string(x: np.ndarray) -> bool:
    return x.dtype == _OBJ or x.dtype.kind in "US"


def _strings(x: np.ndarray) -> np.ndarray:
    if x.dtype == _OBJ:
        return x
    return obj_array([v.decode() if isinstance(v, bytes) else str(v) for v in x.reshape(-1)], x.shape)


class _Mapping:
    """A key -> value table applied elementwise: dict lookups for strings, binary search for numbers."""

    def __init__(self, keys, values, out_dtype: np.dtype, first_wins: bool, nan_matches: bool) -> None:
        keys = list(keys)
        values = list(values)
        if len(keys) != len(values):
            raise NodeInputError(f"the keys ({len(keys)}) and values ({len(values)}) differ in length")
        self.out_dtype = np.dtype(out_dtype)
        self.string_keys = bool(keys) and isinstance(keys[0], str)
        pairs = list(zip(keys, values))
        if first_wins:
            pairs.reverse()
        if self.string_keys:
            self.table = {k: v for k, v in pairs}
            return
        k = np.asarray(keys)
        order = np.arange(len(keys))
        if not first_wins:
            k, order = k[::-1], order[::-1]
        self.nan_value = None
        if k.dtype.kind == "f":
            nan = np.isnan(k)
            if nan.any() and nan_matches:
                self.nan_value = values[order[np.flatnonzero(nan)[0]]]
            k, order = k[~nan], order[~nan]
        uniq, first = np.unique(k, return_index=True)
        self.keys = uniq
        self.values = np.asarray([values[i] for i in order[first]], dtype=self.out_dtype) \
            if self.out_dtype != _OBJ else obj_array([values[i] for i in order[first]])

    def __call__(self, x: np.ndarray, default) -> np.ndarray:
        if self.string_keys or x.dtype == _OBJ:
            get = getattr(self, "table", {}).get
            flat = [get(v, default) for v in x.reshape(-1).tolist()]
            if self.out_dtype == _OBJ:
                return obj_array(flat, x.shape)
            return np.asarray(flat, dtype=self.out_dtype).reshape(x.shape)
        if self.keys.size == 0:
            out = np.empty(x.shape, dtype=self.out_dtype)
            out[...] = default
        else:
            pos = np.minimum(np.searchsorted(self.keys, x), self.keys.size - 1)
            found = self.keys[pos] == x
            out = np.empty(x.shape, dtype=self.out_dtype)
            out[...] = default
            out[found] = self.values[pos[found]]
        if self.nan_value is not None and x.dtype.kind == "f":
            out[np.isnan(x)] = self.nan_value
        return out


# --------------------------------------------------------------------------- LabelEncoder


def _build_label_encoder_1(*, classes_strings, default_int64, default_string):
    classes = list(classes_strings or [])
    table = {c: i for i, c in enumerate(classes)}  # the last of duplicated classes wins
    return table, obj_array(classes + [default_string]), len(classes)


_LABEL_ENCODER_1 = Compiled(_build_label_encoder_1)


@op("LabelEncoder", versions=1, domain="ai.onnx.ml", prepack=_LABEL_ENCODER_1)
@_LABEL_ENCODER_1.kernel
def label_encoder_1(x, *, classes_strings=None, default_int64=-1, default_string="_Unused", _packed=None):
    table, labels, n_classes = _packed if _packed is not None else _LABEL_ENCODER_1.compile(locals())
    x = np.asarray(x)
    if _is_string(x):
        flat = [table.get(v, default_int64) for v in _strings(x).reshape(-1).tolist()]
        return np.asarray(flat, dtype=np.int64).reshape(x.shape)
    if x.dtype.kind not in "iu":
        raise NodeInputTypeError(f"LabelEncoder-1 maps strings to int64 or int64 to strings, got {x.dtype}")
    idx = x.astype(np.int64)
    idx = np.where((idx >= 0) & (idx < n_classes), idx, n_classes)
    return labels[idx].reshape(x.shape)


_V2_DEFAULTS = {"int64": -1, "float": -0.0, "string": "_Unused"}


class _LabelEncoder:
    """A compiled LabelEncoder-2/4: the output type, the default, and a table per kind of input
    (strings, floats, integers pick different key attributes)."""

    def __init__(self, attrs: dict, version: int) -> None:
        # values and the output type
        values_tensor = attrs.get("values_tensor")
        if values_tensor is not None:
            vt = np.asarray(values_tensor)
            out_dtype = vt.dtype
            values = vt.reshape(-1).tolist()
            kind = "string" if out_dtype == _OBJ else ("float" if out_dtype.kind == "f" else "int64")
        elif attrs.get("values_strings") is not None:
            values, out_dtype, kind = attrs["values_strings"], _OBJ, "string"
        elif attrs.get("values_floats") is not None:
            values, out_dtype, kind = attrs["values_floats"], np.dtype(_F32), "float"
        elif attrs.get("values_int64s") is not None:
            values, out_dtype, kind = attrs["values_int64s"], np.dtype(np.int64), "int64"
        else:
            raise NodeInputError("LabelEncoder: one of the values_* attributes is required")
        default_tensor = attrs.get("default_tensor")
        if default_tensor is not None and np.asarray(default_tensor).size:
            default = np.asarray(default_tensor).reshape(-1)[0]
            default = default if out_dtype == _OBJ else out_dtype.type(default)
        else:
            given = attrs.get(f"default_{kind}")
            default = _V2_DEFAULTS[kind] if given is None else given
            if out_dtype != _OBJ:
                default = out_dtype.type(default)
        self.default = default
        # a table per kind of input: "string", "float" or "int"; None for string keys and a numeric
        # input; a kind whose table cannot be built is left out (built again, to raise, at run time)
        self._table_args = (attrs, values, out_dtype, version)
        self.tables: dict[str, _Mapping | None] = {}
        for input_kind in ("string", "float", "int"):
            try:
                self.tables[input_kind] = self._table(attrs, input_kind, values, out_dtype, version)
            except Exception:  # noqa: BLE001
                pass

    @staticmethod
    def _table(attrs: dict, input_kind: str, values, out_dtype, version: int) -> _Mapping | None:
        is_str = input_kind == "string"
        # keys: the attribute matching the input type (or keys_tensor)
        keys_tensor = attrs.get("keys_tensor")
        if keys_tensor is not None:
            keys = np.asarray(keys_tensor).reshape(-1).tolist()
        elif is_str:
            keys = attrs.get("keys_strings")
        elif input_kind == "float":
            keys = attrs.get("keys_floats")
        else:
            keys = attrs.get("keys_int64s")
        if keys is None:
            keys = attrs.get("keys_strings") or attrs.get("keys_int64s") or attrs.get("keys_floats") or []
        if not is_str and keys and isinstance(keys[0], str):
            return None
        return _Mapping(keys if not is_str else [str(k) for k in keys], values, out_dtype, first_wins=True,
                        nan_matches=version >= 4)

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x)
        if _is_string(x):
            x = _strings(x)
            input_kind = "string"
        else:
            input_kind = "float" if x.dtype.kind == "f" else "int"
        table = self.tables[input_kind] if input_kind in self.tables else \
            self._table(self._table_args[0], input_kind, *self._table_args[1:])
        if table is None:
            raise NodeInputTypeError(f"LabelEncoder: a {x.dtype} input needs numeric keys")
        return table(x, self.default)


def _build_label_encoder_2(**attrs):
    return _LabelEncoder(attrs, 2)


def _build_label_encoder_4(**attrs):
    return _LabelEncoder(attrs, 4)


_LABEL_ENCODER_2 = Compiled(_build_label_encoder_2)
_LABEL_ENCODER_4 = Compiled(_build_label_encoder_4)


@op("LabelEncoder", versions=2, domain="ai.onnx.ml", prepack=_LABEL_ENCODER_2)
@_LABEL_ENCODER_2.kernel
def label_encoder_2(x, *, default_float=None, default_int64=None, default_string=None, keys_floats=None,
                    keys_int64s=None, keys_strings=None, values_floats=None, values_int64s=None, values_strings=None,
                    _packed=None):
    return (_packed if _packed is not None else _LABEL_ENCODER_2.compile(locals()))(x)


@op("LabelEncoder", versions=4, domain="ai.onnx.ml", prepack=_LABEL_ENCODER_4)
@_LABEL_ENCODER_4.kernel
def label_encoder_4(x, *, default_float=None, default_int64=None, default_string=None, default_tensor=None,
                    keys_floats=None, keys_int64s=None, keys_strings=None, keys_tensor=None, values_floats=None,
                    values_int64s=None, values_strings=None, values_tensor=None, _packed=None):
    return (_packed if _packed is not None else _LABEL_ENCODER_4.compile(locals()))(x)


# --------------------------------------------------------------------------- CategoryMapper


def _build_category_mapper(*, cats_int64s, cats_strings, default_int64, default_string):
    ints = list(cats_int64s or [])
    strs = list(cats_strings or [])
    if len(ints) != len(strs):
        raise NodeInputError("CategoryMapper: cats_int64s and cats_strings differ in length")
    table = dict(zip(strs, ints))  # the last of duplicated categories wins
    return table, _Mapping(ints, strs, _OBJ, first_wins=False, nan_matches=False)


_CATEGORY_MAPPER = Compiled(_build_category_mapper)


@op("CategoryMapper", versions=1, domain="ai.onnx.ml", prepack=_CATEGORY_MAPPER)
@_CATEGORY_MAPPER.kernel
def category_mapper(x, *, cats_int64s=None, cats_strings=None, default_int64=-1, default_string="_Unused",
                    _packed=None):
    table, mapping = _packed if _packed is not None else _CATEGORY_MAPPER.compile(locals())
    x = np.asarray(x)
    if _is_string(x):
        flat = [table.get(v, default_int64) for v in _strings(x).reshape(-1).tolist()]
        return np.asarray(flat, dtype=np.int64).reshape(x.shape)
    if x.dtype.kind not in "iu":
        raise NodeInputTypeError(f"CategoryMapper maps strings to int64 or int64 to strings, got {x.dtype}")
    return mapping(x.astype(np.int64, copy=False), default_string)


# --------------------------------------------------------------------------- OneHotEncoder


def _build_one_hot_encoder(*, cats_int64s, cats_strings, zeros):
    if cats_int64s and cats_strings:
        raise NodeInputError("OneHotEncoder: only one of cats_int64s and cats_strings may be set")
    cats = list(cats_int64s or cats_strings or [])
    if not cats:
        raise NodeInputError("OneHotEncoder: no categories")
    n = len(cats)
    table = {c: i for i, c in enumerate(cats)} if cats_strings else None
    mapping = _Mapping(cats, list(range(n)), np.dtype(np.int64), first_wins=False, nan_matches=False) \
        if cats_int64s else None
    return n, table, mapping


_ONE_HOT_ENCODER = Compiled(_build_one_hot_encoder)


@op("OneHotEncoder", versions=1, domain="ai.onnx.ml", prepack=_ONE_HOT_ENCODER)
@_ONE_HOT_ENCODER.kernel
def one_hot_encoder(x, *, cats_int64s=None, cats_strings=None, zeros=1, _packed=None):
    n, table, mapping = _packed if _packed is not None else _ONE_HOT_ENCODER.compile(locals())
    x = np.asarray(x)
    if x.ndim > 2:
        raise NodeInputError(f"OneHotEncoder: the input rank must be at most 2, got {x.ndim}")
    if _is_string(x):
        if table is None:
            return _one_hot_missing(x, n, zeros)
        idx = np.asarray([table.get(v, -1) for v in _strings(x).reshape(-1).tolist()], dtype=np.int64)
    else:
        if mapping is None:
            return _one_hot_missing(x, n, zeros)
        vals = x.astype(np.int64).reshape(-1) if x.dtype.kind != "f" else np.trunc(x).astype(np.int64).reshape(-1)
        idx = mapping(vals, -1)
    missing = idx < 0
    if missing.any() and not zeros:
        raise NodeInputError("OneHotEncoder: unknown category and zeros = 0")
    out = np.zeros((idx.size, n), dtype=_F32)
    rows = np.flatnonzero(~missing)
    out[rows, idx[rows]] = 1.0
    return out.reshape(x.shape + (n,))


def _one_hot_missing(x: np.ndarray, n: int, zeros: int) -> np.ndarray:
    if x.size and not zeros:
        raise NodeInputError("OneHotEncoder: unknown category and zeros = 0")
    return np.zeros(x.shape + (n,), dtype=_F32)


# --------------------------------------------------------------------------- DictVectorizer


def _value_dtype(values: list) -> np.dtype:
    for v in values:
        if isinstance(v, np.generic):
            return v.dtype
        if isinstance(v, str):
            return _OBJ
        if isinstance(v, (bool, int, np.integer)):
            return np.dtype(np.int64)
        if isinstance(v, float):
            return np.dtype(_F32)
    return np.dtype(_F32)


@op("DictVectorizer", versions=1, domain="ai.onnx.ml")
def dict_vectorizer(x, *, int64_vocabulary=None, string_vocabulary=None):
    vocab = list(string_vocabulary if string_vocabulary else (int64_vocabulary or []))
    maps = x if isinstance(x, (list, tuple)) else [x]
    for m in maps:
        if not isinstance(m, dict):
            raise NodeInputTypeError(f"DictVectorizer expects a map (dict), got {type(m).__name__}")
    dtype = _value_dtype([v for m in maps for v in m.values()])
    out = np.zeros((len(maps), len(vocab)), dtype=dtype) if dtype != _OBJ else \
        np.full((len(maps), len(vocab)), "", dtype=object)
    for r, m in enumerate(maps):
        if string_vocabulary:
            norm = {str(k): v for k, v in m.items()}
        else:
            norm = {int(k): v for k, v in m.items()}
        for c, key in enumerate(vocab):
            if key in norm:
                out[r, c] = norm[key]
    return out


# --------------------------------------------------------------------------- CastMap

_LEADING_INT = re.compile(r"\s*[+-]?\d+")


def _stoll(s: str) -> int:
    m = _LEADING_INT.match(s)
    if m is None:
        raise NodeInputError(f"CastMap: cannot convert {s!r} to int64")
    return int(m.group(0))


def _stof(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        m = re.match(r"\s*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf(inity)?|nan)", s, re.IGNORECASE)
        if m is None:
            raise NodeInputError(f"CastMap: cannot convert {s!r} to float") from None
        return float(m.group(0))


@op("CastMap", versions=1, domain="ai.onnx.ml")
def cast_map(x, *, cast_to="TO_FLOAT", map_form="DENSE", max_map=1):
    if not isinstance(x, dict):
        raise NodeInputTypeError(f"CastMap expects a map (dict), got {type(x).__name__}")
    if cast_to not in ("TO_FLOAT", "TO_STRING", "TO_INT64"):
        raise NodeInputError(f"CastMap: invalid cast_to value '{cast_to}' (expected TO_FLOAT, TO_STRING or TO_INT64)")
    if map_form not in ("DENSE", "SPARSE"):
        raise NodeInputError(f"CastMap: invalid map_form value '{map_form}' (expected DENSE or SPARSE)")
    items = sorted((int(k), v) for k, v in x.items())
    string_input = any(isinstance(v, str) for _, v in items)

    def convert(v):
        if cast_to == "TO_FLOAT":
            return _stof(v) if string_input else float(np.float32(v))
        if cast_to == "TO_INT64":
            return _stoll(v) if string_input else int(np.float32(v))
        return v if string_input else "%f" % float(np.float32(v))

    if map_form == "DENSE":
        values = [convert(v) for _, v in items]
    else:
        if items and items[0][0] < 0:
            raise NodeInputError(f"CastMap: negative index values are not permitted, first key is {items[0][0]}")
        pad = {"TO_FLOAT": 0.0, "TO_INT64": 0, "TO_STRING": "0.f"}[cast_to]
        values = [pad] * int(max_map)
        for k, v in items:
            if k < max_map:
                values[k] = convert(v)
    if cast_to == "TO_STRING":
        return obj_array(values, (1, len(values)))
    dtype = _F32 if cast_to == "TO_FLOAT" else np.int64
    return np.asarray(values, dtype=dtype).reshape(1, len(values))


# --------------------------------------------------------------------------- ZipMap


@op("ZipMap", versions=1, domain="ai.onnx.ml")
def zip_map(x, *, classlabels_int64s=None, classlabels_strings=None):
    if bool(classlabels_int64s) == bool(classlabels_strings):
        raise NodeInputError("ZipMap: provide classlabels_strings or classlabels_int64s but not both")
    labels = [str(v) for v in classlabels_strings] if classlabels_strings else [int(v) for v in classlabels_int64s]
    x = np.asarray(x)
    if x.ndim == 0 or x.ndim > 2:
        raise NodeInputError("ZipMap only supports 1-D or 2-D input tensors")
    rows = x.reshape(1, -1) if x.ndim == 1 else x
    if rows.shape[1] != len(labels):
        raise NodeInputError(f"ZipMap: input features_per_batch[{rows.shape[1]}] != number of classlabels[{len(labels)}]")
    order = sorted(range(len(labels)), key=labels.__getitem__)  # onnxruntime's maps iterate in key order
    keys = [labels[i] for i in order]
    values = rows.astype(_F32, copy=False)[:, order].tolist()
    return [dict(zip(keys, row)) for row in values]
