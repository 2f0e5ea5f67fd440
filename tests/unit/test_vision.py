"""GridSample, AffineGrid and ImageDecoder kernels."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest

from onyxrt.providers.cpu.nn.vision import affine_grid, grid_sample, grid_sample_16, grid_sample_nd
from onyxrt.providers.cpu.kernel_table import CPU_KERNELS
from onyxrt.providers.cpu.tensor.image_decoder import image_decoder
from reference_ops import reference_output


def _identity_grid(h, w):
    ys, xs = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    return np.stack([xs, ys], axis=-1)[None].astype(np.float32)


# --------------------------------------------------------------------------- GridSample


def test_registered_versions():
    assert CPU_KERNELS.lookup("", "GridSample", 16).fn is grid_sample_16
    for opset in (20, 21, 22, 23):
        assert CPU_KERNELS.lookup("", "GridSample", opset).fn is grid_sample
    assert CPU_KERNELS.lookup("", "AffineGrid", 20).fn is affine_grid


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
def test_identity_grid_reproduces_input(mode):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    grid = np.repeat(_identity_grid(4, 5), 2, axis=0)
    y = grid_sample(x, grid, mode=mode, align_corners=1)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1e-5)


def test_bilinear_centre_and_padding_modes():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=np.float32)
    centre = np.zeros((1, 1, 1, 2), dtype=np.float32)
    assert grid_sample(x, centre)[0, 0, 0, 0] == pytest.approx(2.5)
    # far right of the image, align_corners=0: x = 2.5 (outside), y = 0.5
    far = np.array([[[[2.0, 0.0]]]], dtype=np.float32)
    assert grid_sample(x, far, padding_mode="zeros")[0, 0, 0, 0] == pytest.approx(0.0)
    assert grid_sample(x, far, padding_mode="border")[0, 0, 0, 0] == pytest.approx(3.0)  # mean of 2 and 4
    # reflection of x=2.5 by border 1.5 gives 0.5: mean of the four pixels
    assert grid_sample(x, far, padding_mode="reflection")[0, 0, 0, 0] == pytest.approx(2.5)


def test_nearest_rounds_half_to_even():
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 1, 4)
    # align_corners=1: x = (g + 1) * 1.5 -> 0.5, 1.5, 2.5 round to 0, 2, 2
    g = np.array([-2 / 3, 0.0, 2 / 3], dtype=np.float32)
    grid = np.stack([g, np.zeros_like(g)], axis=-1).reshape(1, 1, 3, 2)
    y = grid_sample(x, grid, mode="nearest", align_corners=1)
    np.testing.assert_array_equal(y.ravel(), [0, 2, 2])


def test_v16_mode_names_and_rank():
    x = np.random.default_rng(1).standard_normal((1, 2, 3, 3)).astype(np.float32)
    grid = np.random.default_rng(2).uniform(-1, 1, (1, 2, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(grid_sample_16(x, grid, mode="bicubic"), grid_sample(x, grid, mode="cubic"))
    np.testing.assert_allclose(grid_sample_16(x, grid), grid_sample(x, grid, mode="linear"))
    with pytest.raises(ValueError, match="4-D"):
        grid_sample_16(np.zeros((1, 1, 2, 2, 2), np.float32), np.zeros((1, 1, 1, 1, 3), np.float32))
    with pytest.raises(ValueError, match="mode"):
        grid_sample(x, grid, mode="area")


@pytest.mark.parametrize(
    "mode,padding_mode,align_corners",
    [
        (m, p, a)
        for m, p, a in itertools.product(["linear", "nearest", "cubic"], ["zeros", "border", "reflection"], [0, 1])
        if not (m == "cubic" and p == "border")  # see test_cubic_border_clamps_taps
    ],
)
def test_grid_sample_2d_matchesreference_output(mode, padding_mode, align_corners):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    grid = rng.uniform(-1.8, 1.8, (1, 3, 3, 2)).astype(np.float32)
    attrs = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    expected = reference_output("GridSample", [x, grid], 20, **attrs)
    np.testing.assert_allclose(grid_sample(x, grid, **attrs), expected, rtol=1e-5, atol=1e-5)


def test_cubic_border_clamps_taps():
    # like onnxruntime and PyTorch: the coordinate is not clamped, each of the 4 taps is
    x = (np.arange(1, 7, dtype=np.float32) ** 2).reshape(1, 1, 1, 6)
    grid = np.array([-1.3, 0.0], dtype=np.float32).reshape(1, 1, 1, 2)
    y = grid_sample(x, grid, mode="cubic", padding_mode="border", align_corners=1)
    # x = -0.75: taps -2..1 clamp to pixels 0, 0, 0, 1 with Keys weights for t = 0.25
    a, t = -0.75, 0.25
    w = [
        ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
        ((a + 2) * t - (a + 3)) * t * t + 1,
        ((a + 2) * (1 - t) - (a + 3)) * (1 - t) ** 2 + 1,
        ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
    ]
    assert y[0, 0, 0, 0] == pytest.approx(w[0] + w[1] + w[2] + 4 * w[3], rel=1e-5)


@pytest.mark.parametrize("mode,padding_mode", [("linear", "zeros"), ("nearest", "border"), ("linear", "reflection")])
def test_grid_sample_3d_matchesreference_output(mode, padding_mode):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 2, 2, 3, 3)).astype(np.float32)
    grid = rng.uniform(-1.3, 1.3, (1, 2, 2, 2, 3)).astype(np.float32)
    attrs = dict(mode=mode, padding_mode=padding_mode, align_corners=0)
    expected = reference_output("GridSample", [x, grid], 20, **attrs)
    np.testing.assert_allclose(grid_sample(x, grid, **attrs), expected, rtol=1e-5, atol=1e-5)


def test_grid_sample_1d_and_dtypes():
    x = np.array([[[0.0, 10.0, 20.0]]], dtype=np.float64)
    grid = np.array([[[-1.0], [0.25], [1.0]]], dtype=np.float64)
    y = grid_sample(x, grid, align_corners=1)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y.ravel(), [0.0, 12.5, 20.0])
    xu = np.array([[[[10, 20], [30, 40]]]], dtype=np.uint8)
    yu = grid_sample(xu, np.zeros((1, 1, 1, 2), np.float32))
    assert yu.dtype == np.uint8 and yu[0, 0, 0, 0] == 25
    yn = grid_sample(xu, _identity_grid(2, 2), mode="nearest", align_corners=1)
    np.testing.assert_array_equal(yn, xu)
    xh = np.ones((1, 1, 2, 2), dtype=np.float16)
    assert grid_sample(xh, np.zeros((1, 3, 3, 2), np.float16)).dtype == np.float16


def test_grid_sample_empty_grid():
    y = grid_sample_nd(np.ones((1, 2, 3, 3), np.float32), np.zeros((1, 0, 4, 2), np.float32), "linear", "zeros", 0)
    assert y.shape == (1, 2, 0, 4)


# --------------------------------------------------------------------------- AffineGrid


@pytest.mark.parametrize("size", [[2, 3, 4, 5], [1, 1, 2, 3, 4]])
@pytest.mark.parametrize("align_corners", [0, 1])
def test_affine_grid_matchesreference_output(size, align_corners):
    r = len(size) - 2
    theta = np.random.default_rng(5).standard_normal((size[0], r, r + 1)).astype(np.float32)
    got = affine_grid(theta, np.array(size, dtype=np.int64), align_corners=align_corners)
    expected = reference_output("AffineGrid", [theta, np.array(size, dtype=np.int64)], 20, align_corners=align_corners)
    assert got.shape == (size[0], *size[2:], r) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_affine_grid_identity_and_single_pixel():
    theta = np.array([[[1, 0, 0], [0, 1, 0]]], dtype=np.float64)
    grid = affine_grid(theta, np.array([1, 1, 2, 3]), align_corners=1)
    assert grid.dtype == np.float64
    np.testing.assert_allclose(grid[0, :, :, 0], [[-1, 0, 1], [-1, 0, 1]])
    np.testing.assert_allclose(grid[0, :, :, 1], [[-1, -1, -1], [1, 1, 1]])
    # a single pixel: 0 (its centre) without align_corners; onnxruntime's end point 1 with it
    np.testing.assert_allclose(affine_grid(theta, np.array([1, 1, 1, 1]))[0, 0, 0], [0, 0])
    np.testing.assert_allclose(affine_grid(theta, np.array([1, 1, 1, 1]), align_corners=1)[0, 0, 0], [1, 1])
    # sampling through an identity grid reproduces the image
    x = np.random.default_rng(6).standard_normal((1, 2, 3, 4)).astype(np.float32)
    g = affine_grid(np.array([[[1, 0, 0], [0, 1, 0]]], np.float32), np.array(x.shape))
    np.testing.assert_allclose(grid_sample(x, g), x, atol=1e-6)
    with pytest.raises(ValueError, match="theta"):
        affine_grid(np.zeros((1, 3, 4), np.float32), np.array([1, 1, 2, 2]))


# --------------------------------------------------------------------------- ImageDecoder


def _encode(image: np.ndarray, fmt: str) -> np.ndarray:
    PIL_Image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    PIL_Image.fromarray(image).save(buf, format=fmt)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_image_decoder_lossless_formats(fmt):
    image = np.random.default_rng(7).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    stream = _encode(image, fmt)
    rgb = image_decoder(stream)
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 7, 3)
    np.testing.assert_array_equal(rgb, image)
    np.testing.assert_array_equal(image_decoder(stream, pixel_format="BGR"), image[:, :, ::-1])
    gray = image_decoder(stream, pixel_format="Grayscale")
    assert gray.shape == (5, 7, 1)
    wide = image.astype(np.int64)
    luma = (wide[..., 0] * 299 + wide[..., 1] * 587 + wide[..., 2] * 114 + 500) // 1000
    assert np.abs(gray[..., 0].astype(int) - luma).max() <= 1


def test_image_decoder_jpeg_and_invalid_stream():
    image = np.full((8, 8, 3), (200, 100, 50), dtype=np.uint8)
    rgb = image_decoder(_encode(image, "JPEG"))
    assert rgb.shape == (8, 8, 3)
    assert np.abs(rgb.astype(int) - image).max() <= 3
    empty = image_decoder(np.frombuffer(b"not an image", dtype=np.uint8))
    assert empty.shape == (0, 0, 3) and empty.dtype == np.uint8
    with pytest.raises(ValueError, match="pixel_format"):
        image_decoder(np.zeros(4, np.uint8), pixel_format="RGBA")
