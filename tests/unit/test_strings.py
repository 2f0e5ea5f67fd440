"""String kernels: StringNormalizer, RegexFullMatch, StringSplit, StringConcat, TfIdfVectorizer."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from onyxrt.providers.cpu.tensor import strings


def S(*values, shape=None):
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out if shape is None else out.reshape(shape)


# --------------------------------------------------------------------------- StringNormalizer


def test_string_normalizer_stopwords_and_case():
    x = S("monday", "tuesday", "Monday", "wednesday")
    y = strings.string_normalizer(x, case_change_action="UPPER", stopwords=["monday"], is_case_sensitive=1)
    assert y.tolist() == ["TUESDAY", "MONDAY", "WEDNESDAY"]
    y = strings.string_normalizer(x, case_change_action="LOWER", stopwords=["MONDAY"])
    assert y.tolist() == ["tuesday", "wednesday"]
    y = strings.string_normalizer(S("a", "B", shape=(1, 2)))
    assert y.shape == (1, 2) and y.tolist() == [["a", "B"]]


def test_string_normalizer_all_removed():
    assert strings.string_normalizer(S("x", "x"), stopwords=["x"]).tolist() == [""]
    y = strings.string_normalizer(S("x", shape=(1, 1)), stopwords=["X"])
    assert y.shape == (1, 1) and y.tolist() == [[""]]
    with pytest.raises(ValueError):
        strings.string_normalizer(S("a", "b", "c", "d", shape=(2, 2)))


# --------------------------------------------------------------------------- RegexFullMatch


def test_regex_full_match():
    x = S("www.google.com", "www.facebook.com", "www.bbc.co.uk", shape=(3,))
    y = strings.regex_full_match(x, pattern=r"www\.[\w.-]+\.\bcom\b")
    assert y.dtype == np.bool_ and y.tolist() == [True, True, False]
    y = strings.regex_full_match(S("ab", "abc", shape=(1, 2)), pattern="ab")
    assert y.shape == (1, 2) and y.tolist() == [[True, False]]
    assert strings.regex_full_match(S(), pattern="a").shape == (0,)


def test_regex_full_match_re2_syntax():
    y = strings.regex_full_match(S("ab1", "_x", "1a", "ab_"), pattern=r"[[:alpha:]_][[:alnum:]]*\z")
    assert y.tolist() == [True, True, False, False]
    # RE2's \d and \w are ASCII-only
    y = strings.regex_full_match(S("123", "\u0661\u0662", "\u00e9"), pattern=r"\d+|\w")
    assert y.tolist() == [True, False, False]
    with pytest.raises(ValueError):
        strings.regex_full_match(S("a"), pattern="(")


# --------------------------------------------------------------------------- StringSplit


def test_string_split():
    y, n = strings.string_split(S("a,b", "c", "d,,e"), delimiter=",")
    assert y.tolist() == [["a", "b", ""], ["c", "", ""], ["d", "", "e"]] and n.tolist() == [2, 1, 3]
    y, n = strings.string_split(S("  a  b ", "c d e"), maxsplit=1)
    assert y.tolist() == [["a", "b "], ["c", "d e"]] and n.tolist() == [2, 2]
    y, n = strings.string_split(np.empty(0, dtype=object))
    assert y.shape == (0, 0) and n.shape == (0,) and n.dtype == np.int64
    y, n = strings.string_split(S("a b", "c", shape=(2, 1)))
    assert y.shape == (2, 1, 2) and n.shape == (2, 1)


def test_string_concat_broadcasts():
    y = strings.string_concat(S("a", "b"), S("!", shape=(1,)))
    assert y.tolist() == ["a!", "b!"]
    z = strings.string_concat(np.array("x", dtype=object), np.array("y", dtype=object))
    assert isinstance(z, np.ndarray) and z.shape == () and z.item() == "xy"
    assert strings.string_concat(S("é"), S("ü")).tolist() == ["éü"]


# --------------------------------------------------------------------------- TfIdfVectorizer

_POOL = [2, 3, 5, 4,  # unigrams
         5, 6, 7, 8, 6, 7]  # bigrams (5,6) (7,8) (6,7)
_COMMON = dict(ngram_counts=[0, 4], ngram_indexes=list(range(7)), pool_int64s=_POOL)


def test_tfidf_unigrams_and_bigrams():
    x = np.array([1, 1, 3, 3, 3, 7, 8, 6, 7, 5, 6, 8], dtype=np.int32)
    y = strings.tfidf_vectorizer(x, mode="TF", min_gram_length=1, max_gram_length=2, max_skip_count=0, **_COMMON)
    assert y.dtype == np.float32 and y.shape == (7,)
    assert y.tolist() == [0, 3, 1, 0, 1, 1, 1]


def test_tfidf_skips_and_batches():
    x = np.array([[1, 1, 3, 3, 3, 7], [8, 6, 7, 5, 6, 8]], dtype=np.int64)
    y = strings.tfidf_vectorizer(x, mode="TF", min_gram_length=2, max_gram_length=2, max_skip_count=5, **_COMMON)
    # row 0: (3,7) not in pool -> nothing; row 1: (6,7) at skip 0, (5,6) at skip 0, (7,8) at skip 2, (6,8)...
    assert y.shape == (2, 7)
    assert y[0].tolist() == [0] * 7
    assert y[1].tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_tfidf_modes_and_weights():
    x = np.array([3, 3, 2], dtype=np.int64)
    w = [0.5, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    common = dict(min_gram_length=1, max_gram_length=1, max_skip_count=0, weights=w, **_COMMON)
    assert strings.tfidf_vectorizer(x, mode="TF", **common).tolist()[:2] == [1, 2]
    assert strings.tfidf_vectorizer(x, mode="IDF", **common).tolist()[:2] == [0.5, 2.0]
    assert strings.tfidf_vectorizer(x, mode="TFIDF", **common).tolist()[:2] == [0.5, 4.0]


def test_tfidf_strings_and_empty():
    pool = ["a", "b", "a", "b"]
    kw = dict(ngram_counts=[0, 2], ngram_indexes=[0, 1, 2], pool_strings=pool, mode="TF", min_gram_length=1,
              max_gram_length=2, max_skip_count=0)
    y = strings.tfidf_vectorizer(S("a", "b", "a", "c", shape=(1, 4)), **kw)
    assert y.tolist() == [[2, 1, 1]]
    y = strings.tfidf_vectorizer(np.empty((2, 0), dtype=object), **kw)
    assert y.shape == (2, 3) and not y.any()


def test_tfidf_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    import onyxrt

    rng = np.random.default_rng(0)
    pool = [0, 1, 2, 3, 4, 5] + [0, 1, 1, 2, 3, 4, 2, 2] + [5, 0, 1, 1, 2, 3]  # 6 unigrams, 4 bigrams, 2 trigrams
    counts = [0, 6, 14]
    n_grams = 12
    for mode, lo, hi, skip in (("TF", 1, 3, 2), ("IDF", 2, 3, 1), ("TFIDF", 1, 2, 3)):
        node = helper.make_node("TfIdfVectorizer", ["X"], ["Y"], mode=mode, min_gram_length=lo, max_gram_length=hi,
                                max_skip_count=skip, ngram_counts=counts, ngram_indexes=list(range(n_grams))[::-1],
                                pool_int64s=pool, weights=[float(v) for v in rng.random(n_grams)])
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.INT64, None)],
                                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        x = rng.integers(0, 7, (5, 12)).astype(np.int64)
        data = model.SerializeToString()
        expect = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
        got = onyxrt.InferenceSession(data).run(None, {"X": x})[0]
        np.testing.assert_allclose(got, expect, rtol=1e-6)
