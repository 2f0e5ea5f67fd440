"""String kernels: StringNormalizer, RegexFullMatch, StringSplit, StringConcat, TfIdfVectorizer.

String tensors are numpy object arrays of Python ``str``.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from ..kernel_table import op
from ....errors import NodeInputError, NodeInputTypeError

_OBJ = np.dtype(object)


def _as_str_array(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == _OBJ:
        return x
    if x.dtype.kind in "US":
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in x.reshape(-1)],
                        dtype=object).reshape(x.shape)
    raise NodeInputTypeError(f"{what} expects a string tensor, got {x.dtype}")


def _obj_array(values: list, shape: tuple) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out.reshape(shape)


# --------------------------------------------------------------------------- StringNormalizer


@op("StringNormalizer", versions=10)
def string_normalizer(x, *, case_change_action="NONE", is_case_sensitive=0, locale="", stopwords=None):
    x = _as_str_array(x, "StringNormalizer")
    if case_change_action not in ("NONE", "LOWER", "UPPER"):
        raise NodeInputError(f"StringNormalizer: unknown case_change_action '{case_change_action}'")
    if x.ndim == 1:
        two_dim = False
        items = x.tolist()
    elif x.ndim == 2 and x.shape[0] == 1:
        two_dim = True
        items = x[0].tolist()
    else:
        raise NodeInputError(f"StringNormalizer accepts [C] or [1, C] inputs, got shape {x.shape}")
    if stopwords:
        if is_case_sensitive:
            stop = set(stopwords)
            items = [s for s in items if s not in stop]
        else:
            stop = {w.lower() for w in stopwords}
            items = [s for s in items if s.lower() not in stop]
    if case_change_action == "LOWER":
        items = [s.lower() for s in items]
    elif case_change_action == "UPPER":
        items = [s.upper() for s in items]
    if not items:
        items = [""]
    return _obj_array(items, (1, len(items)) if two_dim else (len(items),))


# --------------------------------------------------------------------------- RegexFullMatch


_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ", "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~", "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z", "word": "0-9A-Za-z_", "xdigit": "0-9A-Fa-f",
    "punct": "!-/:-@\\[-`{-~",
}


def _re2_to_python(pattern: str) -> str:
    """Rewrite the RE2 constructs Python's ``re`` spells differently ([[:alpha:]], \\z)."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt == "z":
                out.append("\\Z")
            elif nxt in "pP":
                raise NotImplementedError(f"RegexFullMatch: Unicode classes (\\{nxt}) are not supported: {pattern!r}")
            else:
                out.append(pattern[i: i + 2])
            i += 2
            continue
        if ch == "[" and pattern.startswith("[:", i):
            end = pattern.find(":]", i + 2)
            name = pattern[i + 2: end] if end > 0 else ""
            negate = name.startswith("^")
            if negate:
                name = name[1:]
            if name in _POSIX_CLASSES:
                if negate:
                    raise NotImplementedError(f"RegexFullMatch: negated POSIX classes are not supported: {pattern!r}")
                out.append(_POSIX_CLASSES[name])
                i = end + 2
                continue
        out.append(ch)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern:
    """RE2 semantics where they differ from Python's: \\d, \\w, \\s and \\b are ASCII-only."""
    try:
        return re.compile(_re2_to_python(pattern), re.ASCII)
    except re.error as exc:
        raise NodeInputError(f"RegexFullMatch: invalid pattern {pattern!r}: {exc}") from None


@op("RegexFullMatch", versions=20)
def regex_full_match(x, *, pattern=""):
    x = _as_str_array(x, "RegexFullMatch")
    fullmatch = _compile(pattern).fullmatch
    flat = [fullmatch(s) is not None for s in x.reshape(-1).tolist()]
    return np.array(flat, dtype=np.bool_).reshape(x.shape)


# --------------------------------------------------------------------------- StringSplit


@op("StringSplit", versions=20, multi_output=True)
def string_split(x, *, delimiter="", maxsplit=None):
    x = _as_str_array(x, "StringSplit")
    sep = delimiter if delimiter else None
    limit = -1 if maxsplit is None else int(maxsplit)
    parts = [s.split(sep, limit) for s in x.reshape(-1).tolist()]
    counts = np.array([len(p) for p in parts], dtype=np.int64).reshape(x.shape)
    width = int(counts.max()) if counts.size else 0
    out = np.full((len(parts), width), "", dtype=object)
    for i, p in enumerate(parts):
        out[i, : len(p)] = p
    return out.reshape(x.shape + (width,)), counts


# --------------------------------------------------------------------------- StringConcat


@op("StringConcat", versions=20)
def string_concat(x, y):
    x = _as_str_array(x, "StringConcat")
    y = _as_str_array(y, "StringConcat")
    out = np.add(x, y, dtype=object)
    return np.asarray(out, dtype=object)


# --------------------------------------------------------------------------- TfIdfVectorizer


class _NgramPool:
    """The pool's n-grams of lengths [min, max] as sorted integer keys over a token vocabulary."""

    def __init__(self, pool: tuple, is_string: bool, ngram_counts: tuple, ngram_indexes: tuple,
                 min_gram: int, max_gram: int) -> None:
        total = len(pool)
        if is_string:
            vocab_tokens = sorted(set(pool))
            self.vocab = {t: i for i, t in enumerate(vocab_tokens)}
            ids = np.array([self.vocab[t] for t in pool], dtype=np.int64)
            self.sorted_tokens = None
        else:
            self.vocab = None
            self.sorted_tokens = np.unique(np.asarray(pool, dtype=np.int64))
            ids = np.searchsorted(self.sorted_tokens, np.asarray(pool, dtype=np.int64))
        self.base = (len(self.sorted_tokens) if self.vocab is None else len(self.vocab)) + 1
        self.out_index = np.asarray(ngram_indexes, dtype=np.int64)
        self.output_size = int(self.out_index.max()) + 1
        self.by_size: dict[int, tuple] = {}  # n -> (sorted keys or dict, out positions)
        ngram_id = 0
        for i, start in enumerate(ngram_counts):
            n = i + 1
            end = ngram_counts[i + 1] if i + 1 < len(ngram_counts) else total
            if end < start or end > total:
                raise NodeInputError(f"TfIdfVectorizer: ngram_counts out of bounds for {n}-grams")
            items = end - start
            if items == 0:
                continue
            if items % n:
                raise NodeInputError(f"TfIdfVectorizer: the pool does not hold whole {n}-grams")
            count = items // n
            if min_gram <= n <= max_gram:
                grams = ids[start:end].reshape(count, n)
                if ngram_id + count > len(self.out_index):
                    raise NodeInputError("TfIdfVectorizer: ngram_indexes is shorter than the pool")
                positions = self.out_index[ngram_id: ngram_id + count]
                keys = self._keys(grams)
                if keys is None:
                    table = {tuple(g): p for g, p in zip(grams.tolist(), positions.tolist())}
                    self.by_size[n] = (None, table)
                else:
                    order = np.argsort(keys, kind="stable")
                    self.by_size[n] = (keys[order], positions[order])
            ngram_id += count

    def _keys(self, grams: np.ndarray) -> np.ndarray | None:
        """Combine rows of token ids (all >= 0) into one int64 key each, or None on overflow."""
        n = grams.shape[-1]
        if self.base ** n >= 2**62:
            return None
        key = np.zeros(grams.shape[:-1], dtype=np.int64)
        for k in range(n):
            key = key * self.base + grams[..., k]
        return key

    def token_ids(self, x: np.ndarray) -> np.ndarray:
        if self.vocab is not None:
            get = self.vocab.get
            return np.array([get(t, -1) for t in x.reshape(-1).tolist()], dtype=np.int64).reshape(x.shape)
        vals = x.astype(np.int64, copy=False)
        pos = np.searchsorted(self.sorted_tokens, vals)
        pos = np.minimum(pos, len(self.sorted_tokens) - 1)
        return np.where(self.sorted_tokens[pos] == vals, pos, -1)

    def match(self, n: int, grams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(selector of matched rows of ``grams``, their output positions)."""
        entry = self.by_size.get(n)
        if entry is None or grams.shape[0] == 0:
            return np.zeros(grams.shape[0], dtype=bool), np.zeros(0, dtype=np.int64)
        keys, table = entry
        valid = (grams >= 0).all(axis=1)
        if keys is None:
            hits = [table.get(tuple(g), -1) if ok else -1 for g, ok in zip(grams.tolist(), valid.tolist())]
            hits = np.asarray(hits, dtype=np.int64)
            found = hits >= 0
            return found, hits[found]
        k = self._keys(np.where(valid[:, None], grams, 0))
        pos = np.searchsorted(keys, k)
        pos = np.minimum(pos, len(keys) - 1)
        found = valid & (keys[pos] == k)
        return found, table[pos[found]]


@functools.lru_cache(maxsize=32)
def _ngram_pool(pool, is_string, ngram_counts, ngram_indexes, min_gram, max_gram) -> _NgramPool:
    return _NgramPool(pool, is_string, ngram_counts, ngram_indexes, min_gram, max_gram)


@op("TfIdfVectorizer", versions=9)
def tfidf_vectorizer(x, *, max_gram_length, min_gram_length, max_skip_count, mode, ngram_counts,
                     ngram_indexes, pool_int64s=None, pool_strings=None, weights=None):
    if mode not in ("TF", "IDF", "TFIDF"):
        raise NodeInputError(f"TfIdfVectorizer: mode '{mode}' is unrecognized, acceptable values are TF, IDF, TFIDF")
    if min_gram_length < 1 or max_gram_length < min_gram_length:
        raise NodeInputError("TfIdfVectorizer: need 1 <= min_gram_length <= max_gram_length")
    if max_gram_length > len(ngram_counts):
        raise NodeInputError("TfIdfVectorizer: max_gram_length must be in bounds of ngram_counts")
    if max_skip_count < 0:
        raise NodeInputError("TfIdfVectorizer: max_skip_count must be non-negative")
    if not ngram_indexes or min(ngram_indexes) < 0:
        raise NodeInputError("TfIdfVectorizer: ngram_indexes must be non-empty and non-negative")
    is_string = bool(pool_strings)
    if not is_string and not pool_int64s:
        raise NodeInputError("TfIdfVectorizer: one of pool_strings or pool_int64s is required")
    pool = _ngram_pool(tuple(pool_strings if is_string else pool_int64s), is_string, tuple(ngram_counts),
                       tuple(ngram_indexes), int(min_gram_length), int(max_gram_length))

    x = np.asarray(x)
    if is_string:
        x = _as_str_array(x, "TfIdfVectorizer")
    elif x.dtype.kind not in "iu":
        raise NodeInputTypeError(f"TfIdfVectorizer with pool_int64s expects an integer input, got {x.dtype}")
    if x.ndim == 0:
        rows, batched = x.reshape(1, 1), False
    elif x.ndim == 1:
        rows, batched = x.reshape(1, -1), False
    elif x.ndim == 2:
        rows, batched = x, True
    else:
        raise NodeInputError(f"TfIdfVectorizer: input must be [C] or [N, C], got shape {x.shape}")
    n_rows, width = rows.shape
    size = pool.output_size
    counts = np.zeros(n_rows * size, dtype=np.int64)
    if rows.size:
        ids = pool.token_ids(rows)
        row_base = np.arange(n_rows, dtype=np.int64) * size
        hits: list[np.ndarray] = []
        for n in range(min_gram_length, max_gram_length + 1):
            skips = range(1) if n == 1 else range(max_skip_count + 1)
            for skip in skips:
                dist = skip + 1
                windows = width - (n - 1) * dist
                if windows <= 0:
                    break
                cols = np.arange(windows)[:, None] + np.arange(n)[None, :] * dist  # [W, n]
                grams = ids[:, cols].reshape(-1, n)
                found, out_pos = pool.match(n, grams)
                if out_pos.size:
                    owner = np.repeat(row_base, windows)[found]
                    hits.append(owner + out_pos)
        if hits:
            counts = np.bincount(np.concatenate(hits), minlength=n_rows * size)
    counts = counts.reshape(n_rows, size)
    w = np.zeros(0, dtype=np.float32)
    if weights:  # weights[i] scales the i-th n-gram of the pool, written at ngram_indexes[i]
        if len(weights) != len(ngram_indexes):
            raise NodeInputError(f"TfIdfVectorizer: {len(weights)} weights for {len(ngram_indexes)} ngram_indexes")
        w = np.zeros(size, dtype=np.float32)
        w[np.asarray(ngram_indexes, dtype=np.int64)] = np.asarray(weights, dtype=np.float32)
    if mode == "TF" or (mode == "TFIDF" and not w.size):
        out = counts.astype(np.float32)
    elif mode == "IDF":
        present = counts > 0
        out = np.where(present, w[None, :] if w.size else np.float32(1), np.float32(0)).astype(np.float32)
    else:
        out = (counts.astype(np.float32) * w[None, :]).astype(np.float32)
    return out if batched else out.reshape(size)
