"""ImageDecoder: decodes an encoded image (JPEG, PNG, BMP, TIFF, WebP, JPEG 2000,
PNM, ...) into an (H, W, C) uint8 tensor with Pillow, an optional dependency
imported on first use. As the specification asks, a stream that cannot be decoded
gives an empty image rather than an error.
"""

from __future__ import annotations

import io

import numpy as np

from ..kernel_table import op
from ....errors import NodeInputError, NodeInputTypeError

_CHANNELS = {"RGB": 3, "BGR": 3, "Grayscale": 1}


def _pillow():
    try:
        import PIL.Image  # noqa: PLC0415 - optional dependency, imported lazily
    except ImportError as exc:
        raise ImportError(
            "ImageDecoder needs the optional dependency 'pillow' (pip install pillow) to decode images"
        ) from exc
    return PIL.Image


@op("ImageDecoder", versions=(20,))
def image_decoder(encoded_stream, *, pixel_format="RGB"):
    pixel_format = pixel_format.decode() if isinstance(pixel_format, bytes) else str(pixel_format)
    if pixel_format not in _CHANNELS:
        raise NodeInputError(f"ImageDecoder pixel_format must be one of RGB, BGR, Grayscale, got {pixel_format!r}")
    encoded = np.asarray(encoded_stream)
    if encoded.dtype != np.uint8:
        raise NodeInputTypeError(f"ImageDecoder expects a uint8 encoded stream, got {encoded.dtype}")
    Image = _pillow()
    empty = np.zeros((0, 0, _CHANNELS[pixel_format]), dtype=np.uint8)
    try:
        with Image.open(io.BytesIO(encoded.tobytes())) as img:
            img = img.convert("L" if pixel_format == "Grayscale" else "RGB")
            decoded = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return empty  # corrupted or unsupported stream: the spec's empty result
    if pixel_format == "Grayscale":
        return np.ascontiguousarray(decoded.reshape(*decoded.shape[:2], 1))
    if pixel_format == "BGR":
        return np.ascontiguousarray(decoded[:, :, ::-1])
    return np.ascontiguousarray(decoded)
