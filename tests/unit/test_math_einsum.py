"""Unit tests for onyxrt.providers.cpu.math.einsum."""

import ml_dtypes
import numpy as np
import pytest

import onyxrt.providers.cpu.kernel_modules  # noqa: F401  (registers every kernel)
from onyxrt.providers.cpu.math.einsum import einsum, parse_equation
from onyxrt.providers.cpu.kernel_table import CPU_KERNELS


def test_registered():
    for version in (12, 28):
        assert CPU_KERNELS.lookup("", "Einsum", version).fn is einsum


def test_implicit_output_is_ascii_sorted():
    labels, out = parse_equation("ba,Ab", [(2, 3), (4, 2)])
    assert labels == [["b", "a"], ["A", "b"]] and out == ["A", "a"]
    labels, out = parse_equation("...ij,...jk", [(5, 2, 3), (3, 4)])
    assert labels == [[".0", "i", "j"], ["j", "k"]] and out == [".0", "i", "k"]


@pytest.mark.parametrize(
    "equation, shapes, numpy_equation",
    [
        ("ij->ji", [(3, 4)], None),
        ("ij->i", [(3, 4)], None),
        ("ii->i", [(3, 3)], None),
        ("...ii ->...i", [(2, 3, 3)], "...ii->...i"),
        ("i,i", [(5,), (5,)], None),
        ("ij,jk", [(3, 4), (4, 5)], None),
        ("bij, bjk -> bik", [(2, 3, 4), (2, 4, 5)], "bij,bjk->bik"),
        ("bhqd,bhkd->bhqk", [(1, 2, 3, 8), (1, 2, 5, 8)], None),
        ("ab,bc->ca", [(3, 4), (4, 5)], None),
        ("ij,kl->iljk", [(2, 3), (4, 5)], None),
        ("abc,b->", [(2, 3, 4), (3,)], None),
        ("iij,jk->ik", [(3, 3, 4), (4, 5)], None),
        ("bij,bjk->bik", [(1, 2, 3), (4, 3, 2)], None),  # broadcast batch dim
        ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 6)], None),
        ("...ij,...jk->ik", [(2, 3, 4), (2, 4, 6)], "aij,ajk->ik"),  # ellipsis dims summed
        ("ijk,ikl,ilm->ijm", [(2, 3, 4), (2, 4, 5), (2, 5, 6)], None),
        ("Ab,bC->AC", [(3, 4), (4, 5)], None),
        ("->", [()], None),
    ],
)
def test_matches_numpy(equation, shapes, numpy_equation):
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    for x in xs:
        x.flags.writeable = False
    out = einsum(*xs, equation=equation)
    assert type(out) is np.ndarray and out.dtype == np.float32
    expected = np.einsum(numpy_equation or equation, *[x.astype(np.float64) for x in xs])
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_types_and_no_aliasing():
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    out = einsum(x, x, equation="ij,kj->ik")
    assert out.dtype == np.int32 and out.tolist() == [[5, 14], [14, 50]]
    t = einsum(x, equation="ij->ji")
    assert not np.may_share_memory(t, x)
    h = einsum(np.ones((2, 3), np.float16), np.ones(3, np.float16), equation="ij,j->i")
    assert h.dtype == np.float16 and h.tolist() == [3.0, 3.0]
    b = einsum(np.ones((2, 3), ml_dtypes.bfloat16), equation="ij->i")
    assert b.dtype == ml_dtypes.bfloat16


@pytest.mark.parametrize("equation", ["ij,jk->il", "ij->jj", "i.j->ij", "ijk->ij"])
def test_invalid_equations(equation):
    operands = [np.ones((2, 2), np.float32)] * (equation.count(",") + 1)
    with pytest.raises(ValueError):
        einsum(*operands, equation=equation)
