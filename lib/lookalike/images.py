"""Decoding photos into model input. Used alike by training (Petastorm) and scoring (pandas UDF)."""

from __future__ import annotations

import io
from typing import Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

# Refuse images whose header claims more pixels than this before decoding them.
MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageDecodeError(ValueError):
    """A photo's bytes could not be turned into model input."""


def decode_image(content: bytes, size: int) -> np.ndarray:
    """Decode image bytes to a ``size`` x ``size`` RGB uint8 array (the models rescale to [0, 1]).

    Parameters
    ----------
    content : bytes
        An encoded image (JPEG, PNG, GIF, WebP, ...).
    size : int
        Side of the square output in pixels; the image is resized without keeping aspect ratio,
        as the catalog photos are square studio shots.

    Returns
    -------
    numpy.ndarray
        Shape ``(size, size, 3)``, dtype uint8.

    Raises
    ------
    ImageDecodeError
        If the bytes are empty, not an image, truncated, or too large.
    """
    if not content:
        raise ImageDecodeError("empty image")
    try:
        with Image.open(io.BytesIO(content)) as image:
            # Opening reads only the header: refuse oversized images before any pixel is allocated.
            if image.width * image.height > MAX_PIXELS:
                raise ImageDecodeError(f"image too large: {image.width}x{image.height} pixels > {MAX_PIXELS}")
            # JPEG only: let libjpeg decode at a reduced scale, much cheaper than full decode + resize.
            image.draft("RGB", (size, size))
            rgb = _to_8bit(image).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"{type(error).__name__}: {error}") from error


# Integer modes Pillow gives 16-bit greyscale (PNG, TIFF) in; its own convert clips them at 255.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit greyscale to 0-255; other modes are returned as they are."""
    if image.mode not in _SIXTEEN_BIT_MODES:
        return image
    values = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")


def decode_batch(contents: Iterable[bytes | None], size: int) -> tuple[np.ndarray, list[str | None]]:
    """Decode many images; failures are reported, not raised.

    Returns
    -------
    images : numpy.ndarray
        Shape ``(n_ok, size, size, 3)``: the images that decoded, in input order.
    errors : list of (str or None)
        One entry per input: None where it decoded, else the reason.
    """
    decoded: list[np.ndarray] = []
    errors: list[str | None] = []
    for content in contents:
        try:
            decoded.append(decode_image(content if content is not None else b"", size))
            errors.append(None)
        except ImageDecodeError as error:
            errors.append(str(error))
    images = np.stack(decoded) if decoded else np.zeros((0, size, size, 3), dtype=np.uint8)
    return images, errors
